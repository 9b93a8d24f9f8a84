"""Audio-visual clip reading shared by the AV-SUPERB tasks.

A task's manifest becomes a list of :class:`Clip` (an id, a target, where its audio and its frames
live); :class:`ClipDataset` decodes one clip per item into the sample dict of the AV-SUPERB contract:
``{"id", "audio": FloatTensor[T] | None, "sample_rate", "video": uint8 Tensor[F, H, W, 3] | None,
"fps" (0.0 without video), "target"}``. The audio of a video file is decoded from the container itself (VGGSound,
Kinetics-Sounds, UCF101, VoxCeleb2 and LRS3 store only videos).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from percli.core.data.audio import load_audio
from percli.core.data.images import BadSample
from percli.core.data.video import decord_available

MODALITIES = ("audio", "video")


@dataclass(frozen=True)
class Clip:
    """One clip of a task split.

    Attributes:
        id: Stable name of the clip (its path relative to the dataset root, or the dataset's id).
        target: Class index, list of class indices (multi-label), transcript, or speaker index.
        audio_path: File holding the audio (a wav, or the video container itself); None if absent.
        video_path: Video file; None for audio-only datasets.
    """

    id: str
    target: Any
    audio_path: Path | None
    video_path: Path | None


def _frames_decord(path: str) -> tuple[np.ndarray, float]:
    import decord

    reader = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
    if len(reader) == 0:
        raise ValueError("video has no frames")
    return reader.get_batch(list(range(len(reader)))).asnumpy(), float(reader.get_avg_fps())


def _frames_pyav(path: str) -> tuple[np.ndarray, float]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    if not frames:
        raise ValueError("video has no frames")
    return np.stack(frames), fps


def read_frames(path: str | Path) -> tuple[torch.Tensor, float]:
    """Decode every frame of a video (decord, PyAV when decord is missing or fails on the file).

    Upstreams sample and resize frames themselves, so the whole clip is returned at its own rate.

    Returns:
        (uint8 Tensor[F, H, W, 3] RGB, frames per second).

    Raises:
        BadSample: If no backend decodes the file.
    """
    readers = [_frames_decord, _frames_pyav] if decord_available() else [_frames_pyav]
    errors = []
    for read in readers:
        try:
            frames, fps = read(str(path))
            break
        except Exception as e:  # noqa: BLE001 - decoders raise many unrelated types for bad input
            errors.append(f"{read.__name__.removeprefix('_frames_')}: {type(e).__name__}: {e}")
    else:
        raise BadSample(str(path), "; ".join(errors))
    if fps <= 0:
        raise BadSample(str(path), "video has no frame rate")
    return torch.from_numpy(np.ascontiguousarray(frames)), fps


class ClipDataset(Dataset):
    """Decodes the clips of one task split; an unreadable clip yields None and is listed in ``bad``.

    Args:
        clips: The split's clips.
        modalities: Which of ``"audio"``, ``"video"`` to decode (skip what the features do not use);
            the other one is returned as None.
        sample_rate: Output audio rate in Hz.

    Attributes:
        bad: ``(clip id, reason)`` for every clip that failed to decode in this process (DataLoader
            workers keep their own copy, so the runner should count the None samples instead).
    """

    def __init__(self, clips: list[Clip], *, modalities: Iterable[str] = MODALITIES, sample_rate: int = 16000):
        self.modalities = tuple(modalities)
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}")
        self.clips = clips
        self.sample_rate = int(sample_rate)
        self.bad: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.clips)

    def targets(self) -> list[Any]:
        """Every clip's target, without decoding anything."""
        return [clip.target for clip in self.clips]

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        clip = self.clips[index]
        audio, video, fps = None, None, 0.0
        try:
            if "audio" in self.modalities and clip.audio_path is not None:
                audio = load_audio(clip.audio_path, self.sample_rate)[0]  # [1, T] -> [T]
            if "video" in self.modalities and clip.video_path is not None:
                video, fps = read_frames(clip.video_path)
        except BadSample as bad:
            self.bad.append((clip.id, bad.reason))
            return None
        return {"id": clip.id, "audio": audio, "sample_rate": self.sample_rate, "video": video, "fps": fps,
                "target": clip.target}
