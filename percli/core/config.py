"""Typed run configuration: dataclasses, YAML files and dotted `key=value` overrides.

A method's config is a dataclass tree. Values are resolved in this order, later wins:
dataclass defaults (the paper's recipe) -> preset YAML -> `--config FILE` -> `key=value` overrides.
Every value is checked against the field's type annotation; an unknown key or a bad value raises
`ConfigError`, whose message names the key and what is allowed. Nothing is ever `eval`-ed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is wrong; the message says which and how to fix it."""


# --------------------------------------------------------------------------------------------
# Sections shared by every trainable method.


TRACKERS = Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio"]
"""Accelerate's trackers (`accelerate.tracking.LOGGER_TYPE_TO_CLASS`; a test keeps the two in step)."""

TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX")}
"""The package a tracker needs, where its module is not named like the tracker (either one will do)."""


@dataclasses.dataclass
class TrainConfig:
    """The engine's loop settings."""

    max_steps: int = 1000
    """Optimizer steps. Ignored when `epochs` is set."""
    epochs: float | None = None
    """If set, max_steps = ceil(epochs * steps per epoch) for the dataset at hand."""
    batch_size: int = 32
    """Per process and per micro-batch; the effective batch is x grad_accum_steps x world size."""
    grad_accum_steps: int = 1
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: the launcher's (`accelerate launch --mixed_precision`, i.e. ACCELERATE_MIXED_PRECISION), else no.
    An explicit value wins over the launcher's (a warning names both when they differ)."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value; null disables clipping."""
    seed: int = 0
    log_every: int = 10
    """Optimizer steps between two lines of metrics.jsonl."""
    ckpt_every: int = 500
    """Optimizer steps between checkpoints (one is always written at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk; older ones are deleted."""
    eval_every: int = 0
    """Optimizer steps between evaluations (0: only at the end, when the method has eval data)."""
    num_workers: int = 2
    """DataLoader worker processes per training process."""
    cpu: bool = False
    """Force CPU even when a GPU is visible."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state over the processes (FSDP2 through Accelerate's plugin;
    every transformer block a shard unit) instead of replicating them (DDP). Checkpoints hold the full
    weights (model.safetensors) and each rank's optimizer shard; --resume reads its own shard (any other
    process count or a DDP run resumes too). No effect in one process."""
    compile: bool = False
    """torch.compile the model (its forward, in place) before training; the first steps are slower."""
    compile_backend: str = "inductor"
    """The torch.compile backend (`torch._dynamo.list_backends()`): inductor generates kernels; aot_eager
    traces without code generation (a quick check that a model compiles)."""
    log_with: list[Literal[TRACKERS]] = dataclasses.field(default_factory=list)
    """Experiment trackers through Accelerate (e.g. [tensorboard], [wandb]): the scalars of metrics.jsonl
    at the same steps, the config as hyperparameters, the run's pictures. TensorBoard writes to
    <run dir>/tensorboard; W&B honours WANDB_MODE=offline and WANDB_PROJECT (default percli)."""


@dataclasses.dataclass
class OptimConfig:
    """AdamW with warmup + cosine (or ScaledAdam with Eden); the LR follows the effective batch (linearly by
    default)."""

    name: Literal["adamw", "scaled_adam"] = "adamw"
    """adamw: torch's AdamW. scaled_adam: icefall's ScaledAdam (`percli.core.scaled_adam`, VoiceCraft's release):
    steps relative to each tensor's RMS, a learned tensor scale, its own gradient clipping (clipping_scale);
    no weight decay (the weight_decay keys apply to adamw only)."""
    schedule: Literal["auto", "cosine", "eden"] = "auto"
    """auto: eden with scaled_adam, cosine with adamw. cosine: linear warmup, then half-cosine to min_lr. eden:
    lr * ((s^2 + L^2) / L^2)^-0.25 * ((e^2 + E^2) / E^2)^-0.25 at step s and Eden epoch e (L = eden_lr_steps,
    E = eden_lr_epochs), the warmup rising from 0.5 to 1 (no end point: max_steps does not change it)."""
    lr: float = 1e-3
    """LR at `ref_batch_size`; the run uses lr * effective_batch / ref_batch_size (see lr_scaling)."""
    ref_batch_size: int = 256
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    """linear: lr * B / ref_batch_size (MAE, Goyal et al.); sqrt: lr * sqrt(B / ref_batch_size) (DINOv2);
    none: lr as given (e.g. dynamic batches, whose size varies)."""
    clipping_scale: float | None = 2.0
    """scaled_adam: clip the gradient norm to this times the median norm of the last clipping_update_period
    steps (null: no clipping; train.grad_clip clips before it, usually left null then)."""
    clipping_update_period: int = 100
    """scaled_adam: steps between two median estimates (VoiceCraft's 830M run: 1000; icefall: 100)."""
    eden_lr_steps: int = 3000
    """eden: steps after which the LR falls noticeably (icefall lr_batches; VoiceCraft reduce_lr_start_step)."""
    eden_lr_epochs: float = 4.0
    """eden: Eden epochs after which the LR falls noticeably (icefall lr_epochs; VoiceCraft reduce_lr_start_epoch)."""
    eden_epoch_steps: int = 3000
    """eden: optimizer steps per Eden epoch (VoiceCraft's pseudo_epoch_size: a fixed step count, not a data epoch)."""
    min_lr: float = 0.0
    weight_decay: float = 0.05
    """Not applied to norms, biases, position embeddings and tokens."""
    decay_embeddings: bool = False
    """Also decay position embeddings and learned tokens (DINOv2 exempts only biases, norms and LayerScale)."""
    weight_decay_end: float | None = None
    """Weight decay at the last step, reached by a half-cosine from `weight_decay` (DINOv2: 0.04 -> 0.4);
    None keeps it constant."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_fraction: float = 0.025
    """Share of max_steps spent in warmup (cosine: from 0; eden: from half the LR)."""
    layer_decay: float = 1.0
    """Layer-wise LR decay (finetuning): block i gets lr * layer_decay ** (depth - i)."""
    patch_embed_lr_mult: float = 1.0
    """Extra LR factor of the patch embedding, on top of layer decay (DINOv2: 0.2)."""


# --------------------------------------------------------------------------------------------
# Building a config from data.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list, dict):
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _yaml_value(text: str, key: str) -> Any:
    """A list or mapping given as text (a command-line option): YAML (so JSON too), or ConfigError."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{key}: {text!r} is not valid YAML/JSON ({mark})") from None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where it is lossless."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: got {value!r}; expected {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and not value and "no" in allowed:
            return "no"  # YAML 1.1 reads a bare `no` (train.mixed_precision=no) as false
        if value in allowed:
            return value
        raise ConfigError(f"{key}: got {value!r}; allowed values: {', '.join(map(repr, allowed))}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = _yaml_value(value, key)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r}; expected a list like [1, 2]")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: got {len(value)} values; expected {len(args)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = _yaml_value(value, key)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}; expected a mapping like {{a: 1}}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: got {value!r}; expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}; expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}; expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}; expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: got {value!r}; expected a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        # YAML reads yes/no/on/off as booleans: the words of a keyword list must be quoted.
        hint = " (YAML reads yes/no/on/off as true/false: quote the word, as 'yes')" if isinstance(value, bool) else ""
        raise ConfigError(f"{key}: got {value!r}; expected a string{hint}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _unknown_key(key: str, name: str, allowed: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" Did you mean {key[: len(key) - len(name)]}{close[0]}?" if close else ""
    return ConfigError(f"{key}: unknown key.{hint} Allowed keys here: {', '.join(allowed)}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (possibly partial) mapping, defaults filling the rest."""
    return merge(cls(), data, prefix)


def merge(cfg: T, data: dict[str, Any] | None, prefix: str = "", overlay: bool = False) -> T:
    """Return a copy of `cfg` with the values of the nested mapping `data` applied.

    A mapping-valued field (e.g. ``model.kwargs``) is replaced by the new mapping, unless `overlay`
    (command-line overrides): then ``model.kwargs.depth=2`` sets one key and keeps the others.
    """
    if not data:
        return cfg
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    fields = _fields(type(cfg))
    changes = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise _unknown_key(key, name, list(fields))
        _, tp = fields[name]
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current):
            changes[name] = merge(current, value, prefix=f"{key}.", overlay=overlay)
        elif overlay and isinstance(current, dict) and isinstance(value, dict):
            changes[name] = _coerce(_overlay(current, value), tp, key)
        else:
            changes[name] = _coerce(value, tp, key)
    return dataclasses.replace(cfg, **changes)


def _reaches_into_mapping(cfg: Any, path: list[str]) -> bool:
    """True when the dotted `path` names a key inside a mapping-valued field (``model.kwargs.depth``),
    not the field itself (``model.kwargs={...}`` replaces the whole mapping)."""
    node = cfg
    for name in path[:-1]:
        node = getattr(node, name, None)
        if isinstance(node, dict):
            return True
        if not dataclasses.is_dataclass(node):
            return False
    return False


def _overlay(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        out[k] = _overlay(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """Turn `a.b.c=value` into `{"a": {"b": {"c": value}}}`; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.max_steps=20)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        mark = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({mark}); quote it, e.g. "
                          f"{key}='\"...\"'") from None
    # YAML 1.1 reads `1e-3` as a string; the field type converts it when it expects a number.
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Apply dotted `key=value` overrides in order."""
    for text in overrides:
        path = text.partition("=")[0].strip().split(".")
        cfg = merge(cfg, parse_override(text), overlay=_reaches_into_mapping(cfg, path))
    return cfg


# --------------------------------------------------------------------------------------------
# Value checks beyond the types (run at resolution time, so --dry-run and show-config report them).

_POSITIVE_TRAIN = ("batch_size", "grad_accum_steps", "log_every", "ckpt_every", "keep_last")


def _finite(key: str, value: float | None, low: float = 0.0, *, strict: bool = False, high: float | None = None,
            allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    bad = value is None or not math.isfinite(value) or value < low or (strict and value == low) \
        or (high is not None and value > high)
    if bad:
        bound = f"> {low}" if strict else f">= {low}"
        raise ConfigError(f"{key}: got {value!r}; expected a finite number {bound}"
                          + (f" and <= {high}" if high is not None else ""))


def check_train(train: TrainConfig, prefix: str = "train.") -> None:
    for name in _POSITIVE_TRAIN:
        value = getattr(train, name)
        if value < 1:
            raise ConfigError(f"{prefix}{name}: got {value}; expected an integer >= 1")
    for name in ("max_steps", "eval_every", "num_workers"):  # 0 steps: load, save, finish (a conversion)
        if getattr(train, name) < 0:
            raise ConfigError(f"{prefix}{name}: got {getattr(train, name)}; expected an integer >= 0")
    _finite(f"{prefix}epochs", train.epochs, strict=True)
    _finite(f"{prefix}grad_clip", train.grad_clip, strict=True)
    check_trackers(train.log_with, f"{prefix}log_with")
    if train.compile:
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if train.compile_backend not in backends:
            raise ConfigError(f"{prefix}compile_backend: got {train.compile_backend!r}; allowed values: "
                              f"{', '.join(backends)}")


def check_trackers(names: list[str], key: str = "train.log_with") -> None:
    """Each tracker named once and its package installed (a missing one fails now, not after the first steps)."""
    import importlib.util

    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{key}: {name!r} is listed twice; name each tracker once")
        modules = TRACKER_MODULES.get(name, (name,))
        if not any(importlib.util.find_spec(m) for m in modules):
            raise ConfigError(f"{key}: the {name} tracker needs the {modules[0]} package; "
                              f"pip install {modules[0]} (or remove {name} from {key})")


def check_optim(optim: OptimConfig, prefix: str = "optim.") -> None:
    _finite(f"{prefix}lr", optim.lr, allow_none=False)
    _finite(f"{prefix}min_lr", optim.min_lr, allow_none=False)
    _finite(f"{prefix}weight_decay", optim.weight_decay, allow_none=False)
    _finite(f"{prefix}weight_decay_end", optim.weight_decay_end)
    _finite(f"{prefix}eps", optim.eps, strict=True, allow_none=False)
    _finite(f"{prefix}warmup_fraction", optim.warmup_fraction, high=1.0, allow_none=False)
    _finite(f"{prefix}layer_decay", optim.layer_decay, strict=True, allow_none=False)
    _finite(f"{prefix}patch_embed_lr_mult", optim.patch_embed_lr_mult, allow_none=False)
    for i, beta in enumerate(optim.betas):
        _finite(f"{prefix}betas[{i}]", beta, high=0.999999, allow_none=False)
    if optim.ref_batch_size < 1:
        raise ConfigError(f"{prefix}ref_batch_size: got {optim.ref_batch_size}; expected an integer >= 1")
    _finite(f"{prefix}clipping_scale", optim.clipping_scale, strict=True)
    _finite(f"{prefix}eden_lr_epochs", optim.eden_lr_epochs, strict=True, allow_none=False)
    for key in ("clipping_update_period", "eden_lr_steps", "eden_epoch_steps"):
        if getattr(optim, key) < 1:
            raise ConfigError(f"{prefix}{key}: got {getattr(optim, key)}; expected an integer >= 1")


_OFF_SWITCHES = {"eos", "layer_idx"}
"""Model arguments where -1 is a documented value (VoiceCraft without EOS token, PE's last layer)."""


def _check_sizes(key: str, value: Any) -> None:
    """Model constructor arguments: no negative integer (a size, depth or count) and no NaN/inf."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_sizes(f"{key}.{k}", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_sizes(f"{key}[{i}]", v)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int) and value < 0 and not (value == -1 and key.rsplit(".", 1)[-1] in _OFF_SWITCHES):
        raise ConfigError(f"{key}: got {value}; sizes, depths and counts must be >= 0")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: got {value}; expected a finite number")


def check_values(cfg: Any) -> None:
    """Range checks of the sections every training method shares (train, optim, model.kwargs)."""
    if isinstance(getattr(cfg, "train", None), TrainConfig):
        check_train(cfg.train)
    if isinstance(getattr(cfg, "optim", None), OptimConfig):
        check_optim(cfg.optim)
    kwargs = getattr(getattr(cfg, "model", None), "kwargs", None)
    if isinstance(kwargs, dict):
        _check_sizes("model.kwargs", kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested mapping of a config (tuples become lists), ready for YAML/JSON."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
