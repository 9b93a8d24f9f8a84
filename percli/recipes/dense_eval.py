"""Linear semantic segmentation (mIoU) and linear depth (RMSE, AbsRel) on a frozen DINOv2's patch tokens.

DINOv2's dense "linear" evaluations: the backbone is frozen; its normalised patch tokens (of the last
block, or with `eval.n_last_blocks=4` of the last four: the paper's "+ms"/linear4 features), each
concatenated with its image's class token, form a feature map [B, D, H/p, W/p]; a BatchNorm and a 1x1
convolution (the release's `BNHead`) map it to class logits or depth-bin logits, bilinearly upsampled to
the image size. Segmentation trains with cross-entropy (the ignore index skipped); depth classifies
into `eval.depth_bins` bins spread uniformly over [min_depth, max_depth] whose scores are normalised
linearly (ReLU + 0.1, divided by their sum) and read out as the expected bin centre, trained with the
scale-invariant log loss (the release adds a gradient loss at weight 0.5: not done here). The heads
train on the engine for `train.max_steps`, then val gives mIoU over the classes that occur, per-class
IoU and pixel accuracy, and per image RMSE (m), AbsRel and the delta < 1.25 share, averaged.

The backbone: `model.checkpoint` is a `percli pretrain dinov2` run / checkpoint dir (its teacher, with
its own architecture and normalisation), or released weights (a .pth / hf-hub: spec, with model.name and
model.kwargs naming the architecture); `model.checkpoint=random` evaluates `model.name` at random init,
the baseline a trained backbone must beat. The checkpoints this job writes hold the heads alone.

Data: `embedded` (generated scenes with exact masks and depths, `percli.core.data.dense_scenes`), or a
dense folder layout / JSONL manifest (`percli.core.data.dense`): images with masks (8-bit class ids,
255 = ignore) and/or depths (16-bit PNG, millimetres by default, 0 = invalid). Everything is resized to
`data.image_size` (a multiple of the patch size); the metrics are computed at that size.

Examples:
  percli eval dense model.checkpoint=runs/pretrain-dinov2-X                   # tiny preset, embedded scenes
  percli eval dense model.checkpoint=random                                    # the same at random init
  percli eval dense --preset none model.name=dinov2_vits14 model.checkpoint=dinov2_vits14_pretrain.pth \\
      data.source=/data/ade20k_dense data.num_classes=150 data.image_size=518 eval.task=segmentation
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from torch.utils.data import Dataset

from percli.core import checkpoint as ckpt
from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.dense import DEPTH_SCALE, DenseDataset, DenseTransform
from percli.core.data.dense_scenes import CLASSES as SCENE_CLASSES
from percli.core.data.dense_scenes import MAX_DEPTH as SCENE_MAX_DEPTH
from percli.core.data.dense_scenes import EmbeddedScenes
from percli.core.data.loader import seed_everything
from percli.core.dense_metrics import (
    IGNORE_INDEX,
    depth_errors,
    scale_invariant_log_loss,
    segmentation_areas,
    segmentation_scores,
)
from percli.core.rundir import write_json_atomic
from percli.models.hub import resolve_weights
from percli.recipes.common import ModelSection
from percli.recipes.common import validate as validate_paths
from percli.recipes.knn_eval import build_encoder

RANDOM_INIT = ("random", "none")


@dataclasses.dataclass
class DenseDataSection:
    source: str = "embedded"
    """`embedded` (generated scenes), a dense folder layout (images/ + masks/ and/or depths/, optionally under
    train/ and val/) or a .jsonl manifest of {"image", "mask", "depth"} paths."""
    val_source: str | None = None
    """Evaluation data; unset: the val/ split of `source` (the embedded val scenes, or the same folder)."""
    embedded_size: int = 400
    """Embedded training scenes (the val split has a quarter of that)."""
    image_size: int = 32
    """Side every image, mask and depth is resized to (a multiple of the backbone's patch size)."""
    num_classes: int | None = None
    """Segmentation classes (mask ids 0..N-1); the embedded scenes have 5; a folder or manifest must set it."""
    class_names: list[str] | None = None
    """Names for the per-class IoU in the summary (embedded: sky, ground, disc, square, triangle)."""
    ignore_index: int = IGNORE_INDEX
    depth_scale: float = DEPTH_SCALE
    """Depth PNG units per metre (1000: millimetres)."""
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    """Normalisation; null = the checkpoint's (else the model's: ImageNet's)."""


@dataclasses.dataclass
class DenseEvalSection:
    task: Literal["segmentation", "depth", "both"] = "both"
    n_last_blocks: int = 1
    """Patch tokens of the last n blocks, concatenated (DINOv2: 1 = "linear", 4 = "+ms" / linear4)."""
    use_cls_token: bool = True
    """Concatenate the class token to every patch token (as the release's linear heads do)."""
    depth_bins: int = 256
    min_depth: float = 0.001
    max_depth: float | None = None
    """Deepest bin in metres; null = 10 (NYU's range, and the embedded scenes' farthest ground)."""


@dataclasses.dataclass
class Config:
    model: ModelSection = dataclasses.field(default_factory=lambda: ModelSection(name="dinov2_vits14"))
    """model.checkpoint: a percli DINOv2 run / checkpoint dir, released weights, or `random` (the baseline). A
    percli checkpoint brings its own architecture (model.name / model.kwargs then do not apply)."""
    data: DenseDataSection = dataclasses.field(default_factory=DenseDataSection)
    eval: DenseEvalSection = dataclasses.field(default_factory=DenseEvalSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(max_steps=1000, batch_size=16))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=1e-3, ref_batch_size=16, weight_decay=1e-4, warmup_fraction=0.05))


def validate(cfg: Config) -> None:
    validate_paths(cfg)
    if cfg.eval.n_last_blocks < 1 or cfg.eval.depth_bins < 2:
        raise ConfigError(f"eval.n_last_blocks={cfg.eval.n_last_blocks}, eval.depth_bins={cfg.eval.depth_bins}: give "
                          "n_last_blocks >= 1 and depth_bins >= 2")


def load_backbone(model_cfg: ModelSection) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen backbone (eval mode) and its checkpoint metadata; `not set` when no checkpoint is named."""
    if not model_cfg.checkpoint:
        raise ConfigError("model.checkpoint is not set: give a percli DINOv2 run / checkpoint dir or released "
                          "weights, or model.checkpoint=random for the random-init baseline")
    if model_cfg.checkpoint.lower() in RANDOM_INIT:
        model, meta = build_encoder(dataclasses.replace(model_cfg, checkpoint=None))
    else:
        path = resolve_weights(model_cfg.checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"model.checkpoint={model_cfg.checkpoint}: no such file or directory")
        if path.is_dir() or path.suffix == ".safetensors":  # a percli run: its own architecture
            path = ckpt.run_weights(path)
            own = ckpt.read_meta(path).get("kwargs") or {}
            differ = {k: v for k, v in model_cfg.kwargs.items() if own.get(k, v) != v}
            if differ:
                Console(stderr=True).print(f"model.kwargs {differ} not applied: {path} carries its own architecture")
            model_cfg = dataclasses.replace(model_cfg, name="", kwargs={})
        model, meta = build_encoder(dataclasses.replace(model_cfg, checkpoint=str(path)))
    if not hasattr(model, "get_intermediate_layers"):
        raise ValueError(f"{meta['name']} gives no patch tokens through get_intermediate_layers; the dense "
                         "evaluation takes DINOv2 backbones (dinov2_*)")
    return model.requires_grad_(False).eval(), meta


class LinearHead(nn.Module):
    """BatchNorm + 1x1 convolution over a feature map (the release's BNHead without its input transforms)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


class DenseProbe(nn.Module):
    """Frozen backbone + linear segmentation and/or depth heads; `forward` gives full-resolution outputs."""

    def __init__(self, backbone: nn.Module, num_classes: int | None, depth_bins: int | None, n_last_blocks: int,
                 use_cls_token: bool, min_depth: float, max_depth: float):
        super().__init__()
        # Not a submodule: the frozen weights stay out of the optimizer, the state dict and every checkpoint
        # (a ViT-g would otherwise be written at each save); `features` moves it to the input's device.
        object.__setattr__(self, "backbone", backbone)
        self.n_last_blocks, self.use_cls_token = n_last_blocks, use_cls_token
        dim = backbone.embed_dim * n_last_blocks * (2 if use_cls_token else 1)
        self.seg_head = LinearHead(dim, num_classes) if num_classes else None
        self.depth_head = LinearHead(dim, depth_bins) if depth_bins else None
        if depth_bins:
            self.register_buffer("bin_centres", torch.linspace(min_depth, max_depth, depth_bins), persistent=False)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen patch features [B, D', H/p, W/p] (last n blocks, each with the class token beside it)."""
        backbone = self.backbone
        if next(backbone.parameters()).device != x.device:
            backbone.to(x.device)
        parts = []
        for patches, cls in backbone.get_intermediate_layers(x, self.n_last_blocks, reshape=True,
                                                             return_class_token=True):
            parts.append(patches)  # [B, C, h, w]
            if self.use_cls_token:
                parts.append(cls[:, :, None, None].expand_as(patches))
        return torch.cat(parts, dim=1).float()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(x)
        size = x.shape[-2:]
        out = {}
        if self.seg_head is not None:  # [B, classes, h, w] -> [B, classes, H, W]
            out["seg_logits"] = F.interpolate(self.seg_head(feats), size=size, mode="bilinear", align_corners=False)
        if self.depth_head is not None:
            logits = F.interpolate(self.depth_head(feats), size=size, mode="bilinear", align_corners=False)
            weights = torch.relu(logits) + 0.1  # the release's "linear" normalisation of the bin scores
            weights = weights / weights.sum(dim=1, keepdim=True)
            out["depth"] = torch.einsum("bkhw,k->bhw", weights, self.bin_centres)  # expected bin centre [B, H, W]
        return out


class DenseEvalTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        task = cfg.eval.task
        self.segment, self.depth = task in ("segmentation", "both"), task in ("depth", "both")
        seed_everything(cfg.train.seed)  # a random-init baseline is the same backbone on every run
        self.backbone, self.meta = load_backbone(cfg.model)
        patch = self.backbone.patch_size
        if cfg.data.image_size % patch:
            raise ConfigError(f"data.image_size={cfg.data.image_size} is not a multiple of the backbone's patch size "
                              f"{patch}; use e.g. {max(cfg.data.image_size // patch, 1) * patch}")
        embedded = cfg.data.source == "embedded"
        self.num_classes = len(SCENE_CLASSES) if embedded and cfg.data.num_classes is None else cfg.data.num_classes
        if self.segment and not self.num_classes:
            raise ConfigError("data.num_classes is not set: give the number of mask classes (ids 0..N-1), or "
                              "eval.task=depth")
        names = cfg.data.class_names or (list(SCENE_CLASSES) if embedded else None)
        if names is not None and len(names) != self.num_classes:
            raise ConfigError(f"data.class_names has {len(names)} names for {self.num_classes} classes")
        self.class_names = names or [str(c) for c in range(self.num_classes or 0)]
        self.max_depth = cfg.eval.max_depth or SCENE_MAX_DEPTH
        pre = {**self.backbone.preprocess, **{k: self.meta[k] for k in ("mean", "std") if k in self.meta}}
        self.mean = tuple(cfg.data.mean or pre["mean"])
        self.std = tuple(cfg.data.std or pre["std"])

    def build_model(self) -> nn.Module:
        e = self.cfg.eval
        return DenseProbe(self.backbone, self.num_classes if self.segment else None,
                          e.depth_bins if self.depth else None, e.n_last_blocks, e.use_cls_token, e.min_depth,
                          self.max_depth)

    def model_meta(self) -> dict[str, Any]:
        e = self.cfg.eval
        return {"task": "dense-probe", "backbone": self.meta["name"], "backbone_checkpoint": self.cfg.model.checkpoint,
                "num_classes": self.num_classes, "classes": self.class_names, "depth_bins": e.depth_bins,
                "min_depth": e.min_depth, "max_depth": self.max_depth, "n_last_blocks": e.n_last_blocks,
                "use_cls_token": e.use_cls_token, "image_size": self.cfg.data.image_size,
                "mean": list(self.mean), "std": list(self.std)}

    def _dataset(self, split: str) -> Dataset:
        d = self.cfg.data
        transform = DenseTransform(d.image_size, self.mean, self.std, train=split == "train")
        source = d.source if split == "train" else (d.val_source or d.source)
        if source == "embedded":
            count = d.embedded_size if split == "train" else max(d.embedded_size // 4, 1)
            return EmbeddedScenes(split, count, d.image_size, transform, seed=self.cfg.train.seed)
        needs = (["mask"] if self.segment else []) + (["depth"] if self.depth else [])
        return DenseDataset(source, split, needs, transform, self.num_classes, d.ignore_index, d.depth_scale)

    def train_dataset(self) -> Dataset:
        return self._dataset("train")

    def eval_dataset(self) -> Dataset:
        return self._dataset("val")

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = model(batch["image"])
        losses = {}
        if self.segment:
            losses["loss_seg"] = F.cross_entropy(out["seg_logits"].float(), batch["mask"],
                                                 ignore_index=self.cfg.data.ignore_index)
        if self.depth:
            target = batch["depth"]
            losses["loss_depth"] = scale_invariant_log_loss(out["depth"].float(), target, target > 0)
        return {"loss": sum(losses.values()), **losses}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        out = model(batch["image"])
        sums: dict[str, Any] = {"images": float(batch["image"].shape[0])}
        if self.segment:
            areas = segmentation_areas(out["seg_logits"].argmax(dim=1), batch["mask"], self.num_classes,
                                       self.cfg.data.ignore_index)
            sums.update({k: v[None] for k, v in zip(("seg_inter", "seg_union", "seg_target"), areas)})  # [1, C]
        if self.depth:
            for pred, target in zip(out["depth"].float(), batch["depth"]):
                errors = depth_errors(pred, target)
                if errors is not None:
                    sums["depth_images"] = sums.get("depth_images", 0.0) + 1.0
                    for k, v in errors.items():
                        sums[f"depth_{k}_sum"] = sums.get(f"depth_{k}_sum", 0.0) + v
        return sums

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        metrics: dict[str, float] = {"images": totals.get("images", 0.0)}
        if self.segment and "seg_inter" in totals:
            scores = segmentation_scores(*(totals[k].sum(dim=0) for k in ("seg_inter", "seg_union", "seg_target")))
            metrics.update(miou=scores["miou"], pixel_acc=scores["pixel_acc"])
            metrics.update({f"iou/{name}": v for name, v in zip(self.class_names, scores["iou"])})
        if self.depth:
            n = totals.get("depth_images", 0.0)
            for k in ("rmse", "abs_rel", "delta1"):
                metrics[k] = totals.get(f"depth_{k}_sum", 0.0) / n if n else None
        return metrics


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    task = DenseEvalTask(cfg)
    trained = engine.train(task, cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator)
    history = trained.get("metrics", {})
    metrics = {k.removeprefix("eval/"): v for k, v in history.items() if k.startswith("eval/")}
    val_images = int(metrics.pop("images", 0))
    metrics.update({f"train_{k}": v for k, v in history.items() if k.startswith("loss")})
    summary = {**trained, "model": task.meta["name"], "checkpoint": cfg.model.checkpoint,
               "head_checkpoint": trained.get("checkpoint"), "task": cfg.eval.task, "data": cfg.data.source,
               "val_images": val_images, "metrics": metrics}
    if ctx.accelerator.is_main_process:
        write_json_atomic(Path(ctx.run_dir) / "summary.json", summary)
    return summary
