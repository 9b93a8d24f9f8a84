"""PerceptionLM's media transforms: image tiling with a thumbnail, video frame sampling, resize and [-1, 1].

Every transform returns ``[chunks, 3, S, S]`` float32 in [-1, 1] (mean = std = 0.5), one chunk per vision
encoder pass:

* ``vanilla`` images (stage 1) and each image of a multi-image sample: one chunk, the image squashed to S x S;
* ``thumb+tile`` images (stages 2-3, inference): the squashed thumbnail first, then the tiles of a
  ``cols x rows`` grid (at most ``max_num_tiles`` tiles) that the image is resized onto, row by row;
* videos: one chunk per frame, squashed to S x S.

Images are resized with PIL's bicubic filter, video frames with antialiased bicubic interpolation on the
uint8 frames (rounded back to uint8), as the release does through torchvision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from percli.core.data.images import BadSample, load_rgb
from percli.core.data.video import read_frames

VISION_INPUT_TYPES = ("thumb+tile", "vanilla")


def normalize_to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """float pixels in [0, 1] -> [-1, 1] (PLM's mean = std = 0.5, computed as (x - 0.5) / 0.5)."""
    return pixels.sub(0.5).div(0.5)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> [3, H, W] float32 in [-1, 1]."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]
    return normalize_to_unit_range(pixels.float().div(255))


def squash_image(image: Image.Image, size: int) -> torch.Tensor:
    """The image resized to size x size, aspect ratio not kept -> [1, 3, size, size]."""
    return pil_to_tensor(image.resize((size, size), Image.BICUBIC))[None]


def supported_tile_grids(max_num_tiles: int) -> dict[float, list[tuple[int, int]]]:
    """``{cols / rows: [(cols, rows), ...]}`` for every grid of at most `max_num_tiles` tiles.

    The order is the release's (tile counts from the largest down, columns ascending within a count) and it
    decides ties in :func:`fit_tile_grid`.
    """
    grids: dict[float, list[tuple[int, int]]] = {}
    for count in range(max_num_tiles, 0, -1):
        for cols in range(1, count + 1):
            if count % cols == 0:
                grids.setdefault(cols / (count // cols), []).append((cols, count // cols))
    return grids


def _fitted_size(width: int, height: int, canvas_w: int, canvas_h: int) -> tuple[float, float]:
    """(w, h) of the image scaled to fit the canvas with its aspect ratio kept (the long side is not floored)."""
    scale = width / height
    factor = min(canvas_w / width, canvas_h / height)
    if scale > 1.0:
        new_w = factor * width
        return new_w, float(int(new_w / scale))
    new_h = factor * height
    return float(int(new_h * scale)), new_h


def fit_tile_grid(width: int, height: int, tile_size: int, max_num_tiles: int) -> tuple[int, int] | None:
    """The grid whose canvas holds the image without downsampling and shows its shorter side largest.

    Returns:
        ``(cols, rows)``, or None when every canvas is smaller than the image.
    """
    best, best_size = None, (0.0, 0.0)
    for grids in supported_tile_grids(max_num_tiles).values():
        for cols, rows in grids:
            if cols * tile_size < width or rows * tile_size < height:
                continue
            fitted = _fitted_size(width, height, cols * tile_size, rows * tile_size)
            # Ties go to the later grid, as in the release.
            shorter = 0 if width / height < 1.0 else 1
            if best is None or fitted[shorter] >= best_size[shorter]:
                best, best_size = (cols, rows), fitted
    return best


def closest_tile_grid(width: int, height: int, max_num_tiles: int) -> tuple[int, int]:
    """The grid whose aspect ratio is closest to the image's without being wider (landscape) or taller
    (portrait); among grids of that ratio, the one with the most tiles."""
    grids = supported_tile_grids(max_num_tiles)
    ratio = width / height
    if ratio >= 1:
        best = min((k for k in grids if k <= ratio), key=lambda k: abs(k - ratio))
        return max(grids[best], key=lambda g: g[0])
    best = min((k for k in grids if k > ratio), key=lambda k: abs(1 / k - 1 / ratio))
    return max(grids[best], key=lambda g: g[1])


def choose_tile_grid(width: int, height: int, tile_size: int, max_num_tiles: int) -> tuple[int, int]:
    """``(cols, rows)`` for an image: a canvas that holds it, else the closest aspect ratio (downsampling)."""
    return fit_tile_grid(width, height, tile_size, max_num_tiles) or closest_tile_grid(width, height, max_num_tiles)


def split_tiles(image: torch.Tensor, cols: int, rows: int) -> torch.Tensor:
    """[C, rows * T, cols * T] -> [rows * cols, C, T, T], tiles in row-major order."""
    channels, height, width = image.shape
    tiles = image.view(channels, rows, height // rows, cols, width // cols)  # [C, rows, T, cols, T]
    return tiles.permute(1, 3, 0, 2, 4).reshape(rows * cols, channels, height // rows, width // cols)


def tile_image(image: Image.Image, size: int, max_num_tiles: int) -> torch.Tensor:
    """Thumbnail + tiles -> [1 + cols * rows, 3, size, size]."""
    cols, rows = choose_tile_grid(image.width, image.height, size, max_num_tiles)
    canvas = pil_to_tensor(image.resize((cols * size, rows * size), Image.BICUBIC))
    return torch.cat([squash_image(image, size), split_tiles(canvas, cols, rows)])


def image_transform(image: Image.Image, size: int, max_num_tiles: int = 36,
                    vision_input_type: str = "thumb+tile") -> torch.Tensor:
    """One image -> [chunks, 3, size, size]: thumbnail + tiles (``thumb+tile``) or one squashed chunk."""
    if vision_input_type == "thumb+tile":
        return tile_image(image, size, max_num_tiles)
    if vision_input_type == "vanilla":
        return squash_image(image, size)
    raise ValueError(f"vision_input_type {vision_input_type!r}: use one of {', '.join(VISION_INPUT_TYPES)}")


def _uniform_picks(count: int, picks: int) -> list[int]:
    """`picks` indices spread evenly over ``range(count)``, first and last included (Python rounding)."""
    stride = (count - 1) / (picks - 1) if picks > 1 else 0
    return [round(i * stride) for i in range(picks)]


def plm_frame_indices(num_video_frames: int, fps: float, max_frames: int, start: float | None = None,
                      end: float | None = None, sampling_fps: int = 1) -> list[int]:
    """The frames the release samples from a video (or from its ``[start, end]`` seconds).

    Candidates are one frame per second (`sampling_fps`) from the clip's first frame. With more candidates
    than `max_frames`, `max_frames` of them are picked evenly; with fewer, `max_frames` frames are picked
    evenly over all of the clip's frames (every frame when the clip has fewer); with exactly as many, all.

    Args:
        num_video_frames: Frames in the video.
        fps: Its average frame rate.
        max_frames: Frames wanted (the release: 8 in stage 1, 16 in stage 2, 32 in stage 3 and inference).
        start, end: Clip bounds in seconds (None: the video's first / last frame).
        sampling_fps: Candidate frames per second.
    """
    first = 0 if start is None else int(start * fps)
    last = num_video_frames - 1 if end is None else min(int(end * fps), num_video_frames - 1)
    if first > last:
        first, last = last, first
    elif first == last:
        last = first + 1
    stride = int(round(float(fps) / int(sampling_fps)))
    candidates = list(range(first, last + 1, stride))
    if len(candidates) > max_frames:
        return [candidates[i] for i in _uniform_picks(len(candidates), max_frames)]
    if len(candidates) < max_frames:
        clip_frames = last - first + 1
        return [first + i for i in _uniform_picks(clip_frames, min(max_frames, clip_frames))]
    return candidates


def video_transform(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 frames [T, 3, H, W] -> [T, 3, size, size] in [-1, 1] (antialiased bicubic, rounded to uint8 first)."""
    resized = F.interpolate(frames.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    resized = resized.clamp(0, 255).round()  # the release resizes uint8 frames, so values are rounded back
    return normalize_to_unit_range(resized.div(255.0))


def load_image(path: str | Path, size: int, max_num_tiles: int = 36,
               vision_input_type: str = "thumb+tile") -> torch.Tensor:
    """Decode and transform an image file -> [chunks, 3, size, size].

    Raises:
        BadSample: ``unreadable_image: ...`` for a missing or undecodable file.
    """
    try:
        image = load_rgb(str(path))
    except BadSample as bad:
        raise BadSample(path, f"unreadable_image: {bad.reason}") from None
    return image_transform(image, size, max_num_tiles, vision_input_type)


def load_images(paths: list[str], size: int) -> torch.Tensor:
    """A multi-image sample: each image squashed to one chunk -> [len(paths), 3, size, size]."""
    chunks = []
    for path in paths:
        try:
            chunks.append(squash_image(load_rgb(str(path)), size))
        except BadSample as bad:
            raise BadSample(path, f"unreadable_image: {bad.reason}") from None
    return torch.cat(chunks)


def load_video(path: str | Path, size: int, max_frames: int = 32, backend: str = "auto") -> torch.Tensor:
    """Decode the frames the release samples from a video (:func:`plm_frame_indices` at its frame rate; spread evenly
    when the file gives no frame rate) -> [frames, 3, size, size].

    Raises:
        BadSample: ``unreadable_video: ...`` when no backend can decode the file.
    """
    def pick(count: int, fps: float) -> list[int]:
        return plm_frame_indices(count, fps, max_frames) if fps > 0 else _uniform_picks(count, min(count, max_frames))

    try:
        frames, _ = read_frames(str(path), pick, backend)  # uint8 [T, 3, H, W]
    except BadSample as bad:
        raise BadSample(path, f"unreadable_video: {bad.reason}") from None
    return video_transform(frames, size)
