"""Image reconstruction metrics for inpainting: PSNR and SSIM per image, optionally over a region only.

SSIM is Wang et al. (2004) with the usual Gaussian window (11 x 11, sigma 1.5), K1 = 0.01, K2 = 0.03 and
population (not sample) statistics, computed per channel on the window positions that fit inside the image
('valid', no padding) and averaged over channels: scikit-image's ``structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=...)`` up to its border handling, which keeps the same
interior. With a mask, PSNR's squared error and SSIM's map are averaged over the masked pixels only (an SSIM
window position counts when its centre pixel is masked).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _region(mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    """[B, 1, H, W] float weights: the mask (1 = scored), or every pixel."""
    b, _, h, w = shape
    if mask is None:
        return torch.ones(b, 1, h, w)
    mask = mask.unsqueeze(1) if mask.dim() == 3 else mask
    if mask.shape != (b, 1, h, w):
        raise ValueError(f"mask of shape {list(mask.shape)} does not fit images {list(shape)}; give [B, H, W] or "
                         "[B, 1, H, W]")
    mask = mask.float()
    if bool((mask.flatten(1).sum(1) == 0).any()):
        raise ValueError("mask selects no pixel of an image: nothing to score")
    return mask


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)}: give two [B, C, H, W] tensors "
                         "of one shape")


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR in dB [B], over `mask`ed pixels (all channels) when given; +inf for an exact copy."""
    _check(pred, target)
    weight = _region(mask, pred.shape).to(pred.device)
    err = ((pred.float() - target.float()) ** 2 * weight).sum(dim=(1, 2, 3))
    mse = err / (weight.sum(dim=(1, 2, 3)) * pred.shape[1])
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian(window: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(window, dtype=torch.float64, device=device) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1, 1, w, w]


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, mask: torch.Tensor | None = None,
         window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM [B] (module docstring for the convention); `mask` restricts the mean of the SSIM map."""
    _check(pred, target)
    b, c, h, w = pred.shape
    if min(h, w) < window:
        raise ValueError(f"images of {h}x{w} pixels are smaller than the {window}x{window} SSIM window; pass a "
                         f"smaller odd window=")
    weight = _region(mask, pred.shape).to(pred.device)
    kernel = _gaussian(window, sigma, pred.device).expand(c, 1, window, window)
    x, y = pred.double(), target.double()  # the variances are differences of close numbers

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)  # [B, C, H, W] -> [B, C, H-w+1, W-w+1]

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    r = (window - 1) // 2
    centre = weight[:, :, r:h - r, r:w - r]  # the window positions' centre pixels
    if bool((centre.flatten(1).sum(1) == 0).any()):
        raise ValueError("mask selects no SSIM window centre of an image (only its border): nothing to score")
    score = (ssim_map.mean(dim=1, keepdim=True) * centre).sum(dim=(1, 2, 3)) / centre.sum(dim=(1, 2, 3))
    return score.float()
