"""Embedded video clips for classification and video pretraining: one moving shape per clip, the class is
how it moves. No download, rendered on a CPU from a seed.

Origin: written for percli (not derived from any published dataset). Clip ``index`` of a split is a pure
function of ``(seed, split, index, num_frames, size)``: a shape of :data:`~percli.core.data.embedded_video_text.SHAPES`
in a colour of its :data:`COLOURS` moves one of the eight ways of the audio-visual renderer
(:mod:`percli.core.data.av_events`: jump, bounce, pulse, still, fly, shake, fall, spin) for the whole clip, over
a dark gradient with pixel noise. Shape, colour, place, size and phase are drawn at random, so only the motion
tells the class: one frame shows which shape it is, not which class (apart from ``still``, told by the absence
of motion). Class ``index % 8``; ``train`` and ``val`` use disjoint seed streams.

Two rendering styles serve as two domains (domain adaptation, `percli finetune amvc`): ``studio`` (the default:
the coloured shape over a dark gradient) and ``film`` (the same kind of scene shot on grainy black-and-white film:
grey levels, lifted blacks, lower contrast, coarse grain). The motion, and so the class, reads the same in both; a
model that learned the studio look meets new pixel statistics in the film one. The two styles draw from disjoint
seed streams.

Frames are rendered at 8 frames per second (a clip of ``num_frames`` frames lasts ``num_frames / 8`` s; clips
shorter than 8 frames last 1 s), as uint8 [T, C, H, W], the layout
:class:`~percli.core.data.video.VideoClipDataset` hands its transform. About 1 ms per 16-frame 32 px clip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from percli.core.data.av_events import AVEventsSpec, _render_frames
from percli.core.data.embedded_video_text import (
    _ROUND_SHAPES,
    COLOURS,
    MOTIONS,
    SHAPES,
    VideoEvent,
    VideoTextSpec,
    _place,
)

CLASSES: tuple[str, ...] = tuple(m[0] for m in MOTIONS)
_SPLIT_STREAMS = {"train": 0, "val": 1}
_DEFAULT_SIZES = {"train": 2000, "val": 500}
FPS = 8


STYLES: tuple[str, ...] = ("studio", "film")


def film_look(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The ``film`` style of uint8 [T, H, W, 3] frames: grey levels at 0.8 contrast over lifted blacks (+40), with
    coarse grain (sigma 18 in 2x2 clumps)."""
    grey = frames.astype(np.float32).mean(axis=-1, keepdims=True)
    t, h, w, _ = frames.shape
    grain = rng.normal(0.0, 18.0, size=(t, (h + 1) // 2, (w + 1) // 2, 1)).astype(np.float32)
    grain = grain.repeat(2, axis=1).repeat(2, axis=2)[:, :h, :w]
    return np.clip(0.8 * grey + 40.0 + grain, 0, 255).astype(np.uint8).repeat(3, axis=-1)


def render_clip(label: int, rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """uint8 [T, H, W, 3]: one shape moving as ``CLASSES[label]`` for ``num_frames`` frames of ``size`` px."""
    motion = CLASSES[label]
    shapes = [s[0] for s in SHAPES if not (motion == "spin" and s[0] in _ROUND_SHAPES)]
    shape = shapes[int(rng.integers(len(shapes)))]
    colour = COLOURS[int(rng.integers(len(COLOURS)))][0]
    duration = max(1.0, num_frames / FPS)
    placed = _place(VideoEvent(shape, colour, motion, 0.0, duration), VideoTextSpec(size=size), rng)
    spec = AVEventsSpec(duration_s=duration, fps=round(num_frames / duration), size=size, max_events=1)
    return _render_frames([placed], spec, rng)


class EmbeddedMotionClips(Dataset):
    """The embedded video dataset (module docstring): ``data.source=embedded`` for a video model.

    Args:
        split: ``"train"`` or ``"val"`` (disjoint clips).
        num_clips: Dataset length; 2000 for train and 500 for val when omitted.
        num_frames: Frames per clip.
        image_size: Side of the square frames (even, >= 16).
        seed: Base seed; the same seed gives the same clips.
        style: ``studio`` or ``film`` (module docstring).
        transform: Called on the uint8 clip [T, C, H, W] (e.g.
            :func:`~percli.core.data.transforms.video_transform`); without it, frames scaled to [0, 1].

    Items: ``{"video": float [C, T, H, W], "label": int, "path": "embedded://motion/..."}``.
    """

    def __init__(self, split: str = "train", num_clips: int | None = None, num_frames: int = 16,
                 image_size: int = 32, seed: int = 0,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, style: str = "studio") -> None:
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"embedded video split must be one of {', '.join(_SPLIT_STREAMS)}, got {split!r}")
        if num_frames < 1:
            raise ValueError(f"embedded video num_frames must be >= 1, got {num_frames}")
        if image_size < 16 or image_size % 2:
            raise ValueError(f"embedded video image_size must be even and >= 16, got {image_size}")
        if style not in STYLES:
            raise ValueError(f"embedded video style must be one of {', '.join(STYLES)}, got {style!r}")
        self.split, self.seed, self.transform, self.style = split, seed, transform, style
        self.num_clips = _DEFAULT_SIZES[split] if num_clips is None else int(num_clips)
        self.num_frames, self.image_size = num_frames, image_size
        self.classes = list(CLASSES)

    def __len__(self) -> int:
        return self.num_clips

    def label(self, index: int) -> int:
        """Class of clip ``index`` without rendering it."""
        return index % len(CLASSES)

    def render(self, index: int) -> np.ndarray:
        """uint8 [T, H, W, 3] frames of clip ``index``."""
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        if self.style == "studio":
            rng = np.random.default_rng([self.seed, _SPLIT_STREAMS[self.split], index])
            return render_clip(self.label(index), rng, self.num_frames, self.image_size)
        rng = np.random.default_rng([self.seed, _SPLIT_STREAMS[self.split], index, STYLES.index(self.style)])
        return film_look(render_clip(self.label(index), rng, self.num_frames, self.image_size), rng)

    def __getitem__(self, index: int) -> dict[str, Any]:
        frames = torch.from_numpy(self.render(index)).permute(0, 3, 1, 2)  # [T, H, W, C] -> [T, C, H, W]
        clip = self.transform(frames) if self.transform is not None else frames.float() / 255.0
        style = "" if self.style == "studio" else f"{self.style}/"
        path = f"embedded://motion/{style}{self.split}/seed{self.seed}/{index}"
        return {"video": clip.permute(1, 0, 2, 3), "label": self.label(index), "path": path}  # -> [C, T, H, W]
