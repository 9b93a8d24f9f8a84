"""Graph autoencoders with random-walk regularisation: link prediction (AUC, AP) and k-means clustering.

Trains each model on 85% of the edges of each graph (5%/10% held out for validation/test with as
many non-edges) and reports test AUC/AP and the clustering ACC/NMI/F1/ARI of k-means on mu, as mean
+- std over the seeds. Writes summary.json (per graph under "graphs", then per model under
"models"; the means again under "metrics" as <graph>/<model>/<metric>), metrics.jsonl (one row per
graph, model and seed) and, with --save-embeddings, embeddings/<graph>/<model>-seed<S>.safetensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.rundir import write_jsonl_atomic
from percli.graph.train import METRICS, MODELS, LossConfig, TrainConfig


@dataclass
class Config:
    graphs: list[str] = field(default_factory=lambda: ["cora"])
    """Graphs, each trained and scored on its own: a name (cora = $PERCLI_DATA_DIR/cora/cora.npz, else
    its Planetoid files cora/ind.cora.*), a .npz in the cora layout, Planetoid files (their folder, a
    prefix dir/ind.<name> or one of the files), or an edge-list text file with one 'u v' pair of
    integer node ids per line."""
    features: str | None = None
    """Node features for an edge list (one graph only): .npz with a dense 'features' [N, F] array or
    the cora CSR arrays (default: identity features)."""
    labels: str | None = None
    """Classes for the clustering metrics (one graph only): one integer per line, line i for node i."""
    model: Literal["gae", "vgae", "rwr-gae", "rwr-vgae", "all"] = "all"
    seeds: int = 5
    """Number of seeds (split, weights, walks, k-means): seed, seed+1, ..."""
    seed: int = 42
    save_embeddings: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)


def validate(cfg: Config) -> None:
    if not cfg.graphs:
        raise ConfigError("graphs: empty; pass --graph at least once")
    if len(set(cfg.graphs)) != len(cfg.graphs):
        raise ConfigError(f"graphs: {cfg.graphs} names a graph twice")
    if len(cfg.graphs) > 1 and (cfg.features or cfg.labels):
        raise ConfigError("features/labels: they belong to one edge-list graph; give a single --graph with them")
    if not cfg.loss.zeros_per_one > 0:
        raise ConfigError(f"loss.zeros_per_one: got {cfg.loss.zeros_per_one:g}; expected > 0")
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

    graphs = []  # all loaded and checked before the first one trains: a bad second graph fails in seconds
    for spec in cfg.graphs:
        loaded = load_graph(resolve_graph(spec), features=cfg.features and Path(cfg.features),
                            labels=cfg.labels and Path(cfg.labels))
        split_edges(loaded.adjacency, np.random.default_rng(cfg.seed))  # a graph too small to split fails here
        if loaded.skipped_lines:
            ctx.log(f"[yellow]warning:[/] skipped {loaded.skipped_lines} malformed edge-list lines of {spec}")
        ctx.log(f"{loaded.name}: {loaded.num_nodes} nodes, {loaded.num_edges} edges, "
                f"{loaded.features.shape[1]} features")
        graphs.append(loaded)
    names = [g.name for g in graphs]
    if len(set(names)) != len(names):
        raise ValueError(f"--graph: {cfg.graphs} load as graphs named {names}; results are keyed by name, "
                         "so give graphs of different names (rename a file)")
    models = list(MODELS) if cfg.model == "all" else [cfg.model]
    rows, per_graph = [], {}
    for graph in graphs:
        mine = []
        for name in models:
            for seed in range(cfg.seed, cfg.seed + cfg.seeds):
                mu, metrics = train_one(graph, name, cfg.train, seed, cfg.loss, log=ctx.log)
                mine.append({"graph": graph.name, "model": name, "seed": seed} | metrics)
                write_jsonl_atomic(ctx.run_dir / "metrics.jsonl", rows + mine)  # rewritten whole: never half a line
                if cfg.save_embeddings:
                    _save_embedding(ctx.run_dir / "embeddings" / graph.name / f"{name}-seed{seed}.safetensors", mu)
        rows += mine
        per_graph[graph.name] = {"nodes": graph.num_nodes, "edges": graph.num_edges,
                                 "features": int(graph.features.shape[1]), "models": summarize(mine)}
    headline = {graph: {model: {m: scores[m] for m in METRICS} for model, scores in entry["models"].items()}
                for graph, entry in per_graph.items()}
    return {"status": "completed", "graphs": per_graph, "metrics": headline, "epochs": cfg.train.epochs,
            "train": dataclasses.asdict(cfg.train), "loss": dataclasses.asdict(cfg.loss)}


def _save_embedding(path: Path, mu) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"mu": mu.contiguous()}, str(tmp))
    tmp.replace(path)
