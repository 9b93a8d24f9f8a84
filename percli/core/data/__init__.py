"""Datasets and transforms: image folders, JSONL manifests, video clips, audio clips and the embedded default sets.

Every dataset returns ``{"image": FloatTensor[C, H, W]`` (or ``"video": FloatTensor[C, T, H, W]``)
``, "label": int, "path": str}`` with label -1 when unlabeled, exposes ``classes`` and raises
:class:`BadSample` for a file it cannot decode (the engine counts and skips those). Audio datasets
return ``"fbank": FloatTensor[1, T, M]`` and a float ``"target"`` (multi-hot, mixed under mixup) as well.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from percli.core.data.audio import (
    AUDIO_EXTENSIONS,
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    AudioDataset,
    compute_fbank_stats,
    kaldi_fbank,
    load_audio,
    normalize_fbank,
    read_ast_json,
    read_audio_manifest,
    read_label_csv,
    roll_mag_aug,
    sample_weights,
    spec_augment,
)
from percli.core.data.embedded import EmbeddedShapesDataset
from percli.core.data.embedded_audio import EmbeddedAudioDataset
from percli.core.data.embedded_motion import EmbeddedMotionClips
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
    "AUDIOSET_MEAN",
    "AUDIOSET_STD",
    "AUDIO_EXTENSIONS",
    "HIERA_VIDEO_MEAN",
    "HIERA_VIDEO_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "AudioDataset",
    "BadSample",
    "EmbeddedAudioDataset",
    "EmbeddedMotionClips",
    "EmbeddedShapesDataset",
    "ImageFolderDataset",
    "JsonlImageDataset",
    "MixupCutmix",
    "VideoClipDataset",
    "build_dataset",
    "compute_fbank_stats",
    "finetune_transform",
    "kaldi_fbank",
    "list_folder",
    "load_audio",
    "mae_transform",
    "normalize_fbank",
    "parse_rand_augment",
    "read_ast_json",
    "read_audio_manifest",
    "read_clip",
    "read_label_csv",
    "read_manifest",
    "roll_mag_aug",
    "sample_weights",
    "spec_augment",
    "video_transform",
]

EMBEDDED = "embedded"
_KINDS = ("image", "video", "audio")


def build_dataset(
    source: str | Path, *, kind: str = "image", transform: Callable[[Any], Any] | None = None, **kw: Any
) -> Dataset:
    """Build the dataset a config's data source names.

    Args:
        source: ``"embedded"`` (the built-in shapes set for images, moving shapes for video, the
            synthesised sound set for audio), a folder (class sub-folders, or a flat folder =
            unlabeled), a ``.jsonl`` manifest, or (audio only) an AST-style ``.json`` data list.
        kind: ``"image"``, ``"video"`` or ``"audio"``.
        transform: Per-sample transform handed to the dataset (for audio: applied to the fbank).
        **kw: Extra dataset arguments, e.g. ``split``/``num_images``/``image_size``/``seed`` for the
            embedded set (``num_clips``/``num_frames`` for embedded video), ``num_frames``/``sampling_rate``/
            ``train`` for video, ``classes`` for a manifest; for audio the :class:`AudioDataset` /
            :class:`EmbeddedAudioDataset` arguments (``num_clips``, ``target_length``, ``train``, ``freqm``,
            ``mixup``, ``label_csv``, ...).

    Returns:
        The dataset.

    Raises:
        ValueError: If ``kind`` is unknown or ``source`` is none of the above.
    """
    if kind not in _KINDS:
        raise ValueError(f"data kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    expected = (
        f"expected {EMBEDDED!r}, a folder of {kind}s (class sub-folders, or flat for "
        'unlabeled data) or a .jsonl manifest of {"path": ..., "label": ...} lines'
    )
    if kind == "audio":
        return _build_audio(source, transform, **kw)
    if str(source) == EMBEDDED:
        if kind == "video":
            return EmbeddedMotionClips(transform=transform, **kw)
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


def _build_audio(source: str | Path, transform: Callable[[Any], Any] | None, **kw: Any) -> Dataset:
    if str(source) == EMBEDDED:
        return EmbeddedAudioDataset(transform=transform, **kw)
    expected = (
        f"expected {EMBEDDED!r}, a folder of audio files ({', '.join(AUDIO_EXTENSIONS)}; class sub-folders, or "
        'flat for unlabeled data), a .jsonl manifest of {"path": ..., "labels": [...]} lines or an AST-style '
        '.json list {"data": [{"wav": ..., "labels": "..."}]} (with label_csv)'
    )
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(f"data source {str(source)!r} does not exist: {expected}")
    if not (path.is_dir() or (path.is_file() and path.suffix in (".jsonl", ".json"))):
        raise ValueError(f"data source {str(source)!r} is not a folder, a .jsonl or a .json file: {expected}")
    return AudioDataset(path, transform=transform, **kw)
