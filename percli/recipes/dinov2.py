"""DINOv2 self-distillation pretraining (Oquab et al., 2023): a student (ViT + DINO head) learns to
match an EMA teacher on multi-crop views (DINO [CLS] loss), on masked patches (iBOT loss), with a
KoLeo spread regulariser on its [CLS] features.

Defaults follow the official `ssl_default_config.yaml` (facebookresearch/dinov2): 2 global crops
(scale 0.32-1) + 8 local (0.05-0.32), 65,536 prototypes, shared DINO/iBOT head, iBOT masks on half
the images at ratios 0.1-0.5 (block masking), teacher temperature 0.04 -> 0.07 over the first 30%,
EMA momentum 0.992 -> 1 (cosine), loss weights DINO 1, iBOT 1, KoLeo 0.1, AdamW lr 4e-3 at batch
1024 scaled by sqrt(batch / 1024), weight decay 0.04 -> 0.4 (cosine), warmup 10%, grad clip 3, layer
decay 0.9, patch-embed LR x0.2, the prototype layer frozen in epoch 1, drop-path 0.3, LayerScale 1e-5.
Weight decay spares biases, norms and LayerScale only (position embeddings and tokens are decayed).

Distillation (paper sec. 5, "Distillation of smaller models"; `distill: true`, presets `distill`,
`distill-tiny`): the same loop, except that a larger FROZEN model (`model.teacher`: a `percli pretrain
dinov2` run, whose EMA teacher backbone and DINO/iBOT heads give the targets) replaces the EMA teacher as
the target network, the student trains without masking and stochastic depth, and the iBOT loss covers
every patch of the two global crops. The EMA of the student is still kept (the checkpoints' ``teacher.*``,
the "spare EMA" the paper uses as the final model): it is what the summary's k-NN, `percli eval knn` and
`percli finetune dinov2` read. The frozen teacher is not saved; a resumed run loads it from
`model.teacher` again. The official release has no distillation code or config (its MODEL_CARD says only
"the standard DINOv2 pretraining procedure, except the teacher is a pretrained ViT-g, frozen"), so this
follows the paper. Released backbones (`dinov2_vitg14_pretrain.pth`) carry no heads and are refused as
teachers.

High-resolution adaptation (paper sec. 4, the last 10k iterations at 518 px; preset `highres`,
`highres-tiny`): `model.init` continues a previous run in a new one (student, EMA teacher, heads and loss
centers; the schedules start afresh), with the architecture of that run at `img_size =
crops.global_size`, the position tables resampled once with the official bicubic interpolation.

Examples:
  percli pretrain dinov2                                      # tiny preset, embedded data, CPU
  percli pretrain dinov2 --preset none data.source=/data/imagenet/train train.batch_size=64
  percli pretrain dinov2 --preset distill-tiny model.teacher=runs/pretrain-dinov2-X
  percli pretrain dinov2 --preset highres-tiny model.init=runs/pretrain-dinov2-X
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from accelerate import Accelerator, PartialState
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2

from percli.core import engine
from percli.core.checkpoint import CheckpointError, read_meta, read_weights, run_weights
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data import IMAGENET_MEAN, IMAGENET_STD, finetune_transform
from percli.core.data.loader import ResumableSampler
from percli.core.knn import knn_classify
from percli.models import create_model, load_initial_weights
from percli.models.dino_head import DINOHead
from percli.models.dinov2 import resample_pos_table
from percli.recipes.common import DataSection, TrainedModelSection, make_dataset
from percli.recipes.common import validate as validate_model_and_paths
from percli.recipes.dinov2_losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from percli.recipes.linear_probe import DEFAULT_LRS, sweep_linear_probe


@dataclasses.dataclass
class CropsSection:
    global_size: int = 224
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_number: int = 8
    local_size: int = 98
    """Official 96 px; 98 = 7 x 14 for the /14 models."""
    local_scale: tuple[float, float] = (0.05, 0.32)


@dataclasses.dataclass
class HeadSection:
    n_prototypes: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    ibot_separate_head: bool = False
    """Official default shares the DINO head; the ViT-L/g configs use a separate iBOT head."""


@dataclasses.dataclass
class LossSection:
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    centering: str = "centering"
    """`centering` (EMA center, softmax) or `sinkhorn_knopp` (the ViT-L/g configs)."""
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_fraction: float = 0.3
    """Official: 30 of 100 epochs, linear from warmup_teacher_temp to teacher_temp."""
    center_momentum: float = 0.9
    momentum_teacher: float = 0.992
    """EMA momentum at step 0; it follows a cosine to 1 at the last step."""
    mask_sample_probability: float = 0.5
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5)


@dataclasses.dataclass
class DINOv2ModelSection(TrainedModelSection):
    teacher: str | None = None
    """Distillation (`distill: true`): the frozen teacher, a `percli pretrain dinov2` run dir, checkpoint dir
    or .safetensors; its architecture comes from the checkpoint, its EMA teacher's backbone and heads give
    the targets."""
    init: str | None = None
    """Continue this `percli pretrain dinov2` run (student, EMA teacher, heads, centers) in a new run, e.g. the
    high-resolution phase: its architecture (model.kwargs override its constructor arguments, model.name is
    not used) at img_size = crops.global_size, position tables resampled."""


@dataclasses.dataclass
class Config:
    model: DINOv2ModelSection = dataclasses.field(default_factory=lambda: DINOv2ModelSection(
        name="dinov2_vits14", kwargs={"img_size": 224, "drop_path_rate": 0.3, "drop_path_uniform": True,
                                      "init_values": 1.0e-5}))
    data: DataSection = dataclasses.field(default_factory=DataSection)
    crops: CropsSection = dataclasses.field(default_factory=CropsSection)
    head: HeadSection = dataclasses.field(default_factory=HeadSection)
    loss: LossSection = dataclasses.field(default_factory=LossSection)
    distill: bool = False
    """Distil the frozen `model.teacher` into this model (paper sec. 5): no masking, no drop-path, iBOT on
    every patch of the global crops; the student's EMA is the final model."""
    freeze_last_layer_epochs: float = 1.0
    """Official: the prototype (last) layer of the heads gets no gradient during the first epoch."""
    knn_k: int = 20
    """k-NN evaluation of the final teacher (and of a random-init backbone) on the held-out split."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64, grad_clip=3.0))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=4e-3, ref_batch_size=1024, lr_scaling="sqrt", min_lr=1e-6, weight_decay=0.04, weight_decay_end=0.4,
        decay_embeddings=True, betas=(0.9, 0.999), warmup_fraction=0.1, layer_decay=0.9, patch_embed_lr_mult=0.2))


# --------------------------------------------------------------------------- schedules

def cosine_momentum(step: int, total: int, base: float) -> float:
    """Teacher EMA momentum: ``1 - (1 - base) * (1 + cos(pi * step / total)) / 2`` (base -> 1)."""
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0))) / 2.0


def teacher_temperature(step: int, total: int, loss: LossSection) -> float:
    warmup = loss.teacher_temp_warmup_fraction * total
    if step >= warmup:
        return loss.teacher_temp
    return loss.warmup_teacher_temp + (loss.teacher_temp - loss.warmup_teacher_temp) * step / warmup


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- m * teacher + (1 - m) * student`` for every parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


# --------------------------------------------------------------------------- data

class MultiCrop:
    """The official augmentation: 2 global crops (blur p=1 / blur p=0.1 + solarize p=0.2) and
    N local crops (blur p=0.5), all with flip, colour jitter (p=0.8) and grayscale (p=0.2)."""

    def __init__(self, crops: CropsSection, mean: tuple[float, ...], std: tuple[float, ...]):
        def view(size: int, scale: tuple[float, float], blur: float, solarize: float = 0.0) -> v2.Compose:
            steps = [v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC),
                     v2.RandomHorizontalFlip(),
                     v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                     v2.RandomGrayscale(p=0.2)]
            if blur:
                steps.append(v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=blur))
            if solarize:
                steps.append(v2.RandomSolarize(threshold=128, p=solarize))
            return v2.Compose([*steps, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

        self.global1 = view(crops.global_size, crops.global_scale, 1.0)
        self.global2 = view(crops.global_size, crops.global_scale, 0.1, 0.2)
        self.local = view(crops.local_size, crops.local_scale, 0.5)
        self.local_number = crops.local_number

    def __call__(self, img: Any) -> dict[str, torch.Tensor]:
        out = {"global_crops": torch.stack([self.global1(img), self.global2(img)])}
        if self.local_number:
            out["local_crops"] = torch.stack([self.local(img) for _ in range(self.local_number)])
        return out


def block_mask(rows: int, cols: int, num_masked: int, max_block: int, min_block: int = 4) -> torch.Tensor:
    """BEiT block masking as DINOv2 uses it: random rectangles (area >= `min_block`, aspect ratio
    log-uniform in [0.3, 1/0.3]) are added until about `num_masked` patches are masked. [rows, cols] bool."""
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    log_ratio = (math.log(0.3), math.log(1 / 0.3))
    while int(mask.sum()) < num_masked:
        budget = min(num_masked - int(mask.sum()), max_block)
        added = 0
        for _ in range(10):
            area = min_block + (budget - min_block) * torch.rand(()).item() if budget > min_block else budget
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(()).item())
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < h < rows and 0 < w < cols:
                top = int(torch.randint(0, rows - h + 1, ()))
                left = int(torch.randint(0, cols - w + 1, ()))
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= budget:
                    mask[top:top + h, left:left + w] = True
                    added = new
                    break
        if added == 0:
            break
    return mask


def sample_masks(batch: int, rows: int, cols: int, loss: LossSection) -> torch.Tensor:
    """iBOT masks for `batch` global crops: a `mask_sample_probability` share of them is masked, with
    ratios spread evenly over `mask_ratio_min_max`; the rest are not masked. [batch, rows*cols] bool."""
    n = rows * cols
    n_masked = int(batch * loss.mask_sample_probability)
    low, high = loss.mask_ratio_min_max
    bounds = torch.linspace(low, high, n_masked + 1).tolist()
    masks = [block_mask(rows, cols, int(n * (bounds[i] + (bounds[i + 1] - bounds[i]) * torch.rand(()).item())),
                        max_block=n // 2).flatten() for i in range(n_masked)]
    masks += [torch.zeros(n, dtype=torch.bool)] * (batch - n_masked)
    return torch.stack(masks)[torch.randperm(batch)]


# --------------------------------------------------------------------------- model

class DINOv2Meta(nn.Module):
    """Student and EMA teacher (``student``/``teacher`` with ``backbone``, ``dino_head``, [``ibot_head``],
    the official checkpoint layout) and the losses with their centers; the teacher is frozen and always in
    eval mode (the official teacher is built without drop-path).

    With a `distill_teacher` (a frozen ``backbone``/``dino_head``/[``ibot_head``] dict) that model gives the
    targets instead, the student runs unmasked and ``teacher`` is the spare EMA of the student (the final
    model). The distillation teacher stays outside the module tree: it is not in the state dict (a resumed
    run loads it again from `model.teacher`), not seen by DDP/FSDP or the optimizer, never put in train mode.
    """

    def __init__(self, backbone: nn.Module, head: HeadSection, loss: LossSection,
                 distill_teacher: nn.ModuleDict | None = None):
        super().__init__()
        dim = backbone.embed_dim

        def make_head() -> DINOHead:
            return DINOHead(dim, head.n_prototypes, hidden_dim=head.hidden_dim, bottleneck_dim=head.bottleneck_dim,
                            nlayers=head.nlayers)

        parts = {"backbone": backbone, "dino_head": make_head()}
        if head.ibot_separate_head:
            parts["ibot_head"] = make_head()
        self.student = nn.ModuleDict(parts)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False).eval()
        self._distill_teacher = () if distill_teacher is None else (distill_teacher.requires_grad_(False).eval(),)
        if distill_teacher is not None:  # the student runs unmasked: no loss reaches its mask token (DDP)
            backbone.mask_token.requires_grad_(False)
        self.dino_loss = DINOLoss(head.n_prototypes, loss.student_temp, loss.center_momentum)
        self.ibot_patch_loss = iBOTPatchLoss(head.n_prototypes, loss.student_temp, loss.center_momentum)
        self.koleo_loss = KoLeoLoss()
        self.loss_cfg = loss
        # Micro-batches seen and EMA updates applied: saved with the weights, so resume is exact.
        self.register_buffer("micro_batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    @property
    def distilling(self) -> bool:
        return bool(self._distill_teacher)

    def train(self, mode: bool = True) -> DINOv2Meta:
        super().train(mode)
        self.teacher.eval()
        return self

    def _ibot_head(self, part: nn.ModuleDict) -> nn.Module:
        return part["ibot_head"] if "ibot_head" in part else part["dino_head"]

    def target_network(self, device: torch.device) -> nn.ModuleDict:
        """What gives the targets: the frozen distillation teacher (moved to `device` on first use), else
        the EMA teacher."""
        if not self._distill_teacher:
            return self.teacher
        teacher = self._distill_teacher[0]
        if teacher["backbone"].cls_token.device != device:
            teacher.to(device)
        return teacher

    @torch.no_grad()
    def _teacher_targets(self, global_crops: torch.Tensor, masks: torch.Tensor, temp: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        target = self.target_network(global_crops.device)
        out = target["backbone"].forward_features(global_crops)
        cls = target["dino_head"](out["x_norm_clstoken"])  # [2B, K]
        cls = torch.cat(cls.chunk(2)[::-1])  # the student's crop 1 is matched to the teacher's crop 2
        patches = self._ibot_head(target)(out["x_norm_patchtokens"][masks])  # [M, K]
        if self.loss_cfg.centering == "sinkhorn_knopp":
            cls_t = self.dino_loss.sinkhorn_knopp_teacher(cls, temp)
            n_masked = torch.tensor(patches.shape[0], device=patches.device)
            patch_t = self.ibot_patch_loss.sinkhorn_knopp_teacher(patches, temp, n_masked)
        else:
            cls_t = self.dino_loss.softmax_center_teacher(cls, temp)
            patch_t = self.ibot_patch_loss.softmax_center_teacher(patches, temp)
            # Officially applied at the next call, to overlap the all-reduce; applying it now gives the
            # same values and keeps every center update inside the step (so checkpoints are exact).
            for loss, logits in ((self.dino_loss, cls), (self.ibot_patch_loss, patches)):
                if _any_rank_empty(logits):  # a batch without masked patches: no rank updates the iBOT
                    continue                 # center (all ranks skip together, so the all-reduce never hangs)
                loss.update_center(logits)
                loss.apply_center_update()
        return cls_t, patch_t

    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor | None, masks: torch.Tensor,
                teacher_temp: float) -> dict[str, torch.Tensor]:
        """global_crops [2B, 3, G, G] (crop 1 of every image, then crop 2), local_crops [N*B, 3, L, L],
        masks [2B, patches] -> the weighted losses and their sum. Distilling, `masks` selects the patches of
        the iBOT loss (all of them) and the student sees unmasked crops."""
        cfg = self.loss_cfg
        teacher_cls, teacher_patches = self._teacher_targets(global_crops, masks, teacher_temp)
        student_global = self.student["backbone"].forward_features(global_crops, None if self.distilling else masks)
        cls_tokens = student_global["x_norm_clstoken"]
        n_local = 0 if local_crops is None else local_crops.shape[0] // (global_crops.shape[0] // 2)
        terms = 2 + 2 * n_local  # (n_global - 1) * n_global + n_local * n_global
        dino = self.dino_loss([self.student["dino_head"](cls_tokens)], [teacher_cls]) * 2 / terms
        if n_local:
            local_cls = self.student["backbone"].forward_features(local_crops)["x_norm_clstoken"]
            dino = dino + self.dino_loss(self.student["dino_head"](local_cls).chunk(n_local),
                                         list(teacher_cls.chunk(2))) / terms
        student_patches = self._ibot_head(self.student)(student_global["x_norm_patchtokens"][masks])
        ibot = self.ibot_patch_loss.forward_masked(student_patches, teacher_patches, masks) / 2  # 1 / n_global
        koleo = sum(self.koleo_loss(c) for c in cls_tokens.chunk(2))
        out = {"dino_loss": cfg.dino_weight * dino, "ibot_loss": cfg.ibot_weight * ibot,
               "koleo_loss": cfg.koleo_weight * koleo}
        out["loss"] = out["dino_loss"] + out["ibot_loss"] + out["koleo_loss"]
        return out


def head_args(state: dict[str, torch.Tensor], prefix: str) -> dict[str, int]:
    """`DINOHead` arguments read off its weights under `prefix` (e.g. ``teacher.dino_head.``)."""
    linears = [k for k in state if k.startswith(prefix + "mlp.") and k.endswith(".weight")]
    prototypes = state[prefix + "last_layer.weight_v"]  # [K, bottleneck]
    hidden = state[prefix + "mlp.0.weight"].shape[0] if len(linears) > 1 else prototypes.shape[1]
    return {"out_dim": prototypes.shape[0], "nlayers": len(linears), "hidden_dim": hidden,
            "bottleneck_dim": prototypes.shape[1]}


def read_run(path: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a `percli pretrain dinov2` run dir, checkpoint dir or .safetensors; anything
    else raises ConfigError naming `key` (``model.teacher``, ``model.init``)."""
    try:
        weights = run_weights(path)
    except FileNotFoundError as e:
        raise ConfigError(f"{key}: {e}; give a `percli pretrain dinov2` run dir") from None
    except ValueError:  # a .pth: an official backbone release
        raise ConfigError(f"{key}: {path} is not a percli checkpoint. DINOv2's releases (dinov2_vit*14_pretrain.pth) "
                          "are backbones without the DINO/iBOT heads whose outputs are the targets; give a "
                          "`percli pretrain dinov2` run dir (e.g. one started from the release with "
                          "model.checkpoint=dinov2_vitg14_pretrain.pth)") from None
    meta = read_meta(weights)
    if meta.get("task") != "dinov2":
        raise ConfigError(f"{key}: {weights} is a {meta.get('task') or 'non-percli'} checkpoint ({meta.get('name')}); "
                          "give a `percli pretrain dinov2` run dir, whose checkpoints hold the heads")
    state, _ = read_weights(weights)
    if "teacher.dino_head.last_layer.weight_v" not in state:
        raise ConfigError(f"{key}: {weights} has no teacher.dino_head weights; give a `percli pretrain dinov2` run dir")
    return state, meta


def load_distill_teacher(path: str) -> nn.ModuleDict:
    """The frozen teacher of a distillation run: the EMA teacher (backbone, DINO head, [iBOT head]) of a
    `percli pretrain dinov2` checkpoint, built from the checkpoint's saved constructor arguments."""
    state, meta = read_run(path, "model.teacher")
    backbone = create_model(meta["name"], **(meta.get("kwargs") or {}))
    parts: dict[str, nn.Module] = {"backbone": backbone}
    for name in ("dino_head", "ibot_head"):
        if f"teacher.{name}.last_layer.weight_v" in state:
            parts[name] = DINOHead(backbone.embed_dim, **head_args(state, f"teacher.{name}."))
    teacher = nn.ModuleDict(parts)
    try:
        teacher.load_state_dict({k.removeprefix("teacher."): v for k, v in state.items() if k.startswith("teacher.")})
    except RuntimeError as e:
        raise CheckpointError(f"model.teacher: {path} does not fit the model its metadata describes "
                              f"({str(e).splitlines()[0]})") from None
    return teacher.requires_grad_(False).eval()


def continue_from(meta: DINOv2Meta, state: dict[str, torch.Tensor]) -> None:
    """Load a previous run's student, EMA teacher, heads and centers into `meta`, the position tables
    resampled to its grid (official bicubic interpolation); the EMA / micro-batch counters start at 0."""
    state = dict(state)
    for part in ("student", "teacher"):
        backbone, key = getattr(meta, part)["backbone"], f"{part}.backbone.pos_embed"
        if state[key].shape != backbone.pos_embed.shape:
            rows, cols = (n // backbone.patch_size for n in backbone.preprocess["input_size"][1:])
            state[key] = resample_pos_table(state[key], rows, cols, backbone.interpolate_offset,
                                            backbone.interpolate_antialias).to(backbone.pos_embed.dtype)
    state["micro_batches"] = torch.zeros((), dtype=torch.long)  # a new run: its own schedules from step 0
    state["ema_steps"] = torch.zeros((), dtype=torch.long)
    meta.load_state_dict(state)


# --------------------------------------------------------------------------- task

class DINOv2Task:
    def __init__(self, cfg: Config):
        if cfg.loss.centering not in ("centering", "sinkhorn_knopp"):
            raise ValueError(f"loss.centering={cfg.loss.centering!r}: use centering or sinkhorn_knopp")
        self.cfg = cfg
        self.mean = tuple(cfg.data.mean or IMAGENET_MEAN)
        self.std = tuple(cfg.data.std or IMAGENET_STD)
        self.total_steps = cfg.train.max_steps
        self.freeze_steps = 0  # optimizer steps without last-layer gradients (set from the epoch length)
        self._freeze_now = False
        self.model_name, self.model_kwargs = cfg.model.name, dict(cfg.model.kwargs)  # model.init: the run's

    def _backbone(self) -> nn.Module:
        return create_model(self.model_name, **self.model_kwargs)

    def build_model(self) -> nn.Module:
        cfg, head, init_state = self.cfg, self.cfg.head, None
        if cfg.model.init:  # the previous run's architecture and heads, at the new crop size
            init_state, init_meta = read_run(cfg.model.init, "model.init")
            self.model_name = init_meta["name"]
            self.model_kwargs = {**(init_meta.get("kwargs") or {}), **cfg.model.kwargs,
                                 "img_size": cfg.crops.global_size}
            args = head_args(init_state, "student.dino_head.")
            head = dataclasses.replace(head, n_prototypes=args["out_dim"], hidden_dim=args["hidden_dim"],
                                       bottleneck_dim=args["bottleneck_dim"], nlayers=args["nlayers"],
                                       ibot_separate_head="student.ibot_head.last_layer.weight_v" in init_state)
        if cfg.distill and self.model_kwargs.get("drop_path_rate", 0.0) > 0:
            raise ConfigError(f"distill: the student trains without stochastic depth (paper); set "
                              f"model.kwargs.drop_path_rate=0 (it is {self.model_kwargs['drop_path_rate']})")
        backbone = self._backbone()
        if not hasattr(backbone, "prepare_tokens_with_masks"):
            raise ValueError(f"model.name={self.model_name!r} is not a DINOv2 backbone; use a dinov2_* name")
        if cfg.model.checkpoint:
            load_initial_weights(backbone, cfg.model.checkpoint)
        self.patch_size = backbone.patch_size
        for size in (cfg.crops.global_size, cfg.crops.local_size):
            if size % self.patch_size:
                raise ValueError(f"crop size {size} is not a multiple of the patch size {self.patch_size}; "
                                 "set crops.global_size / crops.local_size to multiples of it")
        teacher = self._distill_teacher(head) if cfg.distill else None
        meta = DINOv2Meta(backbone, head, cfg.loss, distill_teacher=teacher)
        if init_state is not None:
            continue_from(meta, init_state)
        for name, param in meta.student.named_parameters():
            if ".last_layer." in name:
                param.register_hook(self._last_layer_grad)
        return meta

    def _distill_teacher(self, head: HeadSection) -> nn.ModuleDict:
        """The frozen `model.teacher`, checked against the student: same patch grid on the global crops (the
        iBOT loss pairs their patches) and as many prototypes as the student's heads."""
        teacher = load_distill_teacher(self.cfg.model.teacher)
        size, patch = self.cfg.crops.global_size, teacher["backbone"].patch_size
        if size % patch or size // patch != size // self.patch_size:
            raise ConfigError(f"model.teacher: its patch size {patch} does not give the student's "
                              f"{size // self.patch_size}x{size // self.patch_size} patch grid on {size} px global "
                              "crops (the iBOT loss pairs the patches); give the student the teacher's patch size")
        for name, module in teacher.items():
            if name != "backbone" and module.last_layer.weight_v.shape[0] != head.n_prototypes:
                raise ConfigError(f"model.teacher: its {name} has {module.last_layer.weight_v.shape[0]} prototypes, "
                                  f"the student's head {head.n_prototypes}; set head.n_prototypes to the teacher's")
        return teacher

    def _last_layer_grad(self, grad: torch.Tensor) -> torch.Tensor:
        # A zero gradient leaves the prototypes' directions as they are (AdamW's decay only rescales
        # the weight-normalised `weight_v`), as the official `cancel_gradients_last_layer` does.
        return torch.zeros_like(grad) if self._freeze_now else grad

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.model_name, "kwargs": self.model_kwargs, "task": "dinov2",
                "input_size": [3, self.cfg.crops.global_size, self.cfg.crops.global_size],
                "mean": list(self.mean), "std": list(self.std)}

    def _dataset(self, split: str, transform: Any) -> Dataset:
        source = self.cfg.data.source if split == "train" else (self.cfg.data.val_source or self.cfg.data.source)
        return make_dataset(self.cfg.data, source, split, split == "train", transform, False,
                            self.cfg.crops.global_size)

    def train_dataset(self) -> Dataset:
        dataset = self._dataset("train", MultiCrop(self.cfg.crops, self.mean, self.std))
        train = self.cfg.train
        world = PartialState().num_processes
        per_rank = ResumableSampler(len(dataset), world_size=world).per_rank()
        if train.epochs is not None:  # the schedules need the engine's step count
            self.total_steps = engine.plan_run(per_rank, world, train, self.cfg.optim).max_steps
        one_epoch = engine.plan_run(per_rank, world, dataclasses.replace(train, epochs=1), self.cfg.optim).max_steps
        self.freeze_steps = round(self.cfg.freeze_last_layer_epochs * one_epoch)
        return dataset

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(samples)
        crops = batch.pop("image")
        batch["global_crops"] = crops["global_crops"].transpose(0, 1).flatten(0, 1)  # [B, 2, ...] -> [2B, ...]
        if "local_crops" in crops:
            batch["local_crops"] = crops["local_crops"].transpose(0, 1).flatten(0, 1)
        return batch

    def _step_teacher(self, meta: DINOv2Meta) -> None:
        """EMA-update the teacher for every optimizer step taken since the last update."""
        steps_done = int(meta.micro_batches) // self.cfg.train.grad_accum_steps
        while int(meta.ema_steps) < steps_done:
            m = cosine_momentum(int(meta.ema_steps), self.total_steps, self.cfg.loss.momentum_teacher)
            ema_update(meta.teacher, meta.student, m)
            meta.ema_steps += 1

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        meta = getattr(model, "module", model)
        # The engine steps the optimizer after every grad_accum_steps micro-batches: the first
        # micro-batch after a step applies that step's EMA update (the last one is applied in `finish`).
        self._step_teacher(meta)
        meta.micro_batches += 1
        step = int(meta.ema_steps)
        self._freeze_now = step < self.freeze_steps
        globals_ = batch["global_crops"]
        side = globals_.shape[-1] // self.patch_size
        if meta.distilling:  # no masking; the iBOT loss takes every patch of the global crops
            masks = torch.ones(globals_.shape[0], side * side, dtype=torch.bool, device=globals_.device)
        else:
            masks = sample_masks(globals_.shape[0], side, side, self.cfg.loss).to(globals_.device)
        return model(globals_, batch.get("local_crops"), masks,
                     teacher_temperature(step, self.total_steps, self.cfg.loss))

    @torch.no_grad()
    def _features(self, backbone: nn.Module, dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, ...]:
        backbone.eval()
        feats, labels = [], []
        for batch in DataLoader(dataset, batch_size=self.cfg.train.batch_size, num_workers=0):
            feats.append(backbone(batch["image"].to(device)).float().cpu())
            labels.append(batch["label"])
        return torch.cat(feats), torch.cat(labels)

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        """k-NN and linear-probe accuracy on the held-out split: the trained (EMA) teacher vs a random-init
        backbone; distilling, also the frozen teacher (`distill_teacher`). The EMA teacher is, distilling, the
        spare EMA of the student, the paper's final model."""
        self._step_teacher(model)  # the last optimizer step's EMA update
        transform = finetune_transform(self.cfg.crops.global_size, self.mean, self.std, train=False, crop_pct=1.0)
        train_set, val_set = self._dataset("train", transform), self._dataset("val", transform)
        num_classes = len(getattr(train_set, "classes", []) or [])
        if num_classes < 2:
            return {}
        torch.manual_seed(self.cfg.train.seed)
        knn, probe = {}, {}
        backbones = [("teacher", model.teacher["backbone"]), ("random_init", self._backbone())]
        if model.distilling:
            backbones.append(("distill_teacher", model.target_network(accelerator.device)["backbone"]))
        for name, backbone in backbones:
            backbone.to(accelerator.device)
            train_f, train_y = self._features(backbone, train_set, accelerator.device)
            val_f, val_y = self._features(backbone, val_set, accelerator.device)
            scores = knn_classify(train_f, train_y, val_f, val_y, num_classes, k=self.cfg.knn_k)
            knn.update({f"knn_{name}_top1": scores["top1"], f"knn_{name}_top5": scores["top5"]})
            best = sweep_linear_probe(train_f, train_y, val_f, val_y, num_classes, list(DEFAULT_LRS),
                                      seed=self.cfg.train.seed)
            probe.update({f"linear_{name}_top1": best["top1"], f"linear_{name}_top5": best["top5"]})
        return {"knn": knn, "linear_probe": probe}


def validate(cfg: Config) -> None:
    """Checks a dry run can make without building anything: names, paths, the distillation settings."""
    validate_model_and_paths(cfg)
    if cfg.distill:
        if not cfg.model.teacher:
            raise ConfigError("model.teacher: not set; distillation (distill: true, --preset distill / distill-tiny) "
                              "needs the frozen teacher's `percli pretrain dinov2` run: model.teacher=runs/X")
        if cfg.model.kwargs.get("drop_path_rate", 0.0) > 0:
            raise ConfigError(f"distill: the student trains without stochastic depth (paper); set "
                              f"model.kwargs.drop_path_rate=0 (it is {cfg.model.kwargs['drop_path_rate']})")
    elif cfg.model.teacher:
        raise ConfigError(f"model.teacher={cfg.model.teacher} is for distillation; set distill=true "
                          "(--preset distill-tiny does) or drop model.teacher")
    if cfg.model.init and cfg.model.checkpoint:
        raise ConfigError("model.init continues a whole run (backbone and heads), model.checkpoint initialises the "
                          "backbone only; give one of them")
    for key in ("teacher", "init"):
        value = getattr(cfg.model, key)
        if value and not Path(value).expanduser().exists():
            raise ConfigError(f"model.{key}: {value} does not exist; give a `percli pretrain dinov2` run dir")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(DINOv2Task(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)


def _any_rank_empty(logits: torch.Tensor) -> bool:
    """True when this or any other process has no rows in `logits`."""
    empty = torch.tensor(float(len(logits) == 0), device=logits.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(empty)
    return bool(empty > 0)
