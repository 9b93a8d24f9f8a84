"""CiT, curation in training (Xu et al., ICCV 2023, arXiv 2301.02241): the text tower being trained picks its
own training data from a raw image-text pool, round after round.

Outer loop (every `curation.every` optimizer steps, at the start of each round): embed the task's class
names (template "{}") and the pool's captions with the current text tower, L2-normalise, score each caption
by its max cosine similarity over the class names; stream the pool in batches of `pool_batch_factor` x
batch_size captions and keep a caption above `threshold`, or, when fewer than `min_ratio` of a batch pass,
that batch's top int(min_ratio x batch) (the `percli curate cit` rule); stop once
`every` x batch_size x grad_accum x processes ids are collected (the pool streamed again, in a new order, if
one pass is not enough: duplicates kept, as the official `sublist`). Inner loop: train on those ids for the
round's steps. The curated share of each round is logged to metrics.jsonl (`curation/ratio`).

Model: a CLIP or PE model (model.name / model.checkpoint). Its image tower is frozen (`vision=frozen`) or
frozen except its final projection (`vision=head`, the official `head-all`); the text tower, the text
projection and the temperature train. Loss: image->text cross-entropy over the global batch (features
all-gathered with their gradient, CiT's `CiTCLIPLossGrad`). `curation.mode=offline` curates once with
the initial text tower and trains on that set (what an offline `percli curate cit` + training does);
`none` trains on the whole pool (the baseline). Checkpoints are CLIP checkpoints: `percli eval zero-shot` reads them.

The pool scoring is sharded over the processes: per pool batch group, rank r scores batch r of the group and
the selections are gathered in batch order, so every rank holds the same id list. Rounds are resumable:
the current round's ids are saved in each checkpoint.

Examples:
  percli pretrain cit                                     # tiny: embedded pool with 40 % off-task captions
  percli pretrain cit model.name=clip_vit_b16_quickgelu model.checkpoint=metaclip_b16_400m.pt \\
      data.source='/data/yfcc15m/{00000..01499}.tar' curation.classes_file=imagenet_classes.txt
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.utils import gather_object
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.captioned import CLASS_NAMES
from percli.core.data.loader import mix_seed
from percli.curation.cit import MIN_RATIO_YFCC15M, THRESHOLD_YFCC15M, load_class_names, select_batch
from percli.recipes.clip import MAX_LOGIT_SCALE, ClipDataSection, ClipTask, gather_features
from percli.recipes.clip import validate as validate_clip
from percli.recipes.common import TrainedModelSection


@dataclasses.dataclass
class CurationSection:
    mode: Literal["online", "offline", "none"] = "online"
    """online: CiT (re-curate every `every` steps with the text tower being trained); offline: curate once
    with the initial text tower; none: the whole pool (baseline)."""
    every: int = 100
    """Optimizer steps per curation round (official: 100)."""
    classes: list[str] | None = None
    """The task metadata: class names (default for the embedded pool: its ten shape names)."""
    classes_file: str | None = None
    """Or a text file / JSON list of class names."""
    template: str = "{}"
    """How a class name is embedded (official: the name itself)."""
    threshold: float = THRESHOLD_YFCC15M
    """Keep captions whose max cosine similarity to the class names is above this (YFCC15M 0.55, YFCC100M 0.7)."""
    min_ratio: float = MIN_RATIO_YFCC15M
    """Per pool batch: when fewer pass, keep its top int(min_ratio x batch) (YFCC15M 0.003, YFCC100M 0.01)."""
    pool_batch_factor: int = 2
    """Pool batch = this x train.batch_size captions (official: 2)."""


@dataclasses.dataclass
class CitDataSection(ClipDataSection):
    off_task: float = 0.4
    """Embedded pool: share of items with an off-task caption (noise for the curation to skip)."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="clip_vit_b16_quickgelu"))
    vision: Literal["frozen", "head", "trained"] = "head"
    """The image tower: frozen, frozen but its final projection (official `trainable_weight=head-all`), or
    trained too (no pretrained tower at hand, e.g. the tiny preset)."""
    curation: CurationSection = dataclasses.field(default_factory=CurationSection)
    data: CitDataSection = dataclasses.field(default_factory=CitDataSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(
        batch_size=1024, max_steps=5000, mixed_precision="fp16"))
    # official: lr 5e-4, min_lr 1e-5, warmup max_update / 25, weight decay 0.2, 5,000 updates at batch 1,024
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=5e-4, ref_batch_size=1024, min_lr=1e-5, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6,
        warmup_fraction=0.04))


def image_to_text_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                       logit_scale: torch.Tensor) -> torch.Tensor:
    """CiT's loss (`CiTCLIPLossGrad`): image->text cross-entropy over the global batch, the features of all
    processes gathered with their gradient (SLIP's `all_gather_batch_with_grad`, which CiT builds on)."""
    all_images, _ = gather_features(image_features.float(), with_grad=True)
    all_texts, _ = gather_features(text_features.float(), with_grad=True)
    logits = logit_scale * all_images @ all_texts.T
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def pool_texts(dataset: Dataset) -> list[str]:
    """Every caption of the pool, in index order."""
    if hasattr(dataset, "pairs"):  # image-text shards: captions are in the index
        return [caption for _, _, caption in dataset.pairs]
    return dataset.texts()


class CitTask(ClipTask):
    """`pretrain clip`'s task with a frozen image tower, CiT's loss and a curation round per epoch."""

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.cit = cfg.curation
        self.class_names = (cfg.curation.classes or (load_class_names(cfg.curation.classes_file)
                            if cfg.curation.classes_file else list(CLASS_NAMES)))

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.cfg.vision == "trained":
            return model
        model.visual.requires_grad_(False)
        if self.cfg.vision == "head":
            head = getattr(model.visual, "proj", None)
            if not isinstance(head, nn.Parameter):
                raise ConfigError(f"vision=head: {self.cfg.model.name}'s image tower has no final projection "
                                  "`proj`; use vision=frozen")
            head.requires_grad_(True)
        return model

    def model_meta(self) -> dict[str, Any]:
        return {**super().model_meta(), "cit": {"classes": self.class_names, "mode": self.cit.mode}}

    def _dataset(self, source: str, split: str, train: bool) -> Dataset:
        dataset = super()._dataset(source, split, train)
        if source == "embedded" and split == "train":  # the pool: shapes with off-task captions mixed in
            dataset.off_task = self.cfg.data.off_task
        return dataset

    def train_dataset(self) -> Dataset:
        dataset = super().train_dataset()
        self.texts = pool_texts(dataset)
        self.pool = dataset
        if self.cit.mode != "none":  # an epoch is one curation round
            self.epoch_len = self.cit.every * self.cfg.train.batch_size * self.cfg.train.grad_accum_steps * \
                PartialState().num_processes
        return dataset

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        clip = getattr(model, "module", model)
        with torch.no_grad():
            clip.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        image_features, text_features, logit_scale = model(batch["image"], batch["text"])[:3]
        return {"loss": image_to_text_loss(image_features, text_features, logit_scale),
                "logit_scale": logit_scale.detach()}

    # ------------------------------------------------------------------ curation
    def curate(self, epoch: int, model: nn.Module, previous: list[int] | None = None
               ) -> tuple[list[int], dict[str, float]]:
        """This round's pool ids. Offline mode curates once and keeps that set (from a checkpoint when resumed)."""
        if self.cit.mode == "none":
            ids, stats = list(range(len(self.texts))), {"ratio": 1.0}
        elif self.cit.mode == "offline" and previous is not None:
            ids, stats = previous, {"reused": 1.0}
        else:
            ids, ratio = self.select(model, epoch)
            stats = {"ratio": ratio}
        if hasattr(self.pool, "is_off_task"):  # the embedded pool knows its noise: how clean is the round?
            stats["on_task"] = float(np.mean([not self.pool.is_off_task(i) for i in ids]))
        return ids, stats

    @torch.no_grad()
    def _embed(self, model: nn.Module, texts: Sequence[str]) -> torch.Tensor:
        device = next(model.parameters()).device
        return model.encode_text(self.tokenizer(list(texts)).to(device), normalize=True).float()

    def select(self, model: nn.Module, epoch: int) -> tuple[list[int], float]:
        """One round's ids: pool batches in a fresh order each pass, scored rank by rank, gathered in order."""
        labels = self._embed(model, [self.cit.template.format(name) for name in self.class_names])
        size = self.cit.pool_batch_factor * self.cfg.train.batch_size
        state = PartialState()
        world, rank = state.num_processes, state.process_index
        wanted = self.epoch_len
        ids: list[int] = []
        seen = kept = 0
        for passes in range(1000):
            seed = mix_seed(self.cfg.train.seed, epoch, passes)
            order = torch.randperm(len(self.texts), generator=torch.Generator().manual_seed(seed)).tolist()
            batches = [order[i:i + size] for i in range(0, len(order), size)]
            for group in range(0, len(batches), world):
                mine = batches[group + rank] if group + rank < len(batches) else []
                picked = self._pick(model, labels, mine)
                for part in gather_object([picked]) if world > 1 else [picked]:
                    ids += part
                    kept += len(part)
                seen += sum(len(b) for b in batches[group:group + world])
                if len(ids) >= wanted:
                    return ids[:wanted], kept / seen
            if passes == 0 and not ids:
                raise ValueError(f"curation kept no caption of the {len(self.texts)} in the pool (threshold "
                                 f"{self.cit.threshold}, min_ratio {self.cit.min_ratio}); lower curation.threshold "
                                 "or raise curation.min_ratio")
        raise RuntimeError("curation did not collect a round's ids in 1000 passes over the pool")

    def _pick(self, model: nn.Module, labels: torch.Tensor, batch: list[int]) -> list[int]:
        if not batch:
            return []
        scores = (self._embed(model, [self.texts[i] for i in batch]) @ labels.T).max(dim=1).values
        keep, _ = select_batch(scores.cpu().numpy(), self.cit.threshold, self.cit.min_ratio)
        return [batch[i] for i in np.flatnonzero(keep)]


def validate(cfg: Config) -> None:
    validate_clip(cfg)
    c = cfg.curation
    if c.every < 1 or c.pool_batch_factor < 1 or not 0 <= c.min_ratio <= 1 or not -1 <= c.threshold <= 1:
        raise ConfigError("curation: every and pool_batch_factor >= 1, min_ratio in [0, 1], threshold in [-1, 1]")
    if "{}" not in c.template:
        raise ConfigError(f"curation.template={c.template!r}: it needs a {{}} for the class name")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(CitTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
