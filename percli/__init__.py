"""percli: perception research methods from one command line, and the same from Python.

``percli.create_model``, ``percli.create_transform``, ``percli.load``, ``percli.train`` and
``percli.PercliError`` are in `percli.api`, imported on first use: ``import percli`` (and
``percli --help``) loads no torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("create_model", "create_transform", "load", "train", "PercliError")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name == "PercliError":  # no torch for catching errors
        from percli.commands.run import PercliError

        return PercliError
    if name in _API:
        from percli import api

        return getattr(api, name)
    raise AttributeError(f"module 'percli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
