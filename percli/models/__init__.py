"""Model registry: every architecture variant is a small factory registered by name.

`create_model("hiera_base_224")` builds a model; names follow the official constructors so
users can type what the papers' repositories call them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch.nn as nn

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_FAMILY_MODULES = ("percli.models.hiera", "percli.models.audio_mae", "percli.models.encodec", "percli.models.clip",
                  "percli.models.voicecraft", "percli.models.pe", "percli.models.dinov2")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name."""
    if fn.__name__ in _FACTORIES:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _FACTORIES[fn.__name__] = fn
    return fn


def _load_families() -> None:
    for module in _FAMILY_MODULES:
        importlib.import_module(module)


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _load_families()
    return sorted(_FACTORIES)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments override the variant's defaults."""
    _load_families()
    if name not in _FACTORIES:
        raise KeyError(f"unknown model {name!r}; run `percli ls models` to see the {len(_FACTORIES)} available")
    return _FACTORIES[name](**kwargs)
