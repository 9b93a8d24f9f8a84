"""Embedded audio-video event clips with captions and strong labels: no download, rendered on a CPU.

Origin: written for percli (not derived from any published dataset). Clip ``index`` of a split is a pure
function of ``(seed, split, index)`` and an :class:`AVEventsSpec`: a NumPy ``SeedSequence`` built from the
three numbers drives every random choice, so the same seed gives the same arrays and the same file bytes,
and ``train`` and ``test`` (different seed streams) hold disjoint clips.

A clip lasts ``duration_s`` (4 s by default) and holds 1 to ``max_events`` distinct events of
:data:`EVENTS`, at random onsets (drawn at least 0.3 s apart, so their order is well defined) and random
durations (0.5 s up to 1.5 s or half the clip; they may overlap), over a quiet background (white noise at
-72 to -62 dBFS rms; a dark gradient with pixel noise). Each event is audible and visible exactly while
it is labelled:

- audio: the sound classes of :mod:`percli.core.data.embedded_audio` (synthesised at 16 kHz, then
  resampled to ``sample_rate``, so there is no content above 8 kHz), either one continuous sound or a
  unit repeated in bursts (barks, drum hits, chirps), at -12 to -6 dBFS peak (the mix is scaled down
  when its peak passes 0.95);
- video: a shape of :mod:`percli.core.data.embedded` in the event's own colour and motion (a jumping
  circle for a bark, a pulsing ring for a siren, a bouncing square for a drum, ...), drawn in every frame
  whose time span meets the event's.

Strong labels are ``(label, onset_s, offset_s)``, whole milliseconds: from the first to the end of the
last millisecond in which the sound passes 5 % (-26 dB) of its peak (for burst sounds: the first burst
to the end of the last). Captions name
the events in onset order, with a connector that says whether the next one starts after the previous
ends ("then", "followed by") or while it still sounds ("while", "together with"); each clip gets
``captions_per_clip`` captions in different templates.

:func:`make_av_events` writes a split to disk (``clips/<id>.mp4`` with its audio track, ``clips/<id>.wav``,
``captions.jsonl``, a DESED-style ``events.tsv``, ``README.txt``); :class:`EmbeddedAVEvents` renders
the same clips in memory, as :class:`~percli.core.data.av_clips.AVClipDataset` items.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile
import torch
import torchaudio
from torch.utils.data import Dataset

from percli.core.data.embedded import _pixel_grid, _shape_sdf
from percli.core.data.embedded_audio import RATE, _event
from percli.core.data.paths import build_once, manifest_path
from percli.core.data.video import clip_indices

SPLITS = {"train": 0, "test": 1}  # seed stream of each split
_MIN_EVENT_MS = 500
_MAX_EVENT_MS = 1500
_MIN_ONSET_GAP_MS = 300
_SAMPLES_PER_MS = RATE // 1000
_FORMAT_VERSION = 1  # bump when the rendering changes, so cached folders are rebuilt


@dataclass(frozen=True)
class SoundEvent:
    """One event of the vocabulary: how it sounds, how it looks and how captions name it.

    Attributes:
        label: Its name in ``events.tsv`` and in strong labels.
        clause: Caption phrase as a clause ("a dog barks").
        noun: Caption phrase as a noun phrase ("a dog barking").
        sound: The :data:`percli.core.data.embedded_audio.CLASSES` sound it is made of.
        burst_ms: ``(min, max)`` length of one burst; None for one continuous sound.
        period_ms: ``(min, max)`` time from one burst to the next (bursts only).
        decay: Bursts decay exponentially (hits) instead of fading in and out.
        shape: The :data:`percli.core.data.embedded.CLASSES` shape drawn while it sounds.
        colour: RGB fill of the shape.
        motion: How the shape moves: jump, pulse, bounce, still, fly, shake, fall or spin.
    """

    label: str
    clause: str
    noun: str
    sound: str
    burst_ms: tuple[int, int] | None
    period_ms: tuple[int, int] | None
    decay: bool
    shape: str
    colour: tuple[int, int, int]
    motion: str


EVENTS: tuple[SoundEvent, ...] = (
    SoundEvent("dog_bark", "a dog barks", "a dog barking", "harmonic_tone", (120, 200), (350, 600), False,
               "circle", (205, 125, 45), "jump"),
    SoundEvent("siren", "a siren wails", "a siren", "trill", None, None, False, "ring", (230, 40, 40), "pulse"),
    SoundEvent("drum", "a drum beats", "a drum", "brown_noise", (120, 180), (250, 500), True,
               "square", (60, 90, 235), "bounce"),
    SoundEvent("whistle", "someone whistles", "a whistle", "pure_tone", None, None, False,
               "star", (240, 220, 40), "still"),
    SoundEvent("bird_chirp", "a bird chirps", "a bird chirping", "chirp_up", (60, 100), (150, 300), False,
               "triangle", (50, 200, 70), "fly"),
    SoundEvent("engine", "an engine rumbles", "an engine running", "brown_noise", None, None, False,
               "ellipse", (150, 150, 165), "shake"),
    SoundEvent("rain", "rain falls", "rain", "noise_burst", None, None, False,
               "vertical_stripes", (60, 210, 225), "fall"),
    SoundEvent("clock_tick", "a clock ticks", "a ticking clock", "click_train", None, None, False,
               "cross", (235, 235, 235), "spin"),
)
LABELS: tuple[str, ...] = tuple(e.label for e in EVENTS)
_BY_LABEL = {e.label: e for e in EVENTS}

# (prefix, phrase kind, connector when the next event starts after this one ends, connector when it overlaps)
CAPTION_TEMPLATES: tuple[tuple[str, str, str, str], ...] = (
    ("", "clause", ", then ", " while "),
    ("the sound of ", "noun", " followed by ", " together with "),
    ("you can hear ", "noun", ", and after that ", " and at the same time "),
    ("in this clip ", "clause", ", and next ", ", and meanwhile "),
    ("", "noun", ", later ", " mixed with "),
)

StrongLabel = tuple[str, float, float]


@dataclass(frozen=True)
class AVEventsSpec:
    """What a rendered clip looks like.

    Attributes:
        duration_s: Clip length in seconds (whole milliseconds).
        sample_rate: Audio rate in Hz (the synthesis runs at 16 kHz and is resampled).
        fps: Video frames per second; a clip has ``round(duration_s * fps)`` frames.
        size: Frame height and width in pixels (even, for the yuv420p video).
        captions_per_clip: Captions of each clip, each in another template (at most 5).
        max_events: Most events in a clip (1 to 8, drawn uniformly from 1..max_events).
    """

    duration_s: float = 4.0
    sample_rate: int = 16000
    fps: int = 8
    size: int = 64
    captions_per_clip: int = 3
    max_events: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.max_events <= len(EVENTS):
            raise ValueError(f"max_events={self.max_events}: choose 1 to {len(EVENTS)}")
        shortest = (_MIN_EVENT_MS + (self.max_events - 1) * _MIN_ONSET_GAP_MS) / 1000
        if self.duration_s < max(shortest, 2 * _MIN_EVENT_MS / 1000):
            raise ValueError(f"duration_s={self.duration_s}: {self.max_events} event(s) need at least "
                             f"{max(shortest, 1.0):g} s; raise duration_s or lower max_events")
        if self.sample_rate < 8000 or self.fps < 1:
            raise ValueError(f"sample_rate={self.sample_rate}, fps={self.fps}: need sample_rate >= 8000 and fps >= 1")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"size={self.size}: frames must be an even number of pixels, at least 16")
        if not 1 <= self.captions_per_clip <= len(CAPTION_TEMPLATES):
            raise ValueError(f"captions_per_clip={self.captions_per_clip}: choose 1 to {len(CAPTION_TEMPLATES)}")

    @property
    def num_frames(self) -> int:
        """Video frames of a clip."""
        return max(1, round(self.duration_s * self.fps))


@dataclass(frozen=True)
class AVEventClip:
    """One rendered clip.

    Attributes:
        id: ``<split>_<index:05d>``.
        audio: float32 [T] mono waveform in [-1, 1] at the spec's sample rate.
        frames: uint8 [F, H, W, 3] RGB frames at the spec's fps.
        events: Strong labels ``(label, onset_s, offset_s)`` in onset order.
        captions: Captions naming the events in onset order.
    """

    id: str
    audio: np.ndarray
    frames: np.ndarray
    events: tuple[StrongLabel, ...]
    captions: tuple[str, ...]


@dataclass(frozen=True)
class _Placed:
    """An event placed in a clip: its vocabulary entry, times (ms), burst period and look."""

    event: SoundEvent
    onset_ms: int
    offset_ms: int
    period_ms: int
    centre: tuple[float, float]
    radius: float
    angle: float
    shape_seed: int


# ------------------------------------------------------------------------------------------------ audio


def _fade(n: int, ramp: int) -> np.ndarray:
    """Raised-cosine fade in and out over ``ramp`` samples each (shortened for short sounds)."""
    env = np.ones(n)
    ramp = min(ramp, n // 2)
    if ramp:
        edge = 0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, ramp))
        env[:ramp], env[n - ramp :] = edge, edge[::-1]
    return env


def _audible(wave: np.ndarray) -> tuple[np.ndarray, int]:
    """The whole milliseconds of a peak-1 wave from its first to its last sample above -26 dB (5 %), and
    how many milliseconds were cut at its start (a click train's first click comes after its start)."""
    loud = np.flatnonzero(np.abs(wave) > 0.05)
    start_ms = int(loud[0]) // _SAMPLES_PER_MS
    end_ms = -(-(int(loud[-1]) + 1) // _SAMPLES_PER_MS)
    return wave[start_ms * _SAMPLES_PER_MS : end_ms * _SAMPLES_PER_MS], start_ms


def _event_wave(event: SoundEvent, length_ms: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """The 16 kHz sound of ``event`` within ``length_ms``, peak 1: ``(wave, lead_ms, period_ms)``.

    The wave (whole milliseconds) starts ``lead_ms`` after the asked onset and ends at its last audible
    sample, so it may be shorter than asked: burst sounds repeat one unit every ``period_ms`` and stop
    after the last whole burst; continuous ones have ``period_ms`` 0.
    """
    if event.burst_ms is None or event.period_ms is None:
        n = length_ms * _SAMPLES_PER_MS
        wave = _event(event.sound, n, rng) * _fade(n, 10 * _SAMPLES_PER_MS)
        return *_audible(wave / max(float(np.abs(wave).max()), 1e-9)), 0
    burst_ms = int(rng.integers(event.burst_ms[0], event.burst_ms[1] + 1))
    period_ms = int(rng.integers(event.period_ms[0], event.period_ms[1] + 1))
    count = 1 + (length_ms - burst_ms) // period_ms
    burst, period = burst_ms * _SAMPLES_PER_MS, period_ms * _SAMPLES_PER_MS
    unit = _event(event.sound, burst, rng)
    if event.decay:  # a hit: 2 ms attack, then an exponential decay over a quarter of the burst
        t = np.arange(burst)
        unit = unit * np.minimum(t / (2 * _SAMPLES_PER_MS), 1.0) * np.exp(-t / (burst / 4)) * _fade(burst, 16)
    else:
        unit = unit * _fade(burst, 5 * _SAMPLES_PER_MS)
    wave = np.zeros((count - 1) * period + burst)
    for k in range(count):
        wave[k * period : k * period + burst] += unit
    return *_audible(wave / max(float(np.abs(wave).max()), 1e-9)), period_ms


def _resample(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """A 16 kHz waveform at ``sample_rate`` (torchaudio's sinc resampler, deterministic on CPU)."""
    if sample_rate == RATE:
        return wave
    return torchaudio.functional.resample(torch.from_numpy(wave), RATE, sample_rate).numpy()


# ------------------------------------------------------------------------------------------------ video


def _pose(placed: _Placed, t_s: float, size: int) -> tuple[float, float, float, float]:
    """Centre x, y, radius and angle of an event's shape ``t_s`` seconds after its onset."""
    (cx, cy), radius, angle = placed.centre, placed.radius, placed.angle
    period = placed.period_ms / 1000 if placed.period_ms else 0.5
    phase = (t_s % period) / period  # 0 at each burst
    motion = placed.event.motion
    if motion == "jump":  # leaps up at each bark and settles
        cy -= 0.2 * size * (1.0 - phase)
    elif motion == "bounce":
        cy -= 0.2 * size * math.sin(math.pi * phase)
    elif motion == "pulse":
        radius *= 1.0 + 0.3 * math.sin(2 * math.pi * 2.0 * t_s)
    elif motion == "fly":
        cx = radius + (cx + 0.4 * size * t_s - radius) % (size - 2 * radius)
    elif motion == "shake":
        cx += 0.04 * size * math.sin(37.0 * t_s)
        cy += 0.04 * size * math.cos(29.0 * t_s)
    elif motion == "fall":
        cy = radius + (cy + 0.5 * size * t_s - radius) % (size - 2 * radius)
    elif motion == "spin":
        angle += math.pi * t_s
    return cx, cy, radius, angle


def _render_frames(placed: list[_Placed], spec: AVEventsSpec, rng: np.random.Generator) -> np.ndarray:
    """uint8 [F, H, W, 3]: the background with every event's shape in the frames its time span meets."""
    size, count = spec.size, spec.num_frames
    x, y = _pixel_grid(size)
    low, high = rng.uniform(10.0, 50.0, size=(2, 3))
    ramp = (x / size)[..., None] if rng.random() < 0.5 else (y / size)[..., None]  # [H, W, 1]
    background = (low + (high - low) * ramp).astype(np.float32)  # [H, W, 3]
    noise = rng.uniform(-6.0, 6.0, size=(count, size, size, 3)).astype(np.float32)
    frames = background[None] + noise  # [F, H, W, 3]
    for f in range(count):
        start_ms, end_ms = 1000 * f / spec.fps, 1000 * (f + 1) / spec.fps
        for p in placed:
            if not (start_ms < p.offset_ms and end_ms > p.onset_ms):
                continue
            t_s = max(0.0, (start_ms + end_ms) / 2 - p.onset_ms) / 1000
            cx, cy, radius, angle = _pose(p, t_s, size)
            cos_a, sin_a = math.cos(angle), math.sin(angle)
            u = (x - cx) * cos_a + (y - cy) * sin_a  # shape-local coordinates
            v = -(x - cx) * sin_a + (y - cy) * cos_a
            # A fresh generator per frame: the shape's own random traits (ring width, stripe period) stay put.
            sdf = _shape_sdf(p.event.shape, u, v, radius, np.random.default_rng(p.shape_seed))
            coverage = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]  # [H, W, 1], anti-aliased edge
            frames[f] += (np.asarray(p.event.colour, dtype=np.float32) - frames[f]) * coverage
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- captions


def caption_events(labels: list[StrongLabel], template: int) -> str:
    """The caption of strong labels (in onset order) in ``CAPTION_TEMPLATES[template]``."""
    prefix, kind, after, during = CAPTION_TEMPLATES[template]
    text = prefix
    for i, (label, _, _) in enumerate(labels):
        if i:
            text += during if labels[i][1] < labels[i - 1][2] else after
        text += getattr(_BY_LABEL[label], kind)
    return text


# ------------------------------------------------------------------------------------------------- clips


def _place_events(spec: AVEventsSpec, rng: np.random.Generator) -> list[tuple[SoundEvent, int, int]]:
    """Distinct events with onsets (ms) at least 0.3 s apart and lengths (ms, 0.5 s up to 1.5 s or half the clip)
    that end inside the clip."""
    clip_ms = round(spec.duration_s * 1000)
    count = int(rng.integers(1, spec.max_events + 1))
    kinds = rng.choice(len(EVENTS), size=count, replace=False)
    slack = clip_ms - _MIN_EVENT_MS - (count - 1) * _MIN_ONSET_GAP_MS
    onsets = np.sort(rng.integers(0, slack + 1, size=count)) + np.arange(count) * _MIN_ONSET_GAP_MS
    longest = max(_MIN_EVENT_MS, min(_MAX_EVENT_MS, clip_ms // 2))
    lengths = rng.integers(_MIN_EVENT_MS, longest + 1, size=count)
    return [(EVENTS[k], int(on), int(min(n, clip_ms - on))) for k, on, n in zip(kinds, onsets, lengths)]


def render_av_clip(seed: int, split: str, index: int, spec: AVEventsSpec | None = None) -> AVEventClip:
    """Render clip ``index`` of ``split`` (a pure function of its arguments).

    Args:
        seed: Base seed of the data set.
        split: ``"train"`` or ``"test"`` (disjoint seed streams).
        index: Clip number (>= 0).
        spec: Clip length, rates and sizes; the defaults when omitted.

    Returns:
        The clip's audio, frames, strong labels and captions.
    """
    if split not in SPLITS:
        raise ValueError(f"av_events split must be one of {', '.join(SPLITS)}, got {split!r}")
    if index < 0:
        raise ValueError(f"clip index must be >= 0, got {index}")
    spec = spec or AVEventsSpec()
    rng = np.random.default_rng([seed, SPLITS[split], index])
    clip_samples = round(spec.duration_s * 1000) * _SAMPLES_PER_MS
    audio = rng.standard_normal(clip_samples) * 10 ** (rng.uniform(-72.0, -62.0) / 20)
    placed = []
    for event, onset_ms, length_ms in _place_events(spec, rng):
        wave, lead_ms, period_ms = _event_wave(event, length_ms, rng)
        onset_ms += lead_ms
        start = onset_ms * _SAMPLES_PER_MS
        audio[start : start + wave.size] += wave * 10 ** (rng.uniform(-12.0, -6.0) / 20)
        radius = spec.size * float(rng.uniform(0.12, 0.17))
        margin = 1.2 * radius
        centre = (float(rng.uniform(margin, spec.size - margin)),
                  float(rng.uniform(margin + 0.2 * spec.size if event.motion in ("jump", "bounce") else margin,
                                    spec.size - margin)))
        textured = event.shape.endswith("stripes")  # stripes stay near vertical: rain falls down
        angle = float(rng.uniform(-0.1, 0.1) if textured else rng.uniform(0, 2 * math.pi))
        placed.append(_Placed(event, onset_ms, onset_ms + wave.size // _SAMPLES_PER_MS, period_ms, centre, radius,
                              angle, int(rng.integers(2**31))))
    placed.sort(key=lambda p: p.onset_ms)  # a late first click can shift an onset by up to 0.2 s
    peak = float(np.abs(audio).max())
    audio = _resample(audio / max(peak / 0.95, 1.0), spec.sample_rate).astype(np.float32)
    frames = _render_frames(placed, spec, rng)
    labels = [(p.event.label, p.onset_ms / 1000, p.offset_ms / 1000) for p in placed]
    templates = rng.choice(len(CAPTION_TEMPLATES), size=spec.captions_per_clip, replace=False)
    return AVEventClip(f"{split}_{index:05d}", audio, frames, tuple(labels),
                       tuple(caption_events(labels, int(t)) for t in templates))


# ------------------------------------------------------------------------------------------------ files


def write_av_mp4(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray, sample_rate: int) -> None:
    """Encode uint8 frames [F, H, W, 3] (MPEG-4 part 2, yuv420p) with a mono AAC track of ``audio`` [T].

    Bit-exact flags make the bytes a function of the inputs. The minibench writer
    (:func:`percli.avsuperb.minibench.write_video`) fixes its track at 16 kHz and sits above ``core``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        video = container.add_stream("mpeg4", rate=fps, options={"flags": "+bitexact"})
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate, options={"flags": "+bitexact"})
        sound.layout = "mono"
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode(None))
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None]  # [1, T] packed s16
        chunk = 1024  # AAC frame size
        for start in range(0, pcm.shape[1], chunk):
            block = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, start : start + chunk]), format="s16",
                                               layout="mono")
            block.sample_rate, block.pts = sample_rate, start
            container.mux(sound.encode(block))
        container.mux(sound.encode(None))


def _readme(split: str, num_clips: int, seed: int, spec: AVEventsSpec) -> str:
    vocabulary = "\n".join(f"  {e.label:<11} {e.noun:<17} sound: {e.sound:<13} video: {e.motion} {e.shape}, "
                           f"RGB {e.colour}" for e in EVENTS)
    return f"""percli embedded audio-video events, split {split!r}: {num_clips} clips, seed {seed}
Synthetic, written by percli.core.data.av_events (no published data). Same seed, same bytes.

Each clip: {spec.duration_s:g} s, mono audio at {spec.sample_rate} Hz, {spec.num_frames} RGB frames of
{spec.size}x{spec.size} at {spec.fps} fps, 1 to {spec.max_events} distinct events over a quiet background.

Files:
  clips/<id>.mp4    video (MPEG-4) with the audio as an AAC track
  clips/<id>.wav    the audio, 16-bit PCM (the reference: the AAC track adds encoder delay)
  captions.jsonl    one line per clip: {{"id", "video", "audio", "captions": [{spec.captions_per_clip} captions]}},
                    paths relative to this folder; captions name the events in onset order
  events.tsv        strong labels in the DESED layout: filename, onset, offset (s), event_label;
                    each event is audible and visible exactly between onset and offset

Events (label, caption phrase, how it sounds and looks):
{vocabulary}
"""


def _write_split(folder: Path, split: str, num_clips: int, seed: int, spec: AVEventsSpec) -> None:
    captions, rows = [], ["filename\tonset\toffset\tevent_label\n"]
    for index in range(num_clips):
        clip = render_av_clip(seed, split, index, spec)
        video, audio = folder / "clips" / f"{clip.id}.mp4", folder / "clips" / f"{clip.id}.wav"
        write_av_mp4(video, clip.frames, spec.fps, clip.audio, spec.sample_rate)
        soundfile.write(str(audio), clip.audio, spec.sample_rate, subtype="PCM_16")
        captions.append({"id": clip.id, "video": manifest_path(folder, video), "audio": manifest_path(folder, audio),
                         "captions": list(clip.captions)})
        rows += [f"{audio.name}\t{onset:.3f}\t{offset:.3f}\t{label}\n" for label, onset, offset in clip.events]
    (folder / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in captions), encoding="utf-8")
    (folder / "events.tsv").write_text("".join(rows), encoding="utf-8")
    (folder / "README.txt").write_text(_readme(split, num_clips, seed, spec), encoding="utf-8")


def make_av_events(root: str | Path, num_clips: int, seed: int = 0, split: str = "train",
                   spec: AVEventsSpec | None = None) -> Path:
    """Write (or reuse) one split of the embedded audio-video event set in ``root``.

    The folder is built beside ``root`` and renamed into place, with a ``.complete`` marker holding
    the arguments; a folder whose marker matches is reused as it is, one with another marker is
    rebuilt. Not safe for two processes building the same folder at once.

    Args:
        root: Output folder (created; must be empty or an earlier output of this function).
        num_clips: Clips to write (>= 1).
        seed: Base seed; the same seed writes the same bytes.
        split: ``"train"`` or ``"test"`` (disjoint clips).
        spec: Clip length, rates and sizes; the defaults when omitted.

    Returns:
        The ``captions.jsonl`` manifest (what :class:`~percli.core.data.av_clips.AVClipDataset` reads).
    """
    if split not in SPLITS:
        raise ValueError(f"av_events split must be one of {', '.join(SPLITS)}, got {split!r}")
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    spec = spec or AVEventsSpec()
    wanted = {"version": _FORMAT_VERSION, "seed": seed, "split": split, "num_clips": num_clips, "spec": asdict(spec)}
    root = build_once(root, wanted, lambda folder: _write_split(folder, split, num_clips, seed, spec), "av_events data")
    return root / "captions.jsonl"


def make_av_events_splits(root: str | Path, seed: int = 0, num_train: int = 200, num_test: int = 50,
                          spec: AVEventsSpec | None = None) -> dict[str, Path]:
    """Write (or reuse) ``root/train`` and ``root/test`` with :func:`make_av_events`.

    Returns:
        Split name -> its ``captions.jsonl``.
    """
    sizes = {"train": num_train, "test": num_test}
    return {split: make_av_events(Path(root) / split, sizes[split], seed, split, spec) for split in SPLITS}


class EmbeddedAVEvents(Dataset):
    """The clips of :func:`make_av_events`, rendered in memory on demand (nothing touches the disk).

    Args:
        num_clips: Dataset length.
        seed: Base seed; the same seed gives the clips :func:`make_av_events` writes.
        split: ``"train"`` or ``"test"``.
        spec: Clip length, rates and sizes; the defaults when omitted.
        num_frames: Frames per item, spread evenly over the clip; all frames when omitted.

    Items: ``{"id", "waveform": float32 [1, T], "frames": uint8 [N, 3, H, W], "captions": [str],
    "events": [(label, onset_s, offset_s)]}``, the items of
    :class:`~percli.core.data.av_clips.AVClipDataset` plus the strong labels.
    """

    def __init__(self, num_clips: int, *, seed: int = 0, split: str = "train", spec: AVEventsSpec | None = None,
                 num_frames: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"av_events split must be one of {', '.join(SPLITS)}, got {split!r}")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_clips, self.seed, self.split = int(num_clips), seed, split
        self.spec = spec or AVEventsSpec()
        self.num_frames = num_frames
        self.classes = list(LABELS)

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        clip = render_av_clip(self.seed, self.split, index, self.spec)
        frames = clip.frames
        if self.num_frames is not None:
            frames = frames[clip_indices(len(frames), self.num_frames, 0, train=False)]
        return {"id": clip.id, "waveform": torch.from_numpy(clip.audio)[None],
                "frames": torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2),  # [N,H,W,3]->[N,3,H,W]
                "captions": list(clip.captions), "events": list(clip.events)}
