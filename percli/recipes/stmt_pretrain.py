"""STMT's self-supervised pretraining (Zhu, Huang et al., CVPR 2023): `percli pretrain stmt`.

Masked vertex modelling (bidirectional attention) and future frame prediction (frame-causal attention) on
unlabelled mesh sequences, as `percli.models.stmt.STMTPretrainer` defines them; the release has no pretraining
code, so the task details are percli's reading of the paper. The trained backbone fine-tunes with
``percli finetune stmt model.checkpoint=RUN`` (the pretext heads are dropped, the classifier starts fresh).

Data: the ``data`` section of `percli finetune stmt` (embedded figures, or a JSONL manifest whose lines may omit
``label``), with the official augmentation. The held-out losses (``mvm``, ``ffp``) are computed with seeded masks
and sampling, so every evaluation scores the same task.

Recipe: percli's (the paper's pretraining schedule is not in the release): AdamW, lr 1e-4 at batch 32, weight
decay 0.05, cosine after a 5 % warm-up, 100 epochs, half of each frame's patches masked, both tasks weighted 1.

Examples:
  percli pretrain stmt                                                    # tiny preset, embedded figures, CPU
  percli pretrain stmt --preset kit data.source=/data/kit/all.jsonl
  percli finetune stmt --preset kit model.checkpoint=runs/pretrain-stmt-X
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.models import create_model, load_initial_weights
from percli.models.stmt import STMTPretrainer
from percli.recipes.common import TrainedModelSection
from percli.recipes.stmt import MocapData, mocap_dataset
from percli.recipes.stmt import validate as validate_data


@dataclasses.dataclass
class Pretext:
    mask_ratio: float = 0.5
    """Fraction of each frame's patches hidden for masked vertex modelling."""
    mvm_weight: float = 1.0
    """Weight of masked vertex modelling (0: off)."""
    ffp_weight: float = 1.0
    """Weight of future frame prediction (0: off)."""
    eval_seed: int = 0
    """Seed of the held-out masks and sampling."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="stmt_pretrain"))
    data: MocapData = dataclasses.field(default_factory=MocapData)
    pretext: Pretext = dataclasses.field(default_factory=Pretext)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(epochs=100, batch_size=32))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=1e-4, ref_batch_size=32, weight_decay=0.05, warmup_fraction=0.05))


class STMTPretrainTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._eval_batches = 0

    def build_model(self) -> nn.Module:
        self.kwargs = {"framenum": self.cfg.data.frames, "mask_ratio": self.cfg.pretext.mask_ratio,
                       **self.cfg.model.kwargs}
        model = create_model(self.cfg.model.name, **self.kwargs)
        if not isinstance(model, STMTPretrainer):
            raise ConfigError(f"model.name={self.cfg.model.name!r} is not an STMT pretrainer; use stmt_pretrain or "
                              "stmt_tiny_pretrain")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        return model

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "stmt-pretrain",
                "frames": self.cfg.data.frames, "points": self.cfg.data.points}

    def train_dataset(self) -> Dataset:
        return mocap_dataset(self.cfg.data, train=True, labelled=False)

    def eval_dataset(self) -> Dataset | None:
        return mocap_dataset(self.cfg.data, train=False, labelled=False)

    def _losses(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        p = self.cfg.pretext
        return model(batch["points"], batch["geodist"], mvm=p.mvm_weight > 0, ffp=p.ffp_weight > 0)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        losses = self._losses(model, batch)
        weights = {"mvm": self.cfg.pretext.mvm_weight, "ffp": self.cfg.pretext.ffp_weight}
        return {"loss": sum(weights[k] * v for k, v in losses.items()), **{k: v.detach() for k, v in losses.items()}}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        with torch.random.fork_rng(devices=[]):  # the same masks and samples at every evaluation
            torch.manual_seed(self.cfg.pretext.eval_seed * 100003 + self._eval_batches)
            self._eval_batches += 1
            losses = self._losses(model, batch)
        n = float(len(batch["points"]))
        return {**{f"{k}_sum": float(v) * n for k, v in losses.items()}, "count": n}

    def eval_reduce(self, sums: dict[str, float]) -> dict[str, float]:
        self._eval_batches = 0
        n = max(sums.get("count", 0.0), 1.0)
        return {**{k[:-4]: v / n for k, v in sums.items() if k.endswith("_sum")}, "count": sums.get("count", 0.0)}


def validate(cfg: Config) -> None:
    validate_data(cfg)  # type: ignore[arg-type]  the data checks need only cfg.data
    p = cfg.pretext
    if p.mvm_weight <= 0 and p.ffp_weight <= 0:
        raise ConfigError("pretext.mvm_weight and pretext.ffp_weight are both 0: give at least one task a weight")
    if not 0.0 < p.mask_ratio < 1.0:
        raise ConfigError(f"pretext.mask_ratio={p.mask_ratio}: give a fraction in (0, 1), e.g. 0.5")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(STMTPretrainTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
