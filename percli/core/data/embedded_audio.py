"""Embedded default audio dataset: procedurally synthesised sound classes, no download needed.

Origin: written for percli (not derived from any published dataset). Each clip is a pure function of
``(seed, split, index)``: a NumPy ``SeedSequence`` built from those three numbers drives every random
choice and the waveform is synthesised on demand at 16 kHz. Nothing is cached or written to disk, so
the dataset pickles to a few bytes and any worker can render any item.

Eight classes, balanced (``label = index % 8``): pure_tone, harmonic_tone, chirp_up, chirp_down,
noise_burst (white), brown_noise, click_train, trill (two alternating tones). Every clip lasts 1-4 s
and has a random onset, event length, pitch, rate and loudness (-26 to -1 dBFS peak) over a white
background noise floor (-75 to -45 dBFS rms), with 10 ms fades so event edges do not add clicks.
``train`` and ``val`` use different seed streams, so their clips are disjoint.

The features are those of :class:`~percli.core.data.audio.AudioDataset` (same code path), with a
default ``target_length`` of 256 frames (2.56 s): events start in the first second and last at least
0.4 s, so a crop never removes the whole event.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torchaudio

from percli.core.data.audio import FbankDataset

CLASSES: tuple[str, ...] = (
    "pure_tone",
    "harmonic_tone",
    "chirp_up",
    "chirp_down",
    "noise_burst",
    "brown_noise",
    "click_train",
    "trill",
)
RATE = 16000
_SPLIT_STREAMS = {"train": 0, "val": 1}
_DEFAULT_SIZES = {"train": 800, "val": 200}
_FADE = int(0.01 * RATE)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _tone(freq: np.ndarray | float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sine of (possibly time-varying) frequency ``freq`` Hz, random start phase."""
    inst = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    phase = 2 * math.pi * np.cumsum(inst) / RATE + rng.uniform(0, 2 * math.pi)
    return np.sin(phase)


def _event(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of the class's sound, peak-normalised to 1."""
    t = np.arange(n) / RATE
    if name == "pure_tone":
        sig = _tone(_log_uniform(rng, 200, 4000), n, rng)
    elif name == "harmonic_tone":
        f0 = _log_uniform(rng, 100, 600)
        k_max = max(3, min(int(rng.integers(4, 11)), int(7000 // f0)))
        sig = sum(_tone(k * f0, n, rng) / k for k in range(1, k_max + 1))
    elif name in ("chirp_up", "chirp_down"):
        low = _log_uniform(rng, 200, 1000)
        high = low * float(rng.uniform(3, 7))
        ratio = t / t[-1]
        # Exponential sweep: equal time per octave, so it is a straight line on a mel-ish axis.
        freq = low * (high / low) ** (ratio if name == "chirp_up" else 1 - ratio)
        sig = _tone(freq, n, rng)
    elif name == "noise_burst":
        sig = rng.standard_normal(n)
    elif name == "brown_noise":
        # White noise shaped to a 1/f amplitude spectrum (-6 dB/octave); the 20 Hz floor avoids a DC blow-up.
        spectrum = np.fft.rfft(rng.standard_normal(n))
        spectrum /= np.maximum(np.fft.rfftfreq(n, 1 / RATE), 20.0)
        sig = np.fft.irfft(spectrum, n)
    elif name == "click_train":
        rate = float(rng.uniform(5, 30))
        sig = np.zeros(n)
        click = np.exp(-np.arange(int(0.002 * RATE)) / (0.0004 * RATE)) * rng.choice([-1.0, 1.0])
        for start in np.arange(rng.uniform(0, 1 / rate), n / RATE, 1 / rate):
            i = int(start * RATE)
            sig[i : i + click.size] += click[: n - i]
    elif name == "trill":
        f_a = _log_uniform(rng, 300, 2500)
        f_b = f_a * float(rng.uniform(1.25, 2.0)) ** rng.choice([-1.0, 1.0])
        rate = float(rng.uniform(4, 12))  # alternations per second
        freq = np.where(np.floor(t * rate * 2) % 2 == 0, f_a, f_b)
        sig = _tone(freq, n, rng)
    else:
        raise ValueError(f"unknown embedded audio class {name!r}")
    sig = np.asarray(sig, dtype=np.float64)
    sig = sig - sig.mean()
    return sig / max(float(np.abs(sig).max()), 1e-9)


def render_clip(label: int, rng: np.random.Generator) -> np.ndarray:
    """Synthesise one clip of class ``CLASSES[label]`` at 16 kHz.

    Args:
        label: Class index.
        rng: Source of every random choice.

    Returns:
        float32 array [T] with 1 s <= T / 16000 <= 4 s.
    """
    length = int(rng.uniform(1.0, 4.0) * RATE)
    onset = int(rng.uniform(0.0, min(1.0, 0.3 * length / RATE)) * RATE)
    event_len = length - onset
    if CLASSES[label] == "noise_burst":
        event_len = min(event_len, int(rng.uniform(0.4, 1.0) * RATE))  # a burst, not steady noise
    else:
        event_len = int(event_len * rng.uniform(0.6, 1.0))
    event_len = max(event_len, int(0.4 * RATE))
    event = _event(CLASSES[label], event_len, rng)
    ramp = np.linspace(0.0, 1.0, _FADE)
    event[:_FADE] *= ramp
    event[-_FADE:] *= ramp[::-1]
    clip = rng.standard_normal(length) * 10 ** (rng.uniform(-75, -45) / 20)
    clip[onset : onset + event_len] += event[: length - onset] * 10 ** (rng.uniform(-26, -1) / 20)
    return clip.astype(np.float32)


class EmbeddedAudioDataset(FbankDataset):
    """The embedded default audio dataset (see the module docstring).

    Args:
        split: ``"train"`` or ``"val"`` (disjoint clips).
        num_clips: Dataset length; 800 for train and 200 for val when omitted.
        seed: Base seed; the same seed gives the same clips.
        target_length: Frames per example (default 256 = 2.56 s).
        **features: Other :class:`~percli.core.data.audio.FbankDataset` arguments (``sample_rate``
            resamples the 16 kHz synthesis, ``num_mel_bins``, ``mean``, ``std``, ``train``,
            ``freqm``, ``timem``, ``roll_mag_aug``, ``mixup``, ``transform``).
    """

    multilabel = False

    def __init__(
        self,
        split: str = "train",
        num_clips: int | None = None,
        seed: int = 0,
        *,
        target_length: int = 256,
        **features: Any,
    ) -> None:
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"embedded audio split must be one of {', '.join(_SPLIT_STREAMS)}, got {split!r}")
        super().__init__(target_length=target_length, **features)
        self.split = split
        self.num_clips = _DEFAULT_SIZES[split] if num_clips is None else int(num_clips)
        self.seed = seed
        self.classes = list(CLASSES)

    def __len__(self) -> int:
        return self.num_clips

    def label(self, index: int) -> int:
        """Class of item ``index`` without synthesising it."""
        return index % len(CLASSES)

    def labels_of(self, index: int) -> list[int]:
        return [self.label(index)]

    def path_of(self, index: int) -> str:
        return f"embedded://audio/{self.split}/seed{self.seed}/{index}"

    def render(self, index: int) -> np.ndarray:
        """float32 [T] 16 kHz waveform of item ``index``."""
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        rng = np.random.default_rng([self.seed, _SPLIT_STREAMS[self.split], index])
        return render_clip(self.label(index), rng)

    def waveform(self, index: int) -> torch.Tensor:
        wave = torch.from_numpy(self.render(index)).unsqueeze(0)
        if self.sample_rate != RATE:
            wave = torchaudio.functional.resample(wave, RATE, self.sample_rate)
        return wave
