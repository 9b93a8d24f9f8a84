"""The optimizer and LR schedule of every method: AdamW parameter groups (no decay on norms/biases/embeddings,
layer-wise LR decay) with warmup + cosine, or ScaledAdam with Eden (`optim.name=scaled_adam`)."""

from __future__ import annotations

import math
import re

import torch
import torch.nn as nn

from percli.core.config import OptimConfig
from percli.core.scaled_adam import ScaledAdam, eden_factor

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
# Embedding-like parameters at the input: they sit at "layer 0" for layer-wise decay.
_INPUT_PARAMS = ("patch_embed", "pos_embed", "cls_token", "mask_token", "reg_token")


def no_weight_decay(name: str, param: nn.Parameter, decay_embeddings: bool = False) -> bool:
    """Norm weights, biases (all 1-D parameters) and, unless `decay_embeddings`, position embeddings and
    learned tokens are not decayed (MAE recipe; DINOv2 decays the embeddings)."""
    embedding = "pos_embed" in name or "token" in name
    return param.ndim <= 1 or name.endswith(".bias") or (embedding and not decay_embeddings)


def layer_id(name: str, num_blocks: int) -> int:
    """0 for input embeddings, i + 1 for `blocks.i`, num_blocks + 1 for everything after."""
    if name.startswith(_INPUT_PARAMS) or any(f".{p}" in name for p in _INPUT_PARAMS):
        return 0
    match = _BLOCK.search(name)
    if match and not name.startswith("decoder"):
        return int(match.group(1)) + 1
    return num_blocks + 1


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW groups keyed by (decay?, layer, patch embedding?); each carries the `lr_scale` and
    `wd_scale` (1 or 0) the schedules apply."""
    weight_decay, layer_decay, patch_embed_lr_mult = cfg.weight_decay, cfg.layer_decay, cfg.patch_embed_lr_mult
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    num_blocks = 1 + max((int(m.group(1)) for n, _ in named if (m := _BLOCK.search(n))), default=-1)
    groups: dict[tuple[bool, int, bool], dict] = {}
    for name, param in named:
        decay = not no_weight_decay(name, param, cfg.decay_embeddings)
        layer = layer_id(name, num_blocks) if layer_decay != 1.0 else 0
        patch = patch_embed_lr_mult != 1.0 and "patch_embed" in name
        key = (decay, layer, patch)
        if key not in groups:
            scale = layer_decay ** (num_blocks + 1 - layer) if layer_decay != 1.0 else 1.0
            groups[key] = {"params": [], "weight_decay": weight_decay if decay else 0.0, "wd_scale": float(decay),
                           "lr_scale": scale * (patch_embed_lr_mult if patch else 1.0)}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimConfig, peak_lr: float) -> torch.optim.Optimizer:
    """`cfg.name`'s optimizer over `param_groups` (ScaledAdam reads their lr_scale and ignores weight decay)."""
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = peak_lr * g["lr_scale"]
    if cfg.name == "scaled_adam":
        return ScaledAdam(groups, lr=peak_lr, betas=tuple(cfg.betas), eps=cfg.eps, clipping_scale=cfg.clipping_scale,
                          clipping_update_period=cfg.clipping_update_period)
    return torch.optim.AdamW(groups, lr=peak_lr, betas=tuple(cfg.betas), eps=cfg.eps)


def uses_eden(cfg: OptimConfig) -> bool:
    return cfg.schedule == "eden" or (cfg.schedule == "auto" and cfg.name == "scaled_adam")


def lr_for_step(cfg: OptimConfig, step: int, max_steps: int, peak_lr: float, warmup_steps: int) -> float:
    """The LR of the optimizer step that follows `step` completed ones: Eden or warmup + cosine (`cfg.schedule`).

    Eden counts as VoiceCraft's trainer does: its step s (from 1) runs at Eden's batch s - 1 and epoch
    s // eden_epoch_steps + 1, i.e. batch `step` and epoch (step + 1) // eden_epoch_steps + 1 here."""
    if uses_eden(cfg):
        epoch = (step + 1) // cfg.eden_epoch_steps + 1
        return peak_lr * eden_factor(step, epoch, cfg.eden_lr_steps, cfg.eden_lr_epochs, warmup_steps)
    return lr_at(step, max_steps, peak_lr, warmup_steps, cfg.min_lr)


def lr_at(step: int, max_steps: int, peak_lr: float, warmup_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to `peak_lr`, then half-cosine to `min_lr` at `max_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(max_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scaled_lr(cfg: OptimConfig, effective_batch: int) -> float:
    """The peak LR of a run: `cfg.lr` given at `cfg.ref_batch_size`, scaled to the effective batch."""
    if cfg.lr_scaling == "none":
        return cfg.lr
    ratio = effective_batch / cfg.ref_batch_size
    return cfg.lr * (math.sqrt(ratio) if cfg.lr_scaling == "sqrt" else ratio)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """Set every group's LR (times its lr_scale) and, when given, its weight decay (times its wd_scale)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None:
            group["weight_decay"] = weight_decay * group.get("wd_scale", 1.0)
