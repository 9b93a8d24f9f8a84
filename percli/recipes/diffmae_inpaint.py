"""DiffMAE inpainting pieces shared by `percli pretrain diffmae` (held-out figures at the end of a run),
`percli inpaint` and `percli eval inpaint`: patch masks, the mean-colour fill baseline, PSNR / SSIM on the
masked pixels, and the input / masked / sampled picture grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from percli.core import chart
from percli.core.image_metrics import psnr, ssim
from percli.models.common import unpatchify

GRID_ROWS = ("input", "masked", "sampled", "mean fill")


def random_keep(model: nn.Module, batch: int, mask_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """[B, N] bool, True = visible: the model's own seeded random split (the same count masked per image)."""
    ids_keep, _ = model.random_split(batch, mask_ratio, torch.device("cpu"), generator)
    return torch.zeros(batch, model.encoder.num_patches, dtype=torch.bool).scatter_(1, ids_keep, True)


def keep_from_pixel_mask(mask: torch.Tensor, patch: int, threshold: float = 0.5) -> torch.Tensor:
    """A pixel mask [B, H, W] (1 = to inpaint) as patches to sample: [B, N] True = visible. A patch is
    inpainted when more than `threshold` of its pixels are masked."""
    b, h, w = mask.shape
    share = mask.float().reshape(b, h // patch, patch, w // patch, patch).mean(dim=(2, 4))  # [B, h, w]
    return (share <= threshold).flatten(1)


def pixel_mask(keep: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """[B, N] visible patches -> [B, 1, H, W] bool, True where a patch was inpainted."""
    hidden = (~keep).float()[..., None].expand(-1, -1, patch * patch)
    return unpatchify(hidden, patch, 1, height, width).bool()


def mean_fill(images: torch.Tensor, keep: torch.Tensor, patch: int) -> torch.Tensor:
    """The baseline: every masked patch filled with its image's mean visible colour (per channel)."""
    b, c, h, w = images.shape
    hidden = pixel_mask(keep, patch, h, w)  # [B, 1, H, W]
    visible = (~hidden).float()
    mean = (images * visible).sum(dim=(2, 3), keepdim=True) / visible.sum(dim=(2, 3), keepdim=True)
    return torch.where(hidden, mean.expand_as(images), images)


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised images -> [0, 1] pixels (clamped)."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() * s + m).clamp(0, 1)


def masked_scores(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR (dB, capped at 100 for exact copies) and SSIM over the inpainted pixels; [0, 1] pixels."""
    return {"psnr": psnr(pred, target, mask=hidden).clamp(max=100.0), "ssim": ssim(pred, target, mask=hidden)}


@torch.no_grad()
def inpaint_and_score(model: nn.Module, images: torch.Tensor, keep: torch.Tensor, mean: Sequence[float],
                      std: Sequence[float], *, steps: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Sample the masked patches of normalised `images` and score them against the truth and the mean fill.

    Returns pixel tensors (``input``, ``masked``, ``sampled``, ``mean_fill``, [B, C, H, W] in [0, 1]) and
    per-image ``psnr`` / ``ssim`` / ``fill_psnr`` / ``fill_ssim``.
    """
    p = model.patch_size
    sampled = model.inpaint(images, keep, steps=steps, generator=generator)
    b, c, h, w = images.shape
    hidden = pixel_mask(keep, p, h, w).to(images.device)
    truth, out = to_pixels(images, mean, std), to_pixels(sampled, mean, std)
    fill = to_pixels(mean_fill(images, keep.to(images.device), p), mean, std)
    scores = masked_scores(out, truth, hidden)
    baseline = masked_scores(fill, truth, hidden)
    masked = torch.where(hidden, torch.full_like(truth, chart.MASKED_GREY), truth)
    return {"input": truth, "masked": masked, "sampled": out, "mean_fill": fill, **scores,
            "fill_psnr": baseline["psnr"], "fill_ssim": baseline["ssim"]}


def save_grid(result: dict[str, torch.Tensor], path: Path, title: str, count: int = 8) -> Path:
    """The input / masked / sampled / mean-fill rows of the first `count` images as a PNG."""
    rows = [(label, result[key][:count].permute(0, 2, 3, 1).cpu().numpy())  # [N, C, H, W] -> [N, H, W, C]
            for label, key in zip(GRID_ROWS, ("input", "masked", "sampled", "mean_fill"), strict=True)]
    return chart.save_png(chart.image_grid(rows, title), path)

