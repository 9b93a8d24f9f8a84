"""Audio-visual event classification with early, middle or late fusion (`percli.models.av_fusion`): the victims of
"Audio-Visual Event Recognition through the lens of Adversary" (Li, Ma, Qu, Huang, Metze; ICASSP 2021), to attack
with `percli eval adversarial`.

`model.fusion`: `early` (one Transformer over the audio and video tokens), `middle` (per-modality blocks, then
joint ones) or `late` (one classifier per modality, logits averaged). Inputs are prepared as MAViL's (AV-SUPERB's
expert preprocessing): 16 kHz Kaldi fbank normalised per clip, frames at 2 fps from the clip's start with ImageNet
statistics, at the model's sizes.

`data.source` (and `data.val_source`, evaluated): `embedded` (default: generated 2 s clips with ONE event each, a
sound of its class and a shape in its class's colour and motion while it sounds, so both modalities tell the
class; single-label, 8 classes, a held-out split), or labelled clips read by `percli.core.data.labelled_av`: a
.jsonl/.csv manifest of {"id", "video", "audio", "labels"}, AudioSet's segments CSV or VGGSound's CSV (see `percli
finetune mavil --help` for the layouts). Multi-label data trains with binary cross-entropy and reports mAP;
single-label data cross-entropy and top-1 / top-5. Clips that do not decode are skipped and counted.

Examples:
  percli finetune av-fusion model.fusion=early --run-dir runs/av-early     # tiny preset, embedded clips, CPU
  percli eval adversarial checkpoint=runs/av-early attack.modality=audio --run-dir runs/av-early-attack
  percli finetune av-fusion --preset none model.name=av_fusion_small data.source=/data/vggsound/vggsound.csv \\
      data.media_dir=/data/vggsound/video
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
from percli.core.data.av_events import AVEventsSpec, EmbeddedAVEvents
from percli.core.data.labelled_av import LabelledAVClips, LabelSet
from percli.models import create_model, load_initial_weights
from percli.models.av_fusion import AVFusionClassifier
from percli.recipes.audio_classify import audio_eval_reduce
from percli.recipes.classification import classification_sums
from percli.recipes.common import TrainedModelSection
from percli.recipes.mavil_classify import (
    EmbeddedEventClips,
    MAViLDataSection,
    MAViLItems,
    held_out_source,
    validate_av_data,
)

EMBEDDED_SPEC = AVEventsSpec(duration_s=2.0, fps=4, size=32, max_events=1)
"""The embedded clips: 2 s, one event, 32 px frames at 4 fps (the model reads 4 of them at 2 fps)."""


@dataclasses.dataclass
class AVFusionModelSection(TrainedModelSection):
    name: str = "av_fusion_tiny"
    fusion: Literal["early", "middle", "late"] = "middle"
    """Where the modalities meet: early (joint from the first block), middle (joint after depth - fusion_depth
    blocks per modality) or late (a classifier per modality, logits averaged)."""


@dataclasses.dataclass
class AVFusionDataSection(MAViLDataSection):
    multilabel: bool | None = None
    """null: AudioSet and manifests with a multi-label clip are multi-label; the embedded clips (one event each),
    VGGSound and other manifests single-label."""


@dataclasses.dataclass
class Config:
    model: AVFusionModelSection = dataclasses.field(default_factory=AVFusionModelSection)
    data: AVFusionDataSection = dataclasses.field(default_factory=AVFusionDataSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=32))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=5e-4, ref_batch_size=32, weight_decay=0.05, betas=(0.9, 0.999), warmup_fraction=0.05))


class EmbeddedSingleEvents(EmbeddedEventClips):
    """The embedded clips of `EMBEDDED_SPEC`, one event each: its class is the label, heard and seen."""

    multilabel = False

    def __init__(self, count: int, split: str):  # the parent's items over other clips
        self.clips = EmbeddedAVEvents(count, seed=0, split=split, spec=EMBEDDED_SPEC)
        self.fps = EMBEDDED_SPEC.fps


def av_clips(data: MAViLDataSection, source: str, split: str, labels: LabelSet | None = None,
             multilabel: bool | None = None, embedded: type[EmbeddedEventClips] = EmbeddedSingleEvents) -> Dataset:
    """Labelled clips of `source` (`embedded`: the `embedded` clips, the one-event ones by default, the held-out
    split a quarter as large, at least 20); a held-out set takes the training set's `labels` and `multilabel`."""
    if source == "embedded":
        return embedded(data.embedded_size if split == "train" else max(data.embedded_size // 4, 20), split)
    try:
        return LabelledAVClips(source, format=data.format, modalities=MODALITIES, labels=labels,
                               label_csv=data.label_csv, media_dir=data.media_dir, split=split, multilabel=multilabel,
                               fps=MAVIL_FPS)
    except ValueError as e:
        raise ConfigError(f"{'data.source' if split == 'train' else 'data.val_source'}: {e}") from None


def av_items(clips: Dataset, model: AVFusionClassifier) -> MAViLItems:
    """Clips -> {"fbank" [T, F], "video" [3, frames, H, W], "target", "label"} at the model's sizes."""
    return MAViLItems(clips, MAViLInputs(model.preprocess), "av", getattr(clips, "fps", MAVIL_FPS))


def av_logits(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return model(batch["fbank"], batch["video"]).float()


def label_scores(logits: torch.Tensor, batch: dict[str, Any], multilabel: bool) -> dict[str, Any]:
    """What `audio_eval_reduce` turns into metrics: per-clip scores and targets (multi-label, for mAP) or summed
    top-k counts and loss (single-label)."""
    if multilabel:
        return {"scores": torch.sigmoid(logits.float()), "targets": batch["target"].float()}
    return classification_sums(logits, batch["label"])


class AVFusionTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        self.train_clips = av_clips(cfg.data, cfg.data.source, "train")
        self.classes = list(self.train_clips.classes)
        if len(self.classes) < 2:
            raise ConfigError(f"data.source: {len(self.classes)} class(es) in {cfg.data.source}; classification "
                              "needs at least 2")
        self.multilabel = self.train_clips.multilabel if cfg.data.multilabel is None else cfg.data.multilabel
        kwargs = {"fusion": cfg.model.fusion, "num_classes": len(self.classes), **cfg.model.kwargs}
        model = create_model(cfg.model.name, **kwargs)
        if not isinstance(model, AVFusionClassifier):
            raise ConfigError(f"model.name={cfg.model.name!r} is not an av-fusion classifier; use av_fusion_tiny or "
                              "av_fusion_small")
        if cfg.model.checkpoint:
            load_initial_weights(model, cfg.model.checkpoint)
        self.model = model
        self.meta = {"name": cfg.model.name, "kwargs": kwargs, "task": "av-fusion", "fusion": model.fusion,
                     "classes": self.classes, "multilabel": self.multilabel, "preprocess": model.preprocess}
        return model

    def model_meta(self) -> dict[str, Any]:
        return self.meta

    def train_dataset(self) -> Dataset:
        return av_items(self.train_clips, self.model)

    def eval_dataset(self) -> Dataset | None:
        d = self.cfg.data
        source = held_out_source(d, self.train_clips)
        if source is None:
            return None
        return av_items(av_clips(d, source, "test", self.train_clips.labels, self.multilabel), self.model)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = av_logits(model, batch)
        if self.multilabel:
            return {"loss": F.binary_cross_entropy_with_logits(logits, batch["target"])}
        return {"loss": F.cross_entropy(logits, batch["label"])}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        return label_scores(av_logits(model, batch), batch, self.multilabel)

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return audio_eval_reduce(totals, self.multilabel)

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        return {"fusion": self.cfg.model.fusion, "multilabel": self.multilabel, "classes": self.classes}


def validate(cfg: Config) -> None:
    if "fusion" in cfg.model.kwargs:
        raise ConfigError("model.kwargs.fusion: set model.fusion instead")
    validate_av_data(cfg.data)


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(AVFusionTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
