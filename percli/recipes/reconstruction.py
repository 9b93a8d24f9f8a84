"""The input / masked / reconstruction PNG grid of an image MAE run (drawn by `percli.core.chart`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from percli.core import chart
from percli.core.data import BadSample

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ROWS = ("input", "masked", "reconstruction")  # the grid's row labels, top to bottom


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), C*p*p], row-major patches, (C, p, p) inside (Hiera's label order)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)  # [B, C, h, p, w, p]
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(patches: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `patchify`."""
    b = patches.shape[0]
    x = patches.reshape(b, h // p, w // p, c, p, p)  # [B, h, w, C, p, p]
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def denormalize_patches(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Undo the norm-pix target normalisation of MAE predictions with each true patch's mean/var
    (unbiased var, eps 1e-6, as the losses use), so predictions can be shown as pixels."""
    return pred * (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)


def first_samples(dataset: Dataset, n: int, key: str) -> torch.Tensor | None:
    """The first `n` readable items' `key` tensors, stacked (unreadable files are passed over)."""
    found = []
    for i in range(len(dataset)):
        if len(found) == n:
            break
        try:
            found.append(dataset[i][key])
        except BadSample:
            continue
    return torch.stack(found) if found else None


@torch.no_grad()
def reconstruct(model: nn.Module, images: torch.Tensor, mask_ratio: float, seed: int = 0):
    """Masked and reconstructed versions of `images` (normalised space), with a seeded mask."""
    generator = torch.Generator().manual_seed(seed)
    mask = model.get_random_mask(images, mask_ratio, generator=generator).to(images.device)
    latent, mask = model.forward_encoder(images, mask_ratio, mask=mask)
    pred, visible = model.forward_decoder(latent, mask)  # [B, N, C*p*p], [B, N] True = visible
    b, c, h, w = images.shape
    p = int(round(math.sqrt(h * w / pred.shape[1])))
    target = patchify(images, p)
    pred = denormalize_patches(pred, target)
    keep = visible.unsqueeze(-1)
    masked = unpatchify(torch.where(keep, target, torch.zeros_like(target)), p, c, h, w)
    recon = unpatchify(torch.where(keep, target, pred), p, c, h, w)
    return masked, recon


def reconstruction_figure(model: nn.Module, images: torch.Tensor, mask_ratio: float, mean: Sequence[float],
                          std: Sequence[float]) -> Figure:
    """The labelled input / masked / reconstruction grid (a matplotlib Figure) of normalised `images` [N, C, H, W]."""
    was_training = model.training
    model.eval()
    masked, recon = reconstruct(model, images, mask_ratio)
    model.train(was_training)
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    rows = [(t.float() * s + m).clamp(0, 1) for t in (images, masked, recon)]
    rows[1] = torch.where(masked == 0, torch.full_like(rows[1], chart.MASKED_GREY), rows[1])  # grey where removed
    pictures = [r.permute(0, 2, 3, 1).cpu().numpy() for r in rows]  # [N, C, H, W] -> [N, H, W, C]
    return chart.image_grid(list(zip(ROWS, pictures, strict=True)),
                            f"MAE reconstructions (mask ratio {mask_ratio:g}; visible units pasted back)")


def save_reconstruction_grid(model: nn.Module, dataset: Dataset, n: int, mask_ratio: float,
                             mean: Sequence[float], std: Sequence[float], path: Path,
                             device: torch.device | str = "cpu") -> Path | None:
    """Write the first `n` readable images' grid (see `reconstruction_figure`) to `path` as a PNG."""
    images = first_samples(dataset, n, "image")
    if images is None:
        return None
    return chart.save_png(reconstruction_figure(model, images.to(device), mask_ratio, mean, std), path)
