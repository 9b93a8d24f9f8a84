"""Accuracy (top-1 / top-5) or, for multi-label audio, mAP / d-prime of a classification checkpoint.

The checkpoint rebuilds its own model (name, constructor arguments, preprocessing and class
names travel in its metadata): Hiera image/video classifiers and Audio-MAE classifiers. An
official .pth carries none of that: name the model with model.name and the data's classes must
be in the checkpoint's order.

Examples:
  percli eval classify checkpoint=runs/finetune-hiera-X/checkpoints/step_0000600
  percli eval classify checkpoint=hiera_base_224.pth model.name=hiera_base_224 data.source=/data/imagenet/val --json
  percli eval classify checkpoint=runs/finetune-audio-mae-X/checkpoints/step_0000600 data.source=/data/esc50/val
  percli eval classify checkpoint=runs/finetune-hiera-k400 data.source=/data/k400/val.jsonl \
      eval.views_spatial=3 eval.views_temporal=5        # Hiera's K400 protocol: 3 x 5 views, softmax averaged

Multi-view testing (video files): each clip is read as ``eval.views_temporal`` clips with evenly spaced starts,
each resized on its short side and cropped ``eval.views_spatial`` times along its long side (3: both ends and the
centre); the class probabilities of the views are averaged (SlowFast's protocol, used by MAE-ST and Hiera).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch.nn as nn
from accelerate.utils import gather_object

from percli.core import checkpoint as ckpt
from percli.core.config import ConfigError, TrainConfig
from percli.core.context import RunContext
from percli.core.engine import BadInputLog, evaluate
from percli.core.rundir import write_json_atomic
from percli.models import create_model_for, load_initial_weights
from percli.models.hub import resolve_weights
from percli.recipes.audio_classify import audio_eval_reduce, audio_eval_step
from percli.recipes.audio_common import audio_dataset, eval_audio_section
from percli.recipes.classification import (
    classification_dataset,
    classification_metrics,
    classification_sums,
    eval_preprocess,
)
from percli.recipes.common import (
    DataSection,
    ModelSection,
    is_video,
    validate,  # noqa: F401  run by the command before anything is built
)


@dataclasses.dataclass
class ViewsSection:
    views_spatial: int = 1
    """Video: crops per clip along the long side (Hiera / MAE-ST on K400: 3)."""
    views_temporal: int = 1
    """Video: clips per video, evenly spaced (Hiera on K400: 5; MAE-ST: 7)."""


@dataclasses.dataclass
class Config:
    checkpoint: str = ""
    """percli run dir (its latest checkpoint) / checkpoint dir / model .safetensors, or an official .pth (then set
    model.name)."""
    model: ModelSection = dataclasses.field(default_factory=lambda: ModelSection(name=""))
    data: DataSection = dataclasses.field(default_factory=DataSection)
    label_csv: str | None = None
    """Audio: label CSV for AST-style JSON data."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64))
    """Only batch_size, num_workers, mixed_precision, cpu and seed are used."""
    eval: ViewsSection = dataclasses.field(default_factory=ViewsSection)
    """Multi-view testing of video files (module docstring)."""


class _EvalTask:
    def __init__(self, video: bool):
        self.video = video

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        x = batch["video" if self.video else "image"]
        if self.video and x.dim() == 6:  # [B, views, C, T, H, W]: the views' class probabilities averaged
            probs = model(x.flatten(0, 1)).float().softmax(dim=-1).unflatten(0, x.shape[:2]).mean(dim=1)
            return classification_sums(probs.clamp(min=1e-12).log(), batch["label"])
        return classification_sums(model(x), batch["label"])

    def eval_reduce(self, sums: dict[str, float]) -> dict[str, float]:
        return classification_metrics(sums)


def _load_model(cfg: Config) -> tuple[nn.Module, dict[str, Any]]:
    if not cfg.checkpoint:
        raise ValueError("checkpoint is not set: pass checkpoint=PATH (a percli checkpoint dir or an official .pth)")
    path = resolve_weights(cfg.checkpoint)  # a path, or an hf-hub: spec's file in the Hugging Face cache
    if not path.exists():
        raise FileNotFoundError(f"checkpoint={path}: no such file or directory")
    meta: dict[str, Any] = {}
    if path.is_dir() and (path / "checkpoints").is_dir():  # a run dir: its latest checkpoint
        path = ckpt.run_weights(path)
    if path.is_dir() or path.suffix == ".safetensors":
        meta = ckpt.read_meta(path)
        if meta.get("task") not in ("classify", "audio-classify") and not cfg.model.name:
            raise ValueError(f"{path} is a {meta.get('task', 'non-percli')} checkpoint, not a classifier; "
                             "finetune it first (percli finetune hiera) or set model.name")
    name = cfg.model.name or meta.get("name")
    if not name:
        raise ValueError(f"{path} carries no model name; set model.name (e.g. model.name=hiera_base_224)")
    kwargs = {**meta.get("kwargs", {}), **cfg.model.kwargs, "drop_path_rate": 0.0}
    model = create_model_for(name, kwargs, path)
    load_initial_weights(model, str(path))
    return model, meta


class _AudioEvalTask:
    def __init__(self, multilabel: bool):
        self.multilabel = multilabel

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        return audio_eval_step(model, batch, self.multilabel)

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return audio_eval_reduce(totals, self.multilabel)


def _audio_setup(cfg: Config, meta: dict[str, Any], model: nn.Module, source: str):
    audio = eval_audio_section(model, meta, source, cfg.label_csv, cfg.data.embedded_size)
    dataset = audio_dataset(audio, source, "val", train=False)
    multilabel = meta.get("multilabel", bool(getattr(dataset, "multilabel", False)))
    return dataset, _AudioEvalTask(multilabel)


def _image_setup(cfg: Config, meta: dict[str, Any], model: nn.Module, source: str):
    video = is_video(model)
    input_size = tuple(meta.get("input_size") or model.config["input_size"])
    data = cfg.data
    if data.mean is None and meta.get("mean"):
        data = dataclasses.replace(data, mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    if video:  # the clip length the model was built for
        data = dataclasses.replace(data, num_frames=input_size[-3])
    pre = None if video else eval_preprocess(model.preprocess, cfg.data, meta)
    views = (cfg.eval.views_spatial, cfg.eval.views_temporal)
    if min(views) < 1:
        raise ConfigError(f"eval.views_spatial / eval.views_temporal = {views}: give at least 1 view each")
    if views != (1, 1) and (not video or source == "embedded"):
        raise ConfigError(f"eval.views_spatial / eval.views_temporal = {views}: multi-view testing reads video files; "
                          "give a video folder or manifest (data.source) of a video classifier, or 1 / 1")
    dataset = classification_dataset(source, "val", False, data, input_size, video, classes=meta.get("classes"),
                                     preprocess=pre, views=views)
    return dataset, _EvalTask(video)


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    run_dir, accelerator = ctx.run_dir, ctx.accelerator
    model, meta = _load_model(cfg)
    source = cfg.data.val_source or cfg.data.source
    audio = "img_size" in model.config  # Audio-MAE models take fbank "images"
    dataset, task = (_audio_setup if audio else _image_setup)(cfg, meta, model, source)
    classes = meta.get("classes")
    if classes and getattr(dataset, "classes", None) and list(dataset.classes) != list(classes):
        raise ValueError(f"the classes of {source} differ from the checkpoint's ({len(dataset.classes)} vs "
                         f"{len(classes)}); evaluate on data labelled like the training set")
    model = accelerator.prepare(model)
    bad = BadInputLog()
    metrics = evaluate(task, model, dataset, accelerator, cfg.train, bad)
    if accelerator.num_processes > 1:  # each rank saw its own shard's unreadable files
        merged = BadInputLog()
        for files in gather_object([bad.files]):
            merged.add(files)
        bad = merged
    summary = {"status": "completed", "checkpoint": str(cfg.checkpoint), "data": source, "metrics": metrics,
               "run_dir": str(run_dir), "bad_inputs": {"count": len(bad.files), "files": bad.files},
               "world_size": accelerator.num_processes}
    if accelerator.is_main_process:
        write_json_atomic(run_dir / "summary.json", summary)
    return summary
