"""Reading a pool's model outputs and its labelled set from the files `percli select` is given.

Arrays come from .npy, or from .npz/.safetensors files holding one array (or one named after the
option). Every problem raises ValueError naming the option, the file and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors")
# What each model output is, for the help texts and for the error when a strategy lacks it.
INPUTS = {
    "probs": ("--probs", "softmax probabilities [N, C] of the current model on the pool"),
    "mc_probs": ("--mc-probs", "probabilities [T, N, C] of T forward passes with dropout on"),
    "embeddings": ("--embeddings", "penultimate features [N, D] of the pool"),
}


def check_array_file(path: Path, flag: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    if path.suffix not in ARRAY_SUFFIXES:
        raise ValueError(f"{flag} {path}: save it as {', '.join(ARRAY_SUFFIXES)} (numpy.save, numpy.savez, "
                         "safetensors)")


def load_array(path: Path, flag: str, key: str) -> np.ndarray:
    """The array in a .npy, or in a .npz/.safetensors holding one array (or one named `key`)."""
    check_array_file(path, flag)
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        else:
            from safetensors.torch import load_file

            arrays = {name: (t.float() if t.is_floating_point() else t).numpy() for name, t in load_file(path).items()}
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{flag} {path}: cannot read it ({e})") from None
    if len(arrays) != 1 and key not in arrays:
        raise ValueError(f"{flag} {path} holds arrays {', '.join(sorted(arrays)) or '(none)'}; keep one array in "
                         f"the file or name it {key!r}")
    return arrays[key] if key in arrays else next(iter(arrays.values()))


def load_probabilities(path: Path, flag: str, key: str, ndim: int) -> np.ndarray:
    probs = load_array(path, flag, key)
    shape = "[N, C]" if ndim == 2 else "[T, N, C]"
    if probs.ndim != ndim or probs.shape[-1] < 2:
        raise ValueError(f"{flag} {path}: expected probabilities of shape {shape} with C >= 2 classes, got "
                         f"{list(probs.shape)}")
    probs = probs.astype(np.float64)
    sums = probs.sum(-1)
    if not np.isfinite(probs).all() or probs.min() < 0 or np.abs(sums - 1).max() > 1e-3:
        raise ValueError(f"{flag} {path}: rows must be probabilities summing to 1 (got values in [{probs.min():.3g}, "
                         f"{probs.max():.3g}], row sums in [{sums.min():.3g}, {sums.max():.3g}]); apply a softmax "
                         "to logits")
    return probs


def load_pool(probs: Path | None, mc_probs: Path | None, embeddings: Path | None) -> tuple[dict, int]:
    """The given model outputs (None for the others) and the pool size N they agree on."""
    inputs = {
        "probs": load_probabilities(probs, "--probs", "probs", 2) if probs else None,
        "mc_probs": load_probabilities(mc_probs, "--mc-probs", "mc_probs", 3) if mc_probs else None,
        "embeddings": load_array(embeddings, "--embeddings", "embeddings") if embeddings else None,
    }
    features = inputs["embeddings"]
    if features is not None and (features.ndim != 2 or not np.isfinite(features).all()):
        raise ValueError(f"--embeddings {embeddings}: expected finite features of shape [N, D], got shape "
                         f"{list(features.shape)}")
    sizes = {name: (a.shape[1] if name == "mc_probs" else a.shape[0]) for name, a in inputs.items() if a is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError("the inputs describe pools of different sizes (" + ", ".join(f"{k}: {v}" for k, v in
                         sizes.items()) + "); compute them on the same pool, in the same order")
    return inputs, next(iter(sizes.values()))


def load_labelled(path: Path, n: int, warn: Callable[[str], None]) -> np.ndarray:
    """A boolean mask [N] from a mask (dtype bool) or integer indices (.npy/.npz/.safetensors or .txt)."""
    if path.suffix == ".txt" and path.is_file():
        try:
            values = np.asarray([int(line) for line in path.read_text().split()], dtype=np.int64)
        except ValueError as e:
            raise ValueError(f"--labelled {path}: a .txt holds one integer index per line ({e})") from None
    else:
        values = load_array(path, "--labelled", "labelled")
    values = values.reshape(-1)
    if values.dtype == bool:
        if values.size != n:
            raise ValueError(f"--labelled {path}: a boolean mask needs one entry per pool point ({n}), got "
                             f"{values.size}")
        return values
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"--labelled {path}: pass integer indices or a boolean mask, not {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= n):
        raise ValueError(f"--labelled {path}: indices must lie in [0, {n}) (got {values.min()}..{values.max()})")
    if values.size == n and n > 2 and set(np.unique(values).tolist()) <= {0, 1}:
        warn(f"[yellow]warning:[/] --labelled {path} looks like a 0/1 mask but is read as indices; save it with "
             "dtype bool to pass a mask")
    mask = np.zeros(n, dtype=bool)
    mask[values] = True
    return mask


def load_ids(path: Path, n: int) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"--ids {path}: no such file")
    ids = path.read_text(encoding="utf-8").splitlines()
    if len(ids) != n:
        raise ValueError(f"--ids {path}: {len(ids)} lines for a pool of {n}; write one id per pool point, in pool "
                         "order")
    return ids
