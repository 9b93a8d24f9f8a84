"""What every AV-SUPERB upstream shares: the feature contract's keys, batch checks, and building a registered
encoder from a checkpoint (see `percli.avsuperb.upstream` for the protocol)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn

from percli.core.checkpoint import read_meta
from percli.models import create_model_for, load_initial_weights
from percli.models.hub import resolve_weights

Batch = list[tuple[torch.Tensor | None, torch.Tensor | None]]
FEATURE_KEYS = ("audio_feats", "video_feats", "fusion_feats")

def _empty_features() -> dict[str, Any]:
    return {key: [] for key in FEATURE_KEYS}


def _present(batch: Batch, index: int, modality: str) -> list[torch.Tensor] | None:
    """The batch's inputs of one modality, or None when every clip lacks it (mixed batches are refused)."""
    items = [pair[index] for pair in batch]
    missing = sum(x is None for x in items)
    if missing == len(items):
        return None
    if missing:
        raise ValueError(f"{missing} of {len(items)} clips in the batch have no {modality}; "
                         "a batch must either have it for every clip or for none")
    return items


def _checkpoint_meta(checkpoint: str | None) -> dict[str, Any]:
    if checkpoint is None:
        return {}
    path = resolve_weights(checkpoint)  # a path, or an hf-hub: spec's file in the Hugging Face cache
    if not path.exists():
        raise FileNotFoundError(f"upstream checkpoint {path}: no such file or directory")
    if path.is_dir() or path.suffix == ".safetensors":
        return read_meta(path)
    return {}  # an official .pth carries no percli metadata


def _build(cls: type[nn.Module], name: str, overrides: dict[str, Any], checkpoint: str | None,
           meta: dict[str, Any]) -> nn.Module:
    """Build registry model `name` with the checkpoint's constructor arguments (those `cls` accepts,
    so a pretraining checkpoint's decoder settings are skipped), `overrides` on top, then load it."""
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in meta.get("kwargs", {}).items() if k in accepted}
    kwargs.update(overrides)
    if "drop_path_rate" in accepted:
        kwargs["drop_path_rate"] = 0.0
    try:
        model = create_model_for(name, kwargs, checkpoint)
    except KeyError as error:
        raise ValueError(error.args[0]) from error
    if not isinstance(model, cls):
        raise ValueError(f"model {name!r} is a {type(model).__name__}, not a {cls.__name__}")
    if checkpoint is not None:
        load_initial_weights(model, checkpoint)
    return model


# --------------------------------------------------------------------------------------------- audio


def evenly_spaced(count: int, total: int) -> list[int]:
    """`count` indices spread evenly over range(total), first and last included."""
    if count == 1:
        return [total - 1]
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]
