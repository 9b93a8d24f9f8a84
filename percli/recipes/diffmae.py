"""DiffMAE pretraining (Wei, Mangalam, Huang et al., ICCV 2023): MAE's encoder on the visible patches, a diffusion
decoder that denoises the masked patches from a random step, x0 MSE on the masked patches (`percli.models.diffmae`).

Images or video: a ``*_video`` model (or ``model.kwargs.input_size=[T, H, W]``) trains on clips
(``data.source``: a folder or .jsonl of videos, ``data.num_frames`` / ``data.sampling_rate``; ``embedded``: moving
shapes), in tubelets, 90 % masked by default as the paper's Kinetics-400 setting.

Held-out evaluation: the masked-patch loss on seeded masks and steps. At the end of the run a seeded set of
held-out images (clips) is inpainted (DDIM from noise, `inpaint.steps` steps) and scored on the masked pixels (PSNR,
SSIM) next to the mean-colour fill baseline; the grid is written to ``inpainting.png``.

Recipe: no official release. The optimiser follows MAE's pretraining (AdamW 0.9 / 0.95, base lr 1.5e-4 per 256
images, i.e. 2.4e-3 at 4096, weight decay 0.05, 40 warmup epochs of 1600), mask ratio 0.75, 1000 diffusion steps.

Examples:
  percli pretrain diffmae                                        # tiny preset, embedded shapes, CPU
  percli pretrain diffmae model.kwargs.decoder_design=cross      # the cross-attention-only decoder
  percli pretrain diffmae --preset tiny-video                    # video, embedded moving shapes, CPU
  accelerate launch --multi_gpu --num_processes 8 -m percli.cli pretrain diffmae --preset k400 \
      data.source=/data/k400/train.jsonl
  accelerate launch --multi_gpu --num_processes 8 -m percli.cli pretrain diffmae --preset in1k \\
      data.source=/data/imagenet/train
  percli finetune diffmae model.checkpoint=runs/pretrain-diffmae-X   # its encoder, classification
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
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.models import create_model, load_initial_weights
from percli.recipes.common import (
    DataSection,
    TrainedModelSection,
    is_video,
    masked_pretraining_dataset,
    normalisation,
)
from percli.recipes.common import validate as validate_data
from percli.recipes.diffmae_inpaint import inpaint_and_score, random_keep, save_grid
from percli.recipes.reconstruction import first_samples


@dataclasses.dataclass
class InpaintSection:
    images: int = 64
    """Held-out images inpainted and scored at the end of the run (0 = none)."""
    steps: int = 50
    """DDIM steps of the sampler."""
    seed: int = 0
    """Seed of the masks and of the sampler's noise."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="diffmae_vit_large_patch16"))
    data: DataSection = dataclasses.field(default_factory=DataSection)
    mask_ratio: float | None = None
    """Share of patches masked; null = the model's (0.75)."""
    inpaint: InpaintSection = dataclasses.field(default_factory=InpaintSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=2.4e-3, ref_batch_size=4096, weight_decay=0.05, betas=(0.9, 0.95), warmup_fraction=0.025))


class DiffMAETask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._eval_batches = 0

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.model.name, **self.cfg.model.kwargs)
        if not hasattr(model, "inpaint"):
            raise ConfigError(f"model.name={self.cfg.model.name!r} is not a DiffMAE pretraining model; use a "
                              "diffmae_vit_* name without _cls (see `percli ls models`)")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        self.input_size = tuple(model.config["input_size"])
        self.video = is_video(model)
        self.key = "video" if self.video else "image"
        self.mask_ratio = self.cfg.mask_ratio if self.cfg.mask_ratio is not None else model.default_mask_ratio
        return model

    def model_meta(self) -> dict[str, Any]:
        mean, std = normalisation(self.cfg.data, self.video)
        meta = {"name": self.cfg.model.name, "kwargs": dict(self.cfg.model.kwargs), "task": "diffmae",
                "input_size": list(self.input_size), "mean": list(mean), "std": list(std),
                "mask_ratio": self.mask_ratio}
        if self.video:  # how `percli inpaint` samples a clip from a video file
            meta.update(num_frames=self.cfg.data.num_frames, sampling_rate=self.cfg.data.sampling_rate)
        return meta

    def _dataset(self, split: str, train: bool) -> Dataset:
        source = self.cfg.data.source if train else (self.cfg.data.val_source or self.cfg.data.source)
        return masked_pretraining_dataset(self.cfg.data, source, split, train, self.video, self.input_size[-1])

    def train_dataset(self) -> Dataset:
        return self._dataset("train", train=True)

    def eval_dataset(self) -> Dataset | None:
        d = self.cfg.data
        return self._dataset("val", train=False) if d.val_source or d.source == "embedded" else None

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": model(batch[self.key], mask_ratio=self.mask_ratio)[0]}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        # seeded masks, steps and noise per batch position (drawn on the CPU, moved to the device): every
        # evaluation scores the same noisy inputs
        generator = torch.Generator().manual_seed(self.cfg.inpaint.seed * 100003 + self._eval_batches)
        self._eval_batches += 1
        images = batch[self.key]
        loss = model(images, mask_ratio=self.mask_ratio, generator=generator)[0]
        return {"loss_sum": float(loss.detach()) * len(images), "count": float(len(images))}

    def eval_reduce(self, sums: dict[str, float]) -> dict[str, float]:
        self._eval_batches = 0
        n = max(sums.get("count", 0.0), 1.0)
        return {"loss": sums.get("loss_sum", 0.0) / n, "count": sums.get("count", 0.0)}

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        n = self.cfg.inpaint.images
        images = first_samples(self._dataset("val", train=False), n, self.key) if n > 0 else None
        if images is None:
            return {}
        mean, std = normalisation(self.cfg.data, self.video)
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(self.cfg.inpaint.seed)
        keep = random_keep(model, len(images), self.mask_ratio, generator)
        result = inpaint_and_score(model, images.to(accelerator.device), keep, mean, std,
                                   steps=self.cfg.inpaint.steps, generator=generator)
        model.train(was_training)
        what = "tubelets, first clip's frames" if self.video else "patches"
        path = save_grid(result, run_dir / "inpainting.png",
                         f"DiffMAE inpainting ({self.mask_ratio:.0%} of {what}, {self.cfg.inpaint.steps} DDIM steps)")
        return {"inpainting": {self.key + "s": len(images), "steps": self.cfg.inpaint.steps,
                               "mask_ratio": self.mask_ratio,
                               "psnr": float(result["psnr"].mean()), "ssim": float(result["ssim"].mean()),
                               "mean_fill_psnr": float(result["fill_psnr"].mean()),
                               "mean_fill_ssim": float(result["fill_ssim"].mean()), "picture": str(path)}}


def validate(cfg: Config) -> None:
    validate_data(cfg)
    if cfg.mask_ratio is not None and not 0 < cfg.mask_ratio < 1:
        raise ConfigError(f"mask_ratio={cfg.mask_ratio}: give a fraction in (0, 1), e.g. mask_ratio=0.75")
    if cfg.inpaint.steps < 1:
        raise ConfigError(f"inpaint.steps={cfg.inpaint.steps}: give at least 1 DDIM step")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(DiffMAETask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
