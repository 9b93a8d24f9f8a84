"""MAViL audio-video classification (Huang et al., NeurIPS 2023): the fused encoder plus ``head_av``.

The fine-tuned layout of AV-SUPERB's MAViL (``depth_av=3``, ``ft=True``: ``fc_norm_av`` and ``head_av`` on
the pooled audio and video tokens), trained with binary cross-entropy for multi-label events (mAP, AUC,
d-prime; AudioSet-style) from scratch or from a MAViL checkpoint (``model.checkpoint``: percli or
AV-SUPERB's ``mavil_base`` .pth, whose missing head is reported and initialised). Inputs are prepared as
AV-SUPERB's MAViL expert does: 16 kHz Kaldi fbank normalised per clip, ``n_frm`` frames at 2 fps with
ImageNet statistics.

Data: the embedded audio-video clips (each clip's events are its labels, the held-out split for mAP). Not yet:
a labelled manifest reader (VGGSound / AudioSet layouts), audio-only or video-only heads, stage-1/2 pretraining.

Examples:
  percli finetune mavil                                     # tiny MAViL from scratch on the embedded clips
  percli finetune mavil model.name=mavil_vit_base_patch16 model.checkpoint=mavil_base.pth model.kwargs={}
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from percli.avsuperb.av_upstreams import MAViLInputs
from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.av_events import LABELS, AVEventsSpec, EmbeddedAVEvents
from percli.core.metrics import multilabel_metrics
from percli.models import create_model, list_models, load_initial_weights
from percli.recipes.common import TrainedModelSection


@dataclasses.dataclass
class MAViLDataSection:
    source: str = "embedded"
    """`embedded` (generated clips; their events are the labels); the only source so far."""
    embedded_size: int = 400
    """Clips in the embedded training split (the held-out split has a quarter, at least 20)."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="mavil_vit_base_patch16"))
    data: MAViLDataSection = dataclasses.field(default_factory=MAViLDataSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=32))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=1e-4, ref_batch_size=256, weight_decay=0.05, betas=(0.9, 0.999), warmup_fraction=0.1))


class _Clips(Dataset):
    """Embedded clips -> {"fbank" [T, F], "video" [3, n_frm, H, W], "target" [classes]} as the MAViL expert."""

    def __init__(self, count: int, split: str, inputs: MAViLInputs):
        self.clips = EmbeddedAVEvents(count, seed=0, split=split, spec=AVEventsSpec(sample_rate=16000))
        self.inputs, self.classes = inputs, list(LABELS)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.clips[index]
        target = torch.zeros(len(self.classes))
        for label, _, _ in item["events"]:
            target[self.classes.index(label)] = 1.0
        fps = self.clips.spec.fps
        return {"fbank": self.inputs.preprocess_audio(item["waveform"][0], 16000),
                "video": self.inputs.preprocess_video(item["frames"].permute(0, 2, 3, 1), fps),
                "target": target}


class MAViLClassifyTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        kwargs = {"depth_av": 3, "ft": True, "num_classes": len(LABELS), **self.cfg.model.kwargs}
        model = create_model(self.cfg.model.name, **kwargs)
        if not (model.ft and model.av_fusion):
            raise ConfigError("model.kwargs: MAViL classification needs the fused, fine-tuned layout (av_fusion and "
                              "ft true)")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        self.kwargs = kwargs
        self.inputs = MAViLInputs(model.preprocess)
        self.meta = {"name": self.cfg.model.name, "kwargs": kwargs, "task": "mavil-classify",
                     "classes": list(LABELS), **model.checkpoint_meta()}
        return model

    def model_meta(self) -> dict[str, Any]:
        return self.meta

    def _dataset(self, split: str) -> Dataset:
        count = self.cfg.data.embedded_size if split == "train" else max(self.cfg.data.embedded_size // 4, 20)
        return _Clips(count, split, self.inputs)

    def train_dataset(self) -> Dataset:
        self.train_set = self._dataset("train")
        return self.train_set

    def eval_dataset(self) -> Dataset:
        return self._dataset("test")

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = model(batch["fbank"][:, None], batch["video"])
        return {"loss": F.binary_cross_entropy_with_logits(logits.float(), batch["target"])}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        logits = model(batch["fbank"][:, None], batch["video"]).float()
        return {"scores": torch.sigmoid(logits), "targets": batch["target"]}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return multilabel_metrics(totals["scores"], totals["targets"]) if "scores" in totals else {}


def validate(cfg: Config) -> None:
    if cfg.model.name not in list_models() or not cfg.model.name.startswith("mavil_"):
        raise ConfigError(f"model.name: {cfg.model.name!r} is not a MAViL model; use one of "
                          f"{[n for n in list_models() if n.startswith('mavil_')]}")
    if cfg.data.source != "embedded":
        raise ConfigError(f"data.source: {cfg.data.source!r}; only the embedded clips are supported yet")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(MAViLClassifyTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
