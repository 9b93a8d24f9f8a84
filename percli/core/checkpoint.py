"""Checkpoints that a crash cannot corrupt: safetensors + JSON, written aside and renamed.

Layout of `checkpoints/step_<N>/`:
  model.safetensors      model weights; metadata "percli" holds the model's name, constructor
                         arguments and preprocessing, so a checkpoint rebuilds its model alone
  optimizer.safetensors  optimizer tensors (AdamW moments, step counts) flattened by name;
                         the param-group hyper-parameters sit in its metadata as JSON
                         (FSDP runs: optimizer.rank<R>.safetensors, each rank's shard)
  trainer_state.json     step, data position, grad-scaler state, bad-input log, metrics so far

Nothing here unpickles: the formats are safetensors and JSON only. A directory is written as
`.tmp-step_<N>` and renamed into place, so a `step_<N>` directory is always complete.

Reading is as careful as writing: a damaged safetensors file (empty, truncated, a header length
beyond the file, a header that is not JSON) raises `CheckpointError` naming the file, and
`read_header` gives a file's tensor shapes and metadata without reading any tensor data (what
`percli.models.build_for_checkpoint` checks a model against before allocating it). The one door to
pickles, `torch_load_weights` (official ``.pth`` files), runs torch's ``weights_only`` unpickler and
turns a refused file into `RefusedPickleError`, whose advice never is to unpickle it anyway.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer_state.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views that share storage; a contiguous CPU clone is always safe.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> Path:
    """Atomically write a safetensors file with the JSON `meta` under metadata key "percli"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    metadata = {"percli": json.dumps(meta or {})}
    save_file(_cpu_tensors(state), str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


class CheckpointError(ValueError):
    """A weights file that cannot be read, or that does not fit the model it describes; the message
    names the file (the CLI reports it and exits 2)."""


class RefusedPickleError(CheckpointError, pickle.UnpicklingError):
    """A pickled checkpoint holding Python objects that percli will not unpickle (it never runs them)."""


# safetensors dtype names -> torch dtypes (for shape-only stand-ins of a file's tensors)
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def weights_file(path: str | Path) -> Path:
    """The safetensors file of `path` (a checkpoint dir's model.safetensors); FileNotFoundError if absent."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    return path


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors file ({err}): it is empty, truncated or not "
                           "safetensors at all; copy or download it again, or point at another checkpoint")


def _percli_meta(path: Path, raw: str | None) -> dict[str, Any]:
    try:
        meta = json.loads(raw or "{}")
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its percli metadata is not JSON ({e.msg}); the file is damaged") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its percli metadata is a {type(meta).__name__}, not a JSON object")
    return meta


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a damaged file raises `CheckpointError` naming it."""
    path = Path(path)
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise _unreadable(path, e) from None


def read_header(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A safetensors file's tensors as shape-only stand-ins on the meta device, and its percli metadata.

    Reads the header alone (no tensor data), so a file of any size answers at once; `path` may be a
    checkpoint dir. Damaged files raise `CheckpointError` naming the file.
    """
    path = weights_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("percli")
            shapes = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}
    except SafetensorError as e:
        raise _unreadable(path, e) from None
    tensors = {k: torch.empty(shape, dtype=_DTYPES.get(dtype, torch.float32), device="meta")
               for k, (shape, dtype) in shapes.items()}
    return tensors, _percli_meta(path, raw)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The percli metadata of a safetensors file or checkpoint dir, reading no tensor data."""
    return read_header(path)[1]


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load weights and their percli metadata from a safetensors file or a checkpoint dir."""
    path = weights_file(path)
    meta = read_header(path)[1]
    return load_tensors(path), meta


def refused_pickle_message(path: str | Path, names: Iterable[str]) -> str:
    """What to do with a pickle percli refuses: never unpickle it, re-save its tensors where it came from."""
    found = ", ".join(sorted(set(names))) or "objects torch's weights_only reader refuses"
    return (f"{path} holds Python objects that percli will not unpickle ({found}): loading them could run code "
            "from the file, so percli reads tensors only. Re-save the tensors as safetensors with the trusted "
            "code that produced the file (e.g. safetensors.torch.save_file(model.state_dict(), "
            "'model.safetensors')), then pass that file, or turn it into a percli checkpoint with "
            "`percli convert model.safetensors --model NAME -o weights.safetensors`")


_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _global_name(entry: Any) -> str:
    if isinstance(entry, tuple):  # (stand-in, "module.name"), as torch's safe_globals takes them
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def torch_load_weights(path: str | Path, allowed: Iterable[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` with the extra `allowed` globals, on the CPU.

    The pickle's globals are listed first (a scan that runs nothing); a file naming any global
    beyond torch's safe ones and `allowed` raises `RefusedPickleError` before anything is unpickled
    (the message names the globals and how to re-save the file, never torch's own advice to
    unpickle it regardless). A file that is not a readable torch checkpoint raises `CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    allowed = list(allowed)
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a legacy (non-zip) or damaged file: torch.load below decides
        found = []
    refused = sorted(set(found) - {_global_name(a) for a in allowed})
    if refused:
        raise RefusedPickleError(refused_pickle_message(path, refused))
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
        names = _REFUSED_GLOBAL.findall(text)
        if names:
            raise RefusedPickleError(refused_pickle_message(path, names)) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(detail)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                              f"{_first_line(str(e))}); copy or download it again") from None


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An optimizer's state_dict as (tensors by "<param id>.<name>", JSON strings of the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    meta = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, meta


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, Any]:
    """The inverse of `flatten_optimizer`: a state_dict the optimizer loads."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for key, value in json.loads(meta.get("scalars", "{}")).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    groups = json.loads(meta["param_groups"])
    for group in groups:  # JSON turns tuples into lists; AdamW expects tuple betas.
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint dirs under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def run_weights(path: str | Path) -> Path:
    """The weights of a run dir (its latest checkpoint), a checkpoint dir or a .safetensors file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path} is not a percli safetensors file; official .pth files load with "
                             "percli.create_model(name) and percli.models.load_initial_weights(model, path), "
                             "or convert them with `percli convert`")
        return path
    if (path / MODEL_FILE).is_file():
        return path
    latest = latest_checkpoint(path / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"{path} holds no {MODEL_FILE} and no checkpoints/step_*; pass a percli run dir, "
                                "checkpoint dir or .safetensors file")
    return latest


def optimizer_file(rank: int | None = None) -> str:
    """`optimizer.safetensors`, or rank R's shard `optimizer.rank<R>.safetensors` (FSDP runs)."""
    return OPTIMIZER_FILE if rank is None else f"optimizer.rank{rank}.safetensors"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def pending_dir(root: str | Path, step: int) -> Path:
    """Where step `step` is written before it is renamed into place (one run per dir: the run-dir lock)."""
    return Path(root) / f".tmp-step_{step:07d}"


def start_checkpoint(root: str | Path, step: int) -> Path:
    """A fresh, empty `pending_dir` (what a killed run left there is removed)."""
    tmp = pending_dir(root, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_optimizer(directory: Path, optimizer_state: dict[str, Any], rank: int | None = None) -> Path:
    """An optimizer state_dict as safetensors (flushed to disk); `rank` names a shard of it."""
    tensors, meta = flatten_optimizer(optimizer_state)
    path = directory / optimizer_file(rank)
    save_file(_cpu_tensors(tensors), str(path), metadata=meta)
    _fsync_file(path)
    return path


def finish_checkpoint(tmp: Path, step: int, model_state: dict[str, torch.Tensor], model_meta: dict[str, Any],
                      trainer_state: dict[str, Any], keep_last: int = 2) -> Path:
    """Add the weights and trainer state to `tmp`, rename it to `step_<step>`, keep the newest `keep_last`."""
    root = tmp.parent
    final = root / f"step_{step:07d}"
    save_weights(tmp / MODEL_FILE, model_state, model_meta)
    (tmp / TRAINER_FILE).write_text(json.dumps(trainer_state, indent=1))
    for name in (MODEL_FILE, TRAINER_FILE):
        _fsync_file(tmp / name)
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[: -max(keep_last, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    model_meta: dict[str, Any],
    optimizer_state: dict[str, Any] | None,
    trainer_state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write `root/step_<step>` atomically (one writer), then delete all but the newest `keep_last`."""
    tmp = start_checkpoint(root, step)
    if optimizer_state is not None:
        write_optimizer(tmp, optimizer_state)
    return finish_checkpoint(tmp, step, model_state, model_meta, trainer_state, keep_last)


def read_optimizer(path: Path) -> dict[str, Any]:
    """An optimizer state_dict written by `write_optimizer`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as e:
        raise _unreadable(path, e) from None
    return unflatten_optimizer(load_tensors(path), meta)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint dir: {"model", "model_meta", "optimizer", "trainer_state"} (optimizer: None when
    the dir holds none, or only rank shards, which `read_optimizer` reads one by one)."""
    path = Path(path)
    model_state, model_meta = read_weights(path / MODEL_FILE)
    opt_path = path / OPTIMIZER_FILE
    optimizer = read_optimizer(opt_path) if opt_path.is_file() else None
    trainer_state = json.loads((path / TRAINER_FILE).read_text())
    return {"model": model_state, "model_meta": model_meta, "optimizer": optimizer, "trainer_state": trainer_state}


def clean_stale_temps(root: str | Path) -> None:
    """Remove half-written dirs left by a killed run (they were never renamed into place)."""
    root = Path(root)
    if root.is_dir():
        for p in root.glob(".tmp-step_*"):
            shutil.rmtree(p, ignore_errors=True)
