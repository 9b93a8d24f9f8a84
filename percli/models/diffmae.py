"""DiffMAE (Wei, Mangalam, Huang et al., ICCV 2023): a masked autoencoder whose decoder is a diffusion model.

The encoder is MAE's ViT on the visible patches. The decoder gets the *masked* patches noised to a random
diffusion step t (one t per image) and predicts their clean pixels (x0), conditioned on the encoder through
cross-attention; the loss is the MSE on the masked patches. Sampling from noise with the visible patches as
the condition inpaints an image (`DiffMAE.inpaint`).

No official code is public; choices where the paper is silent (each an option):

* ``decoder_design``: ``cross_self`` (each decoder block: self-attention among the noisy tokens, then
  cross-attention to the encoder tokens, then the MLP) or ``cross`` (cross-attention and MLP only);
* ``top_down``: decoder block i reads the encoder output at depth ``depth - 1 - floor(i * depth /
  decoder_depth)`` (deepest first, shallower for later decoder blocks); with ``top_down=False`` every
  decoder block reads the last encoder block, as an MAE decoder would;
* the time step enters as a sinusoidal embedding through a 2-layer MLP, added to every noisy token;
* the encoder tokens a decoder block reads pass that block's LayerNorm (``norm_memory``; the last one also
  the encoder's ``norm``), then the shared ``decoder_embed`` projection and the decoder position embedding;
* video (the paper's Kinetics setting, ``*_video`` variants): MAE-ST's layout, 2 x 16 x 16 tubelets of 16
  frames, 90 % of them masked at random (no tube masking), fixed sin-cos positions whose last quarter of
  channels encodes the frame (`sincos_pos_embed_3d`); everything after the patch embedding is the image model;
* pixels are predicted in the normalised image space (no per-patch normalisation: a sampled completion
  must be an image), with the schedule of `percli.core.diffusion` (``schedule``, ``schedule_opts``).

Encoder names are MAE's (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.i``, ``norm``), so MAE /
timm ViT weights initialise it, and `DiffMAEClassifier` (MAE's fine-tuning ViT: global pool, ``fc_norm``,
``head``) loads a DiffMAE checkpoint's encoder for `percli finetune diffmae`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.core import diffusion
from percli.core.data.transforms import HIERA_VIDEO_STD
from percli.models import register_loader, register_model
from percli.models.audio_mae import Attention, Block, sincos_1d, sincos_pos_embed_2d, xavier_init
from percli.models.audio_mae_decoder import Mlp
from percli.models.common import (
    LoadReport,
    check_fit,
    patchify,
    patchify_video,
    plain,
    read_state,
    unpatchify,
    unpatchify_video,
)
from percli.models.hiera import IMAGENET_MEAN, IMAGENET_STD

DECODER_DESIGNS = ("cross_self", "cross")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] integer steps -> [B, dim] sinusoidal features (the transformer's frequencies)."""
    return sincos_1d(dim, t.float()).to(torch.float32).to(t.device)


def memory_depths(depth: int, decoder_depth: int, top_down: bool) -> list[int]:
    """The encoder block each decoder block reads: deepest first when `top_down`, else always the last."""
    if not top_down:
        return [depth - 1] * decoder_depth
    return [depth - 1 - (i * depth) // decoder_depth for i in range(decoder_depth)]


# --------------------------------------------------------------------------- decoder blocks

class CrossAttention(nn.Module):
    """Queries from the noisy tokens, keys / values from the encoder tokens (``q``, ``kv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h = self.num_heads
        q = self.q(x).view(B, N, h, C // h).transpose(1, 2)  # [B, N, C] -> [B, heads, N, C/heads]
        # [B, M, 2C] -> [2, B, heads, M, C/heads]
        k, v = self.kv(memory).view(B, memory.shape[1], 2, h, C // h).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))  # [B, heads, N, C/heads] -> [B, N, C]


class DecoderBlock(nn.Module):
    """``cross_self``: x + self-attn, x + cross-attn(memory), x + MLP; ``cross`` drops the self-attention."""

    def __init__(self, dim: int, num_heads: int, design: str, mlp_ratio: float = 4.0):
        super().__init__()
        if design == "cross_self":
            self.norm1 = nn.LayerNorm(dim)
            self.attn = Attention(dim, num_heads)
        self.design = design
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        if self.design == "cross_self":
            x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm_cross(x), memory)
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------- encoder

def sincos_pos_embed_3d(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """Fixed sin-cos embedding over a ``(frames, rows, cols)`` token grid, [1, 1 + t*h*w, dim], cls slot zeros.

    Token ``(i, r, c)`` (raster order, time slowest) gets ``[2-D sincos(r, c), sincos(i)]``: the first
    ``dim - dim // 4`` channels are the image embedding of its position in the frame, the last quarter its
    time step, so a video model's spatial channels match the image model's layout.
    """
    temporal = (dim // 4) // 2 * 2
    frames, rows, cols = grid
    spatial = sincos_pos_embed_2d(dim - temporal, (rows, cols), cls_token=False)[0]  # [h*w, dim - temporal]
    steps = sincos_1d(temporal, torch.arange(frames)).float()  # [t, temporal]
    emb = torch.cat([spatial[None].expand(frames, -1, -1), steps[:, None].expand(-1, rows * cols, -1)], dim=2)
    return torch.cat([emb.new_zeros(1, dim), emb.reshape(frames * rows * cols, dim)]).unsqueeze(0)


def pos_embed(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """The fixed position embedding of an image (2-D) or video (3-D) token grid, cls slot first."""
    return sincos_pos_embed_2d(dim, grid) if len(grid) == 2 else sincos_pos_embed_3d(dim, grid)


class ViTEncoder(nn.Module):
    """MAE's ViT: conv patches, a cls token, fixed sin-cos positions, pre-norm blocks, final norm.

    Images: ``input_size`` [H, W], ``patch_size`` squares. Video (MAE-ST's layout): ``input_size`` [T, H, W],
    ``t_patch_size`` x ``patch_size`` x ``patch_size`` tubelets through a Conv3d ``patch_embed.proj``, tokens in
    (time, row, column) raster order, positions from `sincos_pos_embed_3d`.
    """

    def __init__(self, input_size: Sequence[int], patch_size: int, in_chans: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float, drop_path_rate: float, t_patch_size: int = 2):
        super().__init__()
        video = len(input_size) == 3
        kernel = (t_patch_size, patch_size, patch_size) if video else (patch_size, patch_size)
        if len(input_size) not in (2, 3) or any(s % k for s, k in zip(input_size, kernel, strict=True)):
            raise ValueError(f"input_size={list(input_size)}: give [height, width] (image) or [frames, height, "
                             f"width] (video), multiples of patch_size={patch_size} (and t_patch_size="
                             f"{t_patch_size} for frames)")
        if video and embed_dim % 8:
            raise ValueError(f"embed_dim={embed_dim}: a video ViT's position embedding needs a multiple of 8")
        self.patch_size, self.t_patch_size, self.in_chans = patch_size, t_patch_size if video else 1, in_chans
        self.input_size = tuple(input_size)
        self.grid = tuple(s // k for s, k in zip(input_size, kernel, strict=True))
        self.num_patches = math.prod(self.grid)
        self.patch_dim = math.prod(kernel) * in_chans
        self.patch_embed = nn.Module()
        conv = nn.Conv3d if video else nn.Conv2d
        self.patch_embed.proj = conv(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(pos_embed(embed_dim, self.grid), requires_grad=False)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # no tensor: builds on meta too
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, drop_path=r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim)

    @property
    def video(self) -> bool:
        return len(self.grid) == 3

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] or [B, C, T, H, W] -> [B, N, patch_dim], in the token order of `tokens`."""
        if self.video:
            return patchify_video(x, self.patch_size, self.t_patch_size)
        return patchify(x, self.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of `patchify` at the model's input size."""
        if self.video:
            return unpatchify_video(patches, self.patch_size, self.t_patch_size, self.in_chans, *self.input_size)
        return unpatchify(patches, self.patch_size, self.in_chans, *self.input_size)

    def tokens(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens with positions, the kept ones only when `ids_keep` [B, K] is given, cls first."""
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # [B, C, (t,) h, w] -> [B, N, C]
        x = x + self.pos_embed[:, 1:]
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))  # [B, K, C]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None,
                keep_depths: Sequence[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The normed last tokens [B, 1 + K, C] and the raw outputs of the blocks in `keep_depths`."""
        x = self.tokens(x, ids_keep)
        kept = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in keep_depths:
                kept[i] = x
        return self.norm(x), kept


def _init_encoder(encoder: ViTEncoder) -> None:
    encoder.apply(xavier_init)
    w = encoder.patch_embed.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # MAE: the patch conv as a linear layer
    nn.init.normal_(encoder.cls_token, std=0.02)


def _preprocess(input_size: Sequence[int]) -> dict:
    std = HIERA_VIDEO_STD if len(input_size) == 3 else IMAGENET_STD  # video: MAE-ST / Hiera's 0.225
    return {"input_size": [3, *input_size], "mean": list(IMAGENET_MEAN), "std": list(std),
            "interpolation": "bicubic", "crop_pct": 1.0}


# --------------------------------------------------------------------------- pretraining model

class DiffMAE(nn.Module):
    """Encoder on the visible patches, diffusion decoder on the noised masked patches (module docstring).

    Calling conventions:
        ``model(x)``: ``(loss, pred, mask)``: masked-patch MSE, the x0 prediction [B, M, p*p*C] of the masked
        patches (in ``ids_masked`` order) and the mask [B, N] (1 = masked).
        ``model.inpaint(x, keep)``: sampled images with the visible patches kept.
    """

    def __init__(self, input_size: Sequence[int] = (224, 224), patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 1024, depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 decoder_design: Literal["cross_self", "cross"] = "cross_self", top_down: bool = True,
                 mask_ratio: float = 0.75, schedule: str = "diffmae", num_timesteps: int = 1000,
                 schedule_opts: Mapping[str, float] | None = None, drop_path_rate: float = 0.0,
                 t_patch_size: int = 2):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        if decoder_design not in DECODER_DESIGNS:
            raise ValueError(f"decoder_design={decoder_design!r}: choose one of {', '.join(DECODER_DESIGNS)}")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio={mask_ratio}: give a fraction in (0, 1)")
        self.preprocess = _preprocess(input_size)
        self.default_mask_ratio = mask_ratio
        self.encoder = ViTEncoder(input_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                  drop_path_rate, t_patch_size)
        self.memory_depths = memory_depths(depth, decoder_depth, top_down)
        patch_dim = self.encoder.patch_dim
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.decoder_input = nn.Linear(patch_dim, decoder_embed_dim)
        self.decoder_pos_embed = nn.Parameter(pos_embed(decoder_embed_dim, self.encoder.grid), requires_grad=False)
        self.time_embed = nn.Sequential(nn.Linear(decoder_embed_dim, decoder_embed_dim), nn.SiLU(),
                                        nn.Linear(decoder_embed_dim, decoder_embed_dim))
        self.norm_memory = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in range(decoder_depth))
        self.decoder_blocks = nn.ModuleList(DecoderBlock(decoder_embed_dim, decoder_num_heads, decoder_design,
                                                         mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_dim)
        self._schedules = diffusion.ScheduleCache(schedule, num_timesteps, schedule_opts)
        _init_encoder(self.encoder)
        for module in (self.decoder_embed, self.decoder_input, self.time_embed, self.norm_memory,
                       self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(xavier_init)

    # aliases the engine and the recipes read
    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    def checkpoint_meta(self) -> dict:
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    def noise_schedule(self, device: torch.device) -> diffusion.NoiseSchedule:
        """The diffusion schedule's tensors on `device`, computed on first use (not weights: derived)."""
        return self._schedules.on(device)

    def random_split(self, batch: int, mask_ratio: float, device: torch.device,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image random (ids_keep [B, K], ids_masked [B, M]) with M = round(N * mask_ratio) (>= 1)."""
        n = self.encoder.num_patches
        masked = min(n - 1, max(1, round(n * mask_ratio)))
        noise = torch.rand(batch, n, generator=generator, device=generator.device if generator else device)
        order = noise.to(device).argsort(dim=1)
        return order[:, masked:].sort(dim=1).values, order[:, :masked].sort(dim=1).values

    def memories(self, x: torch.Tensor, ids_keep: torch.Tensor) -> list[torch.Tensor]:
        """The encoder tokens each decoder block cross-attends to, projected: [B, 1 + K, D] per block."""
        last, kept = self.encoder(x, ids_keep, set(self.memory_depths))
        ids = torch.cat([ids_keep.new_zeros(ids_keep.shape[0], 1), ids_keep + 1], dim=1)  # cls slot first
        pos = torch.gather(self.decoder_pos_embed.expand(x.shape[0], -1, -1), 1,
                           ids[..., None].expand(-1, -1, self.decoder_pos_embed.shape[-1]))
        deepest = len(self.encoder.blocks) - 1
        out = []
        for norm, depth in zip(self.norm_memory, self.memory_depths, strict=True):
            tokens = last if depth == deepest else kept[depth]
            out.append(self.decoder_embed(norm(tokens)) + pos)
        return out

    def forward_decoder(self, x_t: torch.Tensor, t: torch.Tensor, ids_masked: torch.Tensor,
                        memories: Sequence[torch.Tensor]) -> torch.Tensor:
        """x0 prediction [B, M, p*p*C] of the masked patches from their noisy version at steps `t` [B]."""
        pos = self.decoder_pos_embed[:, 1:].expand(x_t.shape[0], -1, -1)
        pos = torch.gather(pos, 1, ids_masked[..., None].expand(-1, -1, pos.shape[-1]))  # [B, M, D]
        temb = self.time_embed(timestep_embedding(t, self.decoder_input.out_features))  # [B, D]
        h = self.decoder_input(x_t) + pos + temb[:, None]
        for block, memory in zip(self.decoder_blocks, memories, strict=True):
            h = block(h, memory)
        return self.decoder_pred(self.decoder_norm(h))

    def forward(self, x: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None,
                t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ratio = self.default_mask_ratio if mask_ratio is None else mask_ratio
        B = x.shape[0]
        ids_keep, ids_masked = self.random_split(B, ratio, x.device, generator)
        target = torch.gather(self.encoder.patchify(x), 1,
                              ids_masked[..., None].expand(-1, -1, self.decoder_pred.out_features))
        schedule = self.noise_schedule(x.device)
        gen_device = generator.device if generator is not None else x.device
        if t is None:
            t = torch.randint(0, schedule.num_steps, (B,), generator=generator, device=gen_device).to(x.device)
        noise = torch.randn(target.shape, generator=generator, device=gen_device).to(x.device, target.dtype)
        x_t = diffusion.q_sample(target, t, noise, schedule)
        pred = self.forward_decoder(x_t, t, ids_masked, self.memories(x, ids_keep))
        loss = F.mse_loss(pred.float(), target.float())
        mask = torch.zeros(B, self.encoder.num_patches, device=x.device).scatter_(1, ids_masked, 1.0)
        return loss, pred, mask

    @torch.no_grad()
    def inpaint(self, x: torch.Tensor, keep: torch.Tensor, *, steps: int | None = 50, sampler: str = "ddim",
                eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample the masked patches of `x` [B, C, H, W] (video: [B, C, T, H, W]) given the visible ones; `keep`
        [B, N] bool (True = visible, the same count per row). Returns `x`'s shape, visible patches unchanged."""
        keep = keep.to(x.device, torch.bool)
        counts = keep.sum(1)
        if keep.shape[1] != self.encoder.num_patches or not bool((counts == counts[0]).all()):
            raise ValueError(f"keep must be [B, {self.encoder.num_patches}] with the same number of visible "
                             "patches per image (inpaint images with different masks one at a time)")
        if int(counts[0]) in (0, keep.shape[1]):
            raise ValueError("keep: give at least one visible and one masked patch")
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # visible first, each in raster order
        k = int(counts[0])
        ids_keep, ids_masked = order[:, :k], order[:, k:]
        memories = self.memories(x, ids_keep)
        patches = self.encoder.patchify(x)
        shape = (x.shape[0], ids_masked.shape[1], patches.shape[-1])
        sampled = diffusion.sample(lambda x_t, t: self.forward_decoder(x_t, t, ids_masked, memories), shape,
                                   self.noise_schedule(x.device), steps=steps, sampler=sampler, eta=eta,
                                   generator=generator, parameterization="x0", device=x.device)
        patches = patches.scatter(1, ids_masked[..., None].expand(-1, -1, patches.shape[-1]), sampled.to(x.dtype))
        return self.encoder.unpatchify(patches)


# --------------------------------------------------------------------------- fine-tuning model

class DiffMAEClassifier(nn.Module):
    """MAE's fine-tuning ViT over a DiffMAE encoder: mean of the patch tokens, ``fc_norm``, linear ``head``."""

    def __init__(self, input_size: Sequence[int] = (224, 224), patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 1024, depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0,
                 num_classes: int = 1000, drop_path_rate: float = 0.1, t_patch_size: int = 2):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        self.preprocess = _preprocess(input_size)
        self.encoder = ViTEncoder(input_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                  drop_path_rate, t_patch_size)
        self.encoder.norm = nn.Identity()  # MAE's global-pool head normalises the pooled tokens instead
        self.fc_norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        _init_encoder(self.encoder)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE fine-tuning's head init
        nn.init.zeros_(self.head.bias)

    def checkpoint_meta(self) -> dict:
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.encoder(x)
        return self.fc_norm(tokens[:, 1:].mean(dim=1))  # [B, 1 + N, C] -> [B, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def load_state(model: nn.Module, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A DiffMAE / classifier percli state into `model`. A classifier takes a pretraining checkpoint's
    encoder (decoder and ``encoder.norm`` dropped, ``fc_norm`` / ``head`` left at init); a classifier
    checkpoint with another class count gets a new head."""
    state = read_state(state_or_path)
    own = model.state_dict()
    if isinstance(model, DiffMAEClassifier):
        dropped = sorted(k for k in state if k not in own)
        state = {k: v for k, v in state.items() if k in own}
        report = LoadReport(source_format="percli", dropped=dropped)
        if "head.weight" in state and state["head.weight"].shape != own["head.weight"].shape:
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            report.head_reset = True
        report.missing = check_fit(model, state, model.arch, tolerated=("head.", "fc_norm."),
                                   hint="build the encoder size the checkpoint was pretrained with")
        model.load_state_dict(state, strict=False)
        return report
    check_fit(model, state, model.arch, hint="build the DiffMAE size the checkpoint was trained with")
    model.load_state_dict(state)
    return LoadReport(source_format="percli")


register_loader(__name__)(load_state)


# --------------------------------------------------------------------------- registered variants

_SIZES = {"base": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16),
          "large": dict(embed_dim=1024, depth=24, num_heads=16, patch_size=16),
          "huge": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14)}


# the paper's video setting (MAE-ST's): 16 frames of 224 px in 2 x 16 x 16 tubelets, 90 % masked, Kinetics-400
_VIDEO = dict(input_size=(16, 224, 224), t_patch_size=2)


def _build(cls: Callable[..., nn.Module], name: str, size: str, overrides: dict, video: bool = False) -> nn.Module:
    defaults = {**_VIDEO, **({"mask_ratio": 0.9} if cls is DiffMAE else {"num_classes": 400})} if video else {}
    model = cls(**{**_SIZES[size], **defaults, **overrides})
    model.arch = name
    return model


@register_model
def diffmae_vit_base_patch16(**kwargs) -> DiffMAE:
    return _build(DiffMAE, "diffmae_vit_base_patch16", "base", kwargs)


@register_model
def diffmae_vit_large_patch16(**kwargs) -> DiffMAE:
    return _build(DiffMAE, "diffmae_vit_large_patch16", "large", kwargs)


@register_model
def diffmae_vit_huge_patch14(**kwargs) -> DiffMAE:
    return _build(DiffMAE, "diffmae_vit_huge_patch14", "huge", kwargs)


@register_model
def diffmae_vit_base_patch16_cls(**kwargs) -> DiffMAEClassifier:
    return _build(DiffMAEClassifier, "diffmae_vit_base_patch16_cls", "base", kwargs)


@register_model
def diffmae_vit_large_patch16_cls(**kwargs) -> DiffMAEClassifier:
    return _build(DiffMAEClassifier, "diffmae_vit_large_patch16_cls", "large", kwargs)


@register_model
def diffmae_vit_huge_patch14_cls(**kwargs) -> DiffMAEClassifier:
    return _build(DiffMAEClassifier, "diffmae_vit_huge_patch14_cls", "huge", kwargs)


@register_model
def diffmae_vit_base_patch16_video(**kwargs) -> DiffMAE:
    return _build(DiffMAE, "diffmae_vit_base_patch16_video", "base", kwargs, video=True)


@register_model
def diffmae_vit_large_patch16_video(**kwargs) -> DiffMAE:
    return _build(DiffMAE, "diffmae_vit_large_patch16_video", "large", kwargs, video=True)


@register_model
def diffmae_vit_base_patch16_video_cls(**kwargs) -> DiffMAEClassifier:
    return _build(DiffMAEClassifier, "diffmae_vit_base_patch16_video_cls", "base", kwargs, video=True)


@register_model
def diffmae_vit_large_patch16_video_cls(**kwargs) -> DiffMAEClassifier:
    return _build(DiffMAEClassifier, "diffmae_vit_large_patch16_video_cls", "large", kwargs, video=True)
