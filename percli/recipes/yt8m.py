"""YouTube-8M multi-label video classification, the CMU Informedia system (Huang, Yuan, Lan, Jiang, Hauptmann 2017,
arXiv 1707.01408): `percli finetune yt8m`.

Two stages. ``stage: features`` trains a classifier of the features: video level (``data.level=video``, the
mean rgb/audio vectors: ``yt8m_logistic``, ``yt8m_moe``, ``yt8m_hypercolumn_moe``) or frame level
(``data.level=frame``, up to ``max_frames`` one-second frames: ``yt8m_segments``). ``stage: concepts`` trains
the latent concept model (``yt8m_concepts``) on the class scores that a finished features-stage run
(``first_stage=RUN``) gives the same videos, with the video-level features too when ``with_features``. Those
scores are computed once per split by that run's model and cached in ``<run dir>/first_stage/<split>.npz``
(reused by ``--resume``); a video the first stage could not read is skipped and counted again.

Data: ``embedded`` (:mod:`percli.core.data.embedded_yt8m`: videos with correlated labels, written in the
official TFRecord layouts under ``<run dir>/embedded``; ``embedded_size`` training videos, a quarter as many in
its validate split, which is held out) or YouTube-8M files (:mod:`percli.core.data.yt8m`): TFRecords of either
level, or video-level NPZ/Parquet tables, as space-separated globs, braces or folders in ``data.source`` and
``data.val_source`` (held out). Damaged records are counted and skipped.

Loss: the official cross-entropy on probabilities (epsilon 1e-5, summed over classes, averaged over videos).
Held-out metrics (``eval/``): GAP@``top_k`` (20, :mod:`percli.core.gap_metrics`), ``hit_at_1``, ``perr``,
``loss``. Recipe defaults, the official starter (``train.py``): Adam, lr 0.01 at batch 1024, 5 epochs,
gradient norm clipped to 1, L2 1e-8 (here AdamW's decay) and the starter's MoE; percli's schedule is a cosine
instead of the starter's x0.95 every 4M examples.

Examples:
  percli finetune yt8m --run-dir runs/yt8m-moe                     # tiny: MoE on the embedded videos, CPU
  percli finetune yt8m --preset tiny-concepts first_stage=runs/yt8m-moe --run-dir runs/yt8m-concepts
  percli finetune yt8m --preset official data.source='/data/yt8m/video/train*.tfrecord' \\
      data.val_source='/data/yt8m/video/validate0*.tfrecord'
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.checkpoint import read_meta, run_weights
from percli.core.config import ConfigError, OptimConfig, TrainConfig, from_dict, to_dict
from percli.core.context import RunContext
from percli.core.data.embedded_yt8m import YT8MSpec, make_yt8m
from percli.core.data.yt8m import FEATURE_SIZES, YT8MDataset, YT8MLayout, yt8m_files
from percli.core.gap_metrics import gap_from_top_k, hits_at_one, precision_at_equal_recall, top_k_by_video
from percli.models import create_model, list_models, load_initial_weights, load_run_model
from percli.recipes.common import TrainedModelSection

TASK = "yt8m"
COMMAND = "percli finetune yt8m"
EPSILON = 1e-5  # the official cross-entropy's


@dataclasses.dataclass
class YT8MData:
    source: str = "embedded"
    """embedded, or TFRecord/NPZ/Parquet files: space-separated globs, braces or folders."""
    val_source: str | None = None
    """Held-out files scored during training; embedded: its validate split."""
    level: Literal["video", "frame"] = "video"
    """video: mean_rgb/mean_audio of each video; frame: its one-second rgb/audio frames (TFRecords)."""
    features: list[str] = dataclasses.field(default_factory=lambda: ["rgb", "audio"])
    """Features read and concatenated."""
    feature_sizes: list[int] | None = None
    """Their widths in the files; null: the official rgb 1024, audio 128 (embedded: its own)."""
    num_classes: int = 4716
    """Classes of the files (the 2017 release: 4716; 2018 and later: 3862); embedded: its own."""
    max_frames: int = 300
    """Frame level: frames kept per video (the official 300)."""
    embedded_size: int = 4000
    """Embedded: training videos (validate and test splits a quarter as many each)."""
    embedded_seed: int = 0
    embedded: YT8MSpec = dataclasses.field(default_factory=YT8MSpec)
    """Embedded: classes, widths, latent topics and difficulty (percli.core.data.embedded_yt8m)."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(name="yt8m_moe"))
    data: YT8MData = dataclasses.field(default_factory=YT8MData)
    stage: Literal["features", "concepts"] = "features"
    """features: a classifier of the features; concepts: the latent concept model on a first stage's scores."""
    first_stage: str | None = None
    """Concepts stage: a finished features-stage run (its dir, a checkpoint dir or its .safetensors)."""
    with_features: bool = False
    """Concepts stage: feed the video-level features beside the first-stage scores."""
    top_k: int = 20
    """Predictions kept per video for GAP (the official 20)."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        epochs=5, batch_size=1024, grad_clip=1.0))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=0.01, ref_batch_size=1024, weight_decay=1e-8, warmup_fraction=0.0))


# --------------------------------------------------------------------------- data


def data_layout(data: YT8MData, source: str) -> YT8MLayout:
    """What the reader keeps: the embedded set's classes and widths, or the official ones."""
    if source == "embedded":
        widths = {"rgb": data.embedded.rgb_dim, "audio": data.embedded.audio_dim}
        return YT8MLayout(data.level, tuple(data.features), tuple(widths[f] for f in data.features),
                          data.embedded.num_classes, data.max_frames)
    sizes = data.feature_sizes or [FEATURE_SIZES[f] for f in data.features]
    return YT8MLayout(data.level, tuple(data.features), tuple(sizes), data.num_classes, data.max_frames)


def split_videos(data: YT8MData, source: str | None, split: str, root: Path,
                 accelerator: Accelerator) -> YT8MDataset | None:
    """The videos of `source`: the embedded `split` (written once under ``root/embedded``) or the files."""
    if not source:
        return None
    if source == "embedded":
        size = data.embedded_size if split == "train" else max(data.embedded_size // 4, 1)
        folder = root / "embedded" / f"{split}-{data.level}"
        with accelerator.main_process_first():  # one process writes, the others reuse
            make_yt8m(folder, split, size, data.level, data.embedded_seed, data.embedded)
        files = sorted(folder.glob("*.tfrecord"))
    else:
        files = yt8m_files(source)
    videos = YT8MDataset(files, data_layout(data, source))
    if not len(videos):
        raise ValueError(f"{source}: no readable video ({videos.bad_records.count} damaged record(s) or "
                         "unreadable file(s)); check the files")
    return videos


def video_features(item: dict[str, Any]) -> torch.Tensor:
    """A video's features [D]: its video-level vector, or the mean of its valid frames."""
    if "features" in item:
        return item["features"]
    return item["frames"][: max(int(item["num_frames"]), 1)].mean(0)


class ConceptInputs(Dataset):
    """The concept stage's items: a video's first-stage scores (and its features) with its labels; a video the
    first stage could not score is read again, and its BadSample skips it again."""

    def __init__(self, videos: YT8MDataset, scores: np.ndarray, with_features: bool):
        self.videos, self.scores, self.with_features = videos, scores, with_features
        self.bad_records = videos.bad_records

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.videos[index]
        out = {"index": index, "scores": torch.from_numpy(self.scores[index]), "labels": item["labels"]}
        if self.with_features:
            out["features"] = video_features(item)
        return out


# --------------------------------------------------------------------------- models and scoring


def model_inputs(kind: str, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """What a model of `kind` (its ``input_kind``) reads of a batch."""
    if kind == "video":
        return (batch["features"],)
    if kind == "frame":
        return batch["frames"], batch["num_frames"]
    return (batch["scores"], batch["features"]) if "features" in batch else (batch["scores"],)


def cross_entropy(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The official loss: -[y log(p + eps) + (1 - y) log(1 - p + eps)], summed over classes, mean over videos."""
    p = predictions.float()
    return -(labels * torch.log(p + EPSILON) + (1 - labels) * torch.log(1 - p + EPSILON)).sum(1).mean()


class _KeepScores:
    """`engine.evaluate` task keeping every video's scores and labels by its index (gathered across processes)."""

    def __init__(self, kind: str):
        self.kind = kind

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"index": batch["index"].float(), "scores": model(*model_inputs(self.kind, batch)),
                "labels": batch["labels"]}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, Any]:
        return totals


def predict(model: nn.Module, kind: str, dataset: Dataset, accelerator: Accelerator, train: TrainConfig,
            num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, C] scores and labels of every video of `dataset`, NaN rows for those that could not be read."""
    out = engine.evaluate(_KeepScores(kind), model.to(accelerator.device), dataset, accelerator, train,
                          engine.BadInputLog())
    scores = np.full((len(dataset), num_classes), np.nan, np.float32)
    labels = np.zeros((len(dataset), num_classes), np.float32)
    if "index" in out:  # float32 indices are exact below 2^24 videos
        index = out["index"].long().numpy()
        scores[index], labels[index] = out["scores"].numpy(), out["labels"].numpy()
    return scores, labels


def load_yt8m_run(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """A finished `percli finetune yt8m` run's model (eval mode) and its checkpoint metadata."""
    return load_run_model(path, TASK, COMMAND)


def yt8m_meta(path: str, key: str) -> dict[str, Any]:
    """The checkpoint metadata of a finished `percli finetune yt8m` run; ConfigError naming `key` otherwise."""
    try:
        meta = read_meta(run_weights(path))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None
    if meta.get("task") != TASK:
        raise ConfigError(f"{key}: {path} is a {meta.get('task', 'non-percli')} run; give a `{COMMAND}` run")
    return meta


def run_data(meta: dict[str, Any]) -> YT8MData:
    """The data section a run was trained with (its checkpoint metadata)."""
    return from_dict(YT8MData, meta["data"], prefix="data.")


def run_scores(path: str, videos: YT8MDataset, accelerator: Accelerator, train: TrainConfig,
               memo: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """[N, C] scores a finished run gives `videos` (a concepts run: on its first stage's scores, computed too) and
    the videos' labels. `memo` keeps them for these videos by run, so a first stage shared by several runs is
    scored once."""
    key = str(run_weights(path).resolve())
    if memo is not None and key in memo:
        return memo[key]
    model, meta = load_yt8m_run(path)
    check_layout(meta, videos.layout, path)
    dataset: Dataset = videos
    if meta["stage"] == "concepts":
        first, _ = run_scores(meta["first_stage"], videos, accelerator, train, memo)
        dataset = ConceptInputs(videos, first, bool(meta.get("with_features")))
    out = predict(model, model.input_kind, dataset, accelerator, train, videos.layout.num_classes)
    if memo is not None:
        memo[key] = out
    return out


def check_layout(meta: dict[str, Any], layout: YT8MLayout, path: str) -> None:
    """A run's model must read these videos: their level, feature width and classes."""
    kwargs, data = meta.get("kwargs", {}), run_data(meta)
    want = {"level": data.level, "classes": kwargs.get("num_classes")}
    have = {"level": layout.level, "classes": layout.num_classes}
    if meta["stage"] == "features":
        want["feature width"], have["feature width"] = kwargs.get("feature_dim"), layout.feature_dim
    wrong = [f"{k} {have[k]} (the model: {want[k]})" for k in want if want[k] != have[k]]
    if wrong:
        raise ValueError(f"{path} was trained on other data than these videos: {', '.join(wrong)}; give data "
                         "of the run's layout (data.level, data.features, data.num_classes)")


# --------------------------------------------------------------------------- the task


class YT8MTask:
    def __init__(self, cfg: Config, run_dir: Path, accelerator: Accelerator):
        self.cfg, self.run_dir, self.accelerator = cfg, run_dir, accelerator

    def _first_stage_scores(self, videos: YT8MDataset, split: str) -> np.ndarray:
        """The first stage's scores of `videos`, from the run's cache when it holds them (module docstring)."""
        weights = str(run_weights(self.cfg.first_stage).resolve())
        cache = self.run_dir / "first_stage" / f"{split}.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as saved:
                if str(saved["first_stage"]) == weights and len(saved["scores"]) == len(videos):
                    return saved["scores"]
        scores, _ = run_scores(self.cfg.first_stage, videos, self.accelerator, self.cfg.train)
        if self.accelerator.is_main_process:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}.npz")
            np.savez(tmp, scores=scores, first_stage=np.asarray(weights))
            tmp.replace(cache)
        return scores

    def _data(self, split: str) -> Dataset | None:
        d = self.cfg.data
        source = d.source if split == "train" else d.val_source or ("embedded" if d.source == "embedded" else None)
        videos = split_videos(d, source, split, self.run_dir, self.accelerator)
        if videos is None or self.cfg.stage == "features":
            return videos
        return ConceptInputs(videos, self._first_stage_scores(videos, split), self.cfg.with_features)

    def build_model(self) -> nn.Module:
        layout = data_layout(self.cfg.data, self.cfg.data.source)
        width = layout.feature_dim if self.cfg.stage == "features" or self.cfg.with_features else 0
        self.kwargs = {"num_classes": layout.num_classes, "feature_dim": width, **self.cfg.model.kwargs}
        model = create_model(self.cfg.model.name, **self.kwargs)  # before the data: scoring reseeds the RNGs
        self.kind = model.input_kind
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        self.train_set = self._data("train")
        return model

    def model_meta(self) -> dict[str, Any]:
        first = str(run_weights(self.cfg.first_stage).resolve()) if self.cfg.stage == "concepts" else None
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": TASK, "stage": self.cfg.stage,
                "first_stage": first, "with_features": self.cfg.with_features, "data": to_dict(self.cfg.data)}

    def train_dataset(self) -> Dataset:
        return self.train_set

    def eval_dataset(self) -> Dataset | None:
        return self._data("validate")

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": cross_entropy(model(*model_inputs(self.kind, batch)), batch["labels"])}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        return gap_sums(model(*model_inputs(self.kind, batch)), batch["labels"], self.cfg.top_k)

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return gap_metrics(totals)


def gap_sums(scores: torch.Tensor, labels: torch.Tensor, top_k: int) -> dict[str, Any]:
    """An eval batch's share of the GAP@k, hit@1, PERR and loss figures (`gap_metrics` reduces them): each
    video's top-k scores and hits and its positives (engine.evaluate concatenates them over the set)."""
    scores = scores.float()
    return {**top_k_by_video(scores, labels, top_k), "hit_at_1": float(hits_at_one(scores, labels).sum()),
            "perr": float(precision_at_equal_recall(scores, labels).sum()), "count": float(len(labels)),
            "loss_sum": float(cross_entropy(scores, labels)) * len(labels)}


def gap_metrics(totals: dict[str, Any]) -> dict[str, float]:
    n = max(totals.get("count", 0.0), 1.0)
    gap = gap_from_top_k(totals["top_k_scores"], totals["top_k_hits"], totals["positives"]) \
        if "top_k_scores" in totals else 0.0
    return {"gap": gap, "hit_at_1": totals.get("hit_at_1", 0.0) / n, "perr": totals.get("perr", 0.0) / n,
            "loss": totals.get("loss_sum", 0.0) / n, "count": totals.get("count", 0.0)}


def _model_kind(cfg: Config) -> str:
    try:
        with torch.device("meta"):
            return create_model(cfg.model.name, **cfg.model.kwargs).input_kind
    except AttributeError:
        raise ConfigError(f"model.name={cfg.model.name!r} is not a YouTube-8M model; use one of "
                          f"{', '.join(n for n in list_models() if n.startswith('yt8m_'))}") from None


def check_sources(data: YT8MData, keys: tuple[str, ...] = ("source", "val_source")) -> None:
    for key in keys:
        value = getattr(data, key)
        if value and value != "embedded":
            try:
                yt8m_files(value)
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"data.{key}: {e}; give 'embedded' or TFRecord/NPZ/Parquet files") from None
    unknown = [f for f in data.features if f not in FEATURE_SIZES]
    if unknown or not data.features:
        raise ConfigError(f"data.features={data.features}: choose from {', '.join(FEATURE_SIZES)}")
    if data.feature_sizes is not None and len(data.feature_sizes) != len(data.features):
        raise ConfigError(f"data.feature_sizes={data.feature_sizes}: one width for each of data.features")


def validate(cfg: Config) -> None:
    if cfg.model.name not in list_models():
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; run `percli ls models` for the names")
    check_sources(cfg.data)
    want = "concepts" if cfg.stage == "concepts" else cfg.data.level
    kind = _model_kind(cfg)
    if kind != want:
        hint = {"video": "yt8m_logistic, yt8m_moe or yt8m_hypercolumn_moe", "frame": "yt8m_segments",
                "concepts": "yt8m_concepts"}[want]
        raise ConfigError(f"model.name={cfg.model.name!r} reads {kind} inputs, but stage={cfg.stage} with "
                          f"data.level={cfg.data.level} needs {want} inputs: use {hint}")
    if cfg.stage == "concepts":
        if not cfg.first_stage:
            raise ConfigError("first_stage is not set: pass first_stage=RUN, a finished `percli finetune yt8m` "
                              "run of the features stage")
        if not Path(cfg.first_stage).expanduser().exists():
            raise ConfigError(f"first_stage: {cfg.first_stage} not found; give a `percli finetune yt8m` run dir")
    if cfg.top_k < 1:
        raise ConfigError(f"top_k={cfg.top_k}: must be >= 1")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    if cfg.stage == "concepts":
        meta = yt8m_meta(cfg.first_stage, "first_stage")  # a wrong run fails before anything is built
        if meta["stage"] != "features":
            raise ConfigError(f"first_stage: {cfg.first_stage} is a {meta['stage']}-stage run; give a features-stage "
                              "run")
        first = run_data(meta)
        if cfg.data.source == "embedded" == first.source and (first.embedded, first.embedded_seed) != (
                cfg.data.embedded, cfg.data.embedded_seed):
            raise ConfigError("data.embedded / data.embedded_seed differ from the first stage's: the embedded videos "
                              "(their topics and labels) would not be the ones it was trained on; use its values")
    task = YT8MTask(cfg, ctx.run_dir, ctx.accelerator)
    return engine.train(task, cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
