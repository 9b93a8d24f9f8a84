"""Model registry: every architecture variant is a small factory registered by name.

`create_model("hiera_base_224")` builds a model; names follow the official constructors so
users can type what the papers' repositories call them.

A model rebuilt from a checkpoint's metadata (its name and constructor arguments) goes through
`create_model_for` / `build_for_checkpoint`: the sizes a file claims are untrusted until its tensors
agree, so the model is first built on the meta device (no memory), compared with the file's tensor
shapes (read from the safetensors header, no data), and only then built for real.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_FAMILY_MODULES = ("percli.models.hiera", "percli.models.audio_mae", "percli.models.encodec", "percli.models.clip",
                  "percli.models.voicecraft", "percli.models.pe", "percli.models.dinov2",
                  "percli.models.mavil", "percli.models.mavil_pretrain", "percli.models.pe_av",
                  "percli.models.flap", "percli.models.support_set", "percli.models.mmpt", "percli.models.vlm",
                  "percli.models.mmp", "percli.models.plm", "percli.models.diffmae",
                  "percli.models.soundscape", "percli.models.hifigan", "percli.models.mha_vse",
                  "percli.models.ummt", "percli.models.stmt", "percli.models.amvc", "percli.models.av_fusion",
                  "percli.models.yt8m")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory under its function name."""
    if fn.__name__ in _FACTORIES:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _FACTORIES[fn.__name__] = fn
    return fn


def _load_families() -> None:
    for module in _FAMILY_MODULES:
        importlib.import_module(module)


_LOADERS: dict[str, Callable[..., Any]] = {}


def register_loader(family: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(model, state_or_path) -> report` as the weight loader of the models whose classes live
    in module `family` (a family file registers its `load_official_state` with its own `__name__`)."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _LOADERS[family] = fn
        return fn
    return register


def weights_loader(model: nn.Module) -> Callable[..., Any] | None:
    """The family loader of `model` (official key mappings and tolerances), or None for unregistered models."""
    _load_families()
    return _LOADERS.get(type(model).__module__)


def load_initial_weights(model: nn.Module, path: str | Path) -> Any:
    """Load a percli checkpoint/safetensors, an official .pth or timm weights (a path or an ``hf-hub:`` spec)
    into `model` with its family's loader; what was dropped (an MAE decoder) or left at init (a new head) is
    reported on stderr."""
    from rich.console import Console

    from percli.core.checkpoint import MODEL_FILE, read_weights, run_weights
    from percli.models.hub import resolve_weights

    p = resolve_weights(path)  # an hf-hub: spec becomes its file in the Hugging Face cache
    if not p.exists():
        raise FileNotFoundError(f"model.checkpoint={path}: no such file or directory")
    loader = weights_loader(model)
    if loader is None:
        raise ValueError(f"{type(model).__name__} has no registered weight loader; load a percli checkpoint of it")
    percli_file = p.suffix == ".safetensors" or (p.is_dir() and ((p / MODEL_FILE).is_file()
                                                                 or (p / "checkpoints").is_dir()))
    # a release folder (params.json + consolidated.pth, config.json + model*.safetensors) goes to the family loader
    report = loader(model, read_weights(run_weights(p))[0] if percli_file else p)
    dropped, missing = getattr(report, "dropped", []), getattr(report, "missing", [])
    heads = sorted({k.split(".")[0] for k in dropped})
    Console(stderr=True).print(
        f"initial weights from {path}: {len(dropped)} tensors not used ({', '.join(heads) or '-'}), "
        f"{len(missing)} left at init ({', '.join(sorted({k.split('.')[0] for k in missing})) or '-'})",
        highlight=False, soft_wrap=True)
    return report


def load_run_model(path: str | Path, task: str, command: str) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a percli run dir / checkpoint dir / .safetensors whose metadata says ``task``, built from that
    metadata and loaded (eval mode), and the metadata; another task raises ConfigError naming ``command``."""
    from percli.core.checkpoint import read_meta, run_weights
    from percli.core.config import ConfigError

    weights = run_weights(path)
    meta = read_meta(weights)
    if meta.get("task") != task:
        raise ConfigError(f"{weights} is a {meta.get('task', 'non-percli')} checkpoint; give a `{command}` run")
    model = create_model_for(meta["name"], meta.get("kwargs") or {}, weights)
    load_initial_weights(model, weights)
    return model.eval(), meta


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _load_families()
    return sorted(_FACTORIES)


def create_model(name: str, pretrained: bool | str = False, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments override the variant's defaults.

    Args:
        name: A registered name (`list_models`), or ``name.tag`` as timm writes it
            (``"hiera_base_224.mae"``), which implies ``pretrained=tag``.
        pretrained: False (random init), True (the model's first release in `percli.models.pretrained`)
            or a release tag; the weights are resolved through the Hugging Face cache (``HF_HUB_OFFLINE=1``
            reads the cache only) and loaded with the family's loader.
    """
    from percli.models.pretrained import split_name

    _load_families()
    if name not in _FACTORIES:
        base, tag = split_name(name)
        if tag is not None and base in _FACTORIES:
            name, pretrained = base, (tag if pretrained in (False, True) else pretrained)
    if name not in _FACTORIES:
        raise KeyError(f"unknown model {name!r}; run `percli ls models` to see the {len(_FACTORIES)} available")
    try:
        model = _FACTORIES[name](**kwargs)
    except TypeError as err:  # a constructor keyword the model does not have: the user's config, not a bug
        found = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if found is None:
            raise
        from percli.core.config import ConfigError

        raise ConfigError(f"model.kwargs: {name} has no argument {found[1]!r} ({err}); drop it, or use the "
                          "official constructor's keyword names") from None
    if pretrained is not False and pretrained is not None:
        load_initial_weights(model, pretrained_spec(name, None if pretrained is True else str(pretrained)))
    return model


def pretrained_spec(name: str, tag: str | None = None) -> str:
    """The ``hf-hub:`` spec of `name`'s release `tag` (None: its first), or a ValueError saying where the
    official file is when the release is not on the hub or not in a layout percli reads."""
    from percli.models.pretrained import release

    try:
        entry = release(name, tag)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    label = f"{name}.{tag}" if tag else name
    if entry.spec is None or not entry.loadable:
        where = f" from {entry.url}" if entry.url else ""
        why = "is not on the Hugging Face hub" if entry.spec is None else f"is in the {entry.layout} layout"
        raise ValueError(f"{label} {why}: download the official weights{where} and pass the file "
                         "(model.checkpoint=FILE, or load_initial_weights(model, FILE))")
    return entry.spec


# --------------------------------------------------------------------------- models rebuilt from checkpoints

# Tensor factories: what a module's constructor allocates its parameters and buffers with.
_FACTORIES_OF_TENSORS = frozenset({
    "empty", "zeros", "ones", "full", "rand", "randn", "randint", "randperm", "arange", "linspace", "logspace",
    "eye", "tensor", "as_tensor", "empty_strided", "empty_like", "zeros_like", "ones_like", "full_like",
    "rand_like", "randn_like", "new_empty", "new_zeros", "new_ones", "new_full", "new_tensor"})
_FREE_VALUES = 2 ** 24  # values a model may hold beyond its file's (new heads, non-persistent tables)


class _TooLarge(Exception):
    pass


class _ConstructionBudget(TorchFunctionMode):
    """Stops a (meta-device) constructor once it has created far more tensors or values than the
    checkpoint holds: a metadata depth of 100000 would otherwise take minutes and gigabytes of
    Python objects even on the meta device, and CPU-side initialisers sized by the claimed shapes
    (numpy position tables) would still run."""

    def __init__(self, max_tensors: int, max_values: int):
        super().__init__()
        self.max_tensors, self.max_values = max_tensors, max_values
        self.tensors = self.values = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in _FACTORIES_OF_TENSORS and isinstance(out, torch.Tensor):
            self.tensors += 1
            self.values += out.numel()
            if self.tensors > self.max_tensors or self.values > self.max_values:
                raise _TooLarge(f"{self.tensors:,} tensors / {self.values:,} values created so far")
        return out


def _strict_fit(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise RuntimeError(f"missing {missing[:8]}, unexpected {unexpected[:8]}")


def family_fit(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Any:
    """Fit `state` into `model` with the model family's own `load_official_state` (its key mapping
    and tolerances), or strictly when the family has none."""
    loader = weights_loader(model)
    return loader(model, state) if loader is not None else _strict_fit(model, state)


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def check_checkpoint_fits(build: Callable[[], nn.Module], source: str | Path, tensors: Mapping[str, torch.Tensor],
                          fit: Callable[[nn.Module, Mapping[str, torch.Tensor]], Any] | None = None) -> None:
    """Raise `CheckpointError` unless the model `build()` makes fits the checkpoint's `tensors`.

    ``build()`` runs on the meta device, so nothing is allocated whatever sizes it was given, and
    stops early once it creates far more than the file holds. Then: a tensor of the model and one of
    the file under the same name must have the same shape; `fit(model, tensors)` (default: strict
    key equality; `family_fit` for a registered model) must accept the file; and what the model holds
    beyond the tensors the file fills (new heads, non-persistent buffers) may not exceed the file's
    own size (or 16M values). `tensors` may be the file's real tensors or `read_header`'s stand-ins.
    """
    from percli.core.checkpoint import CheckpointError

    spec = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in tensors.items()}
    file_values = sum(t.numel() for t in spec.values())
    budget = _ConstructionBudget(max_tensors=8 * len(spec) + 1024, max_values=4 * file_values + 4 * _FREE_VALUES)
    where = f"{source} ({len(spec)} tensors, {file_values:,} values)"
    try:
        with torch.device("meta"), budget:
            probe = build()
    except _TooLarge as e:
        raise CheckpointError(f"{where}: the model its metadata describes is far larger than the file's tensors "
                              f"({e}); the metadata and the tensors disagree (a damaged or edited checkpoint), "
                              "nothing was allocated") from None
    except CheckpointError:
        raise
    except (TypeError, ValueError, AssertionError) as e:  # arguments no constructor takes: an input problem
        raise CheckpointError(f"{where}: the model its metadata describes cannot be built ({type(e).__name__}: "
                              f"{e})") from None
    own = probe.state_dict()
    wrong = [f"{k} {_shape(spec[k])} in the file, {_shape(v)} in the model"
             for k, v in own.items() if k in spec and spec[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{where} does not match the model its metadata describes: {'; '.join(wrong[:4])}"
                              f"{f' (and {len(wrong) - 4} more)' if len(wrong) > 4 else ''}; nothing was allocated")
    missing: list[str] | None = None
    try:
        report = (fit or _strict_fit)(probe, spec)
        missing = list(getattr(report, "missing", None) or [])
    except (NotImplementedError, RuntimeError, ValueError, KeyError, TypeError) as e:
        if isinstance(e, NotImplementedError) or "meta tensor" in str(e).lower():
            pass  # the family's loader computes on values (meta tensors have none): shapes were compared above
        else:
            raise CheckpointError(f"{where} does not fit the model its metadata describes ({e}); nothing was "
                                  "allocated") from None
    if missing is None:  # the fit could not run: what the file backs is its same-named tensors
        missing = [k for k in own if k not in spec]
    skip = set(missing)
    backed = sum(v.numel() for k, v in own.items() if k not in skip)
    total = sum(t.numel() for t in probe.parameters()) + sum(t.numel() for t in probe.buffers())
    if total - backed > max(file_values, _FREE_VALUES):
        raise CheckpointError(f"{where}: the model its metadata describes holds {total:,} values, "
                              f"{total - backed:,} of them not in the file; the metadata and the tensors disagree "
                              "(a damaged or edited checkpoint), nothing was allocated")


def build_for_checkpoint(build: Callable[[], nn.Module], source: str | Path, tensors: Mapping[str, torch.Tensor],
                         fit: Callable[[nn.Module, Mapping[str, torch.Tensor]], Any] | None = None) -> nn.Module:
    """`build()`, run for real only after `check_checkpoint_fits` accepted it (see there)."""
    check_checkpoint_fits(build, source, tensors, fit)
    return build()


def create_model_for(name: str, kwargs: Mapping[str, Any], checkpoint: str | Path | None) -> nn.Module:
    """``create_model(name, **kwargs)`` for the weights at `checkpoint`, which the caller loads next.

    For a safetensors file or checkpoint dir (whose metadata typically gave `name` and `kwargs`) the
    model is first checked against the file's header with `check_checkpoint_fits` and the family's
    own loader rules, so sizes the file claims but its tensors do not have raise `CheckpointError`
    (a ValueError naming the file and the first mismatching keys) before any allocation. Official
    ``.pth`` files carry no such metadata and no checkpoint means random init: both build directly.
    """
    from percli.models.hub import resolve_weights

    kwargs = dict(kwargs)
    path = resolve_weights(checkpoint) if checkpoint else None
    if path is None or not (path.is_dir() or path.suffix == ".safetensors"):
        return create_model(name, **kwargs)
    from percli.core.checkpoint import read_header

    tensors = read_header(path)[0]
    _load_families()
    if name not in _FACTORIES:
        return create_model(name, **kwargs)  # the registry's KeyError
    return build_for_checkpoint(lambda: create_model(name, **kwargs), path, tensors, family_fit)
