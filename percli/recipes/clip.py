"""CLIP contrastive image-text pretraining (Radford et al., 2021) as MetaCLIP trains it (Xu et al., ICLR 2024).

Loss: symmetric InfoNCE over the whole global batch. Each process all-gathers the normalised
features of every process; its own rows stay in the autograd graph, the others' are constants,
and every process computes the full N x N loss (open_clip's defaults `local_loss=False`,
`gather_with_grad=False`). Summed over processes by DDP's gradient averaging, this is the exact
gradient of the global loss divided by the world size. The learnable temperature is clamped
to logit scale <= 100 (ln 100 = 4.6052) before every step, as CLIP and open_clip do.

Data: the embedded captioned shapes (default; evaluated zero-shot on its held-out split) or
image-text shards (JSONL / Parquet / WebDataset tar, e.g. `percli curate metaclip` output).

Examples:
  percli pretrain clip                                  # tiny model, embedded captioned shapes, CPU minutes
  percli pretrain clip --preset b32_400m data.source='/data/metaclip_400m/{00000..40000}.tar' \\
      data.val_source=/data/coco_val.jsonl
  accelerate launch --multi_gpu --num_processes 8 -m percli.cli pretrain clip --preset b32_400m \\
      data.source='/data/shards/{00000..00999}.tar'
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.captioned import CLASS_NAMES, ZERO_SHOT_TEMPLATES, CaptionedShapesDataset
from percli.core.data.image_text import ImageTextDataset
from percli.core.data.transforms import ImagePreprocess
from percli.models import create_model, list_models, load_initial_weights
from percli.models.clip_tokenizer import CLIPTokenizer
from percli.recipes.common import TrainedModelSection, check_shard_sources
from percli.recipes.zero_shot import ZeroShotTask

MAX_LOGIT_SCALE = math.log(100.0)


@dataclasses.dataclass
class ClipDataSection:
    source: str = "embedded"
    """`embedded` (captioned shapes) or image-text shard patterns, space-separated, brace-expanded."""
    val_source: str | None = None
    """Image-text pairs for retrieval R@1/5/10 at eval time; for `embedded`, zero-shot on its held-out split."""
    embedded_size: int = 2000
    """Images in the embedded training split (its held-out split has a quarter of that)."""
    image_field: str = "image"
    text_field: str = "text"
    """JSONL key / Parquet column / tar member extension (or .json field) of the caption."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="clip_vit_b32_quickgelu"))
    data: ClipDataSection = dataclasses.field(default_factory=ClipDataSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=512))
    # OpenAI CLIP / MetaCLIP: AdamW(0.9, 0.98), eps 1e-6, wd 0.2, lr 5e-4 at batch 32,768, cosine.
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=5e-4, ref_batch_size=32768, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6, warmup_fraction=0.005))
    gather_with_grad: bool = False
    """open_clip's --gather-with-grad (MetaCLIP's runs set it): gradients flow through the gathered features of
    the other processes too, so parameters get the gradient of the global loss itself rather than that
    divided by the world size (the same direction; it matters with grad clipping and Adam's eps)."""


def gather_features(features: torch.Tensor, with_grad: bool = False) -> tuple[torch.Tensor, int]:
    """Every process's rows [sum B_r, D] (local rows keep their gradient) and where the local rows start.

    Batch sizes may differ between processes (unreadable samples are dropped), so rows are padded
    to the largest batch for `all_gather` and cut back afterwards. `with_grad` (open_clip's
    `gather_with_grad`): the gather itself is differentiable, so every process's loss sends gradients to
    the rows of all processes (each rank's rows then get world-size times the gradient of the global loss,
    which DDP's averaging turns into exactly that gradient).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([features.shape[0]], device=features.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    if with_grad:
        from torch.distributed.nn.functional import all_gather

        pad = features.new_zeros(max(counts) - features.shape[0], features.shape[1])
        parts = all_gather(torch.cat([features, pad]))
        return torch.cat([p[:n] for p, n in zip(parts, counts)]), sum(counts[:rank])
    padded = features.new_zeros(max(counts), features.shape[1])
    padded[:features.shape[0]] = features.detach()
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    rows = [p[:n] for p, n in zip(parts, counts)]
    rows[rank] = features  # the local part, with its gradient
    return torch.cat(rows), sum(counts[:rank])


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                     logit_scale: torch.Tensor, gather_with_grad: bool = False) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch: mean of image->text and text->image cross-entropy."""
    # In fp32 whatever the autocast dtype: the softmax over the global batch is where precision matters.
    all_images, _ = gather_features(image_features.float(), gather_with_grad)  # [N, D]
    all_texts, _ = gather_features(text_features.float(), gather_with_grad)  # [N, D]
    logits = logit_scale * all_images @ all_texts.T  # [N images, N texts]; pair i is the diagonal
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def train_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """open_clip's training crop: RandomResizedCrop(scale 0.9-1, bicubic), no flip, normalise."""
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class ClipTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.model_kwargs = dict(cfg.model.kwargs)

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.model.name, **self.model_kwargs)
        if not hasattr(model, "encode_text"):
            raise ValueError(f"model.name={self.cfg.model.name!r} is not a CLIP model; use a clip_* name "
                             "(see `percli ls models`)")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        self.preprocess = dict(model.preprocess)
        self.tokenizer = CLIPTokenizer(context_length=model.context_length)
        return model

    def model_meta(self) -> dict[str, Any]:
        meta = {"name": self.cfg.model.name, "kwargs": self.model_kwargs, "task": "clip", **self.preprocess}
        if self.cfg.data.source == "embedded":  # what `percli eval zero-shot` needs for the held-out split
            meta.update(classes=list(CLASS_NAMES), templates=list(ZERO_SHOT_TEMPLATES), data="embedded")
        return meta

    def _dataset(self, source: str, split: str, train: bool) -> Dataset:
        pre = ImagePreprocess.of(self.preprocess)
        transform = train_transform(pre.size, pre.mean, pre.std) if train else pre.eval_transform()
        if source == "embedded":
            count = self.cfg.data.embedded_size if train else max(self.cfg.data.embedded_size // 4, 1)
            return CaptionedShapesDataset(split, count, image_size=max(pre.size), transform=transform,
                                          tokenize=self.tokenizer)
        return ImageTextDataset(source, transform, self.tokenizer, self.cfg.data.image_field,
                                self.cfg.data.text_field)

    def train_dataset(self) -> Dataset:
        self.train_set = self._dataset(self.cfg.data.source, "train", train=True)
        return self.train_set

    def eval_dataset(self) -> Dataset | None:
        data = self.cfg.data
        if data.val_source:
            self.evaluator = ZeroShotTask(self.tokenizer, retrieval=True)
            return self._dataset(data.val_source, "val", train=False)
        if data.source == "embedded":
            # The model changes between evaluations: rebuild the class embeddings at every batch (10 x 3 prompts).
            self.evaluator = ZeroShotTask(self.tokenizer, CLASS_NAMES, ZERO_SHOT_TEMPLATES, cache=False)
            return self._dataset("embedded", "val", train=False)
        return None

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        clip = getattr(model, "module", model)  # under DDP
        with torch.no_grad():  # CLIP clips the temperature after each step; before the next forward is the same
            clip.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        image_features, text_features, logit_scale = model(batch["image"], batch["text"])
        return {"loss": contrastive_loss(image_features, text_features, logit_scale, self.cfg.gather_with_grad),
                "logit_scale": logit_scale.detach()}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float | torch.Tensor]:
        return self.evaluator.eval_step(model, batch)

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return self.evaluator.eval_reduce(totals)


def validate(cfg: Config) -> None:
    """Checks a dry run can make without building anything: model name and data shards."""
    if cfg.model.name not in list_models():
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; run `percli ls models` for the names")
    check_shard_sources(cfg.data, ".jsonl/.parquet/.tar shard patterns")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(ClipTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
