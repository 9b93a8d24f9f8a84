import math
import sys

import pytest
import torch

from percli.core.acoustics import blind_rt60, reverberate, synthetic_rir
from percli.core.speech_enhance import (
    energy_vad,
    enhance,
    is_silent,
    silero_vad,
    spectral_gate,
    speech_spans,
    suppress_late_reverb,
)

SR = 16000


def harmonics(num_samples: int, f0: float) -> torch.Tensor:
    """Ten harmonics of ``f0`` with 1/k amplitudes: a voiced, speech-like spectrum."""
    t = torch.arange(num_samples) / SR
    return sum(torch.sin(2 * math.pi * f0 * k * t + k) / k for k in range(1, 11))


def snr_db(clean: torch.Tensor, estimate: torch.Tensor) -> float:
    return 10 * math.log10(float(clean.square().sum() / (estimate - clean).square().sum()))


def test_spectral_gate_raises_snr_and_keeps_length():
    num_samples = 2 * SR + 1  # odd: the iSTFT must still give the input length back
    syllables = torch.sin(2 * math.pi * 2 * torch.arange(num_samples) / SR).clamp_min(0).square()  # 2 Hz, half off
    clean = harmonics(num_samples, 150.0) * syllables
    clean = 0.1 * clean / clean.std()
    noisy = clean + 0.05 * torch.randn(num_samples, generator=torch.Generator().manual_seed(0))
    gated = spectral_gate(noisy, SR)
    assert gated.shape == noisy.shape and gated.dtype == noisy.dtype
    assert snr_db(clean, gated) > snr_db(clean, noisy) + 5.0
    gentle = spectral_gate(noisy, SR, reduction_db=3.0)
    assert snr_db(clean, gated) > snr_db(clean, gentle)  # the reduction is what removes the noise


def bursts_with_pauses() -> tuple[torch.Tensor, list[tuple[int, int]]]:
    parts, spans, position = [], [], 0
    for index in range(5):
        burst = harmonics(int(0.3 * SR), 140.0 + 10 * index) * torch.hann_window(int(0.3 * SR)) ** 0.25
        parts += [burst, torch.zeros(int(0.7 * SR))]
        spans.append((position, position + burst.numel()))
        position += burst.numel() + int(0.7 * SR)
    return torch.cat(parts), spans


def tail_to_burst_db(wave: torch.Tensor, spans: list[tuple[int, int]]) -> float:
    """Energy from 50 to 500 ms after each burst ends, relative to the bursts' energy."""
    tail = sum(float(wave[end + int(0.05 * SR): end + int(0.5 * SR)].square().sum()) for _, end in spans)
    return 10 * math.log10(tail / sum(float(wave[start:end].square().sum()) for start, end in spans))


@pytest.mark.parametrize("rt60", [0.8, None])
def test_suppress_late_reverb_shortens_the_decay(rt60):
    dry, spans = bursts_with_pauses()
    wet = reverberate(dry, synthetic_rir(0.8, SR, generator=torch.Generator().manual_seed(1)))[: dry.numel()]
    dereverbed = suppress_late_reverb(wet, SR, rt60=rt60)
    assert dereverbed.shape == wet.shape
    assert tail_to_burst_db(dereverbed, spans) < tail_to_burst_db(wet, spans) - 3.0
    assert blind_rt60(dereverbed, SR) < 0.6 * blind_rt60(wet, SR)


def test_suppress_late_reverb_needs_decays_without_rt60():
    steady = harmonics(SR, 200.0)  # no offsets: nothing to estimate RT60 from
    with pytest.raises(ValueError, match="pass rt60="):
        suppress_late_reverb(steady, SR)
    assert suppress_late_reverb(steady, SR, rt60=0.5).shape == steady.shape
    # a fallback RT60 is used only when the blind estimate fails: the same result as passing it
    assert torch.equal(suppress_late_reverb(steady, SR, fallback_rt60=0.5), suppress_late_reverb(steady, SR, rt60=0.5))


def halve(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    return wave * 0.5


def drop_last(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    return wave[:-1]


NOT_CALLABLE = 3


def test_enhance_methods():
    wave = torch.randn(SR, generator=torch.Generator().manual_seed(2))
    assert enhance(wave, SR, "none") is wave
    assert torch.equal(enhance(wave, SR, f"external:{__name__}:halve"), wave * 0.5)
    dry, _ = bursts_with_pauses()
    assert enhance(dry, SR, "spectral", rt60=0.5).shape == dry.shape
    for method in ["bogus", "external:", f"external:{__name__}", "external:no_such_module_xyz:f",
                   f"external:{__name__}:missing", f"external:{__name__}:NOT_CALLABLE"]:
        with pytest.raises(ValueError, match="method"):
            enhance(wave, SR, method)
    with pytest.raises(ValueError, match=r"returned shape \(15999,\)"):
        enhance(wave, SR, f"external:{__name__}:drop_last")


def test_energy_vad_finds_bursts_between_silences():
    generator = torch.Generator().manual_seed(3)
    wave = 1e-4 * torch.randn(3 * SR, generator=generator)  # -80 dBFS floor
    wave[8000:14400] += 0.3 * harmonics(6400, 180.0)  # 0.5 s to 0.9 s
    wave[24000:26400] += 0.3 * harmonics(2400, 180.0)  # 1.5 s to 1.65 s ...
    wave[28000:32000] += 0.3 * harmonics(4000, 180.0)  # ... 1.75 s to 2.0 s, after a 0.1 s gap: merged
    wave[40000:40480] += 0.3 * harmonics(480, 180.0)  # a 30 ms click: dropped
    spans = energy_vad(wave, SR)
    expected = [(8000, 14400), (24000, 32000)]
    assert len(spans) == len(expected)
    for (start, end), (true_start, true_end) in zip(spans, expected):
        assert abs(start - true_start) <= 0.03 * SR and abs(end - true_end) <= 0.03 * SR
    assert speech_spans(wave, SR) == spans
    assert len(energy_vad(wave, SR, min_silence_s=0.05)) == 3  # the 0.1 s gap is kept
    assert energy_vad(torch.zeros(SR), SR) == [] and energy_vad(torch.zeros(0), SR) == []


def test_silero_missing_package_and_unknown_vad(monkeypatch):
    monkeypatch.setitem(sys.modules, "silero_vad", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="pip install silero-vad"):
        speech_spans(torch.zeros(SR), SR, vad="silero")
    with pytest.raises(ValueError, match="unknown vad"):
        speech_spans(torch.zeros(SR), SR, vad="webrtc")


def test_silero_vad_span_format():
    pytest.importorskip("silero_vad")
    wave = torch.zeros(2 * SR)
    wave[8000:20000] = 0.3 * harmonics(12000, 150.0)
    spans = silero_vad(wave, SR)
    assert silero_vad(torch.zeros(SR), SR) == []
    assert all(isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= wave.numel() for s, e in spans)


def test_is_silent():
    t = torch.arange(SR) / SR
    assert is_silent(torch.zeros(SR)) and is_silent(torch.zeros(0))
    assert is_silent(1e-4 * torch.sin(2 * math.pi * 440 * t))  # -83 dBFS
    assert not is_silent(0.1 * torch.sin(2 * math.pi * 440 * t))  # -23 dBFS
    assert not is_silent(1e-4 * torch.sin(2 * math.pi * 440 * t), threshold_db=-90.0)
