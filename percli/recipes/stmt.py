"""Supervised STMT for MoCap action recognition (Zhu, Huang et al., CVPR 2023): `percli finetune stmt`.

Data: ``embedded`` (animated figures, 8 motions, `percli.core.data.embedded_mocap`) or a JSONL manifest, one
sequence per line (paths relative to the manifest), either

- the official preprocessed tensors, ``{"points": "x.npy", "geodist": "x_geodist.npz", "label": 3}``:
  ``points`` [T, >= N, 3] with its farthest-point-sampled prefix first, as the official
  ``04_prepare_dataloader.py`` writes it, and ``geodist`` [T, >= N, >= N] (key ``arr_0``); each sequence keeps
  its first ``data.points`` points and their geodesics; or
- a mesh sequence, ``{"mesh": "x.npz", "label": 3}``: an ``.npz`` of ``vertices`` [T, V, 3] and ``faces`` or a
  folder of one ``.off`` / ``.obj`` per frame, sampled and given geodesics by
  `percli.core.data.mesh_sequences` (a frame whose vertex count or faces differ is reported and skipped).

Sequences are normalised as the official loader does (centred on the bounding box, divided by its height).
Training augmentation is the official one: jitter (sigma 0.007, clipped to 0.04) and a rotation about the
vertical (+-0.7 rad) then the side axis (+-pi/18). Unreadable or ill-shaped files are skipped and counted.

Recipe (official ``src/main.py``): Adam, lr 1e-4, weight decay 1e-4 (percli's AdamW decouples it), batch 32,
150 epochs, cross-entropy. The official run starts from its masked-vertex pretraining checkpoint
(``model.checkpoint``: an official one, or a `percli pretrain stmt` run, whose pretext heads are dropped).

Examples:
  percli finetune stmt                                        # tiny preset, embedded figures, CPU
  percli finetune stmt --preset kit data.source=/data/kit/train.jsonl data.val_source=/data/kit/val.jsonl
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.embedded_mocap import EmbeddedMocap
from percli.core.data.images import BadSample
from percli.core.data.mesh_sequences import read_mesh_sequence, sample_with_geodesics
from percli.models import create_model, load_initial_weights
from percli.models.stmt import STMT
from percli.recipes.classification import classification_metrics, classification_sums
from percli.recipes.common import TrainedModelSection


@dataclasses.dataclass
class MocapData:
    source: str = "embedded"
    """embedded, or a .jsonl manifest of {"points": .npy, "geodist": .npz, "label": int} lines."""
    val_source: str | None = None
    """Held-out manifest; embedded: its own held-out split."""
    frames: int = 24
    """Frames per sequence (the model is built for this many)."""
    points: int = 128
    """Points per frame (the official 128, a farthest-point-sampled prefix)."""
    embedded_size: int = 800
    """Embedded: training sequences."""
    embedded_val_size: int | None = None
    """Embedded: held-out sequences (default a quarter of embedded_size)."""
    augment: bool = True
    """The official jitter and rotation in training."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(name="stmt"))
    data: MocapData = dataclasses.field(default_factory=MocapData)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(epochs=150, batch_size=32))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=1e-4, ref_batch_size=32, weight_decay=1e-4, warmup_fraction=0.0))


def normalise(points: np.ndarray) -> np.ndarray:
    """The official normalisation: minus the sequence's bounding-box centre, over its vertical extent."""
    low, high = points.reshape(-1, 3).min(0), points.reshape(-1, 3).max(0)
    return (points - (low + high) / 2) / max(float(high[1] - low[1]), 1e-6)


class MocapManifest(Dataset):
    """The sequences of a JSONL manifest: official preprocessed tensors or mesh sequences (module docstring)."""

    def __init__(self, path: str | Path, frames: int, points: int, labelled: bool = True):
        self.path, self.frames, self.points = Path(path).expanduser(), frames, points
        self.rows: list[tuple[str, str | None, int]] = []  # (points or mesh, geodist or None, label)
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label = int(row["label"]) if labelled else int(row.get("label", -1))
                self.rows.append((row["mesh"], None, label) if "mesh" in row else
                                 (row["points"], row["geodist"], label))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{self.path}:{number}: {e}; expected {{\"points\": \"x.npy\", \"geodist\": "
                                 '"x_geodist.npz", "label": 0} or {"mesh": "x.npz", "label": 0}') from None
        self.classes = sorted({label for _, _, label in self.rows if label >= 0})

    def __len__(self) -> int:
        return len(self.rows)

    def _file(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.path.parent / path

    def _mesh(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        path = self._file(name)
        try:
            vertices, faces = read_mesh_sequence(path)
            if len(vertices) < self.frames:
                raise ValueError(f"{len(vertices)} frames, need >= {self.frames}")
            points, geodist = sample_with_geodesics(vertices[:self.frames], faces, self.points)
        except (OSError, ValueError, KeyError) as e:
            raise BadSample(path, f"unreadable mesh sequence: {e}") from None
        return points, np.broadcast_to(geodist, (self.frames, *geodist.shape))

    def __getitem__(self, index: int) -> dict[str, Any]:
        points_file, geo_file, label = self.rows[index]
        if geo_file is None:
            points, geodist = self._mesh(points_file)
        else:
            points, geodist = self._tensors(points_file, geo_file)
        points = normalise(points[:self.frames, :self.points].astype(np.float32))
        return {"points": torch.from_numpy(points), "geodist": torch.from_numpy(
            np.ascontiguousarray(geodist[:self.frames, :self.points, :self.points], dtype=np.float32)), "label": label}

    def _tensors(self, points_file: str, geo_file: str) -> tuple[np.ndarray, np.ndarray]:
        path = self._file(points_file)
        try:
            points = np.load(path, allow_pickle=False)
            path = self._file(geo_file)
            with np.load(path, allow_pickle=False) as archive:
                geodist = archive["arr_0"] if "arr_0" in archive else archive[archive.files[0]]
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise BadSample(path, f"unreadable: {type(e).__name__}: {e}") from None
        t, n = self.frames, self.points
        if points.ndim != 3 or points.shape[0] < t or points.shape[1] < n or points.shape[2] != 3:
            raise BadSample(self._file(points_file), f"points {list(points.shape)}: need [>= {t}, >= {n}, 3]")
        if geodist.ndim != 3 or geodist.shape[0] < t or min(geodist.shape[1:]) < n:
            raise BadSample(self._file(geo_file), f"geodist {list(geodist.shape)}: need [>= {t}, >= {n}, >= {n}]")
        return points, geodist


class Augmented(Dataset):
    """The official training augmentation (module docstring) over another dataset's items."""

    def __init__(self, data: Dataset):
        self.data = data
        self.classes = getattr(data, "classes", None)
        self.bad_records = getattr(data, "bad_records", None)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.data[index])
        points = item["points"]
        jitter = (0.007 * torch.randn(points.shape)).clamp(-0.04, 0.04)
        a, b = float(torch.empty(()).uniform_(-0.7, 0.7)), float(torch.empty(()).uniform_(-math.pi / 18, math.pi / 18))
        r_y = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        r_x = torch.tensor([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
        item["points"] = (points + jitter) @ (r_y @ r_x)
        return item


def mocap_dataset(d: MocapData, train: bool, labelled: bool = True) -> Dataset | None:
    """The training or held-out sequences of a data section (None: no held-out manifest given), augmented in
    training when ``d.augment``; ``labelled=False`` accepts manifest lines without a label (pretraining)."""
    if d.source == "embedded":
        size = d.embedded_size if train else d.embedded_val_size or max(d.embedded_size // 4, 1)
        data: Dataset = EmbeddedMocap("train" if train else "val", size, d.frames, d.points)
    else:
        source = d.source if train else d.val_source
        if not source:
            return None
        data = MocapManifest(source, d.frames, d.points, labelled)
    return Augmented(data) if train and d.augment else data


class STMTTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        self.train_set = mocap_dataset(self.cfg.data, train=True)
        classes = self.train_set.classes
        kwargs = {"num_classes": len(classes) if self.cfg.data.source == "embedded" else max(classes) + 1,
                  "framenum": self.cfg.data.frames, **self.cfg.model.kwargs}
        model = create_model(self.cfg.model.name, **kwargs)
        if not isinstance(model, STMT):
            raise ConfigError(f"model.name={self.cfg.model.name!r} is not an STMT model; use stmt or stmt_tiny")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        for p in model.unused_parameters():  # no loss reaches them: frozen, so DDP needs no find_unused_parameters
            p.requires_grad_(False)
        self.kwargs = kwargs
        return model

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "stmt", "frames": self.cfg.data.frames,
                "points": self.cfg.data.points}

    def train_dataset(self) -> Dataset:
        return self.train_set

    def eval_dataset(self) -> Dataset | None:
        return mocap_dataset(self.cfg.data, train=False)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(model(batch["points"], batch["geodist"]).float(), batch["label"])}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        return classification_sums(model(batch["points"], batch["geodist"]), batch["label"])

    def eval_reduce(self, sums: dict[str, float]) -> dict[str, float]:
        return classification_metrics(sums)


def validate(cfg: Config) -> None:
    d = cfg.data
    for key in ("source", "val_source"):
        value = getattr(d, key)
        if value and value != "embedded" and not Path(value).expanduser().is_file():
            raise ConfigError(f"data.{key}: {value} is not a file; give 'embedded' or a .jsonl manifest of "
                              '{"points": ..., "geodist": ..., "label": ...} lines')
    if d.frames < 2 or d.points < 64:
        raise ConfigError(f"data.frames={d.frames}, data.points={d.points}: need >= 2 frames and >= 64 points "
                          "(STMT samples 64 then 32 centres per frame)")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(STMTTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
