"""Speech enhancement and voice activity detection for the soundscape-stylization data builder.

Li et al. (ECCV 2024) train stylization on clips whose input is an "enhanced" (denoised, dereverberated)
version of reverberant noisy speech; this module makes that version and finds the speech in it.

* :func:`suppress_late_reverb`: single-channel late-reverberation spectral subtraction (Lebart et al., 2001,
  with Habets' exponential-decay model of the late reverberant power); RT60 from
  :func:`percli.core.acoustics.blind_rt60` when not given.
* :func:`spectral_gate`: stationary spectral gating (a per-frequency noise profile from the quietest frames).
* :func:`enhance`: "none", "spectral" (the two above) or a user callable, "external:<module>:<function>".
* :func:`energy_vad`, :func:`silero_vad` (the optional ``silero-vad`` package) and :func:`speech_spans`:
  speech as ``(start, end)`` sample spans; :func:`is_silent` flags near-empty clips.

Waves are 1-D ``[T]`` float tensors; the work is done in float64 and outputs keep the input's length and dtype.
"""

from __future__ import annotations

import functools
import importlib
import math

import torch

from percli.core.acoustics import DECAY_60DB, blind_rt60

SMOOTH_BINS = 3  # frequency extent of the spectral gate's mask smoothing


def _check_wave(wave: torch.Tensor, n_fft: int = 0) -> torch.Tensor:
    if wave.dim() != 1:
        raise ValueError(f"wave must be 1-D [samples], got shape {tuple(wave.shape)}")
    if n_fft and wave.numel() <= n_fft // 2:
        raise ValueError(f"wave of {wave.numel()} samples is too short for n_fft={n_fft}")
    return wave.to(torch.float64)


def _stft(wave: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, dtype=torch.float64)
    return torch.stft(wave, n_fft, hop, window=window, center=True, pad_mode="reflect", return_complex=True)


def _istft(spectrum: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, dtype=torch.float64)
    return torch.istft(spectrum, n_fft, hop, window=window, center=True, length=length)


def spectral_gate(wave: torch.Tensor, sample_rate: int, *, n_fft: int = 512, hop: int = 128,
                  noise_percentile: float = 10.0, threshold_db: float = 6.0, reduction_db: float = 24.0,
                  smooth_frames: int = 3) -> torch.Tensor:
    """Stationary noise removal by spectral gating.

    The noise profile is, per frequency, the mean STFT magnitude in dB over the quietest frames (those at or below
    the ``noise_percentile`` of frame energy); bins less than ``threshold_db`` above it are attenuated by
    ``reduction_db``. The gate is averaged over ``SMOOTH_BINS`` bins and ``smooth_frames`` frames (fewer clicks and
    less musical noise) before it scales the STFT. ``sample_rate`` is unused by the gate and kept for a common
    enhancer signature.
    """
    signal = _check_wave(wave, n_fft)
    spectrum = _stft(signal, n_fft, hop)  # [bins, frames]
    level_db = 20 * torch.log10(spectrum.abs().clamp_min(1e-10))
    frame_energy = spectrum.abs().square().sum(dim=0)  # [frames]
    quietest = frame_energy <= torch.quantile(frame_energy, noise_percentile / 100)
    noise_db = level_db[:, quietest].mean(dim=1, keepdim=True)  # [bins, 1]
    gate = torch.full_like(level_db, 10 ** (-reduction_db / 20)).masked_fill(level_db > noise_db + threshold_db, 1.0)
    kernel = torch.full((1, 1, SMOOTH_BINS, smooth_frames), 1.0 / (SMOOTH_BINS * smooth_frames), dtype=torch.float64)
    padded = torch.nn.functional.pad(gate[None, None], (smooth_frames // 2, (smooth_frames - 1) // 2,
                                                        SMOOTH_BINS // 2, (SMOOTH_BINS - 1) // 2), mode="replicate")
    gate = torch.nn.functional.conv2d(padded, kernel)[0, 0]
    return _istft(spectrum * gate, n_fft, hop, signal.numel()).to(wave.dtype)


def suppress_late_reverb(wave: torch.Tensor, sample_rate: int, *, rt60: float | None = None,
                         fallback_rt60: float | None = None, late_start_s: float = 0.05, n_fft: int = 512,
                         hop: int = 128, floor_db: float = -20.0) -> torch.Tensor:
    """Late-reverberation suppression by spectral subtraction.

    With decay rate ``delta = 3 ln 10 / rt60``, the late reverberant power of a frame is the power ``T_l`` earlier
    scaled by ``exp(-2 delta T_l)``, where ``T_l`` is ``late_start_s`` rounded to whole hops (at least one). The
    power gain ``max(1 - late / power, 10^(floor_db / 10))`` is applied as its square root to the STFT. Without
    ``rt60`` it is estimated blindly, which needs offsets followed by pauses (see ``blind_rt60``); when that finds
    no decay, ``fallback_rt60`` is used, or a ValueError says to pass ``rt60``.
    """
    signal = _check_wave(wave, n_fft)
    if rt60 is None:
        try:
            rt60 = blind_rt60(signal, sample_rate)
        except ValueError as err:
            if fallback_rt60 is None:
                raise ValueError(f"cannot estimate rt60 blindly ({err}); pass rt60= explicitly") from err
            rt60 = fallback_rt60
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    spectrum = _stft(signal, n_fft, hop)
    power = spectrum.abs().square()  # [bins, frames]
    delay = max(1, round(late_start_s * sample_rate / hop))
    decay = math.exp(-2 * DECAY_60DB / rt60 * delay * hop / sample_rate)
    late = torch.zeros_like(power)
    late[:, delay:] = decay * power[:, :-delay]
    gain = (1 - late / power.clamp_min(1e-20)).clamp_min(10 ** (floor_db / 10))
    return _istft(spectrum * gain.sqrt(), n_fft, hop, signal.numel()).to(wave.dtype)


def enhance(wave: torch.Tensor, sample_rate: int, method: str = "spectral", *,
            rt60: float | None = None, fallback_rt60: float | None = None) -> torch.Tensor:
    """The builder's "enhanced" input for ``wave`` [T], same length.

    ``method`` is "none" (``wave`` itself), "spectral" (:func:`suppress_late_reverb` with ``rt60`` /
    ``fallback_rt60``, then
    :func:`spectral_gate`) or "external:<module>:<function>": ``function`` imported from ``module`` and called as
    ``function(wave, sample_rate)``, which must return a wave of the same shape.
    """
    if method == "none":
        return wave
    if method == "spectral":
        return spectral_gate(suppress_late_reverb(wave, sample_rate, rt60=rt60, fallback_rt60=fallback_rt60),
                             sample_rate)
    kind, _, target = method.partition(":")
    module_name, _, function_name = target.partition(":")
    if kind != "external" or not module_name or not function_name:
        raise ValueError(f"unknown enhance method {method!r}; use 'none', 'spectral' or "
                         "'external:<module>:<function>'")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as err:
        message = f"enhance method {method!r}: cannot load {function_name!r} from {module_name!r}: {err}"
        raise ValueError(message) from err
    if not callable(function):
        raise ValueError(f"enhance method {method!r}: {module_name}.{function_name} is not callable")
    out = torch.as_tensor(function(wave, sample_rate))
    if out.shape != wave.shape:
        raise ValueError(f"enhance method {method!r} returned shape {tuple(out.shape)}, expected the input's "
                         f"{tuple(wave.shape)}")
    return out.to(wave.dtype)


def energy_vad(wave: torch.Tensor, sample_rate: int, *, frame_s: float = 0.03, hop_s: float = 0.01,
               threshold_db: float = -35.0, min_speech_s: float = 0.1,
               min_silence_s: float = 0.2) -> list[tuple[int, int]]:
    """Speech spans ``[(start, end), ...]`` in samples from frame energy.

    A frame is speech when its mean power is above ``threshold_db`` relative to the loudest frame; each frame
    stands for the ``hop_s`` around its centre. Gaps shorter than ``min_silence_s`` are merged, then spans shorter
    than ``min_speech_s`` dropped. A silent wave has no spans.
    """
    signal = _check_wave(wave)
    frame, hop = round(frame_s * sample_rate), round(hop_s * sample_rate)
    num_frames = max(1, math.ceil((signal.numel() - frame) / hop) + 1)
    padded = torch.nn.functional.pad(signal, (0, frame + (num_frames - 1) * hop - signal.numel()))
    power = padded.unfold(0, frame, hop).square().mean(dim=1)  # [frames]
    if power.max() <= 0:
        return []
    active = (10 * torch.log10(power.clamp_min(1e-30) / power.max()) > threshold_db).tolist()
    spans: list[list[int]] = []
    for index, is_speech in enumerate(active):
        if not is_speech:
            continue
        start = max(0, index * hop + (frame - hop) // 2)
        end = min(signal.numel(), index * hop + (frame + hop) // 2)
        if spans and start - spans[-1][1] < min_silence_s * sample_rate:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [(start, end) for start, end in spans if end - start >= min_speech_s * sample_rate]


@functools.lru_cache(maxsize=1)
def _silero_model() -> torch.nn.Module:  # the TorchScript model, loaded once
    from silero_vad import load_silero_vad

    return load_silero_vad()


def silero_vad(wave: torch.Tensor, sample_rate: int) -> list[tuple[int, int]]:
    """Speech spans in samples from Silero VAD (the optional ``silero-vad`` package, default settings).

    Silero runs at 8 or 16 kHz (or multiples of 16 kHz); other rates are resampled to 16 kHz and the spans mapped
    back.
    """
    try:
        from silero_vad import get_speech_timestamps
    except ImportError as err:
        raise RuntimeError('silero_vad needs the silero-vad package: pip install silero-vad (vad="energy" needs '
                           "nothing extra)") from err
    signal = _check_wave(wave).float()
    rate = sample_rate
    if sample_rate != 8000 and sample_rate % 16000:
        import torchaudio  # only for rates Silero does not take

        signal, rate = torchaudio.functional.resample(signal, sample_rate, 16000), 16000
    stamps = get_speech_timestamps(signal, _silero_model(), sampling_rate=rate)
    scale = sample_rate / rate
    return [(round(s["start"] * scale), min(wave.numel(), round(s["end"] * scale))) for s in stamps]


def speech_spans(wave: torch.Tensor, sample_rate: int, vad: str = "energy") -> list[tuple[int, int]]:
    """Speech spans in samples by ``vad``: "energy" (:func:`energy_vad`) or "silero" (:func:`silero_vad`)."""
    if vad == "energy":
        return energy_vad(wave, sample_rate)
    if vad == "silero":
        return silero_vad(wave, sample_rate)
    raise ValueError(f"unknown vad {vad!r}; choose 'energy' or 'silero'")


def is_silent(wave: torch.Tensor, threshold_db: float = -60.0) -> bool:
    """True when the RMS of ``wave`` in dBFS is below ``threshold_db`` (also for an empty or all-zero wave)."""
    if wave.numel() == 0:
        return True
    rms = float(wave.to(torch.float64).square().mean().sqrt())
    return rms == 0 or 20 * math.log10(rms) < threshold_db
