"""Supervised finetuning of Hiera for classification (from an MAE checkpoint or from scratch).

Official finetune recipe (dbolya/hiera v0.2.0 `in1k_finetune`): AdamW(0.9, 0.999), batch 1024,
wd 0.05, label smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 /
cutmix 1.0, 5 warmup epochs; per size lr / epochs / layer decay: T 2e-3/300/0.65, S 2e-3/200/0.65,
B 2e-3/100/0.7, B+ 1e-3/100/0.7, L 1e-3/50/0.85, H 1e-3/50/0.85; drop path 0.3 for H, else 0.1.

Examples:
  percli finetune hiera                                       # tiny preset on the embedded set
  percli finetune hiera --preset in1k model.checkpoint=runs/pretrain-hiera-mae-X/checkpoints/step_0100000 \\
      data.source=/data/imagenet/train data.val_source=/data/imagenet/val
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
from percli.core.data import MixupCutmix
from percli.models import create_model, load_initial_weights
from percli.recipes.classification import (
    classification_dataset,
    classification_metrics,
    classification_sums,
)
from percli.recipes.common import (
    DataSection,
    TrainedModelSection,
    is_video,
    normalisation,
    validate,  # noqa: F401  the command runs it before anything is built
)


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=TrainedModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    drop_path: float | None = None
    """null = official (0.3 for huge, else 0.1)."""
    label_smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    """Probability of applying mixup or cutmix to a batch (0 disables both)."""
    rand_augment: str = "rand-m9-mstd0.5-inc1"
    """timm-style RandAugment spec; empty string disables it."""
    reprob: float = 0.25
    crop_pct: float = 0.875
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64, eval_every=1000))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=2e-3, ref_batch_size=1024, weight_decay=0.05, betas=(0.9, 0.999), warmup_fraction=0.05,
        layer_decay=0.7))


class ClassifyTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.video = False
        self._train: Dataset | None = None

    def build_model(self) -> nn.Module:
        probe = create_model(self.cfg.model.name, **{**self.cfg.model.kwargs, "num_classes": 1})
        self.video = is_video(probe)
        self.input_size = tuple(probe.config["input_size"])
        self._train = self._dataset(self.cfg.data.source, "train", train=True)
        classes = list(getattr(self._train, "classes", []))
        if len(classes) < 2:
            raise ValueError(f"data.source={self.cfg.data.source!r} has {len(classes)} class(es); classification "
                             "needs labelled data (class sub-folders or a manifest with labels)")
        self.classes = classes
        kwargs = dict(self.cfg.model.kwargs)
        kwargs["num_classes"] = len(classes)
        drop = self.cfg.drop_path if self.cfg.drop_path is not None else (
            0.3 if "_huge_" in self.cfg.model.name else 0.1)
        kwargs.setdefault("drop_path_rate", drop)
        self.model_kwargs = kwargs
        model = create_model(self.cfg.model.name, **kwargs)
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        self.mixup = MixupCutmix(len(classes), mixup_alpha=self.cfg.mixup, cutmix_alpha=self.cfg.cutmix,
                                 prob=self.cfg.mixup_prob, label_smoothing=self.cfg.label_smoothing)
        return model

    def model_meta(self) -> dict[str, Any]:
        mean, std = normalisation(self.cfg.data, self.video)
        return {"name": self.cfg.model.name, "kwargs": self.model_kwargs, "task": "classify",
                "input_size": list(self.input_size), "mean": list(mean), "std": list(std),
                "crop_pct": self.cfg.crop_pct, "classes": self.classes}

    def _dataset(self, source: str, split: str, train: bool, classes: list[str] | None = None) -> Dataset:
        return classification_dataset(source, split, train, self.cfg.data, self.input_size, self.video,
                                      rand_augment=self.cfg.rand_augment, reprob=self.cfg.reprob,
                                      crop_pct=self.cfg.crop_pct, classes=classes)

    def train_dataset(self) -> Dataset:
        return self._train

    def eval_dataset(self) -> Dataset | None:
        d = self.cfg.data
        source = d.val_source or ("embedded" if d.source == "embedded" else None)
        return self._dataset(source, "val", train=False, classes=self.classes) if source else None

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = batch["video"] if self.video else batch["image"]
        x, target = self.mixup(x, batch["label"])  # soft targets with label smoothing folded in
        logits = model(x)
        loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return {"loss": loss}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        x = batch["video"] if self.video else batch["image"]
        return classification_sums(model(x), batch["label"])

    def eval_reduce(self, sums: dict[str, float]) -> dict[str, float]:
        return classification_metrics(sums)

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        return {"classes": self.classes}


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(ClassifyTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
