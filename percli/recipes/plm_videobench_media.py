"""The video each PLM-VideoBench task shows the model, sampled and drawn as lmms-eval's task code does.

* **FGQA**: the model's own video loading (lmms-eval passes the file path to PLM's ``VideoTransform``): one
  candidate frame per second, ``max_video_frames`` of them picked evenly (:func:`plm_frame_indices`), each
  resized with antialiased bicubic interpolation (:func:`video_transform`).
* **SGQA** (``load_video_uniform``): `num_frames` frames spread evenly over all decoded frames
  (``round(i * (n - 1) / (num_frames - 1))``), every frame when the video has no more than `num_frames`.
* **RCap, RTLoc, RDCap** (``load_video`` + ``draw_bounding_boxes``): the same even spread over the 6 fps SA-V
  video, then the masklet's box of each sampled frame index drawn as a red (255, 0, 0) rectangle 4 px wide.
  lmms-eval asserts the video has at least `num_frames` frames; a shorter one gets all its frames here.

SGQA and the region tasks hand lmms-eval's PLM model a list of PIL frames, each squashed to S x S with PIL's
bicubic filter (:func:`squash_image`). Frames are decoded with decord (the processor's ``video_backend``), else
PyAV; lmms-eval uses OpenCV, so pixel values can differ by the decoders' rounding. An unreadable video raises
:class:`BadSample` (``unreadable_video: ...``), a box PIL cannot draw ``bad_box: ...``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from percli.core.data.images import BadSample
from percli.core.data.plm_videobench import Box
from percli.core.data.video import decord_available
from percli.models.plm_transforms import plm_frame_indices, squash_image, video_transform

FramePicker = Callable[[int, float], list[int]]
"""(frames in the video, its frame rate) -> the indices to decode."""
BOX_COLOR = (255, 0, 0)
BOX_WIDTH = 4


def uniform_indices(count: int, num_frames: int) -> list[int]:
    """lmms-eval's ``uniform_sample``: `num_frames` of `count` frames, first and last included; all if fewer."""
    if num_frames >= count:
        return list(range(count))
    stride = (count - 1) / (num_frames - 1) if num_frames > 1 else 0
    return [int(round(i * stride)) for i in range(num_frames)]


def _decord_frames(path: str, pick: FramePicker) -> tuple[np.ndarray, list[int]]:
    import decord

    reader = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
    if len(reader) == 0:
        raise ValueError("video has no frames")
    indices = pick(len(reader), float(reader.get_avg_fps()))
    return reader.get_batch(indices).asnumpy(), indices


def _pyav_frames(path: str, pick: FramePicker) -> tuple[np.ndarray, list[int]]:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if stream.frames <= 0:  # no count in the header: decode everything, then pick
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            if not frames:
                raise ValueError("video has no frames")
            indices = pick(len(frames), fps)
            return np.stack([frames[i] for i in indices]), indices
        indices = pick(stream.frames, fps)
        wanted, kept, last = set(indices), {}, None
        for i, frame in enumerate(container.decode(stream)):
            last = frame
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= max(indices):
                break
        if last is None:
            raise ValueError("video has no frames")
        tail = last.to_ndarray(format="rgb24")  # a header that over-counts: the last frame stands in
        return np.stack([kept.get(i, tail) for i in indices]), indices


def read_frames(path: str, pick: FramePicker, backend: str = "auto") -> tuple[np.ndarray, list[int]]:
    """Decode the frames `pick` chooses -> (uint8 [T, H, W, 3], their indices).

    Raises:
        BadSample: ``unreadable_video: ...`` when no backend can decode the file.
    """
    readers = {"decord": [_decord_frames], "pyav": [_pyav_frames]}.get(backend)
    if readers is None:
        readers = [_decord_frames, _pyav_frames] if decord_available() else [_pyav_frames]
    errors = []
    for read in readers:
        try:
            return read(path, pick)
        except Exception as e:  # noqa: BLE001 - decoders raise many unrelated types for bad input
            errors.append(f"{read.__name__.strip('_').split('_')[0]}: {type(e).__name__}: {e}")
    raise BadSample(path, "unreadable_video: " + "; ".join(errors))


def draw_region_boxes(frames: np.ndarray, indices: list[int], boxes: Mapping[int, Box | None],
                      path: str) -> list[Image.Image]:
    """The frames as PIL images, the box of each sampled frame index (when it has one) drawn in red."""
    images = []
    for frame, index in zip(frames, indices):
        image = Image.fromarray(frame)
        box = boxes.get(index)
        if box:
            try:
                ImageDraw.Draw(image).rectangle([(box[0], box[1]), (box[2], box[3])], outline=BOX_COLOR,
                                                width=BOX_WIDTH)
            except ValueError as e:  # x2 < x1 or y2 < y1
                raise BadSample(path, f"bad_box: frame {index} box {list(box)}: {e}") from None
        images.append(image)
    return images


def load_task_video(task: str, sample: Any, root: str | None, size: int, num_frames: int, max_video_frames: int,
                    boxes: Mapping[int, Box | None] | None = None, backend: str = "auto") -> torch.Tensor:
    """The video of one sample as the model gets it -> [T, 3, size, size] in [-1, 1].

    Args:
        task: ``fgqa``, ``sgqa``, ``rcap``, ``rtloc`` or ``rdcap``.
        sample: Its annotation (``video`` relative to `root`).
        size: The vision tower's input size.
        num_frames: Frames of SGQA and the region tasks (the benchmark's 32).
        max_video_frames: Frames of FGQA (the model's own setting, as lmms-eval's PLM model reads the file).
        boxes: The masklet's {frame index: box} (region tasks).
    """
    path = os.path.join(root, sample.video) if root else sample.video
    if task == "fgqa":
        def pick(count: int, fps: float) -> list[int]:
            if fps <= 0:
                raise ValueError("the video has no frame rate")
            return plm_frame_indices(count, fps, max_video_frames)

        frames, _ = read_frames(path, pick, backend)
        return video_transform(torch.from_numpy(frames).permute(0, 3, 1, 2), size)  # [T, H, W, 3] -> [T, 3, H, W]
    frames, indices = read_frames(path, lambda count, _fps: uniform_indices(count, num_frames), backend)
    images = draw_region_boxes(frames, indices, boxes or {}, path) if task != "sgqa" else \
        [Image.fromarray(frame) for frame in frames]
    return torch.cat([squash_image(image, size) for image in images])
