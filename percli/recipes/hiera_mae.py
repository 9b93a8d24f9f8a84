"""MAE pretraining of Hiera: sparse encoder over kept mask units, multi-scale fusion, decoder
predicting normalised pixels of the masked units (mask ratio 0.6 images, 0.9 video).

Examples:
  percli pretrain hiera-mae                                   # tiny preset, embedded data, CPU
  percli pretrain hiera-mae --preset in1k data.source=/data/imagenet/train
  accelerate launch --multi_gpu --num_processes 8 -m percli.cli pretrain hiera-mae --preset k400 \\
      data.source=/data/k400/train.jsonl
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.models import create_model, load_initial_weights
from percli.recipes.common import (
    DataSection,
    TrainedModelSection,
    is_video,
    masked_pretraining_dataset,
    normalisation,
    official_drop_path,
    validate,  # noqa: F401  the command runs it before anything is built
)
from percli.recipes.reconstruction import save_reconstruction_grid


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="mae_hiera_base_224"))
    data: DataSection = dataclasses.field(default_factory=DataSection)
    mask_ratio: float | None = None
    """Share of mask units dropped; null = the model's default (0.6 image, 0.9 video)."""
    recon_images: int = 8
    """Images in the input / masked / reconstruction PNG written at the end (0 = none)."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64))
    # dbolya/hiera v0.2.0 `in1k_mae`: AdamW(0.9, 0.95), lr 8e-4 at batch 4096, wd 0.05, 40/1600 warmup.
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=8e-4, ref_batch_size=4096, weight_decay=0.05, betas=(0.9, 0.95), warmup_fraction=0.025))


class HieraMAETask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        kwargs = dict(cfg.model.kwargs)
        kwargs.setdefault("drop_path_rate", official_drop_path(cfg.model.name))
        self.model_kwargs = kwargs
        self._probe = None

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.model.name, **self.model_kwargs)
        if not hasattr(model, "forward_decoder"):
            raise ValueError(f"model.name={self.cfg.model.name!r} is not an MAE model; use an mae_hiera_* name "
                             "(see `percli ls models`)")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        self.video = is_video(model)
        self.input_size = tuple(model.config["input_size"])
        self.mask_ratio = self.cfg.mask_ratio if self.cfg.mask_ratio is not None else model.default_mask_ratio
        return model

    def model_meta(self) -> dict[str, Any]:
        mean, std = normalisation(self.cfg.data, self.video)
        return {"name": self.cfg.model.name, "kwargs": self.model_kwargs, "task": "hiera-mae",
                "input_size": list(self.input_size), "mean": list(mean), "std": list(std),
                "mask_ratio": self.mask_ratio}

    def _dataset(self, source: str, split: str, train: bool) -> Dataset:
        return masked_pretraining_dataset(self.cfg.data, source, split, train, self.video, self.input_size[-1])

    def train_dataset(self) -> Dataset:
        return self._dataset(self.cfg.data.source, "train", train=True)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = batch["video"] if self.video else batch["image"]
        loss = model(x, mask_ratio=self.mask_ratio)[0]
        return {"loss": loss}

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        if self.cfg.recon_images <= 0 or self.video:
            return {}
        source = self.cfg.data.val_source or self.cfg.data.source
        dataset = self._dataset(source, "val", train=False)
        mean, std = normalisation(self.cfg.data, self.video)
        path = save_reconstruction_grid(model, dataset, self.cfg.recon_images, self.mask_ratio, mean, std,
                                        run_dir / "reconstructions.png", device=accelerator.device)
        return {"reconstructions": str(path)} if path else {}


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(HieraMAETask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
