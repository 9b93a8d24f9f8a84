"""DINOv2 classification finetuning: a released or `percli pretrain dinov2` backbone plus a linear head.

The model is the official hub classifier layout (`DinoLinearClassifier`: ``backbone.*`` and
``linear_head`` on the last block's cls token concatenated with its mean patch token). The whole
network is finetuned with the ViT finetuning recipe of MAE/BEiT that `percli finetune hiera` also
runs (AdamW, layer-wise LR decay 0.65, label smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment,
random erasing 0.25, drop path 0.1); DINOv2 itself publishes no finetuning recipe.

Resolution change: `model.checkpoint` may hold a backbone made for another size (the releases are
518 px); its position table is resampled once to ``model.kwargs.img_size`` with the official bicubic
interpolation, so at that size the model starts from exactly the features the release computes
when it interpolates on the fly. A `percli pretrain dinov2` checkpoint gives its teacher backbone.

Examples:
  percli finetune dinov2                                    # tiny preset on the embedded set
  percli finetune dinov2 --preset none model.name=dinov2_vitb14 model.kwargs.img_size=224 \\
      model.checkpoint=dinov2_vitb14_pretrain.pth data.source=/data/in1k/train data.val_source=/data/in1k/val
  percli finetune dinov2 model.checkpoint=runs/pretrain-dinov2-X/checkpoints/step_0000300
"""

from __future__ import annotations

import dataclasses
from typing import Any

from percli.core import engine
from percli.core.config import OptimConfig
from percli.core.context import RunContext
from percli.recipes.common import (
    TrainedModelSection,
    validate,  # noqa: F401  (the command runs it before anything is built)
)
from percli.recipes.hiera_classify import ClassifyTask
from percli.recipes.hiera_classify import Config as ClassifyConfig


@dataclasses.dataclass
class Config(ClassifyConfig):
    """`percli finetune hiera`'s options; the defaults below differ."""

    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(
        name="dinov2_vits14", kwargs={"img_size": 224}))
    """model.kwargs.img_size is the finetuning resolution (a multiple of the patch size)."""
    drop_path: float | None = 0.1
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=2e-3, ref_batch_size=1024, weight_decay=0.05, betas=(0.9, 0.999), warmup_fraction=0.05,
        layer_decay=0.65))
    """MAE's ViT-B finetuning: base lr 5e-4 per 256 images (2e-3 at 1024), layer decay 0.65."""


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    run_dir, accelerator, resume = ctx.run_dir, ctx.accelerator, ctx.resume
    if not cfg.model.name.startswith("dinov2_"):
        raise ValueError(f"model.name={cfg.model.name!r}: finetune dinov2 takes a dinov2_* model "
                         "(`percli ls models`); other encoders: percli finetune hiera")
    return engine.train(ClassifyTask(cfg), cfg.train, cfg.optim, run_dir, accelerator, resume=resume)
