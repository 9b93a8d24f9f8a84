"""MAViL classification (Huang et al., NeurIPS 2023): the fused audio-video encoder, or one tower alone.

`modality=av` (default) trains the fine-tuned fusion layout of AV-SUPERB's MAViL (`depth_av=3`, `ft=True`:
`fc_norm_av` + `head_av` on the pooled audio and video tokens). `modality=audio` / `video` trains one tower alone,
the paper's uni-modal fine-tuning (audio-only 48.7 mAP on AS-2M): the no-fusion layout with the other tower
dropped, `fc_norm_a` + `head_a` (`fc_norm_v` + `head_v`) on its mean patch token; its checkpoints hold that tower
only.

`model.checkpoint` (a percli checkpoint of `finetune` or `pretrain mavil`, or AV-SUPERB's `mavil_base` .pth)
loads into every modality: what the modality does not run (the other tower, the fusion) is dropped, the
classifier the file lacks starts at init, both reported; the pretrained layout's 2 fusion blocks leave the
fine-tuned layout's third at init (or set model.kwargs.depth_av=2). Inputs are prepared as AV-SUPERB's MAViL
expert: 16 kHz Kaldi fbank normalised per clip, `n_frm` frames at 2 fps with ImageNet statistics.

`data.source` (and `data.val_source`, evaluated, in the same layout): `embedded` (default: generated clips whose
events are their labels, with a held-out split); a .jsonl of {"id", "video", "audio", "labels"} lines or a .csv
with those columns (`labels` a list, or one string with `;` between labels; `audio` optional: the video's own
track is read); AudioSet's segments CSV (`YTID, start_seconds, end_seconds, "/m/a,/m/b"`, clips
`<YTID>_<start>.mp4` or `<YTID>.mp4` under `data.media_dir`, by default the CSV's folder and its sub-folders;
classes from `class_labels_indices.csv` beside it or `data.label_csv`); VGGSound's `vggsound.csv` (youtube_id,
start_seconds, label, split; no header; clips `<id>_<start:06d>.mp4`): its `train` rows train, its `test` rows
evaluate unless `data.val_source` is set.

Multi-label data (AudioSet, the embedded clips, a manifest with a multi-label clip) trains with binary
cross-entropy and reports mAP, mAUC and d-prime; single-label data (VGGSound) cross-entropy and top-1 / top-5
(`data.multilabel` forces either). Clips that do not decode (no audio track while audio is used, a corrupt or
empty file) are skipped and listed in summary.json's `bad_inputs`; lines without a label, with a label outside
the classes or naming a missing clip are skipped and listed in `bad_records` (by reason in `skipped_records`).

Examples:
  percli finetune mavil                                          # tiny fused MAViL on the embedded clips
  percli finetune mavil modality=audio                           # the audio tower alone
  percli finetune mavil data.source=/data/vggsound/vggsound.csv data.media_dir=/data/vggsound/video
  percli finetune mavil model.name=mavil_vit_base_patch16 model.kwargs={} model.checkpoint=mavil_base.pth \\
      data.source=/data/audioset/balanced_train_segments.csv data.val_source=/data/audioset/eval_segments.csv
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import Dataset

from percli.avsuperb.av_upstreams import MAVIL_FPS, MAViLInputs
from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.av_clips import MODALITIES
from percli.core.data.av_events import LABELS, AVEventsSpec, EmbeddedAVEvents
from percli.core.data.labelled_av import LabelledAVClips, LabelSet, detect_format
from percli.core.metrics import multilabel_metrics
from percli.models import create_model, list_models, load_initial_weights
from percli.recipes.classification import classification_metrics, classification_sums
from percli.recipes.common import TrainedModelSection

LAYOUTS = {"av": {"depth_av": 3, "ft": True}, "audio": {"av_fusion": False}, "video": {"av_fusion": False}}
"""Constructor arguments of each modality's layout (model.kwargs override them)."""
TOWERS = {"audio": ("cls_token", "pos_embed", "patch_embed", "blocks", "fc_norm_a", "head_a"),
          "video": ("cls_token_v", "pos_embed_v", "patch_embed_v", "blocks_v", "fc_norm_v", "head_v")}
"""The official modules of each tower and its classifier in the no-fusion layout."""


@dataclasses.dataclass
class MAViLDataSection:
    source: str = "embedded"
    """`embedded` (generated clips; their events are the labels), a .jsonl/.csv manifest, an AudioSet segments
    CSV or a VGGSound CSV (see the command's help)."""
    val_source: str | None = None
    """Held-out data in one of those layouts; unset: the embedded held-out split, a VGGSound CSV's `test` rows,
    else no evaluation."""
    format: Literal["auto", "manifest", "audioset", "vggsound"] = "auto"
    """The layout of source and val_source; auto: told by the suffix and the first row."""
    media_dir: str | None = None
    """Folder holding the clips an AudioSet/VGGSound CSV names by id (sub-folders searched); default: the CSV's."""
    label_csv: str | None = None
    """AudioSet's class_labels_indices.csv (index,mid,display_name): the classes and their order, labels given as
    MIDs or display names; default: class_labels_indices.csv beside an AudioSet CSV, else the training labels."""
    multilabel: bool | None = None
    """null: AudioSet, the embedded clips and manifests with a multi-label clip are multi-label, others single."""
    embedded_size: int = 400
    """Clips in the embedded training split (the held-out split has a quarter, at least 20)."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="mavil_vit_base_patch16"))
    modality: Literal["av", "audio", "video"] = "av"
    """av: the fused encoder and head_av; audio / video: that tower alone and its head (the other dropped)."""
    data: MAViLDataSection = dataclasses.field(default_factory=MAViLDataSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=32))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=1e-4, ref_batch_size=256, weight_decay=0.05, betas=(0.9, 0.999), warmup_fraction=0.1))


class EmbeddedEventClips(Dataset):
    """The embedded clips with their events as multi-hot targets (the items of `LabelledAVClips`)."""

    classes, multilabel, bad_records, format = list(LABELS), True, None, "embedded"
    labels = LabelSet(tuple(LABELS), {name: i for i, name in enumerate(LABELS)})

    def __init__(self, count: int, split: str):
        self.clips = EmbeddedAVEvents(count, seed=0, split=split, spec=AVEventsSpec(sample_rate=16000))
        self.fps = self.clips.spec.fps

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.clips[index]
        labels = sorted({self.classes.index(label) for label, _, _ in item["events"]})
        target = torch.zeros(len(self.classes))
        target[labels] = 1.0
        return {"waveform": item["waveform"], "frames": item["frames"], "target": target, "label": labels[0]}


class MAViLItems(Dataset):
    """Clips -> {"fbank" [T, F] (audio, av), "video" [3, n_frm, H, W] (video, av), "index", and "target"
    [classes] / "label" when the clips are labelled} prepared as AV-SUPERB's MAViL expert; a clip that does not
    decode raises `BadSample` (skipped and counted by the engine)."""

    def __init__(self, clips: Dataset, inputs: MAViLInputs, modality: str, fps: float):
        self.clips, self.inputs, self.modality, self.fps = clips, inputs, modality, fps
        self.bad_records = getattr(clips, "bad_records", None)  # dropped manifest lines, for summary.json

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.clips[index]
        out = {"index": index, **{k: item[k] for k in ("target", "label") if k in item}}
        if self.modality != "video":
            out["fbank"] = self.inputs.preprocess_audio(item["waveform"][0], 16000)
        if self.modality != "audio":
            out["video"] = self.inputs.preprocess_video(item["frames"].permute(0, 2, 3, 1), self.fps)  # [N, H, W, 3]
        return out


def keep_tower(model: nn.Module, modality: str) -> nn.Module:
    """Drop the other tower and its classifier from a no-fusion MAViL, so that the model and its checkpoints
    hold only what ``model(x, None)`` (audio) or ``model(None, v)`` (video) runs."""
    for name in TOWERS["video" if modality == "audio" else "audio"]:
        delattr(model, name)
    return model


class MAViLClassifyTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.modalities = MODALITIES if cfg.modality == "av" else (cfg.modality,)

    def _clips(self, source: str, split: str, labels: LabelSet | None = None,
               multilabel: bool | None = None) -> Dataset:
        d = self.cfg.data
        if source == "embedded":
            return EmbeddedEventClips(d.embedded_size if split == "train" else max(d.embedded_size // 4, 20), split)
        key = "data.source" if split == "train" else "data.val_source"
        try:
            return LabelledAVClips(source, format=d.format, modalities=self.modalities, labels=labels,
                                   label_csv=d.label_csv, media_dir=d.media_dir, split=split, multilabel=multilabel,
                                   fps=MAVIL_FPS)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        self.train_clips = self._clips(cfg.data.source, "train")
        self.classes, several = list(self.train_clips.classes), getattr(self.train_clips, "several_labels", 0)
        if cfg.data.multilabel is False and several:
            raise ConfigError(f"data.multilabel: false, but {several} clip(s) of data.source carry several labels; "
                              "set it to true or null")
        self.multilabel = self.train_clips.multilabel if cfg.data.multilabel is None else cfg.data.multilabel
        if len(self.classes) < 2:
            raise ConfigError(f"data.source: {len(self.classes)} class(es) in {cfg.data.source}; classification "
                              "needs at least 2")
        kwargs = {**LAYOUTS[cfg.modality], "num_classes": len(self.classes), **cfg.model.kwargs}
        model = create_model(cfg.model.name, **kwargs)
        if (cfg.modality == "av") != bool(model.av_fusion) or (cfg.modality == "av" and not model.ft):
            raise ConfigError(f"model.kwargs: modality={cfg.modality} needs {LAYOUTS[cfg.modality]}; drop the "
                              "conflicting av_fusion / ft from model.kwargs")
        if cfg.modality != "av":
            keep_tower(model, cfg.modality)
        if cfg.model.checkpoint:
            load_initial_weights(model, cfg.model.checkpoint)
        self.inputs = MAViLInputs(model.preprocess)
        self.meta = {"name": cfg.model.name, "kwargs": kwargs, "task": "mavil-classify", "modality": cfg.modality,
                     "classes": self.classes, "multilabel": self.multilabel, **model.checkpoint_meta()}
        return model

    def model_meta(self) -> dict[str, Any]:
        return self.meta

    def _items(self, clips: Dataset) -> MAViLItems:
        return MAViLItems(clips, self.inputs, self.cfg.modality, getattr(clips, "fps", MAVIL_FPS))

    def train_dataset(self) -> Dataset:
        return self._items(self.train_clips)

    def eval_dataset(self) -> Dataset | None:
        source = held_out_source(self.cfg.data, self.train_clips)
        if source is None:
            return None
        self.eval_clips = self._clips(source, "test", self.train_clips.labels, self.multilabel)
        return self._items(self.eval_clips)

    def logits(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        fbank = batch["fbank"][:, None] if "fbank" in batch else None  # [B, T, F] -> [B, 1, T, F]
        return model(fbank, batch.get("video")).float()

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.logits(model, batch)
        if self.multilabel:
            return {"loss": F.binary_cross_entropy_with_logits(logits, batch["target"])}
        return {"loss": F.cross_entropy(logits, batch["label"])}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        logits = self.logits(model, batch)
        if self.multilabel:
            return {"scores": torch.sigmoid(logits), "targets": batch["target"]}
        return classification_sums(logits, batch["label"])

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        if self.multilabel:
            return multilabel_metrics(totals["scores"], totals["targets"]) if "scores" in totals else {}
        return classification_metrics(totals)

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        splits = (("train", self.train_clips), ("eval", getattr(self, "eval_clips", None)))
        skipped = {split: dict(clips.skipped) for split, clips in splits if hasattr(clips, "skipped")}
        return {"modality": self.cfg.modality, "multilabel": self.multilabel, "classes": self.classes,
                **({"skipped_records": skipped} if skipped else {})}


def validate(cfg: Config) -> None:
    mavil = [n for n in list_models() if n.startswith("mavil_vit_")]
    if cfg.model.name not in mavil:
        raise ConfigError(f"model.name: {cfg.model.name!r} is not a MAViL encoder; use one of {mavil}")
    fusion = cfg.model.kwargs.get("av_fusion")
    if fusion is not None and bool(fusion) != (cfg.modality == "av"):
        raise ConfigError(f"model.kwargs.av_fusion: {fusion} does not fit modality={cfg.modality} (av: the fusion "
                          "layout; audio / video: one tower, no fusion); drop it from model.kwargs")
    validate_av_data(cfg.data)


def held_out_source(d: MAViLDataSection, train_clips: Dataset) -> str | None:
    """The held-out data of a labelled audio-video section: ``val_source``, else the embedded held-out split or a
    VGGSound CSV's test rows (the training source again), else none."""
    if d.val_source is None and (d.source == "embedded" or "test" in getattr(train_clips, "splits", ())):
        return d.source
    return d.val_source


def validate_av_data(d: MAViLDataSection) -> None:
    """The checks of a labelled audio-video data section a dry run can make (files exist, the layout is known)."""
    for key, path in (("data.source", d.source), ("data.val_source", d.val_source)):
        if path is not None and path != "embedded" and not Path(path).expanduser().is_file():
            raise ConfigError(f"{key}: {path} is not a file; give `embedded`, a .jsonl/.csv manifest, an AudioSet "
                              "segments CSV or a VGGSound CSV")
    if d.label_csv is not None and not Path(d.label_csv).expanduser().is_file():
        raise ConfigError(f"data.label_csv: {d.label_csv} is not a file (AudioSet's class_labels_indices.csv)")
    if d.val_source == "embedded" and d.source != "embedded":
        raise ConfigError("data.val_source: `embedded` evaluates the embedded classes only; give a held-out file")
    if d.media_dir is not None and not Path(d.media_dir).expanduser().is_dir():
        raise ConfigError(f"data.media_dir: {d.media_dir} is not a folder")
    if d.source != "embedded" and d.format == "auto":
        try:
            detect_format(Path(d.source).expanduser())
        except ValueError as e:
            raise ConfigError(f"data.source: {e}; or set data.format") from None


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(MAViLClassifyTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
