"""Checkpoints that a crash cannot corrupt: safetensors + JSON, written aside and renamed.

Layout of `checkpoints/step_<N>/`:
  model.safetensors      model weights; metadata "percli" holds the model's name, constructor
                         arguments and preprocessing, so a checkpoint rebuilds its model alone
  optimizer.safetensors  optimizer tensors (AdamW moments, step counts) flattened by name;
                         the param-group hyper-parameters sit in its metadata as JSON
  trainer_state.json     step, data position, grad-scaler state, bad-input log, metrics so far

Nothing here unpickles: the formats are safetensors and JSON only. A directory is written as
`.tmp-step_<N>-<pid>` and renamed into place, so a `step_<N>` directory is always complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
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


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load weights and their percli metadata from a safetensors file or a checkpoint dir."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("percli", "{}")
    return load_file(str(path)), json.loads(raw)


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


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    model_meta: dict[str, Any],
    optimizer_state: dict[str, Any] | None,
    trainer_state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write `root/step_<step>` atomically, then delete all but the newest `keep_last`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(tmp / MODEL_FILE, model_state, model_meta)
    if optimizer_state is not None:
        tensors, meta = flatten_optimizer(optimizer_state)
        save_file(_cpu_tensors(tensors), str(tmp / OPTIMIZER_FILE), metadata=meta)
    (tmp / TRAINER_FILE).write_text(json.dumps(trainer_state, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[: -max(keep_last, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint dir: {"model", "model_meta", "optimizer", "trainer_state"}."""
    path = Path(path)
    model_state, model_meta = read_weights(path / MODEL_FILE)
    optimizer = None
    opt_path = path / OPTIMIZER_FILE
    if opt_path.is_file():
        with safe_open(str(opt_path), framework="pt") as f:
            meta = f.metadata() or {}
        optimizer = unflatten_optimizer(load_file(str(opt_path)), meta)
    trainer_state = json.loads((path / TRAINER_FILE).read_text())
    return {"model": model_state, "model_meta": model_meta, "optimizer": optimizer, "trainer_state": trainer_state}


def clean_stale_temps(root: str | Path) -> None:
    """Remove half-written dirs left by a killed run (they were never renamed into place)."""
    root = Path(root)
    if root.is_dir():
        for p in root.glob(".tmp-step_*"):
            shutil.rmtree(p, ignore_errors=True)
