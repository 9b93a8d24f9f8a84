"""`percli eval av-superb`: every (task, feature type) pair, one after the other, resumable.

For each pair: read the task's dataset (or build the synthetic mini-benchmark), extract and cache
the frozen upstream's features for the train and test splits, train featurizer + head on them
through the shared engine (`run_dir/tasks/<task>-<features>/`: metrics.jsonl, checkpoints,
summary.json), evaluate on the test split and write `results/<task>-<features>.json`. With
`--resume` pairs with a result are skipped and a pair stopped midway continues from its last
checkpoint. At the end: results.json, results.md and results.csv (one row per pair, metrics in
percent as the paper reports them) and summary.json.

Schedules: the official per-task optimiser, learning rate, steps, batch and accumulation
(`percli.avsuperb.tasks.TASKS`) on real data; on the mini-benchmark a short schedule
(`MINI_SCHEDULE`) so that every task trains in seconds on a CPU. `--steps/--batch-size/--lr`
override either. "Adam" maps to the engine's AdamW with weight decay 0; the learning rate is
constant after the (LRS3-only) warmup, as in the official configs.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from percli.avsuperb.features import MODALITY_OF, extract, fingerprint, load_cached, save_cached
from percli.avsuperb.minibench import make_minibench
from percli.avsuperb.probe import ProbeTask
from percli.avsuperb.tasks import TASKS, TaskSpec, read_task
from percli.avsuperb.trainable import TrainableTask
from percli.core import dist
from percli.core.config import OptimConfig, TrainConfig
from percli.core.engine import make_accelerator, train
from percli.core.rundir import write_json_atomic, write_text_atomic

FEATURES = ("audio", "video", "fusion")
# The mini-benchmark also shrinks the ASR head's BiLSTM (official hidden size 1024) to 256: its 12-letter task
# needs no more, and the official size dominates CPU time.
MINI_SCHEDULE = {"steps": 200, "batch_size": 8, "accumulate": 1, "lr": 1e-3, "optimizer": "AdamW", "warmup_steps": 0,
                 "asr_hidden": 256}
PAPER_SCALE = {"map": 100.0, "accuracy": 100.0, "eer": 100.0, "cer": 100.0, "wer": 100.0}


@dataclass
class Config:
    """What `percli eval av-superb` runs (see percli.avsuperb.job)."""

    upstream: str = "audio-mae+hiera-video"
    """audio-mae | hiera-video | audio-mae+hiera-video | module:factory (your own upstream)."""
    checkpoint: str | None = None
    """Weights of a single-model upstream: a percli checkpoint (e.g. from percli pretrain audio-mae) or an
    official .pth."""
    audio_checkpoint: str | None = None
    """Audio side of the fusion upstream."""
    video_checkpoint: str | None = None
    """Video side of the fusion upstream."""
    upstream_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keywords for the upstream (model, model_kwargs; audio/video for the fusion; or your factory's)."""
    tasks: list[str] | str = field(default_factory=lambda: list(TASKS))
    """Tasks (a list, or comma-separated) from as20k, vggsound, ks, ucf101, iemocap, voxceleb, lrs3."""
    features: list[str] | str = field(default_factory=lambda: ["default"])
    """audio | video | fusion | all | default (each task's official choice, fusion, or what the upstream has)."""
    data: list[str] = field(default_factory=list)
    """TASK=DIR: the dataset folder of a task. Tasks without one run on the synthetic mini-benchmark."""
    minibench: str = "runs/av-superb-mini"
    """Where the mini-benchmark is generated (once, then reused)."""
    steps: int | None = None
    """Override the optimiser steps of every task."""
    batch_size: int | None = None
    """Override the training batch size."""
    lr: float | None = None
    """Override the learning rate."""
    layer: int | None = None
    """Use one upstream layer instead of the weighted sum."""
    normalize: bool = False
    """Layer-norm each layer before the weighted sum."""
    trainable: bool = False
    """Finetune the upstream with the head (no feature cache; much slower)."""
    seed: int = 0
    extract_batch_size: int = 8
    num_workers: int = 2
    cache_dir: str | None = None
    """Feature cache (default RUN_DIR/features); reused when nothing changed."""
    cpu: bool = False
    """Force CPU even when a GPU is visible."""


def names(value: list[str] | str) -> list[str]:
    """A list of names, or one comma-separated string of them, as a list."""
    return [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]


def data_dirs(items: list[str]) -> dict[str, Path]:
    """{task: folder} of the TASK=DIR items; ValueError for an item that is not one."""
    folders = {}
    for item in items:
        task, sep, folder = item.partition("=")
        if not sep or not folder:
            raise ValueError(f"--data {item!r}: write TASK=DIR, e.g. --data ks=/datasets/kinetics-sounds")
        folders[task] = Path(folder)
    return folders


def schedule(spec: TaskSpec, mini: bool, cfg: Config) -> dict[str, Any]:
    """The optimiser settings of one task: official or mini, then the user's overrides."""
    base = dict(MINI_SCHEDULE) if mini else {"steps": spec.steps, "batch_size": spec.batch_size,
                                              "accumulate": spec.accumulate, "lr": spec.lr,
                                              "optimizer": spec.optimizer, "warmup_steps": spec.warmup_steps,
                                              "asr_hidden": 1024}
    for key in ("steps", "batch_size", "lr"):
        if getattr(cfg, key) is not None:
            base[key] = getattr(cfg, key)
    base["grad_clip"] = spec.grad_clip
    return base


def pairs(cfg: Config, upstream_modalities: set[str]) -> list[tuple[str, str]]:
    """(task, feature type) pairs to run, with 'default' and 'all' resolved for this upstream."""
    available = [f for f in FEATURES if set(MODALITY_OF[f"{f}_feats"]) <= upstream_modalities]
    out = []
    for task in names(cfg.tasks):
        for feat in names(cfg.features):
            if feat == "all":
                chosen = available
            elif feat == "default":
                own = TASKS[task].features
                chosen = [own if own in available else available[0]]
            else:
                if feat not in available:
                    raise ValueError(f"--features {feat}: the upstream has only {sorted(upstream_modalities)}")
                chosen = [feat]
            out.extend((task, f) for f in chosen if (task, f) not in out)
    return out


class Runner:
    """Runs the pairs of one benchmark run (see the module docstring)."""

    def __init__(self, cfg: Config, run_dir: Path, upstream: torch.nn.Module, rank: int = 0, world: int = 1,
                 log: Callable[[str], None] = lambda _m: None):
        self.cfg, self.run_dir, self.rank, self.world, self.log = cfg, run_dir, rank, world, log
        self.data = data_dirs(cfg.data)
        self.acc = make_accelerator(TrainConfig(cpu=cfg.cpu))  # the device and the engine's processes
        self.upstream = upstream.eval().requires_grad_(False).to(self.acc.device)
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "features"

    def dataset_root(self, task: str) -> tuple[Path, bool]:
        """The task's folder and whether it is the mini-benchmark (built by rank 0, once)."""
        if task in self.data:
            return self.data[task], False
        if self.rank == 0:
            make_minibench(Path(self.cfg.minibench), seed=0, tasks=[task])
        dist.barrier(self.world)
        return Path(self.cfg.minibench) / task, True

    def features(self, task: str, feat: str, split: str, data: dict[str, Any], root: Path) -> dict[str, Any]:
        key_name = f"{feat}_feats"
        pooled = TASKS[task].kind != "asr"
        key = fingerprint({"upstream": self.cfg.upstream, "kwargs": self.cfg.upstream_kwargs,
                           "checkpoint": self.cfg.checkpoint, "seed": self.cfg.seed, "task": task, "split": split,
                           "features": feat,
                           "pooled": pooled, "data": str(root.resolve()), "manifest": _manifest_stamp(root)})
        path = self.cache_dir / task / f"{split}-{feat}.safetensors"
        cached = load_cached(path, key)
        if cached is not None:
            self.log(f"{task}/{feat}: {split} features from the cache {path}")
            return cached
        self.log(f"{task}/{feat}: extracting {split} features of {len(data[split])} clips")
        cache = extract(self.upstream, data[split], key_name, pooled, batch_size=self.cfg.extract_batch_size,
                        num_workers=self.cfg.num_workers, rank=self.rank, world=self.world)
        if self.rank == 0:
            save_cached(path, key, cache)
        dist.barrier(self.world)
        return cache

    def run_pair(self, task: str, feat: str, resume: bool) -> dict[str, Any]:
        spec = TASKS[task]
        name = f"{task}-{feat}"
        root, mini = self.dataset_root(task)
        data = read_task(task, root, modalities=MODALITY_OF[f"{feat}_feats"])
        plan = schedule(spec, mini, self.cfg)
        if self.cfg.trainable:  # a fresh copy per pair: finetuning on one task must not leak into the next
            probe = TrainableTask(spec, data, copy.deepcopy(self.upstream), f"{feat}_feats", layer=self.cfg.layer,
                                  normalize=self.cfg.normalize, asr_hidden=plan["asr_hidden"])
            train_count, test_count, extract_bad = len(data["train"]), len(data["test"]), 0
        else:
            train_cache = self.features(task, feat, "train", data, root)
            test_cache = self.features(task, feat, "test", data, root)
            if spec.kind == "asr":
                index = {ch: i for i, ch in enumerate(data["vocab"])}
                for cache in (train_cache, test_cache):
                    cache["targets"] = [[index[ch] for ch in text if ch in index] for text in cache["targets"]]
            probe = ProbeTask.from_caches(spec, train_cache, test_cache, data, layer=self.cfg.layer,
                                          normalize=self.cfg.normalize, asr_hidden=plan["asr_hidden"])
            train_count, test_count = len(train_cache["ids"]), len(test_cache["ids"])
            extract_bad = int(train_cache["bad"]) + int(test_cache["bad"])
        effective = plan["batch_size"] * plan["accumulate"] * self.world
        train_cfg = TrainConfig(max_steps=plan["steps"], batch_size=min(plan["batch_size"], train_count),
                                grad_accum_steps=plan["accumulate"], grad_clip=plan["grad_clip"], seed=self.cfg.seed,
                                log_every=max(plan["steps"] // 20, 1), ckpt_every=max(plan["steps"] // 4, 1),
                                keep_last=1, num_workers=self.cfg.num_workers if self.cfg.trainable else 0,
                                cpu=self.cfg.cpu)
        optim_cfg = OptimConfig(lr=plan["lr"], ref_batch_size=effective, min_lr=plan["lr"],
                                weight_decay=0.01 if plan["optimizer"] == "AdamW" else 0.0,
                                warmup_fraction=plan["warmup_steps"] / max(plan["steps"], 1))
        task_dir = self.run_dir / "tasks" / name
        task_dir.mkdir(parents=True, exist_ok=True)
        again = resume and any((task_dir / "checkpoints").glob("step_*"))
        self.log(f"{task}/{feat}: training {spec.kind} head for {plan['steps']} steps"
                 + (" (resumed)" if again else ""))
        summary = train(probe, train_cfg, optim_cfg, task_dir, self.acc, resume=again)
        evals = {k.removeprefix("eval/"): v for k, v in summary["metrics"].items() if k.startswith("eval/")}
        return {"task": task, "features": feat, "kind": spec.kind, "metric": spec.metric,
                "value": evals[spec.metric], "higher_is_better": spec.higher_is_better, "metrics": evals,
                "layer_weights": summary.get("layer_weights"), "mini_benchmark": mini, "dataset": str(root),
                "train_clips": train_count, "test_clips": test_count, "trainable_upstream": self.cfg.trainable,
                "bad_clips": int(data["bad"]) + extract_bad + summary["bad_inputs"]["count"],
                "schedule": plan, "run_dir": str(task_dir)}

    def run(self, resume: bool) -> dict[str, Any]:
        results, resumed = [], 0
        for task, feat in pairs(self.cfg, set(getattr(self.upstream, "modalities", {"audio", "video"}))):
            path = self.run_dir / "results" / f"{task}-{feat}.json"
            if resume and path.is_file():
                results.append(json.loads(path.read_text()))
                resumed += 1
                self.log(f"{task}/{feat}: done in an earlier run, skipped (--resume)")
                continue
            result = self.run_pair(task, feat, resume)
            if self.rank == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, result)
            results.append(result)
        summary = {"method": "av-superb", "upstream": self.cfg.upstream, "checkpoint": self.cfg.checkpoint,
                   "results": results, "resumed_pairs": resumed, "world_size": self.world,
                   "run_dir": str(self.run_dir)}
        if self.rank == 0:
            write_json_atomic(self.run_dir / "results.json", results)
            write_text_atomic(self.run_dir / "results.md", markdown_table(results))
            write_text_atomic(self.run_dir / "results.csv", csv_table(results))
        dist.barrier(self.world)
        return summary


def _manifest_stamp(root: Path) -> list[tuple[str, int, int]]:
    """Size and mtime of the dataset folder's top-level files (its manifests), for cache keys."""
    return [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in sorted(root.iterdir()) if p.is_file()]


def paper_value(result: dict[str, Any]) -> float:
    """The headline metric as the paper prints it (percent)."""
    return result["value"] * PAPER_SCALE.get(result["metric"], 1.0)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per (task, features): metric in percent, as the AV-SUPERB paper's table."""
    lines = ["| task | features | metric | value (%) | train / test clips | bad clips |", "|---|---|---|---|---|---|"]
    for r in results:
        arrow = "higher is better" if r["higher_is_better"] else "lower is better"
        lines.append(f"| {r['task']} | {r['features']} | {r['metric']} ({arrow}) | {paper_value(r):.2f} | "
                     f"{r['train_clips']} / {r['test_clips']} | {r['bad_clips']} |")
    return "\n".join(lines) + "\n"


def csv_table(results: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["task", "features", "metric", "value_percent", "train_clips", "test_clips", "bad_clips",
                     "mini_benchmark"])
    for r in results:
        writer.writerow([r["task"], r["features"], r["metric"], f"{paper_value(r):.4f}", r["train_clips"],
                         r["test_clips"], r["bad_clips"], r["mini_benchmark"]])
    return out.getvalue()
