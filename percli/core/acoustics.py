"""Room acoustics for generated soundscape scenes and their evaluation (RT60 error of stylized speech).

* :func:`synthetic_rir`: a direct impulse, then Gaussian noise under an exponential envelope whose energy
  falls 60 dB in ``rt60`` seconds (Polack's statistical model of late reverberation); :func:`reverberate`
  convolves dry audio with it.
* :func:`schroeder_curve` and :func:`rt60_from_rir`: the energy decay curve by backward integration
  (Schroeder, 1965) and the ISO 3382 decay times T20 / T30 / EDT fitted on it.
* :func:`blind_rt60`: an RT60 estimate from reverberant audio alone, for generated audio whose RIR is
  unknown (method in its docstring).
* :func:`log_spectral_distance` and :func:`mel_distance`: spectral distances between two signals.

Signals are 1-D (``[T]``) tensors or arrays; work is done in float64, so results do not depend on the
input dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DECAY_60DB = 3 * math.log(10)  # 6.9078: amplitude exp(-DECAY_60DB t / rt60) has energy -60 dB at rt60
# Fit ranges (start, end) on the Schroeder curve in dB, as in ISO 3382-1.
FIT_RANGES_DB = {"t20": (-5.0, -25.0), "t30": (-5.0, -35.0), "edt": (0.0, -10.0)}


def _as_1d_float64(signal: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    signal = torch.as_tensor(signal).to(torch.float64)
    if signal.dim() != 1:
        raise ValueError(f"{name} must be 1-D [samples], got shape {tuple(signal.shape)}")
    return signal


def synthetic_rir(rt60: float, sample_rate: int, *, length_s: float | None = None, direct_delay_s: float = 0.002,
                  drr_db: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """A room impulse response of known RT60, normalised to unit peak.

    Args:
        rt60: time in seconds for the reverberant energy to fall by 60 dB.
        sample_rate: samples per second.
        length_s: length in seconds; default 1.5 * rt60 (the tail ends 90 dB down), at least 0.1 s.
        direct_delay_s: arrival time of the direct sound; the reverberant tail starts one sample later.
        drr_db: direct-to-reverberant energy ratio; None keeps a unit direct impulse on a tail whose
            envelope starts at 1, which is a strongly reverberant DRR (about -28 dB at 0.5 s, 16 kHz).
        generator: seeds the tail's noise.

    Returns:
        The response, float32 ``[N]``.
    """
    if rt60 <= 0 or sample_rate <= 0:
        raise ValueError(f"rt60 and sample_rate must be positive, got rt60={rt60}, sample_rate={sample_rate}")
    num_samples = round((length_s if length_s is not None else max(1.5 * rt60, 0.1)) * sample_rate)
    direct_index = round(direct_delay_s * sample_rate)
    if num_samples < direct_index + 2:
        raise ValueError(f"length {num_samples} samples leaves no room for a tail after the direct sound "
                         f"at sample {direct_index}; raise length_s or lower direct_delay_s")
    tail_time = torch.arange(1, num_samples - direct_index, dtype=torch.float64) / sample_rate  # after direct
    tail = torch.randn(tail_time.numel(), generator=generator, dtype=torch.float64)
    tail = tail * torch.exp(-DECAY_60DB * tail_time / rt60)
    direct = 1.0
    if drr_db is not None:
        direct = math.sqrt(10 ** (drr_db / 10) * float(tail.square().sum()))
    rir = torch.zeros(num_samples, dtype=torch.float64)
    rir[direct_index] = direct
    rir[direct_index + 1:] = tail
    return (rir / rir.abs().max()).float()


def reverberate(dry: torch.Tensor | np.ndarray, rir: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Full linear convolution of ``dry`` [T] with ``rir`` [N] through the FFT; float32 [T + N - 1]."""
    dry, rir = _as_1d_float64(dry, "dry"), _as_1d_float64(rir, "rir")
    size = dry.numel() + rir.numel() - 1
    fast = 1 << (size - 1).bit_length()  # a power of two: the FFT of an awkward length can be 10x slower
    return torch.fft.irfft(torch.fft.rfft(dry, fast) * torch.fft.rfft(rir, fast), fast)[:size].float()


def schroeder_curve(rir: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Energy decay curve in dB: the backward integral of rir**2, 0 dB at the first sample; float64 [N].

    The last samples' energy underflows towards 0; the curve is floored at -300 dB there instead of -inf.
    """
    energy = _as_1d_float64(rir, "rir").square()
    remaining = energy.flip(0).cumsum(0).flip(0)  # summed from the end, so the tail keeps its precision
    if remaining.numel() == 0 or remaining[0] <= 0:
        raise ValueError("the impulse response is empty or silent: it has no decay to integrate")
    return 10 * torch.log10((remaining / remaining[0]).clamp_min(1e-30))


def _decay_slope_db_per_s(level_db: torch.Tensor, times: torch.Tensor) -> float:
    """Least-squares slope of level (dB) against time (s)."""
    times_centred = times - times.mean()
    return float((times_centred * (level_db - level_db.mean())).sum() / times_centred.square().sum())


def rt60_from_rir(rir: torch.Tensor | np.ndarray, sample_rate: int, method: str = "t20") -> float:
    """RT60 in seconds from a fit of the Schroeder curve, extrapolated to a 60 dB decay.

    Args:
        rir: the impulse response [N].
        sample_rate: samples per second.
        method: "t20" (fit from -5 to -25 dB), "t30" (-5 to -35 dB) or "edt" (0 to -10 dB, early decay time).
    """
    if method not in FIT_RANGES_DB:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(FIT_RANGES_DB)}")
    curve = schroeder_curve(rir)
    start_db, end_db = FIT_RANGES_DB[method]
    if curve.min() > end_db:
        raise ValueError(f"the decay curve only falls to {float(curve.min()):.1f} dB but {method} fits down to "
                         f"{end_db:.0f} dB: the impulse response is too short, or ends in noise")
    in_range = (curve <= start_db) & (curve >= end_db)
    if int(in_range.sum()) < 2:
        raise ValueError(f"fewer than 2 samples lie between {start_db:.0f} and {end_db:.0f} dB; "
                         "raise the sample rate or use a longer-decaying response")
    times = torch.nonzero(in_range).squeeze(1).to(torch.float64) / sample_rate
    return -60.0 / _decay_slope_db_per_s(curve[in_range], times)


def blind_rt60(audio: torch.Tensor | np.ndarray, sample_rate: int, *, frame_s: float = 0.02, hop_s: float = 0.005,
               fit_start_db: float = -5.0, fit_end_db: float = -25.0, min_fit_span_db: float = 10.0,
               noise_margin_db: float = 10.0, rise_tolerance_db: float = 1.0, sharpest_fraction: float = 0.5) -> float:
    """RT60 in seconds of reverberant audio without its RIR: slopes of the sharpest free decays.

    A simplified slope-based estimator in the spirit of the free-decay methods (Ratnam et al., 2003, fit a
    maximum-likelihood decay model; Loellmann et al., 2010, keep only segments of falling energy):

    1. log energy of ``frame_s`` frames every ``hop_s``, smoothed over 3 frames;
    2. a decay segment starts at each local peak and runs while the level stays within
       ``rise_tolerance_db`` of its running minimum (frame noise makes a true decay jitter);
    3. each segment is fitted like T20 on a Schroeder curve: from ``fit_start_db`` below its peak (past the
       direct sound's drop at the offset) down to ``fit_end_db`` or to ``noise_margin_db`` above the noise
       floor (5th percentile of the levels), whichever is higher; segments spanning less than
       ``min_fit_span_db`` are dropped;
    4. reverberant audio cannot decay faster than the room, so slower decays are the source fading out:
       keep the ``sharpest_fraction`` of the segments with the shortest RT60 and return their median.

    It needs offsets followed by pauses long enough to fall ``-fit_start_db + min_fit_span_db`` (15 dB)
    above the noise; it is biased somewhat low (it picks the sharpest estimates) and is meant to rank and
    compare audio, not to replace a measured RIR.
    """
    audio = _as_1d_float64(audio, "audio")
    frame, hop = round(frame_s * sample_rate), round(hop_s * sample_rate)
    if audio.numel() < frame + 2 * hop:
        raise ValueError(f"audio of {audio.numel()} samples is shorter than a few {frame_s * 1000:.0f} ms frames")
    power = audio.unfold(0, frame, hop).square().mean(dim=1)  # [T] -> [frames, frame] -> [frames]
    if power.max() <= 0:
        raise ValueError("audio is silent: no energy to estimate a decay from")
    level = 10 * torch.log10(power.clamp_min(float(power.max()) * 1e-12))
    level = torch.nn.functional.avg_pool1d(level[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
    floor_db = float(torch.quantile(level, 0.05)) + noise_margin_db
    level_list = level.tolist()
    estimates = []
    for peak in range(1, len(level_list) - 1):
        if not level_list[peak - 1] < level_list[peak] >= level_list[peak + 1]:
            continue
        end, lowest = peak + 1, level_list[peak]
        while end < len(level_list) and level_list[end] <= lowest + rise_tolerance_db:
            lowest = min(lowest, level_list[end])
            end += 1
        segment = level[peak:end] - level_list[peak]  # dB relative to the peak
        fit_end = max(fit_end_db, floor_db - level_list[peak])
        in_range = (segment <= fit_start_db) & (segment >= fit_end)
        if fit_start_db - fit_end < min_fit_span_db or int(in_range.sum()) < 3:
            continue
        span = float(segment[in_range].max() - segment[in_range].min())
        slope = _decay_slope_db_per_s(segment[in_range], torch.nonzero(in_range).squeeze(1).double() * hop_s)
        if span >= min_fit_span_db and slope < 0:
            estimates.append(-60.0 / slope)
    if not estimates:
        raise ValueError(f"no free-decay segment spans {min_fit_span_db:.0f} dB above the noise floor: the audio "
                         "needs offsets followed by pauses (or is too noisy or too short)")
    estimates.sort()
    return float(np.median(estimates[:max(1, math.ceil(sharpest_fraction * len(estimates)))]))


def _check_pair(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.as_tensor(a).to(torch.float64), torch.as_tensor(b).to(torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"signals must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}; trim first")
    return a, b


def log_spectral_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, sample_rate: int,
                          n_fft: int = 1024, hop: int = 256, max_freq: float | None = None) -> float:
    """Log-spectral distance in dB: per frame, the RMS over bins of the difference of 10 log10 power spectra
    (Hann window, floor 1e-10), averaged over frames; ``max_freq`` (Hz) keeps only the bins up to it.
    Signals are [T] or [B, T]."""
    a, b = _check_pair(a, b)
    window = torch.hann_window(n_fft, dtype=torch.float64)

    def log_power(signal: torch.Tensor) -> torch.Tensor:  # [..., T] -> [..., bins, frames]
        spectrum = torch.stft(signal, n_fft, hop, window=window, return_complex=True)
        return 10 * torch.log10(spectrum.abs().square().clamp_min(1e-10))

    difference = log_power(a) - log_power(b)
    if max_freq is not None:
        difference = difference[..., : int(max_freq / sample_rate * n_fft) + 1, :]
    return float(difference.square().mean(dim=-2).sqrt().mean())


def mel_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, sample_rate: int, n_mels: int = 80,
                 n_fft: int = 1024, hop: int = 256) -> float:
    """Mean absolute difference of natural-log mel power spectrograms (floor 1e-5, as HiFi-GAN's mel loss).
    Signals are [T] or [B, T]."""
    import torchaudio  # kept out of module import: only the evaluation needs it

    a, b = _check_pair(a, b)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels).double()
    return float((mel(a).clamp_min(1e-5).log() - mel(b).clamp_min(1e-5).log()).abs().mean())
