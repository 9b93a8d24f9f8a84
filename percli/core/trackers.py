"""Experiment trackers (TensorBoard, W&B, MLflow, ...) through Accelerate's tracker API.

`train.log_with` names them; the engine starts them on rank 0 with the run's resolved config as
hyperparameters, logs every metrics.jsonl record at its step (`Accelerator.log`), the run's
pictures at the end, and finishes them whether the run completes or stops.

The trackers are built here rather than by `Accelerator(log_with=...)`: the Accelerator exists
before the run dir is known, and TensorBoard needs its directory at construction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _tracker(name: str, run_dir: Path) -> GeneralTracker:
    """One tracker, named after the run dir; local ones write inside it."""
    if name == "tensorboard":  # <run dir>/tensorboard: `tensorboard --logdir runs/` lists every run
        return LOGGER_TYPE_TO_CLASS[name]("tensorboard", str(run_dir))
    if name == "wandb":  # the run dir's name as the W&B run name; offline runs land in <run dir>/wandb
        return LOGGER_TYPE_TO_CLASS[name](os.environ.get("WANDB_PROJECT", "percli"), name=run_dir.name,
                                          dir=str(run_dir))
    cls = LOGGER_TYPE_TO_CLASS[name]
    if cls.requires_logging_directory:
        return cls(run_dir.name, str(run_dir / name))
    return cls(run_dir.name)


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """`{"train": {"lr": 1}}` -> `{"train.lr": 1}`; lists and None as text (what hyperparameter tables take)."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def start_trackers(accelerator: Accelerator, names: list[str], run_dir: Path,
                   fallback_config: dict[str, Any]) -> None:
    """Start the named trackers on the accelerator (rank 0 only) with the run's config.yaml (else
    `fallback_config`, for a run started from Python) as hyperparameters."""
    if not names or not accelerator.is_main_process:
        return
    saved = run_dir / "config.yaml"
    config = yaml.safe_load(saved.read_text(encoding="utf-8")) if saved.is_file() else fallback_config
    accelerator.log_with = [_tracker(name, run_dir) for name in names]  # built trackers are taken as they are
    accelerator.trackers = []
    accelerator.init_trackers(run_dir.name, config=flat_config(config or {}))


def log_metrics(accelerator: Accelerator, record: dict[str, Any]) -> None:
    """One metrics.jsonl record to every tracker, at its step."""
    if accelerator.trackers:
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        accelerator.log(values, step=record["step"])


def log_pictures(accelerator: Accelerator, entries: dict[str, Any], step: int) -> list[str]:
    """The pictures among a task's summary entries (paths of image files) to every tracker that takes
    images; returns the names logged."""
    if not accelerator.trackers:
        return []
    from PIL import Image

    pictures = {}
    for key, value in entries.items():
        if isinstance(value, str) and value.lower().endswith(IMAGE_SUFFIXES) and Path(value).is_file():
            with Image.open(value) as image:
                pictures[key] = np.asarray(image.convert("RGB"))  # [H, W, 3] uint8
    for tracker in accelerator.trackers:
        if not pictures or not hasattr(tracker, "log_images"):
            continue
        if tracker.name == "tensorboard":  # add_images takes one array of N images
            tracker.log_images({k: v[None] for k, v in pictures.items()}, step=step, dataformats="NHWC")
        else:  # W&B, ClearML, SwanLab: a list of images per key
            tracker.log_images({k: [v] for k, v in pictures.items()}, step=step)
    return sorted(pictures)


def end_trackers(accelerator: Accelerator) -> None:
    """Finish every tracker (flushes files, closes W&B runs); `Accelerator.end_training` then has none left."""
    trackers, accelerator.trackers = accelerator.trackers, []
    for tracker in trackers:
        tracker.finish()
