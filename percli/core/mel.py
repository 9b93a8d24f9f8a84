"""One log-mel front-end for generative audio (the soundscape VAE, its diffusion model and the vocoder).

Defaults follow AudioLDM's 16 kHz setting (n_fft 1024, window 1024, hop 160 = 10 ms, 64 mel bands from 0 to
8 kHz, Slaney mel scale and norm as librosa/HiFi-GAN) and store natural-log magnitudes floored at 1e-5 (HiFi-GAN's
``dynamic_range_compression``). :func:`griffin_lim` inverts a log-mel without any trained weights (the vocoder's
zero-training fallback): pseudo-inverse of the mel filterbank (least squares, non-negative) then Griffin-Lim
phase recovery with momentum 0.99.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

LOG_FLOOR = 1e-5


@dataclasses.dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0


@functools.lru_cache(maxsize=8)
def _filterbank(cfg: MelConfig) -> torch.Tensor:
    import torchaudio  # heavy: only where a mel is computed

    return torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels,
                                                 cfg.sample_rate, norm="slaney", mel_scale="slaney")  # [F, M]


def _window(cfg: MelConfig, device: torch.device) -> torch.Tensor:
    return torch.hann_window(cfg.win_length, device=device)


def log_mel(wave: torch.Tensor, cfg: MelConfig = MelConfig()) -> torch.Tensor:
    """Natural-log mel magnitudes of ``wave`` ([T] or [B, T] float): [M, frames] or [B, M, frames]."""
    squeeze = wave.dim() == 1
    wave = wave.unsqueeze(0) if squeeze else wave
    spec = torch.stft(wave.float(), cfg.n_fft, cfg.hop_length, cfg.win_length, _window(cfg, wave.device),
                      center=True, pad_mode="reflect", return_complex=True).abs()  # [B, F, frames]
    mel = torch.einsum("bft,fm->bmt", spec, _filterbank(cfg).to(spec.device))
    out = mel.clamp_min(LOG_FLOOR).log()
    return out[0] if squeeze else out


def mel_to_linear(mel_log: torch.Tensor, cfg: MelConfig = MelConfig(), iters: int = 200) -> torch.Tensor:
    """Linear magnitudes [.., F, frames] whose mel projection best matches ``exp(mel_log)`` (non-negative least
    squares by projected gradient, started from the filterbank's transpose)."""
    fb = _filterbank(cfg).to(mel_log.device)  # [F, M]
    target = mel_log.exp()
    norm = fb.sum(0).clamp_min(1e-8)
    spec = torch.einsum("fm,...mt->...ft", fb / norm, target)  # transpose start
    step = 1.0 / float(torch.linalg.matrix_norm(fb, 2) ** 2)
    for _ in range(iters):
        residual = torch.einsum("fm,...ft->...mt", fb, spec) - target
        spec = (spec - step * torch.einsum("fm,...mt->...ft", fb, residual)).clamp_min(0)
    return spec


def griffin_lim(mel_log: torch.Tensor, cfg: MelConfig = MelConfig(), iters: int = 64, momentum: float = 0.99,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A waveform [.., samples] from a log-mel [.., M, frames] with no trained weights (Griffin & Lim, 1984, with
    the fast momentum update of Perraudin et al., 2013). Phases start random from ``generator``."""
    spec = mel_to_linear(mel_log, cfg)
    batch_shape, (freqs, frames) = spec.shape[:-2], spec.shape[-2:]
    spec = spec.reshape(-1, freqs, frames)
    window = _window(cfg, spec.device)
    length = (frames - 1) * cfg.hop_length
    phase = torch.rand(spec.shape, generator=generator, device=generator.device if generator else None)
    angles = torch.polar(torch.ones_like(spec), 2 * math.pi * phase.to(spec.device))
    previous = torch.zeros_like(angles)
    for _ in range(iters):
        wave = torch.istft(spec * angles, cfg.n_fft, cfg.hop_length, cfg.win_length, window, length=length)
        rebuilt = torch.stft(wave, cfg.n_fft, cfg.hop_length, cfg.win_length, window, center=True,
                             pad_mode="reflect", return_complex=True)
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        previous = rebuilt
        angles = angles / angles.abs().clamp_min(1e-16)
    wave = torch.istft(spec * angles, cfg.n_fft, cfg.hop_length, cfg.win_length, window, length=length)
    return wave.reshape(*batch_shape, -1)
