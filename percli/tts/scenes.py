"""Generated acoustic scenes with known acoustics, and the self-supervised stylization pairs built from them.

Origin: written for percli, standing in for the in-the-wild videos (CityWalk) of self-supervised audio-visual
soundscape stylization (Li et al., ECCV 2024), so that the RT60 of every target is known exactly.

A scene is a room and a background: an RT60 (log-uniform in ``RT60_RANGE``), a direct-to-reverberant ratio, a
noise bed (coloured noise of a spectral tilt plus a mains-like hum with harmonics, at a scene SNR) and a picture
of it (wall colour from the noise tilt, a room whose drawn size grows with the RT60, stripes at the hum's pitch),
so both the audio and the image of a hint say something about the room. A scene's "video" is the embedded speech
corpus (`percli.tts.corpus`, espeak-ng sentences) spoken in it: every utterance is convolved with the scene's
room response (`percli.core.acoustics.synthetic_rir`) and laid over a fresh draw of its noise bed.

Self-supervised pairs (the paper's recipe): clip A of a scene's video is the target; its speech-enhanced version
(`percli.core.speech_enhance.enhance`) is the input; clip B, another utterance of the same video (its audio and
the scene picture), is the conditional hint. ``enhance="oracle"`` gives the dry speech instead (an upper bound
on enhancement, for ablations). Held-out scenes and utterances are disjoint from the training ones; at test time
the input speech and the hint come from different scenes and the target is the input's utterance rendered in
the hint's scene, which only a generator knows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from percli.core.acoustics import reverberate, synthetic_rir
from percli.core.mel import MelConfig, log_mel

RT60_RANGE = (0.2, 1.0)
IMAGE_SIZE = 64
FALLBACK_RT60 = 0.5


@dataclasses.dataclass(frozen=True)
class Scene:
    index: int
    rt60: float
    drr_db: float
    tilt: float
    """Noise bed spectral slope: power ~ 1 / f^tilt (0 white, 1 pink, 2 brown)."""
    hum_hz: float
    hum_db: float
    """Hum level relative to the coloured noise."""
    snr_db: float
    """Speech-to-noise-bed ratio of the scene's recordings."""


def make_scene(index: int, seed: int = 0) -> Scene:
    rng = np.random.default_rng([seed, index, 7919])
    low, high = RT60_RANGE
    return Scene(index=index, rt60=float(math.exp(rng.uniform(math.log(low), math.log(high)))),
                 drr_db=float(rng.uniform(-6.0, 6.0)), tilt=float(rng.uniform(0.0, 2.0)),
                 hum_hz=float(rng.uniform(50.0, 400.0)), hum_db=float(rng.uniform(-12.0, 6.0)),
                 snr_db=float(rng.uniform(18.0, 32.0)))


@functools.lru_cache(maxsize=256)
def room_response(scene: Scene, sample_rate: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(scene.index * 1009 + 17)
    return synthetic_rir(scene.rt60, sample_rate, drr_db=scene.drr_db, generator=generator)


def noise_bed(scene: Scene, samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A fresh draw of the scene's background, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    freqs = np.fft.rfftfreq(samples, 1.0 / sample_rate)
    spectrum *= np.maximum(freqs, 20.0) ** (-scene.tilt / 2)
    colour = np.fft.irfft(spectrum, samples)
    colour /= colour.std() + 1e-12
    t = np.arange(samples) / sample_rate
    phase = rng.uniform(0, 2 * math.pi, 3)
    hum = sum(np.sin(2 * math.pi * scene.hum_hz * k * t + phase[k - 1]) / k for k in (1, 2, 3))
    hum *= 10 ** (scene.hum_db / 20) / (hum.std() + 1e-12)
    bed = colour + hum
    return (bed / (bed.std() + 1e-12)).astype(np.float32)


def scene_image(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene's picture, float32 [3, size, size] in [0, 1]."""
    v, u = np.mgrid[0:size, 0:size] / (size - 1)
    hue = scene.tilt / 2.0  # wall colour: noise colour
    wall = np.array([0.35 + 0.5 * hue, 0.45, 0.85 - 0.5 * hue])
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * u * (2 + scene.hum_hz / 40.0))  # stripe count: hum pitch
    image = wall[:, None, None] * (0.75 + 0.25 * stripes)[None]
    half = 0.12 + 0.33 * (scene.rt60 - RT60_RANGE[0]) / (RT60_RANGE[1] - RT60_RANGE[0])  # room size: RT60
    inside = (np.abs(u - 0.5) < half) & (np.abs(v - 0.55) < half * 0.8)
    image[:, inside] = 0.15 + 0.1 * (1 - hue)
    return np.clip(image, 0, 1).astype(np.float32)


def render(dry: torch.Tensor, scene: Scene, samples: int, sample_rate: int, rng: np.random.Generator) -> torch.Tensor:
    """``dry`` speech spoken in ``scene``: reverberated, cut to ``samples`` from its start, noise bed added at the
    scene SNR, peak-limited to 0.95."""
    # speech after the first ``samples`` cannot reach them: convolve only those
    wet = fit_length(reverberate(dry[:samples], room_response(scene, sample_rate)), samples)
    speech_rms = float(wet.square().mean().sqrt()) + 1e-12
    bed = torch.from_numpy(noise_bed(scene, samples, sample_rate, rng)) * speech_rms * 10 ** (-scene.snr_db / 20)
    mix = wet + bed
    return mix * min(1.0, 0.95 / (float(mix.abs().max()) + 1e-12))


def enhanced(wave: torch.Tensor, sample_rate: int, method: str) -> torch.Tensor:
    """`percli.core.speech_enhance.enhance` with ``FALLBACK_RT60`` for clips whose RT60 cannot be measured blindly
    (no free decay); ``oracle`` and ``none`` leave the wave as it is."""
    from percli.core.speech_enhance import enhance

    return wave if method in ("oracle", "none") else enhance(wave, sample_rate, method, fallback_rt60=FALLBACK_RT60)


def fit_length(wave: torch.Tensor, samples: int) -> torch.Tensor:
    return torch.nn.functional.pad(wave[:samples], (0, max(0, samples - wave.numel())))


def pair_item(mel: MelConfig, frames: int, target: torch.Tensor, speech: torch.Tensor, hint: torch.Tensor,
              image: torch.Tensor, waves: bool, **extra: Any) -> dict[str, Any]:
    """One training / evaluation item: the three clips' log-mels (first ``frames``), the hint picture, ``extra``
    fields, and with ``waves`` the waveforms too."""
    item = {"target": log_mel(target, mel)[:, :frames], "speech": log_mel(speech, mel)[:, :frames],
            "hint": log_mel(hint, mel)[:, :frames], "image": image, **extra}
    if waves:
        item.update(target_wave=target, speech_wave=speech, hint_wave=hint)
    return item


@dataclasses.dataclass
class SceneSplit:
    scenes: list[Scene]
    utterances: list[torch.Tensor]
    """Dry speech at the mel sample rate."""


def split_scenes(speech: list[torch.Tensor], train_scenes: int, heldout_scenes: int, heldout_utterances: int,
                 seed: int = 0) -> dict[str, SceneSplit]:
    """Disjoint train / held-out scenes and utterances (the last ``heldout_utterances`` are held out)."""
    if heldout_utterances >= len(speech):
        raise ValueError(f"{len(speech)} utterances leave none for training after {heldout_utterances} held out")
    scenes = [make_scene(i, seed) for i in range(train_scenes + heldout_scenes)]
    cut = len(speech) - heldout_utterances
    return {"train": SceneSplit(scenes[:train_scenes], speech[:cut]),
            "val": SceneSplit(scenes[train_scenes:], speech[cut:])}


class StylizationPairs(Dataset):
    """Self-supervised pairs: item ``i`` draws a scene, a target utterance and a different hint utterance from
    (seed, i), so every epoch and every resumed run sees the same items.

    Returns log-mels [M, frames] (``target``, ``speech`` the enhanced input, ``hint``), the hint picture
    ``image`` [3, S, S], the ``scene`` index and its ``rt60``; with ``waves=True`` also the waveforms.
    """

    def __init__(self, split: SceneSplit, size: int, *, clip_s: float = 2.0, mel: MelConfig = MelConfig(),
                 enhance: str = "spectral", seed: int = 0, waves: bool = False):
        if len(split.utterances) < 2:
            raise ValueError("a scene's video needs at least two utterances (target and hint)")
        self.split, self.size, self.mel, self.enhance, self.seed, self.waves = split, size, mel, enhance, seed, waves
        self.samples = round(clip_s * mel.sample_rate)
        self.frames = self.samples // mel.hop_length

    def __len__(self) -> int:
        return self.size

    def draw(self, index: int) -> tuple[Scene, int, int, np.random.Generator]:
        rng = np.random.default_rng([self.seed, index, 104729])
        scene = self.split.scenes[int(rng.integers(len(self.split.scenes)))]
        target, hint = rng.choice(len(self.split.utterances), 2, replace=False)
        return scene, int(target), int(hint), rng

    def speech_from(self, dry: torch.Tensor, recorded: torch.Tensor) -> torch.Tensor:
        """The model's input: ``recorded`` enhanced, or for ``oracle`` the dry utterance it was recorded from."""
        if self.enhance == "oracle":
            return fit_length(dry, self.samples)
        return enhanced(recorded, self.mel.sample_rate, self.enhance)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene, target_id, hint_id, rng = self.draw(index)
        target = render(self.split.utterances[target_id], scene, self.samples, self.mel.sample_rate, rng)
        hint = render(self.split.utterances[hint_id], scene, self.samples, self.mel.sample_rate, rng)
        speech = self.speech_from(self.split.utterances[target_id], target)
        return pair_item(self.mel, self.frames, target, speech, hint, torch.from_numpy(scene_image(scene)),
                         self.waves, scene=scene.index, rt60=scene.rt60)


def load_speech(manifest: str | Path, sample_rate: int) -> list[torch.Tensor]:
    """Every utterance of a speech manifest (``{"audio": path}`` lines), mono at ``sample_rate``."""
    from percli.core.data.audio import load_audio
    from percli.core.data.paths import resolve_manifest_path
    from percli.core.data.shards import read_records

    folder = Path(manifest).parent
    return [load_audio(resolve_manifest_path(folder, record["audio"]), sample_rate).mean(dim=0)
            for _, record, _ in read_records(manifest, None)]


class CrossScenePairs(StylizationPairs):
    """Test-time items: the input is utterance u recorded in scene a and enhanced, the hint is another utterance
    in scene b != a, the target is u recorded in scene b (known only because the scenes are generated).
    ``scene`` / ``rt60`` are the hint scene's; ``input_scene`` / ``input_rt60`` the input's."""

    def draw_cross(self, index: int) -> tuple[Scene, Scene, int, int, np.random.Generator]:
        rng = np.random.default_rng([self.seed, index, 130363])
        if len(self.split.scenes) < 2:
            raise ValueError("cross-scene evaluation needs at least two held-out scenes")
        a, b = rng.choice(len(self.split.scenes), 2, replace=False)
        u, h = rng.choice(len(self.split.utterances), 2, replace=False)
        return self.split.scenes[int(a)], self.split.scenes[int(b)], int(u), int(h), rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene_in, scene, u, h, rng = self.draw_cross(index)
        dry = self.split.utterances[u]
        speech = self.speech_from(dry, render(dry, scene_in, self.samples, self.mel.sample_rate, rng))
        target = render(dry, scene, self.samples, self.mel.sample_rate, rng)
        hint = render(self.split.utterances[h], scene, self.samples, self.mel.sample_rate, rng)
        return pair_item(self.mel, self.frames, target, speech, hint, torch.from_numpy(scene_image(scene)),
                         self.waves, scene=scene.index, rt60=scene.rt60, input_scene=scene_in.index,
                         input_rt60=scene_in.rt60)
