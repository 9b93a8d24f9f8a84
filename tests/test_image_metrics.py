"""PSNR / SSIM of percli.core.image_metrics: hand cases, masks, a direct one-window SSIM, scikit-image, errors."""

import math

import pytest
import torch

from percli.core.image_metrics import psnr, ssim


def images(shape=(2, 3, 32, 40), seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def noisy_copy(x, scale=0.1, seed=1):
    return x + scale * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


@pytest.mark.parametrize(("error", "data_range", "expected_db"), [
    (0.1, 1.0, 20.0),  # 10 log10(1 / 0.01)
    (-0.01, 1.0, 40.0),
    (0.1, 2.0, 20.0 + 20 * math.log10(2)),
    (25.5, 255.0, 20.0),
])
def test_psnr_of_a_constant_error(error, data_range, expected_db):
    x = images() * data_range
    assert psnr(x + error, x, data_range=data_range).tolist() == pytest.approx([expected_db] * 2, abs=1e-4)


def test_psnr_is_inf_only_for_the_identical_image():
    x = images()
    y = x.clone()
    y[1] += 0.1
    scores = psnr(y, x)
    assert math.isinf(scores[0]) and scores[0] > 0
    assert scores[1].item() == pytest.approx(20.0, abs=1e-4)


@pytest.mark.parametrize("mask_layout", ["bool [B, H, W]", "0/1 float [B, 1, H, W]"])
def test_masked_psnr_counts_only_the_masked_pixels(mask_layout):
    x = images()
    scored = torch.zeros(2, 32, 40, dtype=torch.bool)
    scored[0, 4:12, 10:30] = True
    scored[1, 20:, :5] = True
    mask = scored if mask_layout.startswith("bool") else scored.unsqueeze(1).float()
    y = x + 0.1 * scored.unsqueeze(1)  # error 0.1 on every channel of the masked pixels
    y = y + torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype) * ~scored.unsqueeze(1)
    assert psnr(y, x, mask=mask).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    assert (psnr(y, x) < 15).all()  # the errors outside do count without the mask


def test_ssim_of_identical_images_is_one():
    x = images()
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-9)


@pytest.mark.parametrize(("level", "shift", "data_range"), [(0.4, 0.1, 1.0), (0.2, 0.5, 1.0), (100.0, 30.0, 255.0)])
def test_ssim_of_a_shifted_constant_image_is_the_luminance_term(level, shift, data_range):
    # no variance anywhere: the contrast-structure term is c2 / c2, the luminance term is the same in every window
    flat = torch.full((1, 2, 13, 15), level)
    c1 = (0.01 * data_range) ** 2
    expected = (2 * level * (level + shift) + c1) / (level**2 + (level + shift) ** 2 + c1)
    assert ssim(flat + shift, flat, data_range=data_range).item() == pytest.approx(expected, rel=1e-5)


def test_ssim_drops_for_a_shifted_textured_image():
    x = images()
    assert (ssim(x + 0.2, x) < 0.95).all()
    assert (ssim(noisy_copy(x, 0.2), x) < ssim(noisy_copy(x, 0.05), x)).all()


def ssim_of_one_window(x, y, window, sigma, data_range):
    """SSIM of two [C, window, window] images straight from the paper's sums, averaged over channels."""
    offsets = [i - (window - 1) / 2 for i in range(window)]
    profile = [math.exp(-o * o / (2 * sigma**2)) for o in offsets]
    weights = torch.tensor([[p * q for q in profile] for p in profile], dtype=torch.float64)
    weights = weights / weights.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for xc, yc in zip(x, y):
        mx, my = (weights * xc).sum(), (weights * yc).sum()
        vx, vy = (weights * (xc - mx) ** 2).sum(), (weights * (yc - my) ** 2).sum()
        cov = (weights * (xc - mx) * (yc - my)).sum()
        values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return sum(values).item() / len(values)


@pytest.mark.parametrize(("window", "sigma", "data_range"), [(11, 1.5, 1.0), (7, 1.0, 1.0), (11, 1.5, 255.0)])
def test_ssim_on_a_window_sized_image_matches_the_direct_formula(window, sigma, data_range):
    x = images((1, 3, window, window)) * data_range
    y = (noisy_copy(x, 0.15 * data_range)).clamp(0, data_range)
    expected = ssim_of_one_window(x[0], y[0], window, sigma, data_range)
    assert ssim(y, x, data_range=data_range, window=window, sigma=sigma).item() == pytest.approx(expected, abs=1e-6)


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    x = images((3, 3, 33, 47))
    y = noisy_copy(x, 0.1).clamp(0, 1)
    expected = [metrics.structural_similarity(a.numpy(), b.numpy(), channel_axis=0, data_range=1.0,
                                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                for a, b in zip(y, x)]
    assert ssim(y.float(), x.float()).tolist() == pytest.approx(expected, abs=1e-4)


def test_masked_ssim_averages_the_map_over_centres_in_the_mask():
    x = images((1, 3, 40, 40))
    y = noisy_copy(x, 0.1)
    mask = torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[:, :12] = True  # centres in rows 5..11 of the valid map, whose windows see rows 0..16 only
    changed = y.clone()
    changed[..., 17:, :] = torch.rand(1, 3, 23, 40, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    masked = ssim(y, x, mask=mask).item()
    assert ssim(changed, x, mask=mask).item() == pytest.approx(masked, abs=1e-9)
    assert masked == pytest.approx(ssim(y[..., :17, :], x[..., :17, :]).item(), abs=1e-9)
    assert ssim(changed, x).item() < ssim(y, x).item() - 0.05  # without the mask the change counts


def rand(*shape):
    return torch.rand(shape)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: psnr(rand(1, 3, 8, 8), rand(1, 3, 8, 9)), "same shape"),
    (lambda: ssim(rand(3, 16, 16), rand(3, 16, 16)), r"\[B, C, H, W\]"),
    (lambda: psnr(rand(2, 3, 8, 8), rand(2, 3, 8, 8), mask=torch.ones(2, 8, 9)), r"give \[2, 8, 8\]"),
    (lambda: psnr(rand(2, 3, 8, 8), rand(2, 3, 8, 8), mask=torch.arange(2).view(2, 1, 1).expand(2, 8, 8)),
     r"no pixel of image\(s\) \[0\]"),
    (lambda: ssim(rand(2, 1, 16, 16), rand(2, 1, 16, 16), mask=torch.zeros(2, 1, 16, 16)), "no pixel"),
    (lambda: ssim(rand(1, 3, 16, 16), rand(1, 3, 16, 16), mask=torch.ones(1, 16, 16).triu(12)), "window centre"),
    (lambda: ssim(rand(1, 3, 10, 24), rand(1, 3, 10, 24)), r"10x24 pixels .* window= of at most 9"),
    (lambda: ssim(rand(1, 3, 16, 16), rand(1, 3, 16, 16), window=8), "odd"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
