"""`percli pretrain rwr-gae`: GAE, VGAE and their random-walk-regularised versions (RWR-GAE, arXiv 1908.04003)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
import yaml
from rich.console import Console
from rich.table import Table

from percli.commands.run import err, fail
from percli.core.rundir import prepare_output_dir, write_json_atomic, write_jsonl_atomic, write_text_atomic


def rwr_gae(
    graph: str = typer.Option("cora", "--graph", help="cora (= $PERCLI_DATA_DIR/cora/cora.npz, default "
                                                      "../shared/data), a .npz in the cora layout, or an edge-list "
                                                      "text file with one 'u v' pair of integer node ids per line."),
    features: Path | None = typer.Option(
        None, "--features", help="Node features for an edge list: .npz with a dense 'features' [N, F] array or "
                                 "the cora CSR arrays (default: identity features)."),
    labels: Path | None = typer.Option(
        None, "--labels", help="Classes for the clustering metrics: one integer per line, line i for node i."),
    model: str = typer.Option("all", "--model", help="gae | vgae | rwr-gae | rwr-vgae | all."),
    seeds: int = typer.Option(5, "--seeds", min=1, help="Number of seeds (split, weights, walks, k-means)."),
    seed: int = typer.Option(42, "--seed", help="First seed; the runs use seed, seed+1, ..."),
    epochs: int = typer.Option(200, "--epochs", min=1, help="Training epochs (full-batch)."),
    walk_length: int = typer.Option(5, "--walk-length", min=2, help="Nodes per random walk."),
    window_size: int = typer.Option(
        0, "--window-size", min=0, help="Skip-gram window within a walk; 0 = the start node with every later node "
                                        "(the early RWR-GAE code's default)."),
    number_walks: int = typer.Option(
        5, "--number-walks", min=1, help="Walks per epoch, started from the next nodes of one shuffled node list."),
    lr_dw: float = typer.Option(0.01, "--lr-dw", help="Adam learning rate of the skip-gram context vectors."),
    negative: int = typer.Option(
        0, "--negative", min=0, help="Negative samples per pair; 0 = full softmax over the nodes (the paper)."),
    walk_weight: float = typer.Option(
        1.0, "--walk-weight", min=0.0, help="Scale of the walk loss's gradient against the GAE loss's (1 = the "
                                            "paper's plain sum; 0 = plain GAE with the walks still drawn)."),
    save_embeddings: bool = typer.Option(
        False, "--save-embeddings", help="Save mu of every model and seed as embeddings/<model>-seed<S>.safetensors."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", "--output", "-o", help="Run directory (default runs/pretrain-rwr-gae-<UTC time>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --run-dir."),
    json_out: bool = typer.Option(False, "--json", help="Print {model: {auc, ap, acc, nmi, f1, ari, std, seeds}}."),
) -> None:
    """Graph autoencoders with random-walk regularisation: link prediction (AUC, AP) and k-means clustering.

    Trains each model on 85% of the edges (5%/10% held out for validation/test with as many
    non-edges) and reports test AUC/AP and the clustering ACC/NMI/F1/ARI of k-means on mu, as mean
    +- std over the seeds. Writes summary.json, metrics.jsonl (one row per model and seed) and
    config.yaml to the run dir.
    Example: [bold]percli pretrain rwr-gae --graph cora --model all --seeds 5[/]
    """
    import numpy as np

    from percli.graph.data import load_graph, resolve_graph, split_edges
    from percli.graph.train import MODELS, TrainConfig, summarize, train_one

    models = list(MODELS) if model == "all" else [model]
    if model != "all" and model not in MODELS:
        fail(f"--model {model!r}: choose one of {', '.join(MODELS)} or all")
    if lr_dw <= 0:
        fail(f"--lr-dw must be > 0 (got {lr_dw:g})")
    for option, path in (("--features", features), ("--labels", labels)):
        if path is not None and not path.is_file():
            fail(f"{option} {path}: no such file")
    try:
        loaded = load_graph(resolve_graph(graph), features=features, labels=labels)
        split_edges(loaded.adjacency, np.random.default_rng(seed))  # a graph too small to split fails here
    except (FileNotFoundError, ValueError, KeyError) as e:
        fail(str(e))
    if loaded.skipped_lines:
        err.print(f"[yellow]warning:[/] skipped {loaded.skipped_lines} malformed edge-list lines of {graph}")
    out_dir, problem = prepare_output_dir(run_dir, "pretrain", "rwr-gae", overwrite=overwrite, flag="--run-dir")
    if problem:
        fail(problem)
    cfg = TrainConfig(epochs=epochs, walk_length=walk_length, window_size=window_size, number_walks=number_walks,
                      lr_dw=lr_dw, negative=negative, walk_weight=walk_weight)
    config = {"graph": graph, "features": str(features) if features else None,
              "labels": str(labels) if labels else None, "models": models, "seeds": list(range(seed, seed + seeds)),
              "train": asdict(cfg)}
    write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    err.print(f"run dir: {out_dir}; {loaded.name}: {loaded.num_nodes} nodes, {loaded.num_edges} edges, "
              f"{loaded.features.shape[1]} features", highlight=False)

    rows = []
    for name in models:
        for s in config["seeds"]:
            try:
                mu, metrics = train_one(loaded, name, cfg, s, log=lambda msg: err.print(msg, highlight=False))
            except (ValueError, FloatingPointError) as e:
                fail(str(e))
            rows.append({"model": name, "seed": s} | metrics)
            write_jsonl_atomic(out_dir / "metrics.jsonl", rows)  # rewritten whole: never half a line
            if save_embeddings:
                _save_embedding(out_dir / "embeddings" / f"{name}-seed{s}.safetensors", mu)
    summary = summarize(rows)
    write_json_atomic(out_dir / "summary.json", summary)
    if json_out:
        print(json.dumps(summary, indent=1))
    else:
        report(summary, f"{loaded.name}: {len(config['seeds'])} seeds, {epochs} epochs")


def _save_embedding(path: Path, mu) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"mu": mu.contiguous()}, str(tmp))
    tmp.replace(path)


def report(summary: dict, title: str) -> None:
    """Mean ± std over the seeds on stdout: one row per metric, one column per model (fits 80 columns)."""
    from percli.graph.train import METRICS

    table = Table("", *summary, title=title, title_justify="left")
    for k in METRICS:
        table.add_row(k, *("-" if result[k] is None else f"{result[k]:.3f} ± {result['std'][k]:.3f}"
                           for result in summary.values()))
    Console().print(table)
