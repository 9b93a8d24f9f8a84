"""Graph autoencoders with random-walk regularisation: link prediction (AUC, AP) and k-means clustering.

Trains each model on 85% of the edges (5%/10% held out for validation/test with as many non-edges)
and reports test AUC/AP and the clustering ACC/NMI/F1/ARI of k-means on mu, as mean +- std over the
seeds. Writes summary.json (per model under "models"), metrics.jsonl (one row per model and seed)
and, with --save-embeddings, embeddings/<model>-seed<S>.safetensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.rundir import write_jsonl_atomic
from percli.graph.train import MODELS, TrainConfig


@dataclass
class Config:
    graph: str = "cora"
    """cora (= $PERCLI_DATA_DIR/cora/cora.npz), a .npz in the cora layout, or an edge-list text file
    with one 'u v' pair of integer node ids per line."""
    features: str | None = None
    """Node features for an edge list: .npz with a dense 'features' [N, F] array or the cora CSR arrays
    (default: identity features)."""
    labels: str | None = None
    """Classes for the clustering metrics: one integer per line, line i for node i."""
    model: Literal["gae", "vgae", "rwr-gae", "rwr-vgae", "all"] = "all"
    seeds: int = 5
    """Number of seeds (split, weights, walks, k-means): seed, seed+1, ..."""
    seed: int = 42
    save_embeddings: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)


def validate(cfg: Config) -> None:
    t = cfg.train
    for key, value, low in (("seeds", cfg.seeds, 1), ("train.epochs", t.epochs, 1), ("train.walk_length",
                            t.walk_length, 2), ("train.number_walks", t.number_walks, 1),
                            ("train.window_size", t.window_size, 0), ("train.negative", t.negative, 0)):
        if value < low:
            raise ConfigError(f"{key}: got {value}; expected an integer >= {low}")
    for key, value in (("train.lr", t.lr), ("train.lr_dw", t.lr_dw)):
        if not value > 0:
            raise ConfigError(f"{key}: got {value:g}; expected a learning rate > 0")
    if not t.walk_weight >= 0:
        raise ConfigError(f"train.walk_weight: got {t.walk_weight:g}; expected >= 0")
    for key in ("features", "labels"):
        path = getattr(cfg, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{key}: {path}: no such file")


def run(cfg: Config, ctx: RunContext) -> dict:
    import numpy as np

    from percli.graph.data import load_graph, resolve_graph, split_edges
    from percli.graph.train import summarize, train_one

    loaded = load_graph(resolve_graph(cfg.graph), features=cfg.features and Path(cfg.features),
                        labels=cfg.labels and Path(cfg.labels))
    split_edges(loaded.adjacency, np.random.default_rng(cfg.seed))  # a graph too small to split fails here
    if loaded.skipped_lines:
        ctx.log(f"[yellow]warning:[/] skipped {loaded.skipped_lines} malformed edge-list lines of {cfg.graph}")
    ctx.log(f"{loaded.name}: {loaded.num_nodes} nodes, {loaded.num_edges} edges, {loaded.features.shape[1]} features")
    models = list(MODELS) if cfg.model == "all" else [cfg.model]
    rows = []
    for name in models:
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            mu, metrics = train_one(loaded, name, cfg.train, seed, log=ctx.log)
            rows.append({"model": name, "seed": seed} | metrics)
            write_jsonl_atomic(ctx.run_dir / "metrics.jsonl", rows)  # rewritten whole: never half a line
            if cfg.save_embeddings:
                _save_embedding(ctx.run_dir / "embeddings" / f"{name}-seed{seed}.safetensors", mu)
    return {"status": "completed", "graph": loaded.name, "epochs": cfg.train.epochs, "models": summarize(rows),
            "train": dataclasses.asdict(cfg.train)}


def _save_embedding(path: Path, mu) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"mu": mu.contiguous()}, str(tmp))
    tmp.replace(path)
