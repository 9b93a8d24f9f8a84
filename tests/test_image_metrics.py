"""PSNR / SSIM of percli.core.image_metrics on hand cases and with masks."""

import math

import pytest
import torch

from percli.core.image_metrics import psnr, ssim


def images(seed=0, shape=(2, 3, 24, 24)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_psnr_of_a_constant_error_and_of_a_copy():
    x = images().clamp(0.2, 0.8)
    assert psnr(x + 0.1, x).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)  # 10 log10(1 / 0.01)
    assert psnr(x + 0.1, x, data_range=2.0).tolist() == pytest.approx([20 + 20 * math.log10(2)] * 2, abs=1e-4)
    assert torch.isinf(psnr(x, x)).all()


def test_masked_psnr_counts_only_the_masked_pixels():
    x = images()
    mask = torch.zeros(2, 24, 24, dtype=torch.bool)
    mask[:, :12] = True
    y = x.clone()
    y[:, :, :12] += 0.1
    y[:, :, 12:] += torch.rand(2, 3, 12, 24)  # errors outside the mask
    assert psnr(y, x, mask=mask).tolist() == pytest.approx([20.0, 20.0], abs=1e-3)


def test_ssim_is_one_for_a_copy_and_matches_the_formula_for_a_shift():
    x = images()
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    # a constant shift d leaves the (co)variances: SSIM = (2 mx my + c1) / (mx^2 + my^2 + c1) averaged over windows;
    # on a constant image that is (2 a (a + d) + c1) / (a^2 + (a + d)^2 + c1) exactly
    a, d, c1 = 0.4, 0.1, 0.01**2
    flat = torch.full((1, 1, 16, 16), a)
    assert ssim(flat + d, flat).item() == pytest.approx((2 * a * (a + d) + c1) / (a**2 + (a + d) ** 2 + c1), abs=1e-6)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (ssim(noisy, x) < 0.9).all()


def test_masked_ssim_ignores_changes_outside_the_mask():
    x = images(shape=(1, 3, 32, 32))
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[..., :8, :] = True  # window centres in rows 5..7 see rows 0..12
    y = x.clone()
    y[..., 20:, :] = torch.rand(1, 3, 12, 32)
    assert ssim(y, x, mask=mask).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(y, x).item() < 0.9


@pytest.mark.parametrize(("call", "message"), [
    (lambda: psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9)), "one shape"),
    (lambda: psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), mask=torch.zeros(1, 8, 8)), "no pixel"),
    (lambda: psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), mask=torch.ones(2, 8, 8)), "does not fit"),
    (lambda: ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)), "window="),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
