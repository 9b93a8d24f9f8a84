import math

import numpy as np
import pytest
import torch

from percli.core.acoustics import (
    blind_rt60,
    log_spectral_distance,
    mel_distance,
    reverberate,
    rt60_from_rir,
    schroeder_curve,
    synthetic_rir,
)

SR = 16000


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def speech_like(seed: int, n_bursts: int = 8, pause_s: float = 0.8) -> torch.Tensor:
    """Bursts of band-passed (100-4000 Hz, tilted) noise with a 4 Hz syllable modulation, then silences."""
    generator = seeded(seed)
    parts = []
    for _ in range(n_bursts):
        n = int((0.15 + 0.35 * float(torch.rand((), generator=generator))) * SR)
        spectrum = torch.fft.rfft(torch.randn(n, generator=generator))
        freqs = torch.fft.rfftfreq(n, 1 / SR)
        burst = torch.fft.irfft(spectrum * ((freqs > 100) & (freqs < 4000)) / (1 + freqs / 500), n)
        burst = burst * (0.6 + 0.4 * torch.sin(2 * math.pi * 4 * torch.arange(n) / SR))
        parts += [burst / burst.std(), torch.zeros(int(pause_s * SR))]
    return torch.cat(parts)


def reverberant_scene(rt60: float, seed: int, snr_db: float = 50.0) -> torch.Tensor:
    wet = reverberate(speech_like(seed), synthetic_rir(rt60, SR, drr_db=0.0, generator=seeded(seed)))
    return wet + wet.std() * 10 ** (-snr_db / 20) * torch.randn(wet.numel(), generator=seeded(seed + 100))


@pytest.mark.parametrize("method", ["t20", "t30"])
@pytest.mark.parametrize("rt60", [0.2, 0.4, 0.7, 1.0, 1.5])
def test_schroeder_fit_recovers_synthetic_rt60(rt60, method):
    rir = synthetic_rir(rt60, SR, generator=seeded(0))
    assert rt60_from_rir(rir, SR, method) == pytest.approx(rt60, rel=0.05)


@pytest.mark.parametrize("rt60", [0.2, 0.7, 1.5])
def test_edt_matches_rt60_of_a_purely_exponential_decay(rt60):
    rir = synthetic_rir(rt60, SR, generator=seeded(1))
    assert rt60_from_rir(rir, SR, "edt") == pytest.approx(rt60, rel=0.1)


def test_schroeder_curve_starts_at_0_db_and_never_rises():
    curve = schroeder_curve(synthetic_rir(0.5, SR, generator=seeded(2)))
    assert curve[0] == 0 and bool((curve.diff() <= 1e-9).all()) and torch.isfinite(curve).all()


def test_synthetic_rir_is_seeded_unit_peak_and_default_length():
    first, again = (synthetic_rir(0.6, SR, generator=seeded(3)) for _ in range(2))
    other = synthetic_rir(0.6, SR, generator=seeded(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.abs().max() == 1 and first.numel() == round(1.5 * 0.6 * SR)
    assert synthetic_rir(0.02, SR).numel() == round(0.1 * SR)  # the 0.1 s minimum


@pytest.mark.parametrize("drr_db", [-10.0, 0.0, 10.0])
def test_drr_option_sets_direct_to_reverberant_ratio(drr_db):
    direct_delay_s = 0.005
    rir = synthetic_rir(0.5, SR, direct_delay_s=direct_delay_s, drr_db=drr_db, generator=seeded(5)).double()
    direct_index = round(direct_delay_s * SR)
    assert rir[:direct_index].abs().max() == 0  # nothing arrives before the direct sound
    measured = 10 * math.log10(float(rir[direct_index] ** 2 / rir[direct_index + 1:].square().sum()))
    assert measured == pytest.approx(drr_db, abs=1.0)


def test_rt60_from_rir_explains_unusable_inputs():
    with pytest.raises(ValueError, match="silent"):
        rt60_from_rir(torch.zeros(1000), SR)
    truncated = synthetic_rir(1.5, SR, length_s=0.05, generator=seeded(6))  # falls only ~2 dB
    with pytest.raises(ValueError, match="too short"):
        rt60_from_rir(truncated, SR, "t30")
    with pytest.raises(ValueError, match="unknown method"):
        rt60_from_rir(synthetic_rir(0.5, SR), SR, "t60")


def test_reverberate_is_linear_convolution():
    dry, rir = np.random.default_rng(0).standard_normal((2, 300))
    np.testing.assert_allclose(reverberate(dry, rir[:50]).numpy(), np.convolve(dry, rir[:50]), atol=1e-4)


def test_blind_rt60_is_monotonic_and_within_15_percent_on_speech_like_scenes():
    true_rt60s = [0.3, 0.5, 0.8, 1.2]
    estimates = [blind_rt60(reverberant_scene(rt60, seed=rt60_index), SR) for rt60_index, rt60 in enumerate(true_rt60s)]
    assert estimates == sorted(estimates) and len(set(estimates)) == len(estimates)
    for rt60, estimate in zip(true_rt60s, estimates):
        assert estimate == pytest.approx(rt60, rel=0.15)


def test_blind_rt60_explains_silence_and_audio_without_decays():
    with pytest.raises(ValueError, match="silent"):
        blind_rt60(torch.zeros(SR), SR)
    with pytest.raises(ValueError, match="no free-decay segment"):
        blind_rt60(torch.randn(2 * SR, generator=seeded(7)), SR)  # steady noise never decays
    with pytest.raises(ValueError, match="shorter"):
        blind_rt60(torch.ones(100), SR)


@pytest.mark.parametrize("distance", [log_spectral_distance, mel_distance])
def test_distances_are_zero_for_identical_symmetric_and_grow_with_noise(distance):
    clean = speech_like(8, n_bursts=2, pause_s=0.2)
    noise = torch.randn(clean.numel(), generator=seeded(9))
    assert distance(clean, clean, SR) == 0
    noisy = [clean + level * noise for level in (0.01, 0.1, 1.0)]
    assert distance(clean, noisy[0], SR) == pytest.approx(distance(noisy[0], clean, SR), rel=1e-9)
    values = [distance(clean, signal, SR) for signal in noisy]
    assert 0 < values[0] < values[1] < values[2]
    with pytest.raises(ValueError, match="same shape"):
        distance(clean, clean[:-1], SR)
