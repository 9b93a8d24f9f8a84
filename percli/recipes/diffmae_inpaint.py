"""DiffMAE inpainting pieces shared by `percli pretrain diffmae` (held-out figures at the end of a run),
`percli inpaint` and `percli eval inpaint`: patch masks, the mean-colour fill baseline, PSNR / SSIM on the
masked pixels, and the input / masked / sampled picture grid; images [B, C, H, W] and clips [B, C, T, H, W]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from percli.core import chart
from percli.core.image_metrics import psnr, ssim

GRID_ROWS = ("input", "masked", "sampled", "mean fill")
SSIM_WINDOW = 11


def random_keep(model: nn.Module, batch: int, mask_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """[B, N] bool, True = visible: the model's own seeded random split (the same count masked per image)."""
    ids_keep, _ = model.random_split(batch, mask_ratio, torch.device("cpu"), generator)
    return torch.zeros(batch, model.encoder.num_patches, dtype=torch.bool).scatter_(1, ids_keep, True)


def keep_from_pixel_mask(mask: torch.Tensor, model: nn.Module, threshold: float = 0.5) -> torch.Tensor:
    """A pixel mask [B, H, W] (1 = to inpaint) as patches to sample: [B, N] True = visible. A patch is
    inpainted when more than `threshold` of its pixels are masked; a video model applies the mask to every
    frame (the same patches in every tubelet slice)."""
    b, h, w = mask.shape
    patch = model.patch_size
    share = mask.float().reshape(b, h // patch, patch, w // patch, patch).mean(dim=(2, 4))  # [B, h, w]
    keep = (share <= threshold).flatten(1)  # [B, h*w]
    slices = model.encoder.num_patches // keep.shape[1]  # tubelet slices of a video model, 1 for images
    return keep.repeat(1, slices)  # tokens are (time, row, column) raster: each slice repeats the frame mask


def pixel_mask(model: nn.Module, keep: torch.Tensor) -> torch.Tensor:
    """[B, N] visible patches -> [B, 1, (T,) H, W] bool, True where a patch was inpainted."""
    hidden = (~keep).float()[..., None].expand(-1, -1, model.encoder.patch_dim)
    return model.encoder.unpatchify(hidden)[:, :1].bool()


def mean_fill(images: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The baseline: every masked pixel filled with its image's (clip's) mean visible colour, per channel."""
    visible = (~hidden).float()
    dims = tuple(range(2, images.dim()))
    mean = (images * visible).sum(dim=dims, keepdim=True) / visible.sum(dim=dims, keepdim=True)
    return torch.where(hidden, mean.expand_as(images), images)


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised images [B, C, ...] -> [0, 1] pixels (clamped)."""
    shape = (1, -1) + (1,) * (images.dim() - 2)
    m = torch.tensor(mean, device=images.device).view(shape)
    s = torch.tensor(std, device=images.device).view(shape)
    return (images.float() * s + m).clamp(0, 1)


def masked_scores(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR (dB, capped at 100 for exact copies) and SSIM over the inpainted pixels; [0, 1] pixels.

    Clips [B, C, T, H, W]: PSNR over all inpainted pixels of the clip (one pooled MSE); SSIM per frame, averaged
    over the frames that have an inpainted SSIM window centre."""
    if pred.dim() == 4:
        return {"psnr": psnr(pred, target, mask=hidden).clamp(max=100.0), "ssim": ssim(pred, target, mask=hidden)}
    b, c, t, h, w = pred.shape
    frames = [x.transpose(1, 2).reshape(b * t, x.shape[1], h, w) for x in (pred, target, hidden)]  # [B*T, C, H, W]
    tall = [x.reshape(b, x.shape[1], t * h, w) for x in (pred, target, hidden)]  # frames stacked vertically
    clip_psnr = psnr(tall[0], tall[1], mask=tall[2])  # one pooled MSE over the clip's inpainted pixels
    r = (SSIM_WINDOW - 1) // 2
    scored = frames[2][:, :, r:h - r, r:w - r].flatten(1).any(dim=1)  # frames with an SSIM window centre
    per_frame = torch.zeros(b * t, device=pred.device)
    if bool(scored.any()):
        per_frame[scored] = ssim(frames[0][scored], frames[1][scored], mask=frames[2][scored], window=SSIM_WINDOW)
    counts = scored.view(b, t).sum(dim=1).clamp(min=1)
    return {"psnr": clip_psnr.clamp(max=100.0), "ssim": (per_frame * scored).view(b, t).sum(dim=1) / counts}


@torch.no_grad()
def inpaint_and_score(model: nn.Module, images: torch.Tensor, keep: torch.Tensor, mean: Sequence[float],
                      std: Sequence[float], *, steps: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Sample the masked patches of normalised `images` and score them against the truth and the mean fill.

    Returns pixel tensors (``input``, ``masked``, ``sampled``, ``mean_fill``, [B, C, (T,) H, W] in [0, 1]) and
    per-image ``psnr`` / ``ssim`` / ``fill_psnr`` / ``fill_ssim``.
    """
    sampled = model.inpaint(images, keep, steps=steps, generator=generator)
    hidden = pixel_mask(model, keep.to(images.device))
    truth, out = to_pixels(images, mean, std), to_pixels(sampled, mean, std)
    fill = to_pixels(mean_fill(images, hidden), mean, std)
    scores = masked_scores(out, truth, hidden)
    baseline = masked_scores(fill, truth, hidden)
    masked = torch.where(hidden, torch.full_like(truth, chart.MASKED_GREY), truth)
    return {"input": truth, "masked": masked, "sampled": out, "mean_fill": fill, **scores,
            "fill_psnr": baseline["psnr"], "fill_ssim": baseline["ssim"]}


def save_grid(result: dict[str, torch.Tensor], path: Path, title: str, count: int = 8) -> Path:
    """The input / masked / sampled / mean-fill rows of the first `count` images as a PNG; for clips, one
    column per frame of the first clip (at most 16)."""
    def columns(x: torch.Tensor) -> torch.Tensor:  # -> [N, H, W, C]
        return x[0].permute(1, 2, 3, 0)[:16] if x.dim() == 5 else x[:count].permute(0, 2, 3, 1)

    rows = [(label, columns(result[key]).cpu().numpy())
            for label, key in zip(GRID_ROWS, ("input", "masked", "sampled", "mean_fill"), strict=True)]
    return chart.save_png(chart.image_grid(rows, title), path)
