"""Dense-prediction metrics and the depth loss: mIoU / per-class IoU / pixel accuracy (mmseg's conventions) and
depth RMSE / AbsRel / delta < 1.25 (the monocular-depth conventions DINOv2 reports), plus the scale-invariant log
loss its depth heads train with."""

from __future__ import annotations

import math
from typing import Any

import torch

IGNORE_INDEX = 255
"""Mask value of pixels that carry no class (borders, unlabelled)."""


def scale_invariant_log_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                             variance_focus: float = 0.85) -> torch.Tensor:
    """SigLoss (Eigen et al. 2014, as the DINOv2 depth heads train): sqrt(var(g) + (1 - focus) * mean(g)^2) of
    g = log pred - log target over the valid pixels; 0 when no pixel is valid."""
    if not valid.any():
        return pred.sum() * 0.0
    g = torch.log(pred[valid].clamp(min=1e-3)) - torch.log(target[valid].clamp(min=1e-3))
    d = (g ** 2).mean() - variance_focus * g.mean() ** 2
    return torch.sqrt(d.clamp(min=1e-8))


def depth_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float] | None:
    """One image's RMSE (m), AbsRel and delta < 1.25 share over its valid pixels (target > 0); None if none."""
    valid = target > 0
    if not valid.any():
        return None
    p, t = pred[valid].double().clamp(min=1e-3), target[valid].double()
    ratio = torch.maximum(p / t, t / p)
    return {"rmse": math.sqrt(float(((p - t) ** 2).mean())), "abs_rel": float(((p - t).abs() / t).mean()),
            "delta1": float((ratio < 1.25).double().mean())}


def segmentation_areas(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                       ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, ...]:
    """Per-class pixel counts (intersection, union, target area), each [num_classes], over the pixels whose
    target is not `ignore_index` (mmseg's total_intersect_and_union)."""
    keep = target != ignore_index
    p, t = pred[keep].long(), target[keep].long()
    hit = p[p == t]
    inter = torch.bincount(hit, minlength=num_classes)[:num_classes].double()
    area_pred = torch.bincount(p.clamp(0, num_classes - 1), minlength=num_classes)[:num_classes].double()
    area_target = torch.bincount(t.clamp(0, num_classes - 1), minlength=num_classes)[:num_classes].double()
    return inter, area_pred + area_target - inter, area_target


def segmentation_scores(inter: torch.Tensor, union: torch.Tensor, area_target: torch.Tensor) -> dict[str, Any]:
    """mIoU over the classes that occur (in the targets or the predictions: union > 0), per-class IoU (None for a
    class that never occurs), and pixel accuracy; fractions."""
    present = union > 0
    iou = torch.where(present, inter / union.clamp(min=1), torch.zeros_like(inter))
    miou = float(iou[present].mean()) if present.any() else 0.0
    acc = float(inter.sum() / area_target.sum()) if area_target.sum() > 0 else 0.0
    return {"miou": miou, "pixel_acc": acc, "iou": [float(v) if ok else None for v, ok in zip(iou, present)]}
