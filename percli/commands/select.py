"""`percli select [run|simulate]`: active-learning queries on a pool, and simulated AL curves.

`percli select --strategy S --budget B ...` (no subcommand name) is `percli select run`: it reads
model outputs on the pool from .npy/.npz/.safetensors files and writes the picked indices.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from percli.active.strategies import STRATEGIES
from percli.commands.curate_metaclip import DefaultToRun
from percli.commands.run import emit_summary, err, fail
from percli.core.rundir import default_run_dir

select_app = typer.Typer(
    cls=DefaultToRun, no_args_is_help=False,
    help="Active learning: pick the pool points to label next. [bold]percli select --strategy margin --budget 100 "
         "--probs pool_probs.npy --labelled labelled.npy[/] queries a pool (the `run` subcommand); "
         "[bold]percli select simulate[/] compares strategies on a simulated labelling loop.")

# What each model output is, for the help texts and for the error when a strategy lacks it.
INPUTS = {
    "probs": ("--probs", "softmax probabilities [N, C] of the current model on the pool"),
    "mc_probs": ("--mc-probs", "probabilities [T, N, C] of T forward passes with dropout on"),
    "embeddings": ("--embeddings", "penultimate features [N, D] of the pool"),
}
ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors")
SHOWN_PICKS = 20


def _load_array(path: Path, flag: str, key: str) -> np.ndarray:
    """The array in a .npy, or in a .npz/.safetensors holding one array (or one named `key`)."""
    if not path.is_file():
        fail(f"{flag} {path}: no such file")
    if path.suffix not in ARRAY_SUFFIXES:
        fail(f"{flag} {path}: save it as {', '.join(ARRAY_SUFFIXES)} (numpy.save, numpy.savez, safetensors)")
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
        fail(f"{flag} {path}: cannot read it ({e})")
    if len(arrays) != 1 and key not in arrays:
        fail(f"{flag} {path} holds arrays {', '.join(sorted(arrays)) or '(none)'}; keep one array in the file "
             f"or name it {key!r}")
    return arrays[key] if key in arrays else next(iter(arrays.values()))


def _load_probabilities(path: Path, flag: str, key: str, ndim: int) -> np.ndarray:
    probs = _load_array(path, flag, key)
    shape = "[N, C]" if ndim == 2 else "[T, N, C]"
    if probs.ndim != ndim or probs.shape[-1] < 2:
        fail(f"{flag} {path}: expected probabilities of shape {shape} with C >= 2 classes, got {list(probs.shape)}")
    probs = probs.astype(np.float64)
    sums = probs.sum(-1)
    if not np.isfinite(probs).all() or probs.min() < 0 or np.abs(sums - 1).max() > 1e-3:
        fail(f"{flag} {path}: rows must be probabilities summing to 1 (got values in [{probs.min():.3g}, "
             f"{probs.max():.3g}], row sums in [{sums.min():.3g}, {sums.max():.3g}]); apply a softmax to logits")
    return probs


def _load_pool(probs: Path | None, mc_probs: Path | None, embeddings: Path | None) -> tuple[dict, int]:
    """The given model outputs (None for the others) and the pool size N they agree on."""
    inputs = {
        "probs": _load_probabilities(probs, "--probs", "probs", 2) if probs else None,
        "mc_probs": _load_probabilities(mc_probs, "--mc-probs", "mc_probs", 3) if mc_probs else None,
        "embeddings": _load_array(embeddings, "--embeddings", "embeddings") if embeddings else None,
    }
    features = inputs["embeddings"]
    if features is not None and (features.ndim != 2 or not np.isfinite(features).all()):
        fail(f"--embeddings {embeddings}: expected finite features of shape [N, D], got shape {list(features.shape)}")
    sizes = {name: (a.shape[1] if name == "mc_probs" else a.shape[0]) for name, a in inputs.items() if a is not None}
    if len(set(sizes.values())) > 1:
        fail("the inputs describe pools of different sizes (" + ", ".join(f"{k}: {v}" for k, v in sizes.items())
             + "); compute them on the same pool, in the same order")
    return inputs, next(iter(sizes.values()))


def _load_labelled(path: Path, n: int) -> np.ndarray:
    """A boolean mask [N] from a mask (dtype bool) or integer indices (.npy/.npz/.safetensors or .txt)."""
    if path.suffix == ".txt" and path.is_file():
        try:
            values = np.asarray([int(line) for line in path.read_text().split()], dtype=np.int64)
        except ValueError as e:
            fail(f"--labelled {path}: a .txt holds one integer index per line ({e})")
    else:
        values = _load_array(path, "--labelled", "labelled")
    values = values.reshape(-1)
    if values.dtype == bool:
        if values.size != n:
            fail(f"--labelled {path}: a boolean mask needs one entry per pool point ({n}), got {values.size}")
        return values
    if values.size and not np.issubdtype(values.dtype, np.integer):
        fail(f"--labelled {path}: pass integer indices or a boolean mask, not {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= n):
        fail(f"--labelled {path}: indices must lie in [0, {n}) (got {values.min()}..{values.max()})")
    if values.size == n and n > 2 and set(np.unique(values).tolist()) <= {0, 1}:
        err.print(f"[yellow]warning:[/] --labelled {path} looks like a 0/1 mask but is read as indices; "
                  "save it with dtype bool to pass a mask", highlight=False)
    mask = np.zeros(n, dtype=bool)
    mask[values] = True
    return mask


def _load_ids(path: Path, n: int) -> list[str]:
    if not path.is_file():
        fail(f"--ids {path}: no such file")
    ids = path.read_text(encoding="utf-8").splitlines()
    if len(ids) != n:
        fail(f"--ids {path}: {len(ids)} lines for a pool of {n}; write one id per pool point, in pool order")
    return ids


@select_app.command("run")
def run(
    strategy: str = typer.Option(..., "--strategy", "-s", help="One of: " + "; ".join(
        f"{s.name} ({s.summary})" for s in STRATEGIES.values()) + "."),
    budget: int = typer.Option(..., "--budget", "-b", help="How many pool points to pick."),
    probs: Path | None = typer.Option(None, "--probs", help=f"The {INPUTS['probs'][1]}."),
    embeddings: Path | None = typer.Option(None, "--embeddings", help=f"The {INPUTS['embeddings'][1]} (core-set, "
                                                                      "BADGE)."),
    mc_probs: Path | None = typer.Option(None, "--mc-probs", help=f"The {INPUTS['mc_probs'][1]} (BALD)."),
    labelled: Path | None = typer.Option(
        None, "--labelled", help="Already labelled points, never picked: integer indices (.npy/.npz/.safetensors "
                                 "or a .txt, one per line) or a boolean mask [N] (dtype bool)."),
    ids: Path | None = typer.Option(None, "--ids", help="Text file, one id per pool point: copied into the output."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Output JSONL, one {rank, index, id, score} per pick "
                                     "(default runs/select-<strategy>-<UTC time>.jsonl)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output file."),
    seed: int = typer.Option(0, "--seed", help="Seed of random, BADGE's draws and core-set's start without labels."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary (with all picked indices) as JSON."),
) -> None:
    """Pick --budget points of a pool to label next (the default when no subcommand is named).

    Example: [bold]percli select --strategy badge --budget 100 --probs probs.npy --embeddings feats.npy
    --labelled labelled.npy --ids pool_ids.txt -o to_label.jsonl[/]
    """
    from percli.active.strategies import select
    from percli.core.rundir import write_jsonl_atomic

    if strategy not in STRATEGIES:
        fail(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    given = {"probs": probs, "mc_probs": mc_probs, "embeddings": embeddings}
    missing = [f"{INPUTS[name][0]} FILE ({INPUTS[name][1]})" for name in STRATEGIES[strategy].needs
               if given[name] is None]
    if missing:
        fail(f"--strategy {strategy} needs {' and '.join(missing)}; pass it")
    if not any(given.values()):
        fail("pass --probs or --embeddings (the pool size N comes from them)")
    inputs, n = _load_pool(probs, mc_probs, embeddings)
    mask = _load_labelled(labelled, n) if labelled else np.zeros(n, dtype=bool)
    pool_ids = _load_ids(ids, n) if ids else None
    output = output or default_run_dir("select", strategy).with_suffix(".jsonl")
    if output.is_dir() or (output.exists() and not overwrite):
        fail(f"--output {output} exists; pass --overwrite to replace it or choose another file")
    try:
        picked, scores = select(strategy, budget, mask, np.random.default_rng(seed), **inputs)
    except ValueError as e:
        fail(f"--{e}" if str(e).startswith("budget") else str(e))
    rows = [{"rank": rank, "index": int(i), "id": pool_ids[i] if pool_ids else None,
             "score": float(s) if math.isfinite(s) else None}
            for rank, (i, s) in enumerate(zip(picked.tolist(), scores.tolist(), strict=True))]
    output.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(output, rows)
    summary = {"strategy": strategy, "budget": budget, "pool_size": n, "labelled": int(mask.sum()),
               "unlabelled": int(n - mask.sum()), "seed": seed, "output": str(output),
               "indices": picked.tolist()}
    if json_out:
        print(json.dumps(summary, indent=1))
        return
    table = Table("rank", "index", "id", "score", title=f"{strategy}: {len(rows)} of {summary['unlabelled']} "
                                                        f"unlabelled points -> {output}", title_justify="left")
    for row in rows[:SHOWN_PICKS]:
        table.add_row(str(row["rank"]), str(row["index"]), row["id"] or "-",
                      "-" if row["score"] is None else f"{row['score']:.4g}")
    if len(rows) > SHOWN_PICKS:
        table.add_row("...", f"{len(rows) - SHOWN_PICKS} more in the output", "", "")
    Console().print(table)


@select_app.command("simulate")
def simulate(
    dataset: str = typer.Option("digits", "--dataset", help="digits: scikit-learn's bundled 8x8 digits (offline)."),
    strategies: str = typer.Option("random,entropy,margin", "--strategies",
                                   help="Comma-separated, from: " + ", ".join(STRATEGIES) + "."),
    seeds: int = typer.Option(3, "--seeds", help="Repeats (initial set, model init, draws); curves are averaged."),
    initial: int = typer.Option(20, "--initial", help="Random labelled points before the first query."),
    budget: int = typer.Option(20, "--budget", help="Points queried per round."),
    rounds: int = typer.Option(10, "--rounds", help="Query rounds (the model is trained rounds + 1 times)."),
    steps: int = typer.Option(200, "--steps", help="Full-batch Adam steps per training (fewer: faster, noisier)."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory (default runs/select-simulate-<UTC time>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --run-dir."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Simulate the AL loop (random initial set, then train -> score pool -> query -> label) per strategy.

    A dropout MLP is retrained each round and scored on a fixed held-out split. Writes metrics.jsonl
    (accuracy per strategy, seed, round), curves.json (mean/std per labelled-set size), curve.png and
    summary.json. Example: [bold]percli select simulate --strategies random,entropy,margin,bald,coreset,badge
    --seeds 3 --rounds 10[/] (~3 s of CPU per strategy and seed).
    """
    from percli.active.simulate import SimulationConfig
    from percli.active.simulate import simulate as run_simulation
    from percli.core.rundir import RunDirError, claim_run_dir

    cfg = SimulationConfig(dataset=dataset, strategies=[s.strip() for s in strategies.split(",") if s.strip()],
                           seeds=seeds, initial=initial, budget=budget, rounds=rounds, steps=steps)
    try:
        cfg.validate()
    except ValueError as e:
        fail(f"--{str(e)}")
    try:
        out_dir = claim_run_dir(run_dir or default_run_dir("select", "simulate"), resume=False, overwrite=overwrite)
    except RunDirError as e:
        fail(str(e))
    err.print(f"run dir: {out_dir}", highlight=False)
    import torch

    torch.set_num_threads(1)  # a 64-128-10 MLP: more threads only add sync overhead (10x slower on a busy CPU)
    try:
        summary = run_simulation(cfg, out_dir, lambda msg: err.print(msg, highlight=False))
    except ValueError as e:
        fail(str(e))
    emit_summary(out_dir, summary, json_out, _report_curves)


def _report_curves(summary: dict) -> None:
    """Mean test accuracy per labelled-set size (rows) and strategy (columns); the stds are in curves.json."""
    curves = summary["curves"]
    table = Table("labels", *curves, title=f"test accuracy on {summary['config']['dataset']} (mean over "
                                            f"{summary['config']['seeds']} seeds)", title_justify="left")
    first = next(iter(curves.values()))
    for row, labels in enumerate(first["labels"]):
        table.add_row(str(labels), *(f"{c['mean'][row]:.3f}" for c in curves.values()))
    table.add_row("all rounds", *(f"{summary['mean_accuracy'][s]:.3f}" for s in curves), style="bold")
    Console().print(table)
    err.print(f"curves: {summary['output_dir']}/curve.png", highlight=False)
