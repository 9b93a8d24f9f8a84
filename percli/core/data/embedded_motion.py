"""Embedded video clips for classification and video pretraining: one moving shape per clip, the class is
how it moves. No download, rendered on a CPU from a seed.

Origin: written for percli (not derived from any published dataset). Clip ``index`` of a split is a pure
function of ``(seed, split, index, num_frames, size)``: a shape of :data:`~percli.core.data.embedded_video_text.SHAPES`
in a colour of its :data:`COLOURS` moves one of the eight ways of the audio-visual renderer
(:mod:`percli.core.data.av_events`: jump, bounce, pulse, still, fly, shake, fall, spin) for the whole clip, over
a dark gradient with pixel noise. Shape, colour, place, size and phase are drawn at random, so only the motion
tells the class: one frame shows which shape it is, not which class (apart from ``still``, told by the absence
of motion). Class ``index % 8``; ``train`` and ``val`` use disjoint seed streams.

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
        transform: Called on the uint8 clip [T, C, H, W] (e.g.
            :func:`~percli.core.data.transforms.video_transform`); without it, frames scaled to [0, 1].

    Items: ``{"video": float [C, T, H, W], "label": int, "path": "embedded://motion/..."}``.
    """

    def __init__(self, split: str = "train", num_clips: int | None = None, num_frames: int = 16,
                 image_size: int = 32, seed: int = 0,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"embedded video split must be one of {', '.join(_SPLIT_STREAMS)}, got {split!r}")
        if num_frames < 1:
            raise ValueError(f"embedded video num_frames must be >= 1, got {num_frames}")
        if image_size < 16 or image_size % 2:
            raise ValueError(f"embedded video image_size must be even and >= 16, got {image_size}")
        self.split, self.seed, self.transform = split, seed, transform
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
        rng = np.random.default_rng([self.seed, _SPLIT_STREAMS[self.split], index])
        return render_clip(self.label(index), rng, self.num_frames, self.image_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        frames = torch.from_numpy(self.render(index)).permute(0, 3, 1, 2)  # [T, H, W, C] -> [T, C, H, W]
        clip = self.transform(frames) if self.transform is not None else frames.float() / 255.0
        path = f"embedded://motion/{self.split}/seed{self.seed}/{index}"
        return {"video": clip.permute(1, 0, 2, 3), "label": self.label(index), "path": path}  # -> [C, T, H, W]
