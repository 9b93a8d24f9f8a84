"""Datasets and transforms: image folders, JSONL manifests, video clips and the embedded default set.

Every dataset returns ``{"image": FloatTensor[C, H, W]`` (or ``"video": FloatTensor[C, T, H, W]``)
``, "label": int, "path": str}`` with label -1 when unlabeled, exposes ``classes`` and raises
:class:`BadSample` for a file it cannot decode (the engine counts and skips those).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from percli.core.data.embedded import EmbeddedShapesDataset
from percli.core.data.images import (
    IMAGE_EXTENSIONS,
    BadSample,
    ImageFolderDataset,
    JsonlImageDataset,
    list_folder,
    read_manifest,
)
from percli.core.data.transforms import (
    HIERA_VIDEO_MEAN,
    HIERA_VIDEO_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MixupCutmix,
    finetune_transform,
    mae_transform,
    parse_rand_augment,
    video_transform,
)
from percli.core.data.video import VIDEO_EXTENSIONS, VideoClipDataset, read_clip

__all__ = [
    "HIERA_VIDEO_MEAN",
    "HIERA_VIDEO_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "BadSample",
    "EmbeddedShapesDataset",
    "ImageFolderDataset",
    "JsonlImageDataset",
    "MixupCutmix",
    "VideoClipDataset",
    "build_dataset",
    "finetune_transform",
    "list_folder",
    "mae_transform",
    "parse_rand_augment",
    "read_clip",
    "read_manifest",
    "video_transform",
]

EMBEDDED = "embedded"
_KINDS = ("image", "video")


def build_dataset(
    source: str | Path, *, kind: str = "image", transform: Callable[[Any], Any] | None = None, **kw: Any
) -> Dataset:
    """Build the dataset a config's data source names.

    Args:
        source: ``"embedded"`` (the built-in shapes set, images only), a folder (class sub-folders,
            or a flat folder = unlabeled), or a ``.jsonl`` manifest.
        kind: ``"image"`` or ``"video"``.
        transform: Per-sample transform handed to the dataset.
        **kw: Extra dataset arguments, e.g. ``split``/``num_images``/``image_size``/``seed`` for the
            embedded set, ``num_frames``/``sampling_rate``/``train`` for video, ``classes`` for a
            manifest.

    Returns:
        The dataset.

    Raises:
        ValueError: If ``kind`` is unknown or ``source`` is none of the above.
    """
    if kind not in _KINDS:
        raise ValueError(f"data kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    expected = (
        f"expected {EMBEDDED!r} (images only), a folder of {kind}s (class sub-folders, or flat for "
        'unlabeled data) or a .jsonl manifest of {"path": ..., "label": ...} lines'
    )
    if str(source) == EMBEDDED:
        if kind != "image":
            raise ValueError(f"there is no embedded {kind} dataset: {expected}")
        return EmbeddedShapesDataset(transform=transform, **kw)
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(f"data source {str(source)!r} does not exist: {expected}")
    if not (path.is_dir() or (path.is_file() and path.suffix == ".jsonl")):
        raise ValueError(f"data source {str(source)!r} is not a folder or a .jsonl file: {expected}")
    if kind == "video":
        return VideoClipDataset(path, transform, **kw)
    if path.is_dir():
        return ImageFolderDataset(path, transform, **kw)
    return JsonlImageDataset(path, transform, **kw)
