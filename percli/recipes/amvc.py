"""AMVC unsupervised domain adaptation for video classification (Zhu, Liang, Huang, Hauptmann, arXiv
2403.16242): `percli finetune amvc`. Labelled source clips and unlabelled target clips train one video ViT
(`percli.models.amvc`): source cross-entropy, adversarially masked domain alignment, masked consistency with an
EMA teacher's confident pseudo-labels. Evaluated by top-1 on labelled target clips (student and teacher).

Data: ``data.source`` (labelled source clips: a video folder with class sub-folders or a JSONL manifest),
``target`` (target clips; labels, if any, are ignored) and ``data.val_source`` (labelled target clips for the
evaluation). ``embedded``: the moving-shape clips, source in the ``studio`` style, target and its held-out split
in the ``film`` style (`percli.core.data.embedded_motion`). Each source clip is paired with a target clip (a
fixed seeded pairing); unreadable clips of either domain are counted and skipped.

Adaptation starts from a model that already classifies the source: ``model.checkpoint`` (a source-trained run:
`percli finetune diffmae`, or this command's source-only baseline), or ``loss.warmup_steps`` of source-only
training first (the tiny preset: 600 of 1000 steps). From random weights the adversarial alignment stalls the
source classifier (measured: source loss still at ln 8 after 240 steps). Source-only baseline: ``loss.domain=0
loss.consistency=0`` trains the same model on the source alone for the same steps.

Recipe: the paper's settings were not available here (no code release found); the defaults are percli's:
AdamW lr 1e-4 at batch 32 with layer decay 0.75, half of the tokens masked, pseudo-label threshold 0.8, EMA
momentum 0.999 -> 1 (cosine), alignment weight ramped in as DANN (``2 / (1 + exp(-10 p)) - 1``).

Examples:
  percli finetune amvc                                             # tiny preset: embedded studio -> film
  percli finetune amvc loss.domain=0 loss.consistency=0            # the source-only baseline
  percli finetune amvc --preset epic model.checkpoint=runs/finetune-diffmae-X \\
      data.source=/data/epic/D1_train.jsonl target=/data/epic/D2_train.jsonl data.val_source=/data/epic/D2_test.jsonl
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn
from accelerate import PartialState
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.embedded_motion import EmbeddedMotionClips
from percli.core.data.loader import ResumableSampler
from percli.core.data.transforms import video_transform
from percli.models import create_model, load_initial_weights
from percli.models.amvc import AMVC
from percli.recipes.classification import classification_metrics, classification_sums
from percli.recipes.common import DataSection, TrainedModelSection, make_dataset, normalisation
from percli.recipes.dinov2 import cosine_momentum, ema_update


@dataclasses.dataclass
class LossSection:
    domain: float = 1.0
    """Weight of the adversarial domain alignment (0 with consistency=0: source only)."""
    consistency: float = 1.0
    """Weight of the masked consistency loss."""
    ema_momentum: float = 0.999
    """Teacher EMA momentum at the start (cosine to 1)."""
    warmup_steps: int = 0
    """Source-only steps before the target losses start (0 when model.checkpoint is already trained on the source,
    as adaptation usually starts; from random weights the adversarial game stalls the source classifier)."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="amvc_vit_base_patch16_video"))
    data: DataSection = dataclasses.field(default_factory=DataSection)
    target: str = "embedded"
    """Target-domain training clips (unlabelled); embedded: the film-style clips."""
    loss: LossSection = dataclasses.field(default_factory=LossSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(epochs=30, batch_size=32))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=1e-4, ref_batch_size=32, weight_decay=0.05, layer_decay=0.75, warmup_fraction=0.1))


class Paired(Dataset):
    """Source item ``i`` with target clip ``order[i]``: a fixed random pairing (seeded), each target clip used
    about equally often."""

    def __init__(self, source: Dataset, target: Dataset, seed: int = 0):
        self.source, self.target = source, target
        self.classes = getattr(source, "classes", None)
        self.bad_records = getattr(source, "bad_records", None)
        g = torch.Generator().manual_seed(seed)
        n = len(target)  # type: ignore[arg-type]
        self.order = torch.cat([torch.randperm(n, generator=g) for _ in range(-(-len(self) // n))])[:len(self)]

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.source[index]
        return {"video": item["video"], "label": item["label"], "target": self.target[int(self.order[index])]["video"]}


class AMVCTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.total_steps = cfg.train.max_steps

    @property
    def adapting(self) -> bool:
        return self.cfg.loss.domain > 0 or self.cfg.loss.consistency > 0

    def build_model(self) -> nn.Module:
        self.classes = self._clips(self.cfg.data.source, "train", train=True).classes
        self.kwargs = {"num_classes": len(self.classes), **self.cfg.model.kwargs}
        model = create_model(self.cfg.model.name, **self.kwargs)
        if not isinstance(model, AMVC):
            raise ConfigError(f"model.name={self.cfg.model.name!r} is not an AMVC model; use "
                              "amvc_vit_base_patch16_video (model.kwargs sets the ViT's size)")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        if not self.adapting:  # source only: the adversaries are never used, so they are frozen (DDP-safe)
            for p in self._adversaries(model):
                p.requires_grad_(False)
        self.input_size = tuple(model.config["input_size"])
        return model

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "amvc", "classes": self.classes}

    def _clips(self, source: str, split: str, train: bool, style: str = "studio") -> Dataset:
        d = self.cfg.data
        size = getattr(self, "input_size", (d.num_frames, 224, 224))[-1]
        transform = video_transform(size, *normalisation(d, True), train=train)
        if source == "embedded":
            count = d.embedded_size if split != "val" else max(d.embedded_size // 4, 1)
            return EmbeddedMotionClips("val" if split == "val" else "train", count, d.num_frames, size,
                                       transform=transform, style=style)
        labelled = {"require_labels": True} if split != "target" else {}
        return make_dataset(d, source, "train" if train else "val", train, transform, True, size, **labelled)

    def train_dataset(self) -> Dataset:
        source = self._clips(self.cfg.data.source, "train", train=True)
        target = self._clips(self.cfg.target, "target", train=True, style="film")
        dataset = Paired(source, target, self.cfg.train.seed)
        world = PartialState().num_processes
        per_rank = ResumableSampler(len(dataset), world_size=world).per_rank()
        self.total_steps = engine.plan_run(per_rank, world, self.cfg.train, self.cfg.optim).max_steps
        return dataset

    def eval_dataset(self) -> Dataset:
        source = self.cfg.data.val_source or self.cfg.data.source
        return self._clips(source, "val", train=False, style="film" if source == "embedded" else "studio")

    @staticmethod
    def _adversaries(meta: AMVC) -> list[nn.Parameter]:
        return [*meta.mask_generator.parameters(), *meta.discriminator.parameters(), meta.mask_token]

    def _step_teacher(self, meta: AMVC) -> None:
        steps_done = int(meta.micro_batches) // self.cfg.train.grad_accum_steps
        while int(meta.ema_steps) < steps_done:
            ema_update(meta.teacher, meta.student,
                       cosine_momentum(int(meta.ema_steps), self.total_steps, self.cfg.loss.ema_momentum))
            meta.ema_steps += 1

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        meta = getattr(model, "module", model)
        self._step_teacher(meta)  # source only too: its teacher is the EMA an adaptation run starts from
        meta.micro_batches += 1
        step, warmup = int(meta.ema_steps), self.cfg.loss.warmup_steps
        if not self.adapting or step < warmup:
            loss = nn.functional.cross_entropy(meta.student(batch["video"]).float(), batch["label"])
            if self.adapting:  # zero gradients for the idle adversaries: DDP sees every parameter used
                loss = loss + 0.0 * sum(p.sum() for p in self._adversaries(meta))
            return {"loss": loss}
        progress = min((step - warmup) / max(self.total_steps - warmup, 1), 1.0)
        ramp = 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0
        out = model(batch["video"], batch["label"], batch["target"])
        loss = out["source"] + ramp * self.cfg.loss.domain * out["domain"] + self.cfg.loss.consistency * \
            out["consistency"]
        return {"loss": loss, **{k: v.detach() for k, v in out.items()}}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        meta = getattr(model, "module", model)
        sums = classification_sums(meta.student(batch["video"]), batch["label"])
        teacher = classification_sums(meta.teacher(batch["video"]), batch["label"])
        return {**sums, **{f"teacher_{k}": v for k, v in teacher.items()}}

    def eval_reduce(self, sums: dict[str, float]) -> dict[str, float]:
        teacher = {k[len("teacher_"):]: v for k, v in sums.items() if k.startswith("teacher_")}
        student = {k: v for k, v in sums.items() if not k.startswith("teacher_")}
        return {**classification_metrics(student),
                **{f"teacher_{k}": v for k, v in classification_metrics(teacher).items()}}


def validate(cfg: Config) -> None:
    if cfg.loss.domain < 0 or cfg.loss.consistency < 0:
        raise ConfigError("loss.domain and loss.consistency must be >= 0 (both 0: the source-only baseline)")
    if cfg.data.source != "embedded" and not cfg.target:
        raise ConfigError("target is not set: give the target-domain clips (target=FOLDER_OR_MANIFEST)")
    if cfg.target == "embedded" and cfg.data.source != "embedded":
        raise ConfigError("target=embedded pairs only with data.source=embedded; give target=FOLDER_OR_MANIFEST")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(AMVCTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
