"""The input / masked / reconstruction PNG grid of an image MAE run."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from torchvision.utils import save_image

from percli.core.data import BadSample


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


def save_png(grid: torch.Tensor, path: Path, **grid_kwargs) -> Path:
    """Write images [N, C, H, W] in [0, 1] as one PNG grid, to a temp name then renamed."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    save_image(grid.cpu(), tmp, padding=2, **grid_kwargs)
    os.replace(tmp, path)
    return path


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


def save_reconstruction_grid(model: nn.Module, dataset: Dataset, n: int, mask_ratio: float,
                             mean: Sequence[float], std: Sequence[float], path: Path,
                             device: torch.device | str = "cpu") -> Path | None:
    """Write a 3-row PNG (input, masked input, reconstruction with visible units pasted back)."""
    images = first_samples(dataset, n, "image")
    if images is None:
        return None
    was_training = model.training
    model.eval()
    images = images.to(device)
    masked, recon = reconstruct(model, images, mask_ratio)
    model.train(was_training)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    rows = [(t.float() * s + m).clamp(0, 1) for t in (images, masked, recon)]
    rows[1] = torch.where(masked == 0, torch.full_like(rows[1], 0.5), rows[1])  # grey where masked
    return save_png(torch.cat(rows), path, nrow=images.shape[0])
