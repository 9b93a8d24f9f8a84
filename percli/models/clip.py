"""CLIP (Radford et al., 2021) with a ViT image tower and a Transformer text tower, open_clip-compatible.

Parameter names and shapes follow open_clip's ``CLIP`` (mlfoundations/open_clip v3.3.0,
``src/open_clip/model.py`` and ``transformer.py``), so open_clip and MetaCLIP checkpoints load
strictly: the image tower lives under ``visual.``, the text tower's tensors sit at the top level
(``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``, ``text_projection``)
beside the learnable ``logit_scale`` (and ``logit_bias`` when ``init_logit_bias`` is given).
``tests/test_golden.py`` checks the outputs against open_clip and ``tests/test_clip_openclip_parity.py``
builds both from the same config dicts.

Image tower: patchify (a bias-free conv; ``image_size`` / ``patch_size`` an int or an (H, W) pair,
so the position table may be a non-square grid) -> [cls] + patches -> + positions (learned, or
fixed 2-D sin-cos) -> patch dropout (training only) -> ``ln_pre`` (unless ``no_ln_pre``) ->
pre-norm blocks (optional layer scale) -> pooling -> ``@ proj``. Pooling: ``ln_post`` then the
class token (``pool_type='tok'``, every released ViT config), the mean of the patch tokens
(``'avg'``) or every token (``'none'``); ``final_ln_after_pool`` applies ``ln_post`` after pooling
instead; ``attentional_pool=True`` (open_clip's CoCa pooler) attends ``attn_pooler_queries``
learned queries to the tokens, then ``ln_post`` and the same pooling over the queries. Text tower:
token + position embeddings -> blocks under a causal mask (unless ``no_causal_mask``) ->
``ln_final`` -> a token chosen by ``pool_type`` (``'argmax'``: the end-of-text token, the
highest id of each row in the CLIP tokenizer) -> ``text_projection`` (a matrix, a biased
Linear with ``proj_bias``, or nothing with ``proj_type='none'``). ``quick_gelu=True`` (OpenAI and
MetaCLIP weights) uses x * sigmoid(1.702 x) in every MLP.

Every field of open_clip's ``CLIPVisionCfg`` / ``CLIPTextCfg`` is accepted; the values percli does
not build (custom attention blocks, timm / Hugging Face towers, ResNet towers, CoCa's text class
token and unfinished pooler modes, other tokenizers) raise a ValueError naming the key and the
supported values.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.audio_mae import sincos_pos_embed_2d
from percli.models.common import LoadReport, check_fit, read_state

# OpenAI CLIP's image normalisation, used by every open_clip / MetaCLIP ViT release.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPVisionCfg:
    """open_clip's ``vision_cfg`` fields, with open_clip's defaults (see `_check_vision` for what is built)."""

    layers: int = 12
    width: int = 768
    head_width: int = 64  # heads = width // head_width
    mlp_ratio: float = 4.0  # MLP hidden width = int(width * mlp_ratio)
    patch_size: int | Sequence[int] = 16  # an int or (H, W)
    image_size: int | Sequence[int] = 224  # an int or (H, W)
    ls_init_value: float | None = None  # layer scale (ls_1 / ls_2 gammas) when set
    patch_dropout: float = 0.0  # fraction of patch tokens dropped in training
    attentional_pool: bool | str = False  # True: open_clip's CoCa attentional pooler
    attn_pooler_queries: int = 256
    attn_pooler_heads: int = 8
    no_ln_pre: bool = False
    pos_embed_type: str = "learnable"  # or "sin_cos_2d" (fixed; square grids)
    final_ln_after_pool: bool = False
    pool_type: str = "tok"  # "tok": class token, "avg": mean of patch tokens, "none": every token
    output_tokens: bool = False
    act_kwargs: dict | None = None
    norm_kwargs: dict | None = None
    block_type: str | None = None
    qk_norm: bool = False
    scaled_cosine_attn: bool = False
    scale_heads: bool = False
    scale_attn_inner: bool = False
    scale_attn: bool = False
    scale_fc: bool = False
    timm_model_name: str | None = None
    timm_model_pretrained: bool = False
    timm_pool: str = "avg"
    timm_proj: str = "linear"
    timm_proj_bias: bool = False
    timm_drop: float = 0.0
    timm_drop_path: float | None = None


@dataclass
class CLIPTextCfg:
    """open_clip's ``text_cfg`` fields, with open_clip's defaults (see `_check_text` for what is built)."""

    context_length: int = 77
    vocab_size: int = 49408
    hf_tokenizer_name: str | None = None
    tokenizer_mode: str | None = None
    tokenizer_kwargs: dict | None = None
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    ls_init_value: float | None = None
    embed_cls: bool = False
    pad_id: int = 0
    eos_id: int = 2  # the token read by pool_type="eos"
    no_causal_mask: bool = False
    final_ln_after_pool: bool = False  # no effect in open_clip's CLIP either (ln_final precedes pooling)
    pool_type: str = "argmax"  # "argmax" (end-of-text), "eos", "first", "last", "none"
    proj_bias: bool = False
    proj_type: str = "linear"  # or "none"
    output_tokens: bool = False
    act_kwargs: dict | None = None
    norm_kwargs: dict | None = None
    block_type: str | None = None
    qk_norm: bool = False
    scaled_cosine_attn: bool = False
    scale_heads: bool = False
    scale_attn_inner: bool = False
    scale_attn: bool = False
    scale_fc: bool = False
    hf_model_name: str | None = None
    hf_model_pretrained: bool = True
    hf_proj_type: str = "mlp"
    hf_pooler_type: str = "mean_pooler"


_CUSTOM_BLOCK = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")
VISION_POOL_TYPES = ("tok", "avg", "none")
TEXT_POOL_TYPES = ("argmax", "eos", "first", "last", "none")


def _refuse(tower: str, key: str, value: Any, supported: str) -> ValueError:
    return ValueError(f"{tower}.{key}={value!r} is not supported by percli's CLIP; supported: {supported}")


def to_2tuple(value: int | Sequence[int], tower: str, key: str) -> tuple[int, int]:
    """An int or an (H, W) pair of positive ints -> (H, W)."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise _refuse(tower, key, value, "a positive int or an (H, W) pair of positive ints")
    return pair  # type: ignore[return-value]


def _check_blocks(tower: str, cfg: CLIPVisionCfg | CLIPTextCfg) -> None:
    if cfg.block_type not in (None, "default"):
        raise _refuse(tower, "block_type", cfg.block_type, "None or 'default' (open_clip's standard block)")
    for key in _CUSTOM_BLOCK:
        if getattr(cfg, key):
            raise _refuse(tower, key, getattr(cfg, key), "False (open_clip's custom attention blocks are not "
                          "implemented)")
    if cfg.output_tokens:
        raise _refuse(tower, "output_tokens", True, "False (use forward_intermediates for token outputs)")
    if not (isinstance(cfg.layers, int) and cfg.layers > 0):
        raise _refuse(tower, "layers", cfg.layers, "a positive int (ViT / Transformer towers; ResNet towers "
                      "are not implemented)")
    if not cfg.mlp_ratio > 0:
        raise _refuse(tower, "mlp_ratio", cfg.mlp_ratio, "a positive number (int or float)")


def _check_vision(cfg: CLIPVisionCfg) -> None:
    """Raise a ValueError naming the first `vision_cfg` value percli's CLIP does not build."""
    tower = "vision_cfg"
    _check_blocks(tower, cfg)
    if cfg.timm_model_name is not None:
        raise _refuse(tower, "timm_model_name", cfg.timm_model_name, "None (timm image towers are not "
                      "implemented; the timm_* options only apply to them)")
    image, patch = to_2tuple(cfg.image_size, tower, "image_size"), to_2tuple(cfg.patch_size, tower, "patch_size")
    if image[0] < patch[0] or image[1] < patch[1]:
        raise ValueError(f"vision_cfg.image_size {cfg.image_size!r} is smaller than patch_size {cfg.patch_size!r}")
    if cfg.width % cfg.head_width or cfg.width < cfg.head_width:
        raise _refuse(tower, "head_width", cfg.head_width, f"a divisor of width {cfg.width}")
    if cfg.pool_type not in VISION_POOL_TYPES:
        raise _refuse(tower, "pool_type", cfg.pool_type, f"one of {VISION_POOL_TYPES}")
    if cfg.attentional_pool not in (False, True):
        raise _refuse(tower, "attentional_pool", cfg.attentional_pool, "False or True (open_clip's unfinished "
                      "'parallel' / 'cascade' modes are not implemented)")
    if cfg.pos_embed_type not in ("learnable", "sin_cos_2d"):
        raise _refuse(tower, "pos_embed_type", cfg.pos_embed_type, "'learnable' or 'sin_cos_2d'")
    if cfg.pos_embed_type == "sin_cos_2d" and image[0] // patch[0] != image[1] // patch[1]:
        raise _refuse(tower, "pos_embed_type", cfg.pos_embed_type, "'learnable' for a non-square grid "
                      "(sin_cos_2d needs a square one, as in open_clip)")
    if not 0 <= cfg.patch_dropout < 1:
        raise _refuse(tower, "patch_dropout", cfg.patch_dropout, "a fraction in [0, 1)")


def _check_text(cfg: CLIPTextCfg) -> None:
    """Raise a ValueError naming the first `text_cfg` value percli's CLIP does not build."""
    tower = "text_cfg"
    _check_blocks(tower, cfg)
    if cfg.hf_model_name is not None:
        raise _refuse(tower, "hf_model_name", cfg.hf_model_name, "None (Hugging Face text towers are not "
                      "implemented; the hf_* options only apply to them)")
    for key in ("hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs"):
        if getattr(cfg, key):
            raise _refuse(tower, key, getattr(cfg, key), "None (percli tokenizes with the CLIP BPE tokenizer)")
    if cfg.embed_cls:
        raise _refuse(tower, "embed_cls", True, "False (CoCa's appended text class token; open_clip's CLIP "
                      "cannot run with it either)")
    if cfg.pool_type not in TEXT_POOL_TYPES:
        raise _refuse(tower, "pool_type", cfg.pool_type, f"one of {TEXT_POOL_TYPES}")
    if cfg.proj_type not in ("linear", "none"):
        raise _refuse(tower, "proj_type", cfg.proj_type, "'linear' or 'none'")
    if cfg.width % cfg.heads:
        raise _refuse(tower, "heads", cfg.heads, f"a divisor of width {cfg.width}")


def _as_cfg(cls: type, cfg: Mapping | object) -> CLIPVisionCfg | CLIPTextCfg:
    if isinstance(cfg, cls):
        return cfg
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(cfg) - set(names))
    if unknown:
        tower = "vision_cfg" if cls is CLIPVisionCfg else "text_cfg"
        raise ValueError(f"{tower}: unknown open_clip options {unknown}; open_clip 3.3.0's {cls.__name__} has "
                         f"{names}")
    return cls(**cfg)


def take_indices(num_blocks: int, indices: int | Sequence[int] | None) -> list[int]:
    """Blocks whose outputs `forward_intermediates` returns: all (None), the last n (int), or those listed."""
    if indices is None:
        return list(range(num_blocks))
    if isinstance(indices, int):
        return list(range(num_blocks - indices, num_blocks))
    return [i + num_blocks if i < 0 else i for i in indices]


class QuickGELU(nn.Module):
    """OpenAI CLIP's sigmoid approximation of GELU, x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerNorm(nn.LayerNorm):
    """LayerNorm (eps 1e-5) whose output keeps the input dtype, so autocast keeps a low-precision residual."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).to(x.dtype)


class LayerScale(nn.Module):
    """Per-channel residual-branch scale ``x * gamma`` (``gamma`` starts at `init_value`)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class PatchDropout(nn.Module):
    """Training only: keep the class token and a random ``max(1, int(N * (1 - prob)))`` of the N patch tokens."""

    def __init__(self, prob: float):
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0:
            return x
        cls, patches = x[:, :1], x[:, 1:]
        keep = max(1, int(patches.shape[1] * (1 - self.prob)))
        order = torch.rand(patches.shape[:2], device=x.device).argsort(dim=1)[:, :keep]  # [B, keep]
        patches = patches.gather(1, order.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return torch.cat([cls, patches], dim=1)


class AttentionalPooler(nn.Module):
    """open_clip's CoCa pooler: `n_queries` learned queries attend to the tokens (keys/values of `context_dim`)."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = LayerNorm(d_model)
        self.ln_k = LayerNorm(context_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, N, context_dim] -> pooled queries [B, n_queries, d_model]."""
        keys = self.ln_k(x)
        queries = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.attn(queries, keys, keys, need_weights=False)[0]


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + ls_1(attn(ln_1(x))), then x + ls_2(mlp(ln_2(x))); torch's fused-QKV attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act_layer: Any, norm_layer: Any = LayerNorm,
                 ls_init_value: float | None = None):
        super().__init__()
        self.ln_1 = norm_layer(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = norm_layer(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict(
            [("c_fc", nn.Linear(width, hidden)), ("gelu", act_layer()), ("c_proj", nn.Linear(hidden, width))]))
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.ls_1(self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """A stack of `ResidualAttentionBlock` on [B, N, C] tokens."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act_layer: Any,
                 norm_layer: Any = LayerNorm, ls_init_value: float | None = None):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, act_layer, norm_layer, ls_init_value)
             for _ in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_intermediates(x, attn_mask)[0]

    def forward_intermediates(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                              indices: Sequence[int] = (), stop_early: bool = False,
                              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final tokens and the raw outputs of the blocks in `indices` (after the last of them if `stop_early`)."""
        kept = []
        last = max(indices, default=-1) if stop_early else len(self.resblocks) - 1
        for i, block in enumerate(self.resblocks[:last + 1]):
            x = block(x, attn_mask)
            if i in indices:
                kept.append(x)
        return x, kept


def _layers(cfg: CLIPVisionCfg | CLIPTextCfg, quick_gelu: bool) -> tuple[Any, Any]:
    """The activation and norm constructors of a tower (with its ``act_kwargs`` / ``norm_kwargs``)."""
    act_layer: Any = QuickGELU if quick_gelu else nn.GELU
    norm_layer: Any = LayerNorm
    if cfg.act_kwargs is not None:
        act_layer = partial(act_layer, **cfg.act_kwargs)
    if cfg.norm_kwargs:
        norm_layer = partial(norm_layer, **cfg.norm_kwargs)
    return act_layer, norm_layer


class VisionTransformer(nn.Module):
    """open_clip's ViT image tower (``CLIP.visual``)."""

    def __init__(self, cfg: CLIPVisionCfg, output_dim: int, quick_gelu: bool):
        super().__init__()
        _check_vision(cfg)
        act_layer, norm_layer = _layers(cfg, quick_gelu)
        self.image_size = to_2tuple(cfg.image_size, "vision_cfg", "image_size")
        self.patch_size = to_2tuple(cfg.patch_size, "vision_cfg", "patch_size")
        self.grid_size = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.pool_type, self.final_ln_after_pool = cfg.pool_type, cfg.final_ln_after_pool
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=self.patch_size, stride=self.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(self.grid_size[0] * self.grid_size[1] + 1, width))
        self.patch_dropout = PatchDropout(cfg.patch_dropout) if cfg.patch_dropout > 0 else nn.Identity()
        self.ln_pre = nn.Identity() if cfg.no_ln_pre else norm_layer(width)
        self.transformer = Transformer(width, cfg.layers, width // cfg.head_width, cfg.mlp_ratio, act_layer,
                                       norm_layer, cfg.ls_init_value)
        self.attn_pool = None
        pool_dim = width
        if cfg.attentional_pool:  # final_ln_after_pool is ignored with it, as in open_clip
            self.attn_pool = AttentionalPooler(output_dim, width, cfg.attn_pooler_heads, cfg.attn_pooler_queries)
            pool_dim = output_dim
        self.ln_post = norm_layer(pool_dim)
        self.proj = nn.Parameter(torch.empty(pool_dim, output_dim))
        for param in (self.class_embedding, self.positional_embedding):  # open_clip: width**-0.5 * randn
            nn.init.normal_(param, std=width ** -0.5)
        nn.init.normal_(self.proj, std=width ** -0.5)
        if cfg.pos_embed_type == "sin_cos_2d":  # fixed, in the state dict but not trained
            self.positional_embedding.requires_grad_(False)
            self.positional_embedding.data.copy_(sincos_pos_embed_2d(width, self.grid_size)[0])

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, H, W] -> tokens [B, 1 + gh*gw, C] after patch dropout and ``ln_pre``."""
        x = self.conv1(image)  # [B, C, gh, gw]
        x = x.flatten(2).transpose(1, 2)  # [B, C, gh, gw] -> [B, gh*gw, C]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, C]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(self.patch_dropout(x))

    def _global_pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "tok":
            return x[:, 0]
        return x[:, 1:].mean(dim=1) if self.pool_type == "avg" else x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Final tokens [B, 1 + N, C] -> pooled [B, C] ([B, T, C] for ``pool_type='none'``), before ``proj``."""
        if self.attn_pool is not None:
            return self._global_pool(self.ln_post(self.attn_pool(x)))
        if self.final_ln_after_pool:
            return self.ln_post(self._global_pool(x))
        return self._global_pool(self.ln_post(x))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.pool(self.transformer(self.embed(image))) @ self.proj

    def forward_intermediates(self, image: torch.Tensor, indices: int | Sequence[int] | None = None,
                              stop_early: bool = False, normalize_intermediates: bool = False,
                              intermediates_only: bool = False, output_fmt: str = "NCHW",
                              output_extra_tokens: bool = False) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Block outputs as open_clip's ``VisionTransformer.forward_intermediates`` returns them.

        ``image_intermediates``: patch tokens of each chosen block ([B, C, gh, gw] for "NCHW",
        [B, gh*gw, C] for "NLC"), ``ln_post``-ed if `normalize_intermediates`;
        ``image_intermediates_prefix`` (with `output_extra_tokens`): their class tokens [B, 1, C];
        ``image_features`` (unless `intermediates_only`): the projected, unnormalised embedding.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        chosen = take_indices(len(self.transformer.resblocks), indices)
        x, kept = self.transformer.forward_intermediates(self.embed(image), indices=chosen,
                                                         stop_early=stop_early or intermediates_only)
        if normalize_intermediates:
            kept = [self.ln_post(t) for t in kept]
        gh, gw = image.shape[-2] // self.patch_size[0], image.shape[-1] // self.patch_size[1]
        patches = [t[:, 1:] for t in kept]
        if output_fmt == "NCHW":  # [B, gh*gw, C] -> [B, C, gh, gw]
            patches = [t.reshape(t.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous() for t in patches]
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {"image_intermediates": patches}
        if output_extra_tokens:
            out["image_intermediates_prefix"] = [t[:, :1] for t in kept]
        if not intermediates_only:
            out["image_features"] = self.pool(x) @ self.proj
        return out


class _TextTower(nn.Module):
    """open_clip's text tower: its tensors at the top level of the module that holds them (as in ``CLIP``)."""

    def build_text_tower(self, text: CLIPTextCfg, embed_dim: int, quick_gelu: bool) -> None:
        """Create the tower's modules (uninitialised projection: call `init_text_parameters` after)."""
        act_layer, norm_layer = _layers(text, quick_gelu)
        self.context_length, self.vocab_size = text.context_length, text.vocab_size
        self.text_pool_type, self.text_eos_id, self.causal = text.pool_type, text.eos_id, not text.no_causal_mask
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))
        self.transformer = Transformer(text.width, text.layers, text.heads, text.mlp_ratio, act_layer, norm_layer,
                                       text.ls_init_value)
        self.ln_final = norm_layer(text.width)
        self.text_projection: nn.Parameter | nn.Linear | None = None
        if text.proj_type != "none":
            self.text_projection = (nn.Linear(text.width, embed_dim) if text.proj_bias
                                    else nn.Parameter(torch.empty(text.width, embed_dim)))

    def init_text_parameters(self) -> None:
        """open_clip's text-tower init (the image tower keeps torch defaults and its scaled randn)."""
        width, layers = self.transformer.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std, attn_std, fc_std = width ** -0.5 * (2 * layers) ** -0.5, width ** -0.5, (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        if isinstance(self.text_projection, nn.Linear):
            nn.init.normal_(self.text_projection.weight, std=width ** -0.5)
            nn.init.zeros_(self.text_projection.bias)
        elif self.text_projection is not None:
            nn.init.normal_(self.text_projection, std=width ** -0.5)

    def _text_tokens(self, text: torch.Tensor, indices: Sequence[int] = (), stop_early: bool = False,
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Token ids [B, L] (L <= context_length) -> final tokens [B, L, W] and chosen block outputs."""
        length = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:length]
        mask = None
        if self.causal:
            mask = torch.full((length, length), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
        return self.transformer.forward_intermediates(x, mask, indices, stop_early)

    def _text_pool(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``ln_final``, then the token `text_pool_type` picks (argmax: end-of-text) -> ``text_projection``."""
        x = self.ln_final(x)
        rows = torch.arange(x.shape[0], device=x.device)
        if self.text_pool_type == "argmax":  # the end-of-text token has the highest id of each row
            x = x[rows, text.argmax(dim=-1)]
        elif self.text_pool_type == "eos":
            x = x[rows, (text == self.text_eos_id).int().argmax(dim=-1)]
        elif self.text_pool_type == "first":
            x = x[:, 0]
        elif self.text_pool_type == "last":
            x = x[:, -1]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x if self.text_projection is None else x @ self.text_projection

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids [B, L] -> text embeddings [B, embed_dim]."""
        features = self._text_pool(self._text_tokens(text)[0], text)
        return F.normalize(features, dim=-1) if normalize else features


class CLIPTextTransformer(_TextTower):
    """CLIP's text tower alone, with `CLIP`'s tensor names and init, to pair with another encoder (FLAP).

    ``CLIPTextTransformer(embed_dim, text_cfg, quick_gelu)``; ``model(text)`` = ``encode_text(text)``:
    token ids [B, L] (the CLIP BPE tokenizer's) -> [B, embed_dim], not normalised.
    """

    def __init__(self, embed_dim: int, text_cfg: Mapping | CLIPTextCfg, quick_gelu: bool = False):
        super().__init__()
        text = _as_cfg(CLIPTextCfg, text_cfg)
        _check_text(text)
        self.build_text_tower(text, embed_dim, quick_gelu)
        self.init_text_parameters()

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.encode_text(text)


class CLIP(_TextTower):
    """open_clip's ``CLIP``: ViT image tower ``visual``, text tower at top level, ``logit_scale``.

    ``CLIP(embed_dim, vision_cfg, text_cfg, quick_gelu, init_logit_scale, init_logit_bias,
    nonscalar_logit_scale)`` takes open_clip's model-config content (the ``model_configs/*.json``
    dicts). Calling conventions:
        ``image_features, text_features, logit_scale = model(image, text)`` (features L2-normalised,
        ``logit_scale`` already exponentiated; ``logit_bias`` appended when the model has one);
        ``encode_image`` / ``encode_text`` (``normalize=False`` by default); ``get_logits(image,
        text)`` -> (logits_per_image, logits_per_text); ``forward_intermediates`` for block outputs
        of either tower.
    """

    def __init__(self, embed_dim: int, vision_cfg: Mapping | CLIPVisionCfg, text_cfg: Mapping | CLIPTextCfg,
                 quick_gelu: bool = False, init_logit_scale: float = math.log(1 / 0.07),
                 init_logit_bias: float | None = None, nonscalar_logit_scale: bool = False):
        super().__init__()
        vision, text = _as_cfg(CLIPVisionCfg, vision_cfg), _as_cfg(CLIPTextCfg, text_cfg)
        _check_text(text)
        self.config = {"embed_dim": embed_dim, "vision_cfg": asdict(vision), "text_cfg": asdict(text),
                       "quick_gelu": quick_gelu, "init_logit_scale": init_logit_scale}
        if init_logit_bias is not None or nonscalar_logit_scale:
            self.config.update(init_logit_bias=init_logit_bias, nonscalar_logit_scale=nonscalar_logit_scale)
        self.arch = type(self).__name__
        self.visual = VisionTransformer(vision, embed_dim, quick_gelu)
        self.build_text_tower(text, embed_dim, quick_gelu)
        shape = [1] if nonscalar_logit_scale else []
        self.logit_scale = nn.Parameter(torch.full(shape, float(init_logit_scale)))
        self.logit_bias = (nn.Parameter(torch.full(shape, float(init_logit_bias))) if init_logit_bias is not None
                           else None)
        image_size = self.visual.image_size
        self.preprocess = {"image_size": image_size[0] if image_size[0] == image_size[1] else list(image_size),
                           "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest", "crop_pct": 1.0,
                           "tokenizer": "clip_bpe", "context_length": text.context_length}
        self.init_text_parameters()

    @torch.jit.ignore
    def no_weight_decay(self) -> list[str]:
        """Parameter names open_clip excludes from weight decay (besides gains, biases and logit_scale)."""
        return ["positional_embedding", "visual.positional_embedding", "visual.class_embedding"]

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images [B, 3, H, W] (OpenAI mean/std normalised) -> image embeddings [B, embed_dim]."""
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def get_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled cosine similarities (+ ``logit_bias``): logits_per_image [B_img, B_txt] and its transpose."""
        image_features, text_features, scale = self(image, text)[:3]
        logits = scale * image_features @ text_features.T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, logits.T

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None) -> tuple:
        """(normalised image features, normalised text features, exp(logit_scale)[, logit_bias]); a missing input
        gives None."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        if self.logit_bias is not None:
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()

    def forward_intermediates(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None,
                              image_indices: int | Sequence[int] | None = None,
                              text_indices: int | Sequence[int] | None = None, stop_early: bool = False,
                              normalize: bool = True, normalize_intermediates: bool = False,
                              intermediates_only: bool = False, image_output_fmt: str = "NCHW",
                              image_output_extra_tokens: bool = False, output_logits: bool = False,
                              ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Block outputs of both towers, with open_clip's keys and semantics.

        Image keys as `VisionTransformer.forward_intermediates`; ``text_intermediates`` [B, L, W]
        (``ln_final``-ed if `normalize_intermediates`); ``image_features`` / ``text_features``
        (L2-normalised if `normalize`) and, with `output_logits`, ``image_logits`` / ``text_logits``.
        `intermediates_only` returns block outputs only.
        """
        if intermediates_only:
            normalize = output_logits = False
        if output_logits and (image is None or text is None):
            raise ValueError("output_logits=True needs both image and text")
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        if image is not None:
            out.update(self.visual.forward_intermediates(
                image, image_indices, stop_early, normalize_intermediates, intermediates_only, image_output_fmt,
                image_output_extra_tokens))
            if normalize and "image_features" in out:
                out["image_features"] = F.normalize(out["image_features"], dim=-1)
        if text is not None:
            chosen = take_indices(len(self.transformer.resblocks), text_indices)
            x, kept = self._text_tokens(text, chosen, stop_early=stop_early or intermediates_only)
            out["text_intermediates"] = [self.ln_final(t) for t in kept] if normalize_intermediates else kept
            if not intermediates_only:
                features = self._text_pool(x, text)
                out["text_features"] = F.normalize(features, dim=-1) if normalize else features
        if output_logits:
            out["image_logits"] = self.logit_scale.exp() * out["image_features"] @ out["text_features"].T
            if self.logit_bias is not None:
                out["image_logits"] = out["image_logits"] + self.logit_bias
            out["text_logits"] = out["image_logits"].T
        return out


# --------------------------------------------------------------------------- checkpoints

# Tensors of OpenAI's original state dicts that open_clip drops too (sizes, not weights).
_OPENAI_SIZE_KEYS = ("input_resolution", "context_length", "vocab_size")


def load_official_state(model: CLIP, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """Load an open_clip / MetaCLIP checkpoint into `model`, strictly.

    Accepts a state dict, a .safetensors file (open_clip's ``open_clip_model.safetensors``) or a
    .pt/.bin read with ``weights_only=True`` (MetaCLIP's releases are open_clip training
    checkpoints: ``{"epoch", "name", "state_dict": {"module.…": …}, …}``; the ``state_dict`` is
    unwrapped and the DDP ``module.`` prefix removed, as open_clip's ``load_checkpoint`` does).
    OpenAI's size entries are dropped and a one-element ``logit_scale`` / ``logit_bias`` takes the model's
    shape. Anything else that does not fit raises, naming the keys; a checkpoint for another image size needs its
    position table resized first.
    """
    state = read_state(state_or_path)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    report = LoadReport(source_format="open_clip")
    report.dropped = sorted(k for k in state if k in _OPENAI_SIZE_KEYS)
    state = {k: v for k, v in state.items() if k not in report.dropped}
    for key in ("logit_scale", "logit_bias"):  # some releases store them as shape [1], some as scalars
        param = getattr(model, key, None)
        if key in state and param is not None and state[key].numel() == 1 == param.numel():
            state[key] = state[key].reshape(param.shape)
    check_fit(model, state, model.arch, hint="pick the variant the checkpoint was trained as (`percli ls models`)")
    model.load_state_dict(state, strict=True)
    return report


# --------------------------------------------------------------------------- registered variants

_TEXT_77 = {"context_length": 77, "vocab_size": 49408}
_CONFIGS = {  # open_clip model_configs/<name>.json: embed_dim, vision_cfg, text_cfg (all quick_gelu)
    "ViT-B-32": (512, dict(layers=12, width=768, patch_size=32), dict(width=512, heads=8, layers=12)),
    "ViT-B-16": (512, dict(layers=12, width=768, patch_size=16), dict(width=512, heads=8, layers=12)),
    "ViT-L-14": (768, dict(layers=24, width=1024, patch_size=14), dict(width=768, heads=12, layers=12)),
    "ViT-H-14": (1024, dict(layers=32, width=1280, head_width=80, patch_size=14),
                 dict(width=1024, heads=16, layers=24)),
    "ViT-bigG-14": (1280, dict(layers=48, width=1664, head_width=104, mlp_ratio=4.9231, patch_size=14),
                    dict(width=1280, heads=20, layers=32)),
}


def _build(name: str, config: str, overrides: dict) -> CLIP:
    embed_dim, vision, text = _CONFIGS[config]
    args = dict(embed_dim=embed_dim, vision_cfg={"image_size": 224, **vision}, text_cfg={**_TEXT_77, **text},
                quick_gelu=True)
    model = CLIP(**{**args, **overrides})
    model.arch = name
    return model


@register_model
def clip_vit_b32_quickgelu(**kwargs) -> CLIP:
    """open_clip ``ViT-B-32-quickgelu`` (MetaCLIP ``metaclip_400m``, ``metaclip_fullcc`` 2.5B)."""
    return _build("clip_vit_b32_quickgelu", "ViT-B-32", kwargs)


@register_model
def clip_vit_b16_quickgelu(**kwargs) -> CLIP:
    """open_clip ``ViT-B-16-quickgelu`` (MetaCLIP ``metaclip_400m``, ``metaclip_fullcc``)."""
    return _build("clip_vit_b16_quickgelu", "ViT-B-16", kwargs)


@register_model
def clip_vit_l14_quickgelu(**kwargs) -> CLIP:
    """open_clip ``ViT-L-14-quickgelu`` (MetaCLIP ``metaclip_400m``, ``metaclip_fullcc``)."""
    return _build("clip_vit_l14_quickgelu", "ViT-L-14", kwargs)


@register_model
def clip_vit_h14_quickgelu(**kwargs) -> CLIP:
    """open_clip ``ViT-H-14-quickgelu`` (MetaCLIP ``metaclip_fullcc``; ``metaclip_altogether``: quick_gelu=False)."""
    return _build("clip_vit_h14_quickgelu", "ViT-H-14", kwargs)


@register_model
def clip_vit_bigg14_quickgelu(**kwargs) -> CLIP:
    """open_clip ``ViT-bigG-14-quickgelu`` (MetaCLIP ``metaclip_fullcc``)."""
    return _build("clip_vit_bigg14_quickgelu", "ViT-bigG-14", kwargs)


register_loader(__name__)(load_official_state)
