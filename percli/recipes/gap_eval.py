"""GAP@k of finished `percli finetune yt8m` runs, and their weighted ensemble: `percli eval gap`.

Each run scores the videos of ``data.source`` with its own model (a concepts-stage run on the scores of its
first stage, which is run too). ``embedded``: the test split of the embedded set each run was trained on
(rebuilt from the run's data settings); files: TFRecord/NPZ/Parquet of the runs' level (YouTube-8M's test split
has no labels, so hold out part of its validate split). Reported per run: GAP@``top_k`` (20), hit@1, PERR
(:mod:`percli.core.gap_metrics`).

Ensemble (``ensemble``, two runs or more): the runs' scores are averaged with weights w >= 0, sum 1, fit to
the GAP of ``data.val_source`` (embedded: the validate split) by coordinate search: from equal weights, each
run's weight in turn is set to the best of 0, 1/grid, ..., 1 (the others rescaled to keep the sum 1), pass
after pass until a pass changes nothing (at most ``max_rounds``). GAP ranks scores, so it is piecewise
constant in the weights and gradient-based optimisers (scipy.optimize) have nothing to follow; the search is
deterministic. The fitted weights are then applied to the test videos, which played no part in the fit.

The summary's metrics: ``<run>/gap``, ``<run>/hit_at_1``, ``<run>/perr`` (a run is named by its run dir),
``ensemble/gap`` (test), ``ensemble/hit_at_1``, ``ensemble/perr`` and ``ensemble/val_gap``; ``weights`` by
run. Videos a run could not read are left out of every figure and counted (``skipped_videos``). Memory: each
run's scores are held as [videos, classes] float32 (YouTube-8M's 4716 classes: 19 KB a video); score large
splits a few files at a time.

Examples:
  percli eval gap runs/yt8m-moe runs/yt8m-concepts --run-dir runs/yt8m-gap
  percli eval gap runs/a runs/b data.val_source='/data/yt8m/video/validate0*.tfrecord' \\
      data.source='/data/yt8m/video/validate1*.tfrecord'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from percli.core.checkpoint import read_meta, run_weights
from percli.core.config import ConfigError, TrainConfig, to_dict
from percli.core.context import RunContext
from percli.core.data.yt8m import YT8MDataset
from percli.core.gap_metrics import global_average_precision, hits_at_one, precision_at_equal_recall
from percli.core.rundir import write_json_atomic
from percli.recipes.yt8m import COMMAND, YT8MData, check_sources, run_data, run_scores, split_videos, yt8m_meta


@dataclasses.dataclass
class GapData:
    source: str = "embedded"
    """Videos scored: embedded (the test split of each run's embedded set) or TFRecord/NPZ/Parquet files."""
    val_source: str | None = None
    """Videos the ensemble weights are fit on; embedded: the validate split."""


@dataclasses.dataclass
class Config:
    runs: list[str] = dataclasses.field(default_factory=list)
    """Finished `percli finetune yt8m` runs (run dirs, checkpoint dirs or .safetensors)."""
    data: GapData = dataclasses.field(default_factory=GapData)
    top_k: int = 20
    """Predictions kept per video (the official GAP@20)."""
    ensemble: bool = True
    """Fit and score the weighted ensemble of the runs (two or more)."""
    grid: int = 20
    """Weight steps of the coordinate search: 0, 1/grid, ..., 1."""
    max_rounds: int = 10
    """Passes of the coordinate search at most."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=1024))
    """Only batch_size, num_workers, mixed_precision, cpu and seed are used."""


def run_name(path: str) -> str:
    """A run's name: its run dir's (for a checkpoint or weights file inside it too)."""
    parts = Path(path).expanduser().resolve().parts
    if "checkpoints" in parts[1:]:
        return parts[len(parts) - 1 - parts[::-1].index("checkpoints") - 1]
    return Path(parts[-1]).stem


def metrics_of(scores: np.ndarray, labels: np.ndarray, top_k: int) -> dict[str, float]:
    s, y = torch.from_numpy(scores), torch.from_numpy(labels)
    return {"gap": global_average_precision(s, y, top_k), "hit_at_1": float(hits_at_one(s, y).double().mean()),
            "perr": float(precision_at_equal_recall(s, y).double().mean())}


def fit_weights(scores: list[np.ndarray], labels: np.ndarray, top_k: int, grid: int, max_rounds: int
                ) -> tuple[np.ndarray, float]:
    """Ensemble weights (>= 0, sum 1) maximising GAP by coordinate search (module docstring), and that GAP."""
    def gap(w: np.ndarray) -> float:
        return global_average_precision(sum(wi * s for wi, s in zip(w, scores)), labels, top_k)

    m = len(scores)
    weights = np.full(m, 1.0 / m)
    best = gap(weights)
    for _ in range(max_rounds):
        changed = False
        for i in range(m):
            for value in np.linspace(0.0, 1.0, grid + 1):
                rest = 1.0 - weights[i]
                trial = weights * ((1.0 - value) / rest) if rest > 1e-12 else np.full(m, (1.0 - value) / (m - 1))
                trial[i] = value
                score = gap(trial)
                if score > best + 1e-12:
                    best, weights, changed = score, trial, True
        if not changed:
            break
    return weights, best


class _Videos:
    """The videos of a split for each run's data settings, built once per distinct setting; every run's scores
    of them kept (a first stage shared by several runs is scored once)."""

    def __init__(self, cfg: Config, root: Path, accelerator: Accelerator):
        self.cfg, self.root, self.accelerator = cfg, root, accelerator
        self.sets: dict[tuple[str, str], tuple[YT8MDataset, dict]] = {}

    def scores(self, path: str, split: str) -> tuple[np.ndarray, np.ndarray, YT8MDataset]:
        data = run_data(read_meta(run_weights(path)))
        source = self.cfg.data.source if split == "test" else self.cfg.data.val_source or "embedded"
        setting = {k: v for k, v in to_dict(data).items() if k not in ("source", "val_source")}
        if source != "embedded":
            setting = {k: setting[k] for k in ("level", "features", "num_classes", "max_frames")}
        key = (split, hashlib.sha1(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:12])
        if key not in self.sets:
            videos = split_videos(dataclasses.replace(data, source=source), source, split, self.root / key[1],
                                  self.accelerator)
            self.sets[key] = (videos, {})
        videos, memo = self.sets[key]
        scores, labels = run_scores(path, videos, self.accelerator, self.cfg.train, memo)
        return scores, labels, videos


def _split(cfg: Config, videos: _Videos, split: str) -> tuple[list[np.ndarray], np.ndarray, int]:
    """The runs' scores of a split's readable videos, their labels, and the count of videos left out."""
    out = [videos.scores(path, split) for path in cfg.runs]
    labels = out[0][1]
    if any(s.shape != out[0][0].shape or not np.array_equal(y, labels) for s, y, _ in out):
        raise ValueError(f"the runs scored different videos on the {split} split (other embedded data or "
                         "classes); give runs trained on the same data")
    readable = np.all([~np.isnan(s).any(1) for s, _, _ in out], axis=0)
    return [s[readable] for s, _, _ in out], labels[readable], int((~readable).sum())


def validate(cfg: Config) -> None:
    if not cfg.runs:
        raise ConfigError(f"runs is not set: pass finished `{COMMAND}` runs (percli eval gap RUN [RUN ...])")
    for path in cfg.runs:
        yt8m_meta(path, "runs")
    check_sources(YT8MData(source=cfg.data.source, val_source=cfg.data.val_source))
    if cfg.ensemble and len(cfg.runs) > 1 and cfg.data.source != "embedded" and not cfg.data.val_source:
        raise ConfigError("data.val_source is not set: the ensemble weights are fit on it (or set ensemble=false)")
    if cfg.top_k < 1 or cfg.grid < 1 or cfg.max_rounds < 1:
        raise ConfigError(f"top_k={cfg.top_k}, grid={cfg.grid}, max_rounds={cfg.max_rounds}: each must be >= 1")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    videos = _Videos(cfg, ctx.run_dir, ctx.accelerator)
    names = [run_name(p) for p in cfg.runs]
    names = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
    test, labels, skipped = _split(cfg, videos, "test")
    metrics: dict[str, float] = {}
    runs = []
    for name, path, scores in zip(names, cfg.runs, test):
        figures = metrics_of(scores, labels, cfg.top_k)
        metrics.update({f"{name}/{k}": v for k, v in figures.items()})
        runs.append({"name": name, "run": str(path), **figures})
    summary: dict[str, Any] = {"status": "completed", "data": cfg.data.source, "videos": len(labels),
                               "skipped_videos": skipped, "runs": runs}
    if cfg.ensemble and len(cfg.runs) > 1:
        val, val_labels, val_skipped = _split(cfg, videos, "validate")
        weights, val_gap = fit_weights(val, val_labels, cfg.top_k, cfg.grid, cfg.max_rounds)
        figures = metrics_of(sum(w * s for w, s in zip(weights, test)), labels, cfg.top_k)
        metrics.update({f"ensemble/{k}": v for k, v in figures.items()})
        metrics["ensemble/val_gap"] = val_gap
        summary.update(weights={n: float(w) for n, w in zip(names, weights)}, val_videos=len(val_labels),
                       skipped_val_videos=val_skipped, search="coordinate")
    summary.update(metrics=metrics, run_dir=str(ctx.run_dir))
    if ctx.accelerator.is_main_process:
        write_json_atomic(ctx.run_dir / "summary.json", summary)
    return summary
