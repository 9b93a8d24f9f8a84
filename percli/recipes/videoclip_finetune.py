"""VideoCLIP retrieval finetuning (Xu et al., EMNLP 2021): the two towers on (caption, video segment) pairs of a
retrieval set, with the release's text-to-video InfoNCE only (each caption against every segment of the global
batch; MMPT's ``T2VContraLoss`` for MSR-VTT / YouCook2). `percli.recipes.vlm_finetune` trains VLM's retrieval
model with the same data, loss and evaluation.

Data: an MSR-VTT (1k-A CSV or train/val JSON), YouCook2 (official JSON with ``data.subset``, or ``video_id,
start, end, sentence`` CSV) or VATEX manifest (``data.layout``, auto from the file) over ``data.features``, a
folder of per-second features (``<video_id>.npy`` / ``.safetensors``); each step draws one of a segment's
captions at random. ``data.val_source`` (default: none; ``data.val_features`` defaults to ``data.features``)
is scored as `percli eval retrieval` does: every caption against every segment, R@1/5/10, median and mean rank.
``embedded``: the embedded English-German videos, every caption with its span's features (held-out split for
evaluation). Unreadable feature files are skipped and counted in ``summary.json``.

Model: a `percli pretrain videoclip` checkpoint (``model.checkpoint``: its run dir, checkpoint or .safetensors;
the model and tokenizer are rebuilt from its metadata, ``model.kwargs`` is not used), or ``model.name`` +
``model.kwargs`` with an MMPT checkpoint or a local ``bert-base-uncased`` folder.

Examples:
  percli finetune videoclip model.checkpoint=runs/vc                 # the embedded clips
  percli finetune videoclip model.checkpoint=runs/vc data.source=/data/msrvtt/MSRVTT_train.9k.json \\
      data.features=/data/msrvtt/s3d data.val_source=/data/msrvtt/MSRVTT_JSFUSION_test.csv
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.checkpoint import read_meta, run_weights
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.models import create_model, create_model_for, load_initial_weights
from percli.recipes.clip import gather_features
from percli.recipes.common import TrainedModelSection
from percli.recipes.video_text_common import BERT_TOKENIZER, CaptionedSegments
from percli.recipes.video_text_eval import RETRIEVAL_VIEW, VideoTextEvaluator, VideoTextSegments, retrieval_sets


@dataclasses.dataclass
class RetrievalSetSection:
    source: str = "embedded"
    """`embedded`, or an MSR-VTT / YouCook2 / VATEX manifest of the training captions."""
    features: str | None = None
    """Folder of the training segments' per-second features."""
    val_source: str | None = None
    """Held-out manifest (for `embedded`: its test split when unset)."""
    val_features: str | None = None
    """Folder of the held-out features (default: `features`)."""
    layout: str = "auto"
    subset: str | None = None
    """YouCook2 JSON subset (training / validation) of `source`; the held-out one reads `validation`."""
    language: str = "en"
    embedded_size: int = 200
    max_video_len: int = 8
    """Seconds of a segment kept (its first ones); the model must hold them."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(name="videoclip_how2"))
    data: RetrievalSetSection = dataclasses.field(default_factory=RetrievalSetSection)
    tokenizer: str = BERT_TOKENIZER
    max_text_tokens: int = 32
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=32, grad_clip=2.0))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=5e-5, ref_batch_size=32, weight_decay=0.0, betas=(0.9, 0.98), warmup_fraction=0.1))


class OneCaption(Dataset):
    """Segments with a caption drawn per item (the engine seeds each (epoch, index): reproducible)."""

    def __init__(self, segments: VideoTextSegments):
        self.segments = segments
        self.bad_records = getattr(segments, "bad_records", None)

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.segments[index])
        captions = item.pop("captions")
        item["text"] = captions[int(torch.randint(len(captions), ()))]
        return item


FAMILY_MODELS = {"videoclip": ("videoclip_how2",), "vlm": ("vlm_retrieval_how2",)}
"""The registered retrieval models each job trains."""


class VideoTextFinetuneTask:
    """Text->video finetuning of an MMPT retrieval model of `family` (videoclip or vlm)."""

    def __init__(self, cfg: Config, family: str = "videoclip"):
        self.cfg, self.family = cfg, family

    def build_model(self) -> nn.Module:
        cfg, family = self.cfg, self.family
        meta: dict[str, Any] = {}
        path = cfg.model.checkpoint
        if path and (Path(path).expanduser().is_dir() or str(path).endswith(".safetensors")):
            weights = run_weights(path)
            meta = read_meta(weights)
        if meta.get("task") not in (None, family):
            raise ConfigError(f"model.checkpoint: {path} is a {meta['task']!r} run; `percli finetune {family}` "
                              f"trains {family} runs (pretrain {family} / finetune {family})")
        if meta:  # a pretraining or finetuning run: its architecture (model.kwargs unused), its retrieval model
            self.name, self.kwargs = RETRIEVAL_VIEW.get(meta["name"], meta["name"]), dict(meta.get("kwargs", {}))
            model = create_model_for(self.name, self.kwargs, weights)
            load_initial_weights(model, weights)
            self.meta = {"task": family, "tokenizer": meta.get("tokenizer", cfg.tokenizer),
                         "max_text_tokens": meta.get("max_text_tokens", cfg.max_text_tokens)}
        else:
            self.name, self.kwargs = cfg.model.name, dict(cfg.model.kwargs)
            model = create_model(self.name, **self.kwargs)
            if cfg.model.checkpoint:
                load_initial_weights(model, cfg.model.checkpoint)
            self.meta = {"task": family, "tokenizer": cfg.tokenizer, "max_text_tokens": cfg.max_text_tokens}
        if self.name not in FAMILY_MODELS[family]:
            raise ConfigError(f"model.name: {self.name!r} is not a {family} retrieval model; use "
                              f"{' or '.join(FAMILY_MODELS[family])}")
        if model.preprocess["max_video_len"] < cfg.data.max_video_len:
            raise ConfigError(f"data.max_video_len={cfg.data.max_video_len} exceeds the model's max_video_len "
                              f"{model.preprocess['max_video_len']}")
        self.evaluator = VideoTextEvaluator(model, self.meta, [cfg.data.language])
        return model

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": self.kwargs, **self.meta, "language": self.cfg.data.language}

    def _segments(self, source: str, features: str | None, train: bool) -> VideoTextSegments:
        from percli.core.data.video_retrieval import SegmentFeatures

        d = self.cfg.data
        if source == "embedded":
            from percli.core.data.embedded_video_text import EmbeddedVideoText

            videos = EmbeddedVideoText(d.embedded_size if train else max(d.embedded_size // 4, 20),
                                       split="train" if train else "test")
            part = CaptionedSegments(videos, d.language, d.max_video_len)
        else:
            data = dataclasses.replace(d, source=source, subset=d.subset if train else (d.subset and "validation"))
            sets = retrieval_sets(data, [d.language])
            part = SegmentFeatures(sets[d.language], Path(features).expanduser())
        return VideoTextSegments([part], [d.language], d.max_video_len)

    def train_dataset(self) -> Dataset:
        d = self.cfg.data
        return OneCaption(self._segments(d.source, d.features, train=True))

    def eval_dataset(self) -> Dataset | None:
        d = self.cfg.data
        source = d.val_source or ("embedded" if d.source == "embedded" else None)
        return self._segments(source, d.val_features or d.features, train=False) if source else None

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if "text" in items[0]:
            return {"video": torch.stack([it["video"] for it in items]),
                    "video_mask": torch.stack([it["video_mask"] for it in items]), "text": [it["text"] for it in items]}
        return self.evaluator.collate(items)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        caps, cmasks = (t.to(batch["video"].device) for t in self.evaluator.captions(batch["text"]))
        out = model(caps, cmasks, batch["video"], batch["video_mask"])
        videos, start = gather_features(out["pooled_video"].float())  # every process's segments
        text = out["pooled_text"].float()
        labels = torch.arange(start, start + len(text), device=text.device)
        return {"loss": F.cross_entropy(text @ videos.T, labels)}  # text -> video only, no temperature

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.evaluator.eval_step(model, batch)

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return self.evaluator.eval_reduce(totals)


def validate(cfg: Config) -> None:
    d = cfg.data
    if d.source != "embedded":
        for key in ("source", "features"):
            value = getattr(d, key)
            if not value or not Path(value).expanduser().exists():
                raise ConfigError(f"data.{key}: {value} does not exist; give the retrieval manifest and the folder of "
                                  "its per-second features (or data.source=embedded)")
    if d.val_source and not Path(d.val_source).expanduser().exists():
        raise ConfigError(f"data.val_source: {d.val_source} does not exist")
    if d.max_video_len < 1:
        raise ConfigError(f"data.max_video_len={d.max_video_len}: give at least 1")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(VideoTextFinetuneTask(cfg, "videoclip"), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator,
                        resume=ctx.resume)
