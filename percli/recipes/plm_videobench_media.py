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
from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image, ImageDraw

from percli.core.data.images import BadSample
from percli.core.data.plm_videobench import Box
from percli.core.data.video import read_frames
from percli.models.plm_transforms import plm_frame_indices, squash_image, video_transform

BOX_COLOR = (255, 0, 0)
BOX_WIDTH = 4


def uniform_indices(count: int, num_frames: int) -> list[int]:
    """lmms-eval's ``uniform_sample``: `num_frames` of `count` frames, first and last included; all if fewer."""
    if num_frames >= count:
        return list(range(count))
    stride = (count - 1) / (num_frames - 1) if num_frames > 1 else 0
    return [int(round(i * stride)) for i in range(num_frames)]


def _read(path: str, pick, backend: str) -> tuple[torch.Tensor, list[int]]:
    """`read_frames`, its failure reason prefixed ``unreadable_video:`` (the code the run counts)."""
    try:
        return read_frames(path, pick, backend)
    except BadSample as bad:
        raise BadSample(path, f"unreadable_video: {bad.reason}") from None


def draw_region_boxes(frames: torch.Tensor, indices: list[int], boxes: Mapping[int, Box | None],
                      path: str) -> list[Image.Image]:
    """The frames (uint8 [T, 3, H, W]) as PIL images, the box of each sampled frame index (if any) drawn in red."""
    images = []
    for frame, index in zip(frames.permute(0, 2, 3, 1).numpy(), indices):
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

        return video_transform(_read(path, pick, backend)[0], size)
    frames, indices = _read(path, lambda count, _fps: uniform_indices(count, num_frames), backend)
    images = draw_region_boxes(frames, indices, boxes or {}, path) if task != "sgqa" else \
        [Image.fromarray(frame) for frame in frames.permute(0, 2, 3, 1).numpy()]
    return torch.cat([squash_image(image, size) for image in images])
