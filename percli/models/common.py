"""Helpers every model family shares: config capture, norm layers, MAE patches, checkpoint reading."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn


def make_norm(norm_layer: str | Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    """A norm factory; a string names a torch.nn class, built with the official eps of 1e-6."""
    if isinstance(norm_layer, str):
        return lambda dim: getattr(nn, norm_layer)(dim, eps=1e-6)
    return norm_layer


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C], row-major patches, (p, p, C) inside (MAE's
    order; the same as a 1-channel spectrogram's time-major patches)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)  # [B, C, h, p, w, p]
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `patchify`: [B, N, p*p*C] -> [B, C, H, W]."""
    b = patches.shape[0]
    x = patches.reshape(b, h // p, w // p, p, p, c)  # [B, h, w, p, p, C]
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def patchify_video(clips: torch.Tensor, p: int, pt: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, (T/pt)*(H/p)*(W/p), pt*p*p*C]: tubelets in (time, row, column) raster order
    (a Conv3d patch embedding's token order), (pt, p, p, C) inside (MAE-ST's order)."""
    b, c, t, h, w = clips.shape
    x = clips.reshape(b, c, t // pt, pt, h // p, p, w // p, p)  # [B, C, t, pt, h, p, w, p]
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # [B, t, h, w, pt, p, p, C]
    return x.reshape(b, (t // pt) * (h // p) * (w // p), pt * p * p * c)


def unpatchify_video(patches: torch.Tensor, p: int, pt: int, c: int, t: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `patchify_video`: [B, N, pt*p*p*C] -> [B, C, T, H, W]."""
    b = patches.shape[0]
    x = patches.reshape(b, t // pt, h // p, w // p, pt, p, p, c)  # [B, t, h, w, pt, p, p, C]
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, t, h, w)


def plain(value: object) -> object:
    """JSON-ready form of a constructor argument (tuples become lists, callables their name)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return getattr(value, "__name__", repr(value))


@dataclass
class LoadReport:
    """What a family's `load_official_state` did besides loading every matching tensor."""

    source_format: str = "official"  # or "timm"
    dropped: list[str] = field(default_factory=list)  # checkpoint keys not used
    missing: list[str] = field(default_factory=list)  # model keys left at their init
    head_reset: bool = False  # the checkpoint's classifier had another num_classes


def check_fit(model: nn.Module, state: Mapping[str, torch.Tensor], what: str, *, tolerated: tuple[str, ...] = (),
              hint: str = "") -> list[str]:
    """Raise RuntimeError naming what does not fit; return the model keys the state lacks.

    Unexpected keys, missing keys (except those starting with a `tolerated` prefix) and wrong
    shapes are errors; `hint` says what to do about them.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_missing = [k for k in missing if not k.startswith(tolerated)] if tolerated else missing
    wrong_shape = [f"{k} {list(state[k].shape)} != {list(own[k].shape)}"
                   for k in state if k in own and state[k].shape != own[k].shape]
    if unexpected or bad_missing or wrong_shape:
        raise RuntimeError(f"checkpoint does not fit {what}: missing {bad_missing[:8]}, unexpected {unexpected[:8]}, "
                           f"wrong shape {wrong_shape[:8]}" + (f"; {hint}" if hint else ""))
    return missing


def read_state(state_or_path: Mapping[str, torch.Tensor] | str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a state dict from a mapping, a .safetensors file or an official .pth.

    A .pth is read with ``weights_only=True``; besides the default safe types only
    ``argparse.Namespace`` is allowed (the MAE-family checkpoints store their ``args`` so). A file
    naming any other global raises `RefusedPickleError` (a ValueError, naming the file) before
    anything of it is unpickled; a damaged file raises `CheckpointError`. The official wrappers
    (``model_state``, ``model``, ``state_dict``) are unwrapped.
    """
    if isinstance(state_or_path, str | Path):
        from percli.core.checkpoint import load_tensors, torch_load_weights

        path = Path(state_or_path)
        if path.suffix == ".safetensors":
            state = load_tensors(path)
        else:
            state = torch_load_weights(path, [argparse.Namespace])
            if not isinstance(state, Mapping):
                raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    else:
        state = state_or_path
    for wrapper in ("model_state", "model", "state_dict"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_percli_state(model: nn.Module, state_or_path: Mapping[str, torch.Tensor] | str | Path,
                      what: str) -> LoadReport:
    """A percli state dict of a family with no official release, loaded strictly (a `check_fit` error names
    what does not fit)."""
    state = read_state(state_or_path)
    check_fit(model, state, model.arch, hint=f"build the {what} model the checkpoint was trained as")
    model.load_state_dict(state)
    return LoadReport(source_format="percli")
