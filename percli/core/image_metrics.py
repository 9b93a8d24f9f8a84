"""Per-image PSNR and SSIM for inpainting evaluation, optionally scored on a region (the inpainted pixels) only.

Conventions, so that numbers compare with published tables:

- Images are ``[B, C, H, W]`` float (or integer) tensors on a scale of width ``data_range`` (1.0 for [0, 1],
  255.0 for 8-bit values). Both metrics return one value per image, ``[B]`` float32.
- A mask is ``[B, H, W]`` or ``[B, 1, H, W]``, bool or 0/1; nonzero marks a pixel to score, in every channel.
- PSNR = 10 log10(data_range^2 / MSE), the MSE over all channels of the scored pixels. An exact copy has MSE 0
  and PSNR ``+inf``: callers average the finite values or cap them (``.clamp(max=100.0)``).
- SSIM is Wang et al. (2004): an 11 x 11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, population (not
  sample) variances, computed per channel and averaged over channels. The map is kept only where the window fits
  inside the image ('valid' convolution, no padding), which is exactly the interior that scikit-image's
  ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` averages after
  cropping its (window - 1) / 2 border. With a mask, the map is averaged over the positions whose centre pixel is
  scored; a window centred in the mask still sees up to (window - 1) / 2 pixels of context around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_images(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(f"pred has shape {list(pred.shape)} and target {list(target.shape)}; both must be "
                         "[B, C, H, W] with the same shape")


def _scored_pixels(mask: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
    """The pixels to score as a [B, 1, H, W] bool tensor on the images' device (all pixels when mask is None)."""
    b, _, h, w = images.shape
    if mask is None:
        return torch.ones(b, 1, h, w, dtype=torch.bool, device=images.device)
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)  # [B, H, W] -> [B, 1, H, W]
    if tuple(mask.shape) != (b, 1, h, w):
        raise ValueError(f"mask has shape {list(mask.shape)} but the images are {list(images.shape)}; give "
                         f"[{b}, {h}, {w}] or [{b}, 1, {h}, {w}]")
    mask = mask.to(images.device) != 0
    _require_every_image_scored(mask, "pixel")
    return mask


def _require_every_image_scored(region: torch.Tensor, what: str) -> None:
    empty = (~region.flatten(1).any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"the mask selects no {what} of image(s) {empty}: there is nothing to score")


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image, in dB.

    Args:
        pred: [B, C, H, W] reconstructions.
        target: [B, C, H, W] references on the same scale.
        data_range: width of the value scale (1.0 for [0, 1] images, 255.0 for 8-bit values).
        mask: optional [B, H, W] or [B, 1, H, W]; nonzero pixels (all channels) are the only ones scored.

    Returns:
        [B] float32 PSNR; ``+inf`` where the scored pixels are identical.

    Raises:
        ValueError: on mismatched or non-4-D shapes, a mask of the wrong shape, or a mask empty for some image.
    """
    _check_images(pred, target)
    scored = _scored_pixels(mask, pred)
    squared_error = (pred.double() - target.double()).square() * scored  # [B, C, H, W], zero outside the mask
    mse = squared_error.sum(dim=(1, 2, 3)) / (scored.sum(dim=(1, 2, 3)) * pred.shape[1])
    return (10 * torch.log10(data_range**2 / mse)).float()  # mse == 0 -> +inf


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    """A normalised size x size Gaussian as a depthwise conv weight [C, 1, size, size]."""
    offsets = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    profile = torch.exp(-offsets.square() / (2 * sigma**2))
    profile = profile / profile.sum()
    return torch.outer(profile, profile).expand(channels, 1, size, size)


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, mask: torch.Tensor | None = None,
         window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity of each image (conventions in the module docstring).

    Args:
        pred: [B, C, H, W] reconstructions.
        target: [B, C, H, W] references on the same scale.
        data_range: width of the value scale (1.0 for [0, 1] images, 255.0 for 8-bit values).
        mask: optional [B, H, W] or [B, 1, H, W]; the SSIM map is averaged over the positions whose centre pixel
            is nonzero here.
        window: odd side of the Gaussian window; H and W must be at least this.
        sigma: standard deviation of the Gaussian window, in pixels.
        k1: luminance stabiliser, C1 = (k1 * data_range)^2.
        k2: contrast stabiliser, C2 = (k2 * data_range)^2.

    Returns:
        [B] float32 SSIM, 1.0 for identical images.

    Raises:
        ValueError: on mismatched shapes, an even window, images smaller than the window, or a mask that selects
            no window centre of some image.
    """
    _check_images(pred, target)
    b, c, h, w = pred.shape
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window={window}: the SSIM window must be a positive odd number of pixels")
    if h < window or w < window:
        raise ValueError(f"images of {h}x{w} pixels are smaller than the {window}x{window} SSIM window; pass an odd "
                         f"window= of at most {min(h, w) - (min(h, w) + 1) % 2}")
    scored = _scored_pixels(mask, pred)
    radius = (window - 1) // 2
    centres = scored[:, :, radius:h - radius, radius:w - radius]  # [B, 1, H-window+1, W-window+1]
    _require_every_image_scored(centres, f"pixel at least {radius} from the border (an SSIM window centre)")

    # float64: the variances below are differences of nearly equal numbers
    x, y = pred.double(), target.double()
    kernel = _gaussian_window(window, sigma, c, x)

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)  # [B, C, H, W] -> [B, C, H-window+1, W-window+1], no padding

    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mean_x.square()
    var_y = local_mean(y * y) - mean_y.square()
    cov_xy = local_mean(x * y) - mean_x * mean_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
                / ((mean_x.square() + mean_y.square() + c1) * (var_x + var_y + c2)))
    per_position = ssim_map.mean(dim=1, keepdim=True)  # channel average, [B, 1, H', W']
    score = (per_position * centres).sum(dim=(1, 2, 3)) / centres.sum(dim=(1, 2, 3))
    return score.float()
