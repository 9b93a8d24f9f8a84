"""Pool-based active-learning queries; `percli select` without a subcommand is this command.

Strategies: random; least-confidence, margin and entropy (--probs); BALD (--mc-probs: probabilities
[T, N, C] of T forward passes with dropout on); core-set (k-center greedy on --embeddings, the labelled
points as the first centres); BADGE (k-means++ seeding on gradient embeddings: --probs and --embeddings).
Inputs are .npy/.npz/.safetensors; already labelled points (--labelled: integer indices, also as a .txt
with one per line, or a boolean mask [N]) are never picked. Writes --output (JSONL, one {rank, index, id,
score} per pick in pick order; default RUN_DIR/picks.jsonl) and summary.json with the picked indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from percli.active.pool import INPUTS, check_array_file
from percli.active.strategies import STRATEGIES
from percli.core.config import ConfigError
from percli.core.context import RunContext


@dataclass
class Config:
    strategy: str | None = None
    """random | least-confidence | margin | entropy | bald | coreset | badge."""
    budget: int | None = None
    """How many pool points to pick."""
    probs: str | None = None
    """Softmax probabilities [N, C] of the current model on the pool."""
    mc_probs: str | None = None
    """Probabilities [T, N, C] of T forward passes with dropout on (BALD)."""
    embeddings: str | None = None
    """Penultimate features [N, D] of the pool (core-set, BADGE)."""
    labelled: str | None = None
    """Already labelled points, never picked: integer indices (.npy/.npz/.safetensors or a .txt, one per
    line) or a boolean mask [N] (dtype bool)."""
    ids: str | None = None
    """Text file, one id per pool point: copied into the output."""
    output: str | None = None
    """Output JSONL (default RUN_DIR/picks.jsonl); an existing file is replaced only with --overwrite."""
    seed: int = 0
    """Seed of random, BADGE's draws and core-set's start without labels."""


def validate(cfg: Config) -> None:
    if cfg.strategy is None:
        raise ConfigError(f"strategy: not set; pass --strategy NAME, one of {', '.join(STRATEGIES)}")
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"strategy: {cfg.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if cfg.budget is None:
        raise ConfigError("budget: not set; pass --budget N, the number of points to pick")
    if cfg.budget < 1:
        raise ConfigError(f"budget: got {cfg.budget}; expected an integer >= 1")
    for name in STRATEGIES[cfg.strategy].needs:
        if getattr(cfg, name) is None:
            flag, what = INPUTS[name]
            raise ConfigError(f"{name}: --strategy {cfg.strategy} needs {flag} FILE ({what}); pass it")
    if cfg.probs is None and cfg.mc_probs is None and cfg.embeddings is None:
        raise ConfigError("probs: pass --probs or --embeddings (the pool size N comes from them)")
    for name in ("probs", "mc_probs", "embeddings"):
        if getattr(cfg, name) is not None:
            check_array_file(Path(getattr(cfg, name)), INPUTS[name][0])
    for name in ("labelled", "ids"):
        if getattr(cfg, name) is not None and not Path(getattr(cfg, name)).is_file():
            raise FileNotFoundError(f"--{name} {getattr(cfg, name)}: no such file")


def run(cfg: Config, ctx: RunContext) -> dict:
    import numpy as np

    from percli.active.pool import load_ids, load_labelled, load_pool
    from percli.active.strategies import select
    from percli.core.rundir import write_jsonl_atomic

    output = Path(cfg.output) if cfg.output else ctx.run_dir / "picks.jsonl"
    if output.is_dir() or (output.exists() and not ctx.overwrite):
        raise ValueError(f"--output {output} exists; pass --overwrite to replace it or choose another file")
    paths = {name: Path(getattr(cfg, name)) if getattr(cfg, name) else None for name in INPUTS}
    inputs, n = load_pool(paths["probs"], paths["mc_probs"], paths["embeddings"])
    mask = load_labelled(Path(cfg.labelled), n, ctx.log) if cfg.labelled else np.zeros(n, dtype=bool)
    pool_ids = load_ids(Path(cfg.ids), n) if cfg.ids else None
    try:
        picked, scores = select(cfg.strategy, cfg.budget, mask, np.random.default_rng(cfg.seed), **inputs)
    except ValueError as e:
        raise ValueError(f"--{e}" if str(e).startswith("budget") else str(e)) from None
    rows = [{"rank": rank, "index": int(i), "id": pool_ids[i] if pool_ids else None,
             "score": float(s) if math.isfinite(s) else None}
            for rank, (i, s) in enumerate(zip(picked.tolist(), scores.tolist(), strict=True))]
    output.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(output, rows)
    ctx.log(f"{cfg.strategy}: {len(rows)} of {int(n - mask.sum())} unlabelled points -> {output}")
    return {"status": "completed", "strategy": cfg.strategy, "budget": cfg.budget, "pool_size": n,
            "labelled": int(mask.sum()), "unlabelled": int(n - mask.sum()), "seed": cfg.seed, "output": str(output),
            "indices": picked.tolist()}
