"""Video clip dataset for video Hiera (16 frames, temporal stride 4 by default).

Videos are read with decord, falling back to PyAV when decord is not importable (or cannot read a
file that PyAV can). A clip of ``num_frames`` frames ``sampling_rate`` apart starts at a random
frame in training and is centred in evaluation; videos shorter than the clip span repeat their
last frame. Items are ``{"video": FloatTensor[C, T, H, W], "label": int, "path": str}``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from percli.core.data.images import BadSample, Sample, list_folder, read_manifest
from percli.core.data.shards import BadRecords

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
BACKENDS = ("auto", "decord", "pyav")


def clip_indices(num_video_frames: int, num_frames: int, sampling_rate: int, *, train: bool, view: int = 0,
                 views: int = 1) -> list[int]:
    """Frame indices of one clip.

    Args:
        num_video_frames: Frames in the video (> 0).
        num_frames: Frames in the clip.
        sampling_rate: Temporal stride between clip frames; 0 spreads the frames evenly over the whole
            video (first to last frame, as the Perception Encoder's video inputs are sampled).
        train: Random start (torch global RNG) if True, centred clip otherwise.
        view, views: Held-out multi-view testing: clip ``view`` of ``views`` starts evenly spaced from the first
            possible start to the last (SlowFast's temporal views; one view is the centred clip).

    Returns:
        ``num_frames`` indices; those past the end of a short video repeat its last frame.
    """
    if sampling_rate == 0:
        last = num_video_frames - 1
        return [round(i * last / max(num_frames - 1, 1)) for i in range(num_frames)]
    span = (num_frames - 1) * sampling_rate + 1
    slack = num_video_frames - span
    if slack <= 0:
        start = 0
    elif train:
        start = int(torch.randint(slack + 1, ()))
    elif views > 1:
        start = round(slack * view / (views - 1))
    else:
        start = slack // 2
    return [min(start + i * sampling_rate, num_video_frames - 1) for i in range(num_frames)]


def decord_available() -> bool:
    """Whether decord can be imported (it has no wheels for some platforms, e.g. aarch64)."""
    return importlib.util.find_spec("decord") is not None


FramePicker = Callable[[int, float], list[int]]
"""(frames in the video, its average frame rate; 0 when unknown) -> the frame indices to decode."""


def _read_decord(path: str, pick: FramePicker) -> tuple[np.ndarray, list[int]]:
    import decord

    reader = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
    if len(reader) == 0:
        raise ValueError("video has no frames")
    indices = pick(len(reader), float(reader.get_avg_fps() or 0.0))
    return reader.get_batch(indices).asnumpy(), indices  # [T, H, W, 3] uint8


def _read_pyav(path: str, pick: FramePicker) -> tuple[np.ndarray, list[int]]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        # stream.frames comes from the container header and may be 0 (unknown) or slightly off, so
        # with no count we decode everything, and we always pad with the last frame decoded.
        expected = stream.frames
        wanted = pick(expected, fps) if expected > 0 else None
        wanted_set = set(wanted) if wanted is not None else None
        frames: dict[int, np.ndarray] = {}
        last_frame = None
        for i, frame in enumerate(container.decode(stream)):
            last_frame = frame
            if wanted_set is None or i in wanted_set:
                frames[i] = frame.to_ndarray(format="rgb24")
            if wanted is not None and i >= max(wanted):
                break
        if last_frame is None:
            raise ValueError("video has no frames")
        if wanted is None:
            wanted = pick(len(frames), fps)
        last = last_frame.to_ndarray(format="rgb24")
    return np.stack([frames.get(i, last) for i in wanted]), wanted  # [T, H, W, 3] uint8


def _check_backend(backend: str) -> None:
    # Fail loudly here: a missing reader would otherwise turn every file into a skipped BadSample.
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "decord" and not decord_available():
        raise ValueError("video backend 'decord' is not installed: `pip install decord` or use backend='pyav'")


def read_clip(path: str, num_frames: int, sampling_rate: int, *, train: bool, backend: str = "auto") -> torch.Tensor:
    """Decode one clip of a video file.

    Args:
        path: The video file.
        num_frames: Frames in the clip.
        sampling_rate: Temporal stride between clip frames (0: spread evenly over the video).
        train: Random clip start if True, centred clip otherwise.
        backend: ``"decord"``, ``"pyav"``, or ``"auto"`` (decord, then PyAV if decord is missing or
            fails on this file).

    Returns:
        uint8 tensor [T, C, H, W].

    Raises:
        BadSample: If no backend can decode the file.
    """
    return read_frames(path, lambda count, _fps: clip_indices(count, num_frames, sampling_rate, train=train),
                       backend)[0]


def read_frames(path: str, pick: FramePicker, backend: str = "auto") -> tuple[torch.Tensor, list[int]]:
    """Decode the frames `pick` chooses from the video's frame count and frame rate.

    Returns:
        (uint8 tensor [T, C, H, W], the indices decoded).

    Raises:
        BadSample: If no backend can decode the file (the reason names each backend's error).
    """
    _check_backend(backend)
    readers = {"decord": [_read_decord], "pyav": [_read_pyav]}.get(backend)
    if readers is None:
        readers = [_read_decord, _read_pyav] if decord_available() else [_read_pyav]
    errors = []
    for read in readers:
        # Save the RNG so a fallback reader draws what the first attempt drew (random clip starts).
        rng_state = torch.get_rng_state()
        try:
            frames, indices = read(path, pick)
            break
        except Exception as e:  # noqa: BLE001 - decoders raise many unrelated types for bad input
            errors.append(f"{read.__name__.removeprefix('_read_')}: {type(e).__name__}: {e}".strip())
            torch.set_rng_state(rng_state)
    else:
        raise BadSample(path, "; ".join(errors))
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2), indices  # [T,H,W,C] -> [T,C,H,W]


class VideoClipDataset(Dataset):
    """Video clips from a folder (class sub-folders, or flat = unlabeled) or a JSONL manifest.

    Args:
        source: A folder of videos, or a ``.jsonl`` manifest in the format of
            :func:`percli.core.data.images.read_manifest`.
        transform: Called on the uint8 clip [T, C, H, W]; must return a float [T, C, H, W] tensor
            (e.g. :func:`percli.core.data.transforms.video_transform`). Without it frames are
            scaled to [0, 1].
        num_frames: Frames per clip.
        sampling_rate: Temporal stride between clip frames (0: spread evenly over the video).
        train: Random clip start if True, centred clip otherwise.
        backend: Video reader, see :func:`read_clip`.
        classes: Class names in label order (inferred when omitted).
        extensions: Video suffixes recognised in a folder.
        require_labels: Refuse unlabeled clips (classification data).
        views_temporal: Held-out multi-view testing: clips per video, evenly spaced (`clip_indices`); items
            then hold ``video`` [views, C, T, H, W] (temporal-major when the transform also returns spatial
            views).
    """

    def __init__(
        self,
        source: str | Path,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        num_frames: int = 16,
        sampling_rate: int = 4,
        train: bool = True,
        backend: str = "auto",
        classes: Sequence[str] | None = None,
        extensions: Iterable[str] = VIDEO_EXTENSIONS,
        require_labels: bool = False,
        views_temporal: int = 1,
    ) -> None:
        if views_temporal < 1 or (views_temporal > 1 and train):
            raise ValueError(f"views_temporal={views_temporal}: give >= 1, and views only for held-out data")
        self.views_temporal = views_temporal
        if num_frames < 1 or sampling_rate < 0:
            raise ValueError(f"num_frames must be >= 1 and sampling_rate >= 0 (0: spread over the video), got "
                             f"{num_frames}, {sampling_rate}")
        _check_backend(backend)
        self.source = str(source)
        self.transform = transform
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.train = train
        self.backend = backend
        path = Path(source)
        self.samples: list[Sample]
        classes = list(classes) if classes is not None else None
        if path.is_dir():
            self.samples, self.classes = list_folder(path, extensions, classes, require_labels)
        elif path.suffix == ".jsonl" and path.is_file():
            self.bad_records = BadRecords()
            self.samples, self.classes = read_manifest(path, classes, require_labels, self.bad_records)
        else:
            raise ValueError(f"video source {source!r} must be a folder of videos or a .jsonl manifest")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        if self.views_temporal == 1:
            frames = read_clip(path, self.num_frames, self.sampling_rate, train=self.train, backend=self.backend)
            return {"video": self._clip(frames), "label": label, "path": path}
        n, views = self.num_frames, self.views_temporal

        def every_view(count: int, _fps: float) -> list[int]:
            return [i for v in range(views) for i in clip_indices(count, n, self.sampling_rate, train=False,
                                                                  view=v, views=views)]
        frames = read_frames(path, every_view, self.backend)[0]
        clips = [self._clip(frames[v * n:(v + 1) * n]) for v in range(views)]
        return {"video": torch.cat([c if c.dim() == 5 else c[None] for c in clips]), "label": label, "path": path}

    def _clip(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, C, H, W] -> float [C, T, H, W], or [views, C, T, H, W] for a multi-crop transform."""
        clip = self.transform(frames) if self.transform is not None else frames.float() / 255.0
        return clip.transpose(-4, -3)  # [.., T, C, H, W] -> [.., C, T, H, W]
