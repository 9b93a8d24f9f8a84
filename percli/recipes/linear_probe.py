"""Linear-probe accuracy of an encoder's frozen features, with a learning-rate sweep (DINOv2 style).

Features are extracted once (as `percli eval knn` does: DINOv2 cls token, optionally the last n
blocks' cls tokens + average-pooled patches; Audio-MAE the mean of the encoder's normalised patch
tokens, on fbanks with the checkpoint's settings); then one linear classifier per learning rate is
trained on them with SGD (momentum 0.9, no weight decay, cosine schedule) and the one with the
best val top-1 is reported, as DINOv2's linear evaluation picks its head. Training a linear layer
on cached features is cheap enough for a CPU.

Examples:
  percli eval linear-probe model.name=dinov2_vits14 model.checkpoint=dinov2_vits14_pretrain.pth \
      data.source=/data/in1k/train data.val_source=/data/in1k/val features.n_last_blocks=4 features.avgpool=true
  percli eval linear-probe model.name=dinov2_vits14 model.kwargs='{img_size: 56, embed_dim: 64, depth: 2, num_heads: 2}'
  percli eval linear-probe model.checkpoint=runs/pretrain-audio-mae-X/checkpoints/step_0000300 data.embedded_size=800
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.core.config import TrainConfig
from percli.core.context import RunContext
from percli.core.rundir import write_json_atomic
from percli.recipes.common import (
    validate,  # noqa: F401  (run by the command before anything is built)
)
from percli.recipes.knn_eval import FrozenFeatureConfig, frozen_features
from percli.recipes.layer_features import sweep

DEFAULT_LRS = (0.001, 0.01, 0.1, 0.3, 1.0)


@dataclasses.dataclass
class Config(FrozenFeatureConfig):
    lrs: list[float] = dataclasses.field(default_factory=lambda: list(DEFAULT_LRS))
    """Learning rates swept; the best val top-1 wins."""
    epochs: int = 50
    probe_batch_size: int = 256
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64))
    """Feature extraction: only batch_size, num_workers, cpu and seed are used; seed also seeds the probes."""


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return {"top1": (ranked[:, 0] == labels).float().mean().item(),
            "top5": (ranked == labels.unsqueeze(1)).any(dim=1).float().mean().item()}


def train_linear(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, lr: float, epochs: int,
                 batch_size: int, seed: int) -> nn.Linear:
    """A linear classifier trained by SGD with a cosine learning-rate schedule (DINOv2's probe head)."""
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(train_x.shape[1], num_classes)
    nn.init.normal_(head.weight, std=0.01, generator=gen)
    nn.init.zeros_(head.bias)
    optim = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train_y) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(len(train_y), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
    return head


def sweep_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                       num_classes: int, lrs: list[float], epochs: int = 50, batch_size: int = 256,
                       seed: int = 0) -> dict[str, Any]:
    """One probe per learning rate; returns the best one's val accuracy, its lr and every lr's top-1."""
    per_lr: dict[str, float] = {}
    best: dict[str, Any] = {"top1": -1.0}
    for lr in lrs:
        head = train_linear(train_x, train_y, num_classes, lr, epochs, batch_size, seed)
        with torch.no_grad():
            acc = accuracy(head(val_x), val_y)
        per_lr[f"{lr:g}"] = acc["top1"]
        if acc["top1"] > best["top1"]:
            best = {**acc, "best_lr": lr}
    return {**best, "per_lr": per_lr}


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    run_dir, accelerator = ctx.run_dir, ctx.accelerator
    if not cfg.lrs or min(cfg.lrs) <= 0 or cfg.epochs < 1:
        raise ValueError(f"lrs={cfg.lrs}, epochs={cfg.epochs}: give positive learning rates and epochs >= 1")
    f = frozen_features(cfg.model, cfg.data, cfg.features, cfg.train, accelerator, cfg.label_csv, cfg.layers)

    def probe(train_x: torch.Tensor, val_x: torch.Tensor) -> dict[str, Any]:
        return sweep_linear_probe(train_x, f["train_y"], val_x, f["val_y"], f["num_classes"], cfg.lrs, cfg.epochs,
                                  cfg.probe_batch_size, cfg.train.seed)

    counts = {"train_count": len(f["train_y"]), "count": len(f["val_y"])}
    if f["layers"]:
        swept = sweep(f, lambda tx, vx: {k: v for k, v in probe(tx, vx).items() if k != "per_lr"}, "top1",
                      f"linear probe top-1 per block: {f['model']}", run_dir, draw=accelerator.is_main_process)
        swept["metrics"].update(counts)
    else:
        result = probe(f["train_x"], f["val_x"])
        swept = {"metrics": {"top1": result["top1"], "top5": result["top5"], "best_lr": result["best_lr"], **counts,
                             "feature_dim": f["train_x"].shape[1],
                             **{f"lr{lr}/top1": acc for lr, acc in result["per_lr"].items()}}}
    summary = {"status": "completed", "model": f["model"], "checkpoint": cfg.model.checkpoint,
               "bad_inputs": f["bad_inputs"], "data": cfg.data.source, **swept, "run_dir": str(run_dir)}
    if accelerator.is_main_process:
        write_json_atomic(run_dir / "summary.json", summary)
    return summary
