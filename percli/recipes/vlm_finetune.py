"""VLM retrieval finetuning (Xu et al., Findings of ACL 2021; MMPT ``projects/mtm/vlm/vtt.yaml`` /
``youcook.yaml``): the shared encoder as ``MMFusionJoint`` (``vlm_retrieval_how2``: every layer isolates the
modalities, video and caption mean-pooled from the last isolated layer) on (caption, video segment) pairs of a
retrieval set, with the text->video InfoNCE (``T2VContraLoss``) of `percli finetune videoclip`, whose data,
options, evaluation and skipped-file accounting it shares (see `percli.recipes.videoclip_finetune`).

Model: a `percli pretrain vlm` run (``model.checkpoint``: its run dir, checkpoint or .safetensors; its
masked-token head is dropped, the architecture and tokenizer are read from its metadata), or ``model.kwargs``
with an MMPT VLM checkpoint or a local ``bert-base-uncased`` folder. The release's hyperparameters: batch 256,
lr 5e-5, Adam (0.9, 0.98), clip 2.0, 122 warmup updates, 10 epochs.

Examples:
  percli finetune vlm model.checkpoint=runs/vlm                      # the embedded clips
  percli finetune vlm model.checkpoint=runs/vlm data.source=/data/msrvtt/MSRVTT_train.9k.json \\
      data.features=/data/msrvtt/s3d data.val_source=/data/msrvtt/MSRVTT_JSFUSION_test.csv
"""

from __future__ import annotations

import dataclasses
from typing import Any

from percli.core import engine
from percli.core.config import TrainConfig
from percli.core.context import RunContext
from percli.recipes import videoclip_finetune
from percli.recipes.common import TrainedModelSection
from percli.recipes.videoclip_finetune import VideoTextFinetuneTask, validate

__all__ = ["Config", "run", "validate"]


@dataclasses.dataclass
class Config(videoclip_finetune.Config):
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="vlm_retrieval_how2"))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=256, grad_clip=2.0))


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(VideoTextFinetuneTask(cfg, "vlm"), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator,
                        resume=ctx.resume)
