"""Config sections and helpers shared by the Hiera recipes (MAE pretraining, classification)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch.nn as nn
from torch.utils.data import Dataset

from percli.core.data import (
    HIERA_VIDEO_MEAN,
    HIERA_VIDEO_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_dataset,
    finetune_transform,
    mae_transform,
    video_transform,
)


@dataclasses.dataclass
class ModelSection:
    name: str = "hiera_base_224"
    """Registered model name (`percli ls models`)."""
    kwargs: dict = dataclasses.field(default_factory=dict)
    """Official constructor arguments overriding the variant's, e.g. {input_size: [64, 64], embed_dim: 32}."""
    checkpoint: str | None = None
    """Initial weights: a percli checkpoint dir / .safetensors, or an official Hiera .pth."""


@dataclasses.dataclass
class TrainedModelSection(ModelSection):
    """The model section of a training recipe."""

    grad_checkpointing: bool = False
    """Recompute each transformer block's activations in the backward pass instead of storing them
    (less activation memory for some more compute; the same gradients)."""


@dataclasses.dataclass
class DataSection:
    source: str = "embedded"
    """`embedded` (built-in generated set), an image folder, a .jsonl manifest, or a video folder/manifest."""
    val_source: str | None = None
    """Evaluation data; for `embedded` the held-out split is used when this is unset."""
    embedded_size: int = 2000
    """Images in the embedded training split (its val split has a quarter of that)."""
    num_frames: int = 16
    sampling_rate: int = 4
    """Video: frames per clip and the temporal stride between them (Hiera: 16 x 4)."""
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    """Normalisation; null = ImageNet's (video: std 0.225 on every channel)."""


def is_video(model: nn.Module) -> bool:
    return len(model.config["input_size"]) == 3


def official_drop_path(name: str) -> float:
    """MAE pretraining drop-path of dbolya/hiera v0.2.0: 0 for T/S, 0.2 for B/B+/L, 0.3 for H."""
    if "_huge_" in name:
        return 0.3
    if any(f"_{size}_" in name for size in ("base", "base_plus", "large")):
        return 0.2
    return 0.0


def normalisation(data: DataSection, video: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(data.mean) if data.mean else (HIERA_VIDEO_MEAN if video else IMAGENET_MEAN)
    std = tuple(data.std) if data.std else (HIERA_VIDEO_STD if video else IMAGENET_STD)
    return mean, std


def masked_pretraining_dataset(data: DataSection, source: str, split: str, train: bool, video: bool,
                               image_size: int) -> Dataset:
    """The data of a masked-autoencoder recipe: clips with one crop and flip per clip, or images with MAE's
    RandomResizedCrop 0.2-1 + flip (train) / a bicubic resize (held out), normalised as `normalisation` says."""
    mean, std = normalisation(data, video)
    if video:
        transform = video_transform(image_size, mean, std, train=train)
    elif train:
        transform = mae_transform(image_size, mean, std)
    else:
        transform = finetune_transform(image_size, mean, std, train=False, crop_pct=1.0)
    return make_dataset(data, source, split, train, transform, video, image_size)


def make_dataset(data: DataSection, source: str, split: str, train: bool, transform: Any, video: bool,
                 image_size: int, **labels: Any) -> Dataset:
    """The dataset `source` names; the embedded set renders at the model's input size. `labels`
    (``classes``, ``require_labels``) go to folder and manifest readers (see `read_manifest`)."""
    if source == "embedded":
        size = data.embedded_size if split == "train" else max(data.embedded_size // 4, 1)
        if video:  # moving shapes, the class is the motion
            return build_dataset(source, kind="video", transform=transform, split=split, num_clips=size,
                                 num_frames=data.num_frames, image_size=image_size)
        return build_dataset(source, kind="image", transform=transform, split=split, num_images=size,
                             image_size=image_size)
    if video:
        return build_dataset(source, kind="video", transform=transform, num_frames=data.num_frames,
                             sampling_rate=data.sampling_rate, train=train, **labels)
    return build_dataset(source, kind="image", transform=transform, **labels)


def check_shard_sources(data: Any, hint: str) -> None:
    """``data.source`` / ``data.val_source`` are 'embedded' or patterns that expand to files (`hint`: what else)."""
    from percli.core.config import ConfigError
    from percli.core.data.shards import expand_inputs

    for key in ("source", "val_source"):
        value = getattr(data, key)
        if value and value != "embedded":
            try:
                expand_inputs(value.split())
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"data.{key}: {e}; give 'embedded' or {hint}") from None


def validate(cfg: Any) -> None:
    """Checks a dry run can make without building anything: model name and data paths."""
    from percli.core.config import ConfigError
    from percli.models import list_models

    name = cfg.model.name
    if name and name not in list_models():
        raise ConfigError(f"model.name: unknown model {name!r}; run `percli ls models` for the names")
    for key in ("source", "val_source", "label_csv"):  # label_csv: audio sections only
        value = getattr(cfg.data, key, None)
        if value and value != "embedded" and not Path(value).expanduser().exists():
            hint = "the label CSV (index,mid,display_name)" if key == "label_csv" else \
                "a folder, a manifest file, or 'embedded'"
            raise ConfigError(f"data.{key}: {value} does not exist; give {hint}")
