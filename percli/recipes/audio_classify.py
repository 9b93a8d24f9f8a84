"""Audio-MAE finetuning for audio classification: multi-label (AudioSet: BCE, mAP and d-prime) or
single-label (ESC-50 / Speech Commands style: cross-entropy, accuracy), chosen from the data.

Official AS-20K recipe (ft_as.sh): batch 32, blr 1e-3 (lr = blr x batch / 256), 60 epochs with 4
warmup, layer decay 0.75, weight decay 5e-4, drop path 0.1, mixup 0.5, SpecAugment 48 / 192,
time/frequency token masking 0.2 / 0.2, global pooling; AS-2M adds class-balanced sampling.

Examples:
  percli finetune audio-mae                                   # tiny preset on the embedded sounds
  percli finetune audio-mae --preset as20k model.checkpoint=audiomae_pretrained.pth \\
      data.source=/data/as20k/train.json data.val_source=/data/as20k/eval.json data.label_csv=labels.csv
  percli finetune audio-mae --preset esc50 model.checkpoint=audiomae_pretrained.pth \\
      data.source=/data/ESC-50-master data.fold=1          # folds 2-5 train, fold 1 evaluates
  percli finetune audio-mae --preset spc2 model.checkpoint=audiomae_pretrained.pth \\
      data.source=/data/speech_commands_v0.02 data.eval_split=testing
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data import sample_weights
from percli.core.metrics import multilabel_metrics
from percli.models import create_model, load_initial_weights
from percli.recipes.audio_common import (
    AudioDataSection,
    audio_dataset,
    check_layout,
    eval_source,
    model_kwargs,
)
from percli.recipes.classification import classification_metrics, topk_counts
from percli.recipes.common import TrainedModelSection
from percli.recipes.common import validate as validate_model_and_paths


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="audiomae_vit_base_patch16"))
    data: AudioDataSection = dataclasses.field(default_factory=lambda: AudioDataSection(
        freqm=48, timem=192, mixup=0.5))
    multilabel: bool | None = None
    """null = decided by the data (any clip with several labels -> multi-label)."""
    mask_t_prob: float = 0.2
    mask_f_prob: float = 0.2
    """Share of time rows / frequency columns of tokens dropped while training."""
    drop_path: float = 0.1
    label_smoothing: float = 0.0
    """Single-label only."""
    balanced_sampling: bool = False
    """Draw clips with class-balanced weights (AS-2M recipe); epoch_len clips per epoch."""
    epoch_len: int | None = None
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=32, eval_every=1000))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=1e-3, ref_batch_size=256, weight_decay=5e-4, betas=(0.9, 0.999), warmup_fraction=4 / 60,
        layer_decay=0.75))


class AudioClassifyTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.epoch_len = cfg.epoch_len
        self._train: Dataset | None = None

    def build_model(self) -> nn.Module:
        self._train = audio_dataset(self.cfg.data, self.cfg.data.source, "train", train=True)
        self.classes = list(self._train.classes)
        if len(self.classes) < 2:
            raise ValueError(f"data.source={self.cfg.data.source!r} has {len(self.classes)} class(es); "
                             "classification needs labelled clips")
        multilabel = self.cfg.multilabel
        self.multilabel = bool(getattr(self._train, "multilabel", False)) if multilabel is None else multilabel
        self.kwargs = {**model_kwargs(self.cfg.model.kwargs, self.cfg.data), "num_classes": len(self.classes)}
        self.kwargs.setdefault("drop_path_rate", self.cfg.drop_path)
        model = create_model(self.cfg.model.name, **self.kwargs)
        if hasattr(model, "forward_decoder"):
            raise ValueError(f"model.name={self.cfg.model.name!r} is a pretraining model; finetune an "
                             "audiomae_vit_* model and pass the pretraining checkpoint as model.checkpoint")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        return model

    def sample_weights(self) -> torch.Tensor | None:
        return sample_weights(self._train) if self.cfg.balanced_sampling else None

    def model_meta(self) -> dict[str, Any]:
        d = self.cfg.data
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "audio-classify",
                "classes": self.classes, "multilabel": self.multilabel, "sample_rate": d.sample_rate,
                "num_mel_bins": d.num_mel_bins, "target_length": d.target_length, "mean": d.mean, "std": d.std}

    def train_dataset(self) -> Dataset:
        return self._train

    def eval_dataset(self) -> Dataset | None:
        source = eval_source(self.cfg.data)
        return audio_dataset(self.cfg.data, source, "val", train=False) if source else None

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = model(batch["fbank"], self.cfg.mask_t_prob, self.cfg.mask_f_prob).float()
        target = batch["target"].float()
        if self.multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, target)
        else:
            smooth = self.cfg.label_smoothing
            target = target * (1 - smooth) + smooth / target.shape[-1]
            loss = torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return {"loss": loss}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        return audio_eval_step(model, batch, self.multilabel)

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return audio_eval_reduce(totals, self.multilabel)

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        return {"classes": self.classes, "multilabel": self.multilabel, "train_clips": len(self._train)}


def audio_eval_step(model: nn.Module, batch: dict[str, Any], multilabel: bool) -> dict[str, Any]:
    """Per-clip scores and targets (multi-label, for mAP) or summable top-k counts (single-label)."""
    logits = model(batch["fbank"]).float()
    if multilabel:
        return {"scores": torch.sigmoid(logits), "targets": batch["target"].float()}
    labels = batch["label"]
    loss = F.cross_entropy(logits, labels, reduction="sum")
    return {"count": float(labels.numel()), "loss_sum": float(loss), **topk_counts(logits, labels)}


def audio_eval_reduce(totals: dict[str, Any], multilabel: bool) -> dict[str, float]:
    if multilabel:
        return multilabel_metrics(totals["scores"], totals["targets"]) if "scores" in totals else {}
    return classification_metrics(totals)


def validate(cfg: Config) -> None:
    """Checks a dry run makes before anything is built: model, data paths, and the ESC-50 fold / Speech Commands
    list the data keys pick."""
    validate_model_and_paths(cfg)
    check_layout(cfg.data)


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(AudioClassifyTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
