"""Hiera (Ryali et al., ICML 2023) and its sparse MAE, compatible with the official release.

Parameter names, shapes, constructor keywords, initialisation order and outputs follow
facebookresearch/hiera@b12b842, so official ``.pth`` state dicts load strictly and the golden
tests in ``tests/test_golden.py`` match the reference outputs. Token geometry lives in
`percli.models.hiera_utils`.

Logits vs probabilities: ``model(x)`` returns logits in train and eval mode, as timm models do. The
official code applies a softmax in eval mode; ``model(x, return_probs=True)`` (or
``model.forward_head(features, apply_softmax=True)``) gives those probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import hiera_utils as hu
from percli.models import register_loader, register_model
from percli.models.common import make_norm, plain

# checkpoint plumbing lives beside the geometry; importable from here as the model's API
from percli.models.hiera_utils import (  # noqa: F401
    LoadReport,
    convert_official_to_timm,
    convert_timm_to_official,
    load_official_state,
    read_state,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Kinetics clips are normalised as in SlowFast (the official notebook's 0.255 is a typo, hiera PR #47).
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


def _conv_nd(ndim: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[ndim]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        scale = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)
        return x * scale


class Mlp(nn.Module):
    """Two-layer GELU MLP (same parameter names as timm's Mlp used by the official code)."""

    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MaskUnitAttention(nn.Module):
    """Multi-head attention over unrolled tokens, inside mask units or global, with optional q-pooling.

    Args:
        dim: input width.
        dim_out: output width (the block widens at stage transitions).
        heads: number of heads.
        q_stride: flattened pooling stride for the queries (4 for 2x2); 1 = no pooling.
        window_size: flattened mask-unit size *after* pooling.
        use_mask_unit_attn: attend within each mask unit instead of globally.
    """

    def __init__(self, dim: int, dim_out: int, heads: int, q_stride: int = 1, window_size: int = 0,
                 use_mask_unit_attn: bool = False):
        super().__init__()
        self.dim, self.dim_out, self.heads = dim, dim_out, heads
        self.head_dim = dim_out // heads
        self.q_stride = q_stride
        self.window_size = window_size
        self.use_mask_unit_attn = use_mask_unit_attn
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        # Units come first in the unrolled order (see hiera_utils), so each window is a contiguous
        # run: local attention is a view with the windows folded into the batch; global = 1 window.
        windows = N // (self.q_stride * self.window_size) if self.use_mask_unit_attn else 1
        # [B, N, 3C] -> [B, win, N/win, 3, heads, hd] -> [3, B, win, heads, N/win, hd]
        qkv = self.qkv(x).view(B, windows, -1, 3, self.heads, self.head_dim).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)
        if self.q_stride > 1:
            # pooled neighbours are the fastest-varying tokens:
            # [B, win, heads, L' * q_stride, hd] -> [B, win, heads, L', q_stride, hd] -> max -> [.., L', hd]
            q = q.reshape(B, windows, self.heads, -1, self.q_stride, self.head_dim).amax(dim=4)
        # 4-D SDPA ([B*win, heads, L, hd]) dispatches to the fused CPU/GPU kernels; 5-D would not.
        # B and win are adjacent in memory, so these reshapes are views.
        q, k, v = (t.reshape(B * windows, self.heads, -1, self.head_dim) for t in (q, k, v))
        x = F.scaled_dot_product_attention(q, k, v)
        # [B*win, heads, L', hd] -> [B, win, L', heads, hd] -> [B, N', C]
        x = x.view(B, windows, self.heads, -1, self.head_dim).transpose(2, 3).reshape(B, -1, self.dim_out)
        return self.proj(x)


class HieraBlock(nn.Module):
    """Pre-norm transformer block; at a stage change it widens (and pools) the residual too."""

    def __init__(self, dim: int, dim_out: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, act_layer: type[nn.Module] = nn.GELU,
                 q_stride: int = 1, window_size: int = 0, use_mask_unit_attn: bool = False):
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        # Construction order matches the official block so a seeded init draws identical numbers.
        self.norm1 = norm_layer(dim)
        self.attn = MaskUnitAttention(dim, dim_out, heads, q_stride, window_size, use_mask_unit_attn)
        self.norm2 = norm_layer(dim_out)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), act_layer=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)
        if self.proj is not None:
            # the residual must match the pooled, widened attention output
            x = hu.pool_unrolled(self.proj(x_norm), self.attn.q_stride)
        x = x + self.drop_path(self.attn(x_norm))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Head(nn.Module):
    """Linear classifier: logits, or probabilities when asked (the official head's eval-mode output)."""

    def __init__(self, dim: int, num_classes: int, dropout_rate: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()
        self.projection = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, apply_softmax: bool = False) -> torch.Tensor:
        """Args: apply_softmax: probabilities over the classes instead of logits."""
        x = self.projection(self.dropout(x))
        return x.softmax(dim=-1) if apply_softmax else x


class PatchEmbed(nn.Module):
    """Strided conv patch embedding for 1-D/2-D/3-D inputs: [B, C, *S] -> [B, N, dim]."""

    def __init__(self, dim_in: int, dim_out: int, kernel: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int]):
        super().__init__()
        self.proj = _conv_nd(len(kernel))(dim_in, dim_out, kernel_size=kernel, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        if pixel_mask is not None:
            x = x * pixel_mask  # zero masked pixels so overlapping kernels cannot see them
        x = self.proj(x)
        # [B, dim, *grid] -> [B, N, dim] (raster order)
        return x.flatten(2).transpose(1, 2)


class Hiera(nn.Module):
    """Hierarchical ViT for images ([B, C, H, W]) and videos ([B, C, T, H, W]).

    Keyword arguments are the official ones. ``mask_unit_size`` must be ``q_stride ** j`` for some
    j < len(stages) (official configs: j = len(stages) - 1; smaller units work too, and unlike the
    official code percli masks them correctly). The built model carries ``config`` (constructor
    arguments: ``type(model)(**model.config)`` rebuilds it), ``arch`` (registered name) and
    ``preprocess`` (normalisation, input size) for checkpoints; see `checkpoint_meta`.

    Calling conventions:
        ``model(x)`` logits in train and eval mode (as timm's Hiera).
        ``model(x, return_probs=True)`` softmax probabilities: the official eval-mode output.
        ``model(x, mask=keep)`` tokens after the last block of the kept units (no pooling/head).
        ``model(x, return_intermediates=True)`` also returns per-stage maps (see `forward`).
        ``forward_features`` / ``forward_head`` / ``forward_intermediates`` split the above.
    """

    def __init__(
        self,
        input_size: Sequence[int] = (224, 224),
        in_chans: int = 3,
        embed_dim: int = 96,
        num_heads: int = 1,
        num_classes: int = 1000,
        stages: Sequence[int] = (2, 3, 16, 3),
        q_pool: int = 3,
        q_stride: Sequence[int] = (2, 2),
        mask_unit_size: Sequence[int] = (8, 8),
        mask_unit_attn: Sequence[bool] = (True, True, False, False),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        patch_kernel: Sequence[int] = (7, 7),
        patch_stride: Sequence[int] = (4, 4),
        patch_padding: Sequence[int] = (3, 3),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        norm_layer: str | Callable[[int], nn.Module] = "LayerNorm",
        head_dropout: float = 0.0,
        head_init_scale: float = 0.001,
        sep_pos_embed: bool = False,
    ):
        args = dict(locals())  # before anything else is bound: exactly the constructor arguments
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        if q_pool >= len(stages):
            raise ValueError(f"q_pool={q_pool} must be smaller than the number of stages ({len(stages)})")
        norm_layer = make_norm(norm_layer)
        self.input_size = list(input_size)
        self.patch_stride = list(patch_stride)
        self.q_pool, self.q_stride = q_pool, list(q_stride)
        self.mask_unit_size = list(mask_unit_size)
        self.tokens_spatial_shape = [i // s for i, s in zip(input_size, patch_stride, strict=True)]
        self.mask_spatial_shape = [t // m for t, m in zip(self.tokens_spatial_shape, mask_unit_size, strict=True)]
        self.mu_size = math.prod(mask_unit_size)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        # one stride per stage transition; each q-pool consumes the head of this schedule
        self.unroll_schedule = [tuple(q_stride)] * (len(stages) - 1)
        # A mask unit must be q_stride ** j: the first j strides then pool inside a unit.
        fits = [j for j in range(len(stages)) if [s**j for s in q_stride] == list(mask_unit_size)]
        if not fits:
            raise ValueError(f"mask_unit_size {list(mask_unit_size)} must be q_stride ** j for some "
                             f"j < len(stages) (q_stride {list(q_stride)})")
        self.unit_strides = max(fits)
        # Units smaller than q_stride ** (len(stages) - 1) are not in raster order in the sequence
        # (the official code then mixes up masked units; percli maps masks through this order).
        self.register_buffer("unit_order", hu.unit_order(self.mask_spatial_shape,
                                                         self.unroll_schedule[self.unit_strides:]), persistent=False)
        self.sep_pos_embed = sep_pos_embed
        self.preprocess = _default_preprocess(self.input_size, in_chans)

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_kernel, patch_stride, patch_padding)
        num_tokens = math.prod(self.tokens_spatial_shape)
        if sep_pos_embed:
            t, h, w = self.tokens_spatial_shape
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))

        flat_q_stride = math.prod(q_stride)
        window = self.mu_size
        q_pool_blocks = {end + 1 for end in self.stage_ends[:q_pool]}
        # on the CPU even under a `torch.device("meta")` context, where .item() would fail
        drop_rates = [r.item() for r in torch.linspace(0, drop_path_rate, sum(stages), device="cpu")]
        self.blocks = nn.ModuleList()
        stage, dim, heads = 0, embed_dim, num_heads
        for i in range(sum(stages)):
            dim_out = dim
            # The first block of a stage still uses the previous stage's attention type: it pools
            # the queries out of the previous (finer) resolution's mask units.
            use_mu_attn = mask_unit_attn[stage]
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = int(dim * dim_mul), int(heads * head_mul), stage + 1
                if i in q_pool_blocks:
                    window //= flat_q_stride
            self.blocks.append(HieraBlock(
                dim, dim_out, heads, mlp_ratio=mlp_ratio, drop_path=drop_rates[i], norm_layer=norm_layer,
                q_stride=flat_q_stride if i in q_pool_blocks else 1, window_size=window,
                use_mask_unit_attn=use_mu_attn,
            ))
            dim = dim_out
        self.num_features = dim
        self.norm = norm_layer(dim)
        self.head = Head(dim, num_classes, dropout_rate=head_dropout)
        self._init_official(head_init_scale)

    def _init_official(self, head_init_scale: float) -> None:
        # Same draws in the same order as the official constructor (tested against its state).
        for p in (["pos_embed_spatial", "pos_embed_temporal"] if self.sep_pos_embed else ["pos_embed"]):
            nn.init.trunc_normal_(getattr(self, p), std=0.02)
        self.apply(_official_init)
        self.head.projection.weight.data.mul_(head_init_scale)
        self.head.projection.bias.data.mul_(head_init_scale)

    @torch.jit.ignore
    def no_weight_decay(self) -> list[str]:
        """Parameter names the official recipe excludes from weight decay."""
        return ["pos_embed_spatial", "pos_embed_temporal"] if self.sep_pos_embed else ["pos_embed"]

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    def get_random_mask(self, x: torch.Tensor, mask_ratio: float, *, noise: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """Random mask-unit mask for `x`, bool [B, #units], True = keep (see `hiera_utils.random_unit_mask`)."""
        return hu.random_unit_mask(x.shape[0], math.prod(self.mask_spatial_shape), mask_ratio,
                                   noise=noise, generator=generator, device=x.device)

    def get_pos_embed(self) -> torch.Tensor:
        """Absolute position embedding in raster order, [1, N, C]."""
        if not self.sep_pos_embed:
            return self.pos_embed
        # [1, T, 1, C] + [1, 1, H*W, C] -> [1, T*H*W, C]
        pos = self.pos_embed_temporal[:, :, None] + self.pos_embed_spatial[:, None]
        return pos.flatten(1, 2)

    def _stage_map(self, x: torch.Tensor, stage: int, seq_mask: torch.Tensor | None) -> torch.Tensor:
        """Stage output in spatial order: [B, *grid, C], or per kept unit [B, #kept, *unit, C]."""
        pools = min(stage, self.q_pool)
        if seq_mask is None:
            size = [t // s**pools for t, s in zip(self.tokens_spatial_shape, self.q_stride, strict=True)]
            return hu.reroll(x, size, self.unroll_schedule[pools:])
        units = hu.reroll_units(x, self.unroll_schedule[pools:self.unit_strides], len(self.q_stride))
        return self._kept_units_in_raster_order(units, seq_mask)

    def _kept_units_in_raster_order(self, units: torch.Tensor, seq_mask: torch.Tensor) -> torch.Tensor:
        """[B, #kept, ...] listed in sequence order -> listed in raster order of the unit grid."""
        if self.unit_order is None:
            return units  # sequence order is raster order
        B, kept = units.shape[:2]
        raster_ids = self.unit_order.expand_as(seq_mask)[seq_mask].view(B, kept)
        order = raster_ids.argsort(dim=1).view(B, kept, *([1] * (units.dim() - 2)))
        return torch.take_along_dim(units, order, dim=1)

    def _forward_tokens(self, x: torch.Tensor, mask: torch.Tensor | None,
                        collect: bool) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """Run the trunk: (unrolled tokens after the last block, per-stage maps, mask in sequence order)."""
        pixel_mask = seq_mask = None
        if mask is not None:
            mask = mask.to(x.device)
            if self.q_pool > self.unit_strides:
                raise ValueError(f"masking needs q_pool <= {self.unit_strides} for mask_unit_size "
                                 f"{self.mask_unit_size}: further pooling would mix kept units")
            pixel_mask = hu.mask_to_input_mask(mask, self.mask_spatial_shape, x.shape[2:])
            seq_mask = mask if self.unit_order is None else mask[:, self.unit_order]
        x = self.patch_embed(x, pixel_mask) + self.get_pos_embed()  # [B, N, C]
        x = hu.unroll(x, self.tokens_spatial_shape, self.unroll_schedule)
        if seq_mask is not None:
            x = hu.drop_masked_units(x, seq_mask)  # [B, N_kept, C]
        maps = []
        stage = 0
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.stage_ends[stage]:
                if collect:
                    maps.append(self._stage_map(x, stage, seq_mask))
                stage += 1
        return x, maps, seq_mask

    def forward_intermediates(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-stage outputs in spatial order.

        Returns:
            One tensor per stage: [B, H', W', C'] ([B, T', H', W', C'] for video), or with a mask
            [B, #kept_units, *unit_shape', C'].
        """
        return self._forward_tokens(x, mask, collect=True)[1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pooled, normalised final features [B, C] (the head's input)."""
        tokens = self._forward_tokens(x, None, collect=False)[0]
        return self.norm(tokens.mean(dim=1))

    def forward_head(self, features: torch.Tensor, apply_softmax: bool = False) -> torch.Tensor:
        """Classifier on `forward_features` output.

        Args:
            features: [B, C].
            apply_softmax: probabilities instead of logits.
        """
        return self.head(features, apply_softmax=apply_softmax)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_intermediates: bool = False,
                return_probs: bool = False, return_logits: bool = True,
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The official forward, returning logits (the official code applies a softmax in eval mode).

        Args:
            x: [B, C, H, W] or [B, C, T, H, W].
            mask: optional bool [B, #units] (True = keep, same count per row); then the output is the
                kept tokens after the last block, [B, N_kept, C], without pooling or head.
            return_intermediates: also return `forward_intermediates`-style per-stage maps.
            return_probs: softmax probabilities instead of logits, in any mode (what the official model
                returns in eval mode; its train mode returns logits).
            return_logits: ignored, logits being the default (accepted for callers of earlier versions).

        Returns:
            Output tensor, or (output, intermediates) when `return_intermediates`.
        """
        tokens, maps, seq_mask = self._forward_tokens(x, mask, collect=return_intermediates)
        if seq_mask is not None:
            B, kept = seq_mask.shape[0], int(seq_mask[0].sum())
            units = self._kept_units_in_raster_order(tokens.view(B, kept, -1, tokens.shape[-1]), seq_mask)
            out = hu.to_official_order(units.flatten(1, 2), kept)
        else:
            out = self.forward_head(self.norm(tokens.mean(dim=1)), apply_softmax=return_probs)
        return (out, maps) if return_intermediates else out


def _official_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.constant_(m.bias, 0.02)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0.02)
        nn.init.constant_(m.weight, 1.0)


def _mae_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


def _default_preprocess(input_size: Sequence[int], in_chans: int) -> dict:
    if len(input_size) == 3:
        return {"input_size": [in_chans, *input_size], "mean": list(KINETICS_MEAN), "std": list(KINETICS_STD),
                "frame_stride": 4, "interpolation": "bilinear"}
    h, w = input_size
    return {"input_size": [in_chans, *input_size], "image_size": h if h == w else [h, w], "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "interpolation": "bicubic", "resize_mode": "shortest", "crop_pct": 0.875}


class MaskedAutoencoderHiera(Hiera):
    """Sparse MAE with a Hiera encoder: masked units are deleted, not replaced, in the encoder.

    Extra keywords (official): decoder_embed_dim, decoder_depth, decoder_num_heads. The encoder
    is a `Hiera` without norm/head; stage outputs before the last q-pool are fused into the
    final resolution by strided convs. ``default_mask_ratio`` is 0.6 for images and 0.9 for
    video (the papers' pretraining values); `forward` keeps the official default of 0.6 unless
    you pass ``mask_ratio=model.default_mask_ratio``.
    """

    def __init__(self, in_chans: int = 3, patch_stride: Sequence[int] = (4, 4), mlp_ratio: float = 4.0,
                 decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 norm_layer: str | Callable[[int], nn.Module] = "LayerNorm", default_mask_ratio: float | None = None,
                 **kwargs):
        super().__init__(in_chans=in_chans, patch_stride=patch_stride, mlp_ratio=mlp_ratio,
                         norm_layer=norm_layer, **kwargs)
        self.config.update(decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                           decoder_num_heads=decoder_num_heads, default_mask_ratio=default_mask_ratio)
        norm_layer = make_norm(norm_layer)
        is_video = len(self.q_stride) == 3
        self.default_mask_ratio = default_mask_ratio if default_mask_ratio is not None else (0.9 if is_video else 0.6)
        # Built then deleted (not skipped) so the seeded init matches the official one draw for draw.
        del self.norm, self.head
        enc_dim = self.blocks[-1].dim_out
        self.encoder_norm = norm_layer(enc_dim)
        if self.q_pool > self.unit_strides:
            raise ValueError(f"MAE needs q_pool <= {self.unit_strides} so that mask units survive pooling")
        self.mask_unit_spatial_shape_final = [m // s**self.q_pool for m, s in zip(self.mask_unit_size, self.q_stride)]
        self.tokens_spatial_shape_final = [t // s**self.q_pool for t, s in
                                           zip(self.tokens_spatial_shape, self.q_stride)]

        # One strided conv per pooled stage maps its mask units onto the final unit resolution;
        # stages after the last q-pool already have it, so only the last one joins (no transform).
        unit = self.mask_unit_size
        self.multi_scale_fusion_heads = nn.ModuleList()
        for end in self.stage_ends[: self.q_pool]:
            kernel = [u // f for u, f in zip(unit, self.mask_unit_spatial_shape_final)]
            unit = [u // s for u, s in zip(unit, self.q_stride)]
            self.multi_scale_fusion_heads.append(
                _conv_nd(len(self.q_stride))(self.blocks[end].dim_out, enc_dim, kernel_size=kernel, stride=kernel))
        self.multi_scale_fusion_heads.append(nn.Identity())

        self.decoder_embed = nn.Linear(enc_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, math.prod(self.tokens_spatial_shape_final), decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([
            HieraBlock(decoder_embed_dim, decoder_embed_dim, decoder_num_heads, norm_layer=norm_layer,
                       mlp_ratio=mlp_ratio)
            for _ in range(decoder_depth)
        ])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        # pixels predicted per final token: pred_stride^2 (only the first frame of a video token)
        self.pred_stride = self.patch_stride[-1] * self.q_stride[-1] ** self.q_pool
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.pred_stride ** min(2, len(self.q_stride)) * in_chans)

        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)
        self.apply(_mae_init)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear over the flattened patch

    def no_weight_decay(self) -> list[str]:
        """Position embeddings and the mask token."""
        return super().no_weight_decay() + ["mask_token", "decoder_pos_embed"]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the fused, normalised encoder latent with nothing masked, [B, C] (for probing)."""
        keep = torch.ones(x.shape[0], math.prod(self.mask_spatial_shape), dtype=torch.bool, device=x.device)
        latent, _ = self.forward_encoder(x, 0.0, mask=keep)
        return latent.flatten(1, -2).mean(dim=1)

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, mask: torch.Tensor | None = None, *,
                        noise: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the kept units.

        Returns:
            (latent [B, #kept, *final_unit_shape, C_enc], mask bool [B, #units] True = keep).
        """
        if mask is None:
            mask = self.get_random_mask(x, mask_ratio, noise=noise, generator=generator)
        maps = self._forward_tokens(x, mask, collect=True)[1]
        # Resolution is constant after the last q-pool, so only the pooled stages and the last join.
        maps = maps[: self.q_pool] + maps[-1:]
        latent = None
        for head, feat in zip(self.multi_scale_fusion_heads, maps, strict=True):
            fused = _apply_fusion_head(head, feat)
            latent = fused if latent is None else latent + fused
        return self.encoder_norm(latent), mask

    def forward_decoder(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode all final tokens.

        Args:
            x: encoder latent [B, #kept, *unit, C_enc].
            mask: bool [B, #units], True = keep.

        Returns:
            (pred [B, N_final, pred_stride^2 * C_in], bool [B, N_final] True = visible).
        """
        mask = mask.to(x.device)
        x = self.decoder_embed(x)  # [B, #kept, *unit, Cd]
        B, unit, Cd = x.shape[0], x.shape[2:-1], x.shape[-1]
        full = x.new_zeros(B, mask.shape[1], *unit, Cd)
        full[mask] = x.flatten(0, 1)  # scatter kept units to their places, [B, #units, *unit, Cd]
        unit_mask = mask.view(*mask.shape, *([1] * (len(unit) + 1)))
        full = torch.where(unit_mask, full, self.mask_token.to(full.dtype))
        x = hu.undo_windowing(full, self.tokens_spatial_shape_final, self.mask_unit_spatial_shape_final)
        visible = hu.undo_windowing(unit_mask.expand(*mask.shape, *unit, 1), self.tokens_spatial_shape_final,
                                    self.mask_unit_spatial_shape_final)
        x = x.reshape(B, -1, Cd) + self.decoder_pos_embed  # [B, N_final, Cd]
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x)), visible.reshape(B, -1)

    def pixel_targets(self, x: torch.Tensor, norm: bool = True) -> torch.Tensor:
        """Targets for every final token, [B, N_final, pred_stride^2 * C_in] (videos: time-strided)."""
        if len(self.q_stride) == 2:
            labels = hu.patchify_image(x, self.pred_stride)
        elif len(self.q_stride) == 3:
            labels = hu.patchify_video(x, self.pred_stride, self.patch_stride[0])
        else:
            raise NotImplementedError("MAE targets exist for 2-D and 3-D inputs only")
        return hu.normalize_patches(labels) if norm else labels

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor,
                     mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Squared error on masked tokens.

        Args:
            x: input images / videos.
            pred: [B, N_final, P].
            mask: bool [B, N_final], True = *masked* (the tokens that count).

        Returns:
            (loss, pred[mask] [M, P], label [M, P]).
        """
        label = self.pixel_targets(x)[mask]
        pred = pred[mask]
        return ((pred.float() - label.float()) ** 2).mean(), pred, label

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.6, mask: torch.Tensor | None = None, *,
                noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """MAE step: returns (loss, pred, label, mask) like the official model, mask True = keep.

        Pass an explicit `mask`, or `noise` / `generator` to make the random mask reproducible.
        """
        latent, mask = self.forward_encoder(x, mask_ratio, mask=mask, noise=noise, generator=generator)
        pred, visible = self.forward_decoder(latent, mask)
        return *self.forward_loss(x, pred, ~visible), mask


def _apply_fusion_head(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(head, nn.Identity):
        return x
    B, units = x.shape[:2]
    nd = x.dim() - 3
    # [B, #units, *unit, C] -> [B*#units, C, *unit]
    x = head(x.flatten(0, 1).movedim(-1, 1))
    # [B*#units, C', *unit'] -> [B, #units, *unit', C']
    return x.movedim(1, -1).reshape(B, units, *x.shape[2:2 + nd], x.shape[1])


# --------------------------------------------------------------------------- registered variants

_SIZES = {  # embed_dim, num_heads, stages
    "tiny": (96, 1, (1, 2, 7, 2)),
    "small": (96, 1, (1, 2, 11, 2)),
    "base": (96, 1, (2, 3, 16, 3)),
    "base_plus": (112, 2, (2, 3, 16, 3)),
    "large": (144, 2, (2, 6, 36, 4)),
    "huge": (256, 4, (2, 6, 36, 4)),
}
_VIDEO_16x224 = dict(num_classes=400, input_size=(16, 224, 224), q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8),
                     patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), sep_pos_embed=True)


def _build(cls: type[Hiera], name: str, size: str, video: bool, overrides: dict) -> Hiera:
    dim, heads, stages = _SIZES[size]
    args = dict(embed_dim=dim, num_heads=heads, stages=stages, **(_VIDEO_16x224 if video else {}))
    if cls is MaskedAutoencoderHiera:
        args["q_pool"] = 2  # the MAE encoder stops pooling at the mask-unit resolution of 2x2 tokens
    model = cls(**{**args, **overrides})
    model.arch = name
    return model


@register_model
def hiera_tiny_224(**kwargs) -> Hiera:
    return _build(Hiera, "hiera_tiny_224", "tiny", False, kwargs)


@register_model
def hiera_small_224(**kwargs) -> Hiera:
    return _build(Hiera, "hiera_small_224", "small", False, kwargs)


@register_model
def hiera_base_224(**kwargs) -> Hiera:
    return _build(Hiera, "hiera_base_224", "base", False, kwargs)


@register_model
def hiera_base_plus_224(**kwargs) -> Hiera:
    return _build(Hiera, "hiera_base_plus_224", "base_plus", False, kwargs)


@register_model
def hiera_large_224(**kwargs) -> Hiera:
    return _build(Hiera, "hiera_large_224", "large", False, kwargs)


@register_model
def hiera_huge_224(**kwargs) -> Hiera:
    return _build(Hiera, "hiera_huge_224", "huge", False, kwargs)


@register_model
def hiera_base_16x224(**kwargs) -> Hiera:
    return _build(Hiera, "hiera_base_16x224", "base", True, kwargs)


@register_model
def hiera_base_plus_16x224(**kwargs) -> Hiera:
    return _build(Hiera, "hiera_base_plus_16x224", "base_plus", True, kwargs)


@register_model
def hiera_large_16x224(**kwargs) -> Hiera:
    return _build(Hiera, "hiera_large_16x224", "large", True, kwargs)


@register_model
def hiera_huge_16x224(**kwargs) -> Hiera:
    return _build(Hiera, "hiera_huge_16x224", "huge", True, kwargs)


@register_model
def mae_hiera_tiny_224(**kwargs) -> MaskedAutoencoderHiera:
    return _build(MaskedAutoencoderHiera, "mae_hiera_tiny_224", "tiny", False, kwargs)


@register_model
def mae_hiera_small_224(**kwargs) -> MaskedAutoencoderHiera:
    return _build(MaskedAutoencoderHiera, "mae_hiera_small_224", "small", False, kwargs)


@register_model
def mae_hiera_base_224(**kwargs) -> MaskedAutoencoderHiera:
    return _build(MaskedAutoencoderHiera, "mae_hiera_base_224", "base", False, kwargs)


@register_model
def mae_hiera_base_plus_224(**kwargs) -> MaskedAutoencoderHiera:
    return _build(MaskedAutoencoderHiera, "mae_hiera_base_plus_224", "base_plus", False, kwargs)


@register_model
def mae_hiera_large_224(**kwargs) -> MaskedAutoencoderHiera:
    return _build(MaskedAutoencoderHiera, "mae_hiera_large_224", "large", False, kwargs)


@register_model
def mae_hiera_huge_224(**kwargs) -> MaskedAutoencoderHiera:
    return _build(MaskedAutoencoderHiera, "mae_hiera_huge_224", "huge", False, kwargs)


@register_model
def mae_hiera_base_16x224(**kwargs) -> MaskedAutoencoderHiera:
    return _build(MaskedAutoencoderHiera, "mae_hiera_base_16x224", "base", True, kwargs)


@register_model
def mae_hiera_base_plus_16x224(**kwargs) -> MaskedAutoencoderHiera:
    return _build(MaskedAutoencoderHiera, "mae_hiera_base_plus_16x224", "base_plus", True, kwargs)


@register_model
def mae_hiera_large_16x224(**kwargs) -> MaskedAutoencoderHiera:
    return _build(MaskedAutoencoderHiera, "mae_hiera_large_16x224", "large", True, kwargs)


@register_model
def mae_hiera_huge_16x224(**kwargs) -> MaskedAutoencoderHiera:
    return _build(MaskedAutoencoderHiera, "mae_hiera_huge_16x224", "huge", True, kwargs)


register_loader(__name__)(load_official_state)
