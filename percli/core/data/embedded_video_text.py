"""Embedded multilingual video-text data: "videos" of per-second features with timed English and German
captions, rendered on a CPU from a seed, no download.

Origin: written for percli (not derived from any published dataset). Of the two ways to make such data --
features computed from rendered clips, or synthetic feature sequences with an embedding per event -- this
module takes the first: every video is drawn with the moving-shape renderer of
:mod:`percli.core.data.av_events` and its per-second features are computed from the pixels, so they carry
what the captions say only as far as the pixels show it.

Video ``index`` of a split is a pure function of ``(seed, split, index)`` and a :class:`VideoTextSpec` (a
NumPy ``SeedSequence`` of the three numbers drives every choice, as in av_events); ``train`` and ``test``
(the held-out retrieval split) use different seed streams and id prefixes. A video lasts 8 to 20 s (whole
seconds) and shows a sequence of events, one after the other (2 to 4 s each, gaps up to 1 s). An event is a
shape of :mod:`percli.core.data.embedded` (:data:`SHAPES`) in a colour (:data:`COLOURS`) moving one of
av_events' ways (:data:`MOTIONS`; shape, colour and motion drawn independently, no two events of a video
alike), over a dark gradient with pixel noise. Each event gets one caption per language with the event's
start and end, from one of four templates, the two languages aligned caption by caption:
"now a red circle jumps" / "jetzt springt ein roter Kreis".

Per-second features: a stand-in for S3D (which VideoCLIP reads at 512-d, one token per second), computed
from the frames of each second: whether a shape is there, its mean colour, rotation-invariant shape
statistics (radial mass profile around its centroid, elongation, spread, size), motion statistics
(centroid velocity and its extremes, area change for pulsing, angular-profile change for spinning) and the
background colour (a nuisance), 26 numbers (:func:`second_descriptors`), mapped by a fixed random
projection (the same for every seed) to ``feature_dim`` (512 by default; 0 keeps the raw 26). A shape is
told from the background by brightness (palette colours have a channel >= 150, the background stays
below 60). Rendering and features cost about 25 ms per video (14 s on average) on one CPU core at the default
48 px and 8 fps: 300 videos in under 10 s.

:func:`make_video_text` writes a split in the layout :class:`~percli.core.data.video_text.HowToVideoText`
reads (``how2_en.json``, ``how2_de.json``, ``features/<id>.npy``) plus ``clips_<lang>.csv``, one row per
event in the YouCook2 layout :func:`~percli.core.data.video_text.read_youcook2` reads (clip retrieval), and a
README; :class:`EmbeddedVideoText` renders the same videos in memory (cached) as ``HowToVideoText`` items.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from percli.core.data.av_events import AVEventsSpec, SoundEvent, _Placed, _render_frames
from percli.core.data.embedded import _pixel_grid
from percli.core.data.paths import build_once
from percli.core.data.video_retrieval import YOUCOOK2_COLUMNS
from percli.core.data.video_text import TimedCaptions

SPLITS = {"train": 0, "test": 1}  # seed stream of each split
LANGUAGES = ("en", "de")
DESCRIPTOR_DIM = 26
_PROJECTION_SEED = 0x5EED_0F_53D  # fixed: every seed and split shares one projection
_FORMAT_VERSION = 1  # bump when rendering or features change, so cached folders are rebuilt

# (name as the renderer knows it, English, German noun, German gender)
SHAPES: tuple[tuple[str, str, str, str], ...] = (
    ("circle", "circle", "Kreis", "m"),
    ("square", "square", "Quadrat", "n"),
    ("triangle", "triangle", "Dreieck", "n"),
    ("star", "star", "Stern", "m"),
    ("ring", "ring", "Ring", "m"),
    ("cross", "cross", "Kreuz", "n"),
    ("ellipse", "ellipse", "Ellipse", "f"),
)
# (English, German adjective stem, RGB): each has a channel >= 150, which is how a shape is found
COLOURS: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("red", "rot", (230, 40, 40)),
    ("green", "grün", (50, 200, 70)),
    ("blue", "blau", (60, 90, 235)),
    ("yellow", "gelb", (240, 220, 40)),
    ("white", "weiß", (235, 235, 235)),
    ("grey", "grau", (150, 150, 165)),
)
# (av_events motion, English verb phrase, German finite verb, German rest of the predicate, reflexive)
MOTIONS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("jump", "jumps", "springt", "", False),
    ("bounce", "bounces", "hüpft", "", False),
    ("pulse", "pulses", "pulsiert", "", False),
    ("still", "stays still", "bleibt", "ruhig", False),
    ("fly", "glides to the right", "gleitet", "nach rechts", False),
    ("shake", "shakes", "zittert", "", False),
    ("fall", "falls down", "fällt", "nach unten", False),
    ("spin", "spins", "dreht", "", True),
)
_ROUND_SHAPES = {"circle", "ring"}  # a spinning circle looks still: they never spin
_NOMINATIVE = {"m": ("ein", "er", "der"), "f": ("eine", "e", "die"), "n": ("ein", "es", "das")}
_ACCUSATIVE = {"m": ("einen", "en"), "f": ("eine", "e"), "n": ("ein", "es")}
TEMPLATES = ("plain", "now", "we_see", "then")


@dataclass(frozen=True)
class VideoTextSpec:
    """What a rendered video looks like.

    Attributes:
        min_duration_s: Shortest video in whole seconds.
        max_duration_s: Longest video in whole seconds.
        min_event_s: Shortest event.
        max_event_s: Longest event.
        max_gap_s: Longest pause between two events (and before the first).
        fps: Rendered frames per second (the features pool each second's frames).
        size: Frame side in pixels (even, >= 16).
        feature_dim: Width of the per-second features (a fixed random projection of the 26 descriptor
            numbers); 0 keeps the raw descriptor.
    """

    min_duration_s: int = 8
    max_duration_s: int = 20
    min_event_s: float = 2.0
    max_event_s: float = 4.0
    max_gap_s: float = 1.0
    fps: int = 8
    size: int = 48
    feature_dim: int = 512

    def __post_init__(self) -> None:
        if not 0 < self.min_event_s <= self.max_event_s or self.max_gap_s < 0:
            raise ValueError(f"events {self.min_event_s}..{self.max_event_s} s, gaps up to {self.max_gap_s} s: "
                             "need 0 < min_event_s <= max_event_s and max_gap_s >= 0")
        if not self.min_event_s + self.max_gap_s <= self.min_duration_s <= self.max_duration_s:
            raise ValueError(f"durations {self.min_duration_s}..{self.max_duration_s} s: need min_event_s + "
                             "max_gap_s <= min_duration_s <= max_duration_s (every video holds an event)")
        if self.fps < 2 or self.size < 16 or self.size % 2 or self.feature_dim < 0:
            raise ValueError(f"fps={self.fps}, size={self.size}, feature_dim={self.feature_dim}: need fps >= 2 "
                             "(motion needs two frames a second), an even size >= 16 and feature_dim >= 0")

    @property
    def dim(self) -> int:
        """D of the features."""
        return self.feature_dim or DESCRIPTOR_DIM


@dataclass(frozen=True)
class VideoEvent:
    """One event of a video: what is shown, and when (seconds, whole milliseconds)."""

    shape: str
    colour: str
    motion: str
    start: float
    end: float


@dataclass(frozen=True)
class EmbeddedVideo:
    """One rendered video.

    Attributes:
        id: ``<split>_<index:05d>``.
        features: float32 [T, D], one row per second.
        captions: Language -> captions, one per event, aligned across languages.
        events: The events in time order.
    """

    id: str
    features: np.ndarray
    captions: dict[str, TimedCaptions]
    events: tuple[VideoEvent, ...]


# ---------------------------------------------------------------------------------------------- captions


def caption_event(event: VideoEvent, template: int, language: str) -> str:
    """The caption of ``event`` in ``TEMPLATES[template]`` and ``language`` ("en" or "de")."""
    shape = next(s for s in SHAPES if s[0] == event.shape)
    colour = next(c for c in COLOURS if c[0] == event.colour)
    motion = next(m for m in MOTIONS if m[0] == event.motion)
    kind = TEMPLATES[template]
    if language == "en":
        phrase = f"a {colour[0]} {shape[1]}"
        prefix = {"plain": "", "now": "now ", "we_see": "here we see ", "then": "then "}[kind]
        return f"{prefix}{phrase} that {motion[1]}" if kind == "we_see" else f"{prefix}{phrase} {motion[1]}"
    if language != "de":
        raise ValueError(f"embedded captions come in {', '.join(LANGUAGES)}, not {language!r}")
    _, _, noun, gender = shape
    _, finite, rest, reflexive = motion[1:]
    article, ending, relative = _NOMINATIVE[gender]
    subject = f"{article} {colour[1]}{ending} {noun}"
    sich = " sich" if reflexive else ""
    tail = f" {rest}" if rest else ""
    if kind == "plain":  # verb second, after the subject
        return f"{subject} {finite}{sich}{tail}"
    if kind in ("now", "then"):  # verb second, after the adverb; the reflexive pronoun comes before the subject
        return f"{'jetzt' if kind == 'now' else 'dann'} {finite}{sich} {subject}{tail}"
    acc_article, acc_ending = _ACCUSATIVE[gender]  # relative clause: verb last
    return f"hier sehen wir {acc_article} {colour[1]}{acc_ending} {noun}, {relative}{sich}{tail} {finite}"


# -------------------------------------------------------------------------------------------- features


_RADIAL_EDGES = np.array([0.3, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0], dtype=np.float32)  # in radii of a disc of equal area


def _frame_statistics(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame: shape mask area, colour, centroid, radial and angular profiles, elongation, spread, background."""
    count, size = frames.shape[0], frames.shape[1]
    brightest = np.maximum(np.maximum(frames[..., 0], frames[..., 1]), frames[..., 2]).astype(np.float32)
    fg = np.clip((brightest - 80.0) / 60.0, 0.0, 1.0)  # [F, H, W]: 1 on a shape, 0 on the background
    area = fg.sum(axis=(1, 2))  # [F]
    safe = np.maximum(area, 1e-6)
    x, y = _pixel_grid(size)
    cx = (fg * x).sum(axis=(1, 2)) / safe
    cy = (fg * y).sum(axis=(1, 2)) / safe
    dx, dy = x[None] - cx[:, None, None], y[None] - cy[:, None, None]  # [F, H, W]
    m20, m02, m11 = ((fg * d).sum(axis=(1, 2)) / safe for d in (dx * dx, dy * dy, dx * dy))
    half_trace = (m20 + m02) / 2
    root = np.sqrt(np.maximum(half_trace**2 - (m20 * m02 - m11**2), 0.0))
    elongation = 1.0 - (half_trace - root) / np.maximum(half_trace + root, 1e-6)
    spread = 2 * half_trace / safe  # 1 / (2 pi) for a disc, more for rings, stars and crosses
    radius = np.sqrt(dx * dx + dy * dy) / np.sqrt(safe / math.pi)[:, None, None]
    frame = np.arange(count)[:, None, None] * 8  # [F, 1, 1]: each frame's first of 8 bins

    def profile(bins: np.ndarray) -> np.ndarray:  # [F, H, W] bin 0..7 -> [F, 8] mask fractions
        return np.bincount((frame + bins).ravel(), fg.ravel(), count * 8).reshape(count, 8) / safe[:, None]

    radial = profile(np.digitize(radius, _RADIAL_EDGES))
    angular = profile(((np.arctan2(dy, dx) + math.pi) / (2 * math.pi) * 8).astype(np.int64) % 8)
    pixels = frames.astype(np.float32)
    colour = np.einsum("fhw,fhwc->fc", fg, pixels) / safe[:, None] / 255.0  # [F, 3]
    back = 1.0 - fg
    background = np.einsum("fhw,fhwc->fc", back, pixels) / np.maximum(back.sum(axis=(1, 2)), 1.0)[:, None] / 255
    return {"present": area >= 4.0, "area": area, "cx": cx / size, "cy": cy / size, "colour": colour,
            "radial": radial, "angular": angular, "elongation": elongation, "spread": spread,
            "size": np.sqrt(area) / size, "background": background}


def second_descriptors(frames: np.ndarray, fps: int) -> np.ndarray:
    """The 26 numbers of each whole second of uint8 frames [F, H, W, 3] (module docstring): float32 [F // fps, 26].

    Columns: presence (1), colour (3), radial profile (8), elongation, spread, size (3), motion (8: mean x and
    y velocity, mean |x| and |y| velocity, largest and smallest y velocity, mean |log area change|, mean
    angular-profile change) and background colour (3). Appearance is averaged over the second's frames that
    show a shape, motion over its pairs of consecutive such frames (a jump of more than a quarter frame --
    a shape wrapping round the edge, or the next event -- is left out); zeros where there are none.
    """
    stats = _frame_statistics(frames)
    seconds = frames.shape[0] // fps
    out = np.zeros((seconds, DESCRIPTOR_DIM), dtype=np.float32)
    present = stats["present"]
    vx, vy = np.diff(stats["cx"], prepend=stats["cx"][:1]), np.diff(stats["cy"], prepend=stats["cy"][:1])
    log_area = np.log(np.maximum(stats["area"], 1.0))
    area_change = np.abs(np.diff(log_area, prepend=log_area[:1]))
    angular_change = 0.5 * np.abs(np.diff(stats["angular"], axis=0, prepend=stats["angular"][:1])).sum(axis=1)
    paired = present & np.roll(present, 1) & (np.hypot(vx, vy) < 0.25)
    paired[0] = False
    for second in range(seconds):
        window = slice(second * fps, (second + 1) * fps)
        shown, moving = present[window], paired[window]
        row = [np.array([shown.mean()])]
        if shown.any():
            row += [stats[key][window][shown].mean(axis=0, keepdims=key not in ("colour", "radial"))
                    for key in ("colour", "radial", "elongation", "spread", "size")]
        else:
            row += [np.zeros(3), np.zeros(8), np.zeros(1), np.zeros(1), np.zeros(1)]
        if moving.any():
            mx, my = vx[window][moving], vy[window][moving]
            row.append(10.0 * np.array([mx.mean(), my.mean(), np.abs(mx).mean(), np.abs(my).mean(), my.max(),
                                        my.min(), area_change[window][moving].mean() / 10.0,
                                        angular_change[window][moving].mean()]))
        else:
            row.append(np.zeros(8))
        row.append(stats["background"][window].mean(axis=0))
        out[second] = np.concatenate([np.ravel(part) for part in row])
    return out


def _projection(feature_dim: int) -> np.ndarray:
    """The fixed [26, feature_dim] random projection (Gaussian, variance 1 / 26)."""
    rng = np.random.default_rng(_PROJECTION_SEED)
    return (rng.standard_normal((DESCRIPTOR_DIM, feature_dim)) / math.sqrt(DESCRIPTOR_DIM)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- videos


def _draw_events(duration_s: int, spec: VideoTextSpec, rng: np.random.Generator) -> list[VideoEvent]:
    """Events one after another, each of another (shape, colour, motion) than the video's earlier ones."""
    events: list[VideoEvent] = []
    t_ms = int(rng.integers(0, round(spec.max_gap_s * 1000) + 1))
    end_ms = duration_s * 1000
    least, most = round(spec.min_event_s * 1000), round(spec.max_event_s * 1000)
    while end_ms - t_ms >= least:
        length = min(int(rng.integers(least, most + 1)), end_ms - t_ms)
        while True:
            shape = SHAPES[int(rng.integers(len(SHAPES)))][0]
            colour = COLOURS[int(rng.integers(len(COLOURS)))][0]
            motion = MOTIONS[int(rng.integers(len(MOTIONS)))][0]
            fresh = all((e.shape, e.colour, e.motion) != (shape, colour, motion) for e in events)
            if fresh and not (motion == "spin" and shape in _ROUND_SHAPES):
                break
        events.append(VideoEvent(shape, colour, motion, t_ms / 1000, (t_ms + length) / 1000))
        t_ms += length + int(rng.integers(0, round(spec.max_gap_s * 1000) + 1))
    return events


def _place(event: VideoEvent, spec: VideoTextSpec, rng: np.random.Generator) -> _Placed:
    """The renderer's placement of an event (``_render_frames`` reads shape, colour and motion of its look)."""
    rgb = next(c for c in COLOURS if c[0] == event.colour)[2]
    look = SoundEvent(f"{event.colour}_{event.shape}_{event.motion}", "", "", "", None, None, False, event.shape,
                      rgb, event.motion)
    radius = spec.size * float(rng.uniform(0.14, 0.2))
    margin = 1.2 * radius
    top = margin + 0.2 * spec.size if event.motion in ("jump", "bounce") else margin
    centre = (float(rng.uniform(margin, spec.size - margin)), float(rng.uniform(top, spec.size - margin)))
    period_ms = int(rng.integers(400, 701)) if event.motion in ("jump", "bounce") else 0
    return _Placed(look, round(event.start * 1000), round(event.end * 1000), period_ms, centre, radius,
                   float(rng.uniform(0, 2 * math.pi)), int(rng.integers(2**31)))


def render_video(seed: int, split: str, index: int, spec: VideoTextSpec | None = None) -> EmbeddedVideo:
    """Render video ``index`` of ``split`` (a pure function of its arguments).

    Args:
        seed: Base seed of the data set.
        split: ``"train"`` or ``"test"`` (disjoint seed streams and ids).
        index: Video number (>= 0).
        spec: Durations, rendering and feature width; the defaults when omitted.

    Returns:
        The video's per-second features, aligned English and German captions, and events.
    """
    if split not in SPLITS:
        raise ValueError(f"embedded video-text split must be one of {', '.join(SPLITS)}, got {split!r}")
    if index < 0:
        raise ValueError(f"video index must be >= 0, got {index}")
    spec = spec or VideoTextSpec()
    rng = np.random.default_rng([seed, SPLITS[split], index])
    duration = int(rng.integers(spec.min_duration_s, spec.max_duration_s + 1))
    events = _draw_events(duration, spec, rng)
    placed = [_place(event, spec, rng) for event in events]
    frames = _render_frames(placed, AVEventsSpec(duration_s=float(duration), fps=spec.fps, size=spec.size), rng)
    features = second_descriptors(frames, spec.fps)  # [T, 26]
    if spec.feature_dim:
        features = features @ _projection(spec.feature_dim)  # [T, 26] -> [T, D]
    templates = rng.integers(len(TEMPLATES), size=len(events))
    captions = {lang: TimedCaptions(tuple(caption_event(e, int(t), lang) for e, t in zip(events, templates)),
                                    tuple(e.start for e in events), tuple(e.end for e in events))
                for lang in LANGUAGES}
    return EmbeddedVideo(f"{split}_{index:05d}", np.ascontiguousarray(features, dtype=np.float32), captions,
                         tuple(events))


class EmbeddedVideoText(Dataset):
    """The videos of :func:`make_video_text`, rendered in memory on first use and cached (no disk).

    Args:
        num_videos: Dataset length.
        seed: Base seed; the same seed gives the videos :func:`make_video_text` writes.
        split: ``"train"`` or ``"test"`` (the held-out retrieval split).
        spec: Durations, rendering and feature width; the defaults when omitted.

    Items: ``{"id", "features": float32 [T, D], "captions": {"en": TimedCaptions, "de": TimedCaptions},
    "events": [VideoEvent]}``, the items of :class:`~percli.core.data.video_text.HowToVideoText` plus the events.
    """

    def __init__(self, num_videos: int, *, seed: int = 0, split: str = "train",
                 spec: VideoTextSpec | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"embedded video-text split must be one of {', '.join(SPLITS)}, got {split!r}")
        if num_videos < 1:
            raise ValueError(f"num_videos must be >= 1, got {num_videos}")
        self.num_videos, self.seed, self.split = int(num_videos), seed, split
        self.spec = spec or VideoTextSpec()
        self.languages = LANGUAGES
        self._cache: dict[int, EmbeddedVideo] = {}

    def __len__(self) -> int:
        return self.num_videos

    def video(self, index: int) -> EmbeddedVideo:
        """Video ``index``, rendered once per process."""
        if not 0 <= index < self.num_videos:
            raise IndexError(f"index {index} out of range for {self.num_videos} videos")
        if index not in self._cache:
            self._cache[index] = render_video(self.seed, self.split, index, self.spec)
        return self._cache[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        video = self.video(index)
        return {"id": video.id, "features": torch.from_numpy(video.features), "captions": dict(video.captions),
                "events": list(video.events)}


# ------------------------------------------------------------------------------------------------ files


def _readme(split: str, num_videos: int, seed: int, spec: VideoTextSpec) -> str:
    return f"""percli embedded video-text data, split {split!r}: {num_videos} videos, seed {seed}
Synthetic, written by percli.core.data.embedded_video_text (no published data). Same seed, same bytes.

Each video: {spec.min_duration_s} to {spec.max_duration_s} s of moving shapes, one event after another, with
per-second features (a {spec.dim}-d stand-in for S3D, computed from the rendered frames) and one caption per
event in English and German with its start and end in seconds.

Files:
  how2_en.json, how2_de.json   {{video_id: {{"text": [...], "start": [...], "end": [...]}}}} (Multi-HowTo100M layout)
  features/<video_id>.npy      float32 [T, {spec.dim}], one row per second (no pickle)
  clips_en.csv, clips_de.csv   video_id,start,end,sentence: one row per event (YouCook2 clip layout)

Shapes: {", ".join(s[1] for s in SHAPES)}. Colours: {", ".join(c[0] for c in COLOURS)}.
Motions: {", ".join(m[1] for m in MOTIONS)}.
"""


def _write_split(folder: Path, split: str, num_videos: int, seed: int, spec: VideoTextSpec) -> None:
    (folder / "features").mkdir(parents=True)
    captions: dict[str, dict[str, Any]] = {lang: {} for lang in LANGUAGES}
    clips = {lang: io.StringIO(newline="") for lang in LANGUAGES}
    writers = {lang: csv.writer(clips[lang], lineterminator="\n") for lang in LANGUAGES}
    for writer in writers.values():
        writer.writerow(YOUCOOK2_COLUMNS)
    for index in range(num_videos):
        video = render_video(seed, split, index, spec)
        np.save(folder / "features" / f"{video.id}.npy", video.features, allow_pickle=False)
        for lang, timed in video.captions.items():
            captions[lang][video.id] = {"text": list(timed.text), "start": list(timed.start), "end": list(timed.end)}
            writers[lang].writerows((video.id, s, e, text) for text, s, e in zip(timed.text, timed.start, timed.end))
    for lang in LANGUAGES:
        (folder / f"how2_{lang}.json").write_text(json.dumps(captions[lang], ensure_ascii=False), encoding="utf-8")
        (folder / f"clips_{lang}.csv").write_text(clips[lang].getvalue(), encoding="utf-8")
    (folder / "README.txt").write_text(_readme(split, num_videos, seed, spec), encoding="utf-8")


def make_video_text(root: str | Path, num_videos: int, seed: int = 0, split: str = "train",
                    spec: VideoTextSpec | None = None) -> Path:
    """Write (or reuse) one split of the embedded video-text data in ``root``.

    As :func:`~percli.core.data.av_events.make_av_events`: built beside ``root`` and renamed into place with a
    ``.complete`` marker holding the arguments; a folder whose marker matches is reused, one with another
    marker rebuilt. Not safe for two processes building the same folder at once.

    Args:
        root: Output folder (created; must be empty or an earlier output of this function).
        num_videos: Videos to write (>= 1).
        seed: Base seed; the same seed writes the same bytes.
        split: ``"train"`` or ``"test"``.
        spec: Durations, rendering and feature width; the defaults when omitted.

    Returns:
        ``root``: what :class:`~percli.core.data.video_text.HowToVideoText` reads (captions and ``features/``).
    """
    if split not in SPLITS:
        raise ValueError(f"embedded video-text split must be one of {', '.join(SPLITS)}, got {split!r}")
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    spec = spec or VideoTextSpec()
    wanted = {"version": _FORMAT_VERSION, "seed": seed, "split": split, "num_videos": num_videos, "spec": asdict(spec)}
    return build_once(root, wanted, lambda folder: _write_split(folder, split, num_videos, seed, spec),
                      "embedded video-text data")


def make_video_text_splits(root: str | Path, seed: int = 0, num_train: int = 200, num_test: int = 50,
                           spec: VideoTextSpec | None = None) -> dict[str, Path]:
    """Write (or reuse) ``root/train`` and ``root/test`` (held-out retrieval) with :func:`make_video_text`."""
    sizes = {"train": num_train, "test": num_test}
    return {split: make_video_text(Path(root) / split, sizes[split], seed, split, spec) for split in SPLITS}
