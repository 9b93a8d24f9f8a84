"""Perception Encoder (Bolya et al., 2025): the PE vision transformer and the PE-Core CLIP.

Parameter names, shapes, constructor keywords and outputs follow the official release
(facebookresearch/perception_models@3e352cc, ``core/vision_encoder/pe.py``), so the released
``.pt`` files load strictly (`load_official_state`) and ``tests/test_golden.py`` matches the
official outputs.

* `PEVisionTransformer`: patch conv (no bias) -> [cls] -> learned absolute pos-embed (bilinearly
  resized for other input sizes) -> ``ln_pre`` -> pre-norm blocks with 2D RoPE on q/k and optional
  LayerScale -> ``ln_post`` -> attention pooling (one learned probe) -> ``@ proj``. PE-Lang and
  PE-Spatial drop pooling, ``ln_post`` and the projection and return every token.
* `PETextTransformer`: causal CLIP text tower (argmax/EOT pooling, ``@ text_projection``).
* `PECLIP`: the text tower with ``visual`` and ``logit_scale`` attached; as in the official class
  the text tensors sit at the top level of the state dict and the vision tensors under ``visual.``.

Images are RGB scaled by mean/std 0.5 and squashed (no crop) to ``image_size``; text is CLIP BPE
(`percli.models.clip_tokenizer`), padded with 0, EOT being the largest id in each row.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.common import LoadReport, check_fit, plain, read_state
from percli.models.hiera import DropPath  # identical stochastic depth

PE_MEAN = (0.5, 0.5, 0.5)
PE_STD = (0.5, 0.5, 0.5)
ROPE_THETA = 10000.0
POOL_TYPES = ("attn", "tok", "avg", "none")


# --------------------------------------------------------------------------- 2D RoPE


def rope_axis_angles(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Rotation angles of 1-D RoPE over ``dim`` channels: [N] -> [N, dim], each frequency used by a pair.

    Frequencies theta^(-2i/dim), i < dim/2, repeated for the two channels of an interleaved pair.
    """
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2, device=positions.device).float() / dim))
    return (positions.float()[:, None] * inv_freq[None, :]).repeat_interleave(2, dim=-1)


def rope_2d_angles(grid_h: int, grid_w: int, head_dim: int, cls_token: bool,
                   device: torch.device | None = None) -> torch.Tensor:
    """Angle table of PE's 2D RoPE, float32 [1, cls_token + grid_h * grid_w, head_dim].

    The first half of a head's channels rotates with the patch column, the second half with the
    row (each half is 1-D RoPE over head_dim/2 channels). With a cls token, patch positions start
    at 1 and the cls row is all zeros (not rotated).
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
    offset = int(cls_token)
    cols = rope_axis_angles(torch.arange(grid_w, device=device) + offset, head_dim // 2)  # [gw, hd/2]
    rows = rope_axis_angles(torch.arange(grid_h, device=device) + offset, head_dim // 2)  # [gh, hd/2]
    grid = torch.cat([cols[None, :, :].expand(grid_h, -1, -1), rows[:, None, :].expand(-1, grid_w, -1)], dim=-1)
    angles = grid.reshape(grid_h * grid_w, head_dim)  # row-major, as the patch tokens
    if cls_token:
        angles = torch.cat([angles.new_zeros(1, head_dim), angles], dim=0)
    return angles[None]


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (x0, x1) of x [B, heads, N, hd] by angles [1, N, hd] (in float32)."""
    angles = angles[:, None]  # [1, 1, N, hd], broadcast over heads
    pairs = x.unflatten(-1, (-1, 2))  # [B, h, N, hd/2, 2]
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (x * angles.cos() + rotated * angles.sin()).to(x.dtype)


# --------------------------------------------------------------------------- blocks


class PEAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter names (packed q/k/v projection).

    Self-attention optionally with 2D RoPE (vision) or a causal mask (text); cross-attention when
    ``context`` is given (attention pooling: q from the probe, k/v from the tokens).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, rope: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        B, N, C = x.shape
        if context is None:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
            q, k, v = qkv.view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, h, N, hd]
        else:
            w_q, w_kv = self.in_proj_weight.split([C, 2 * C])
            b_q, b_kv = self.in_proj_bias.split([C, 2 * C])
            q = F.linear(x, w_q, b_q).view(B, N, self.heads, self.head_dim).transpose(1, 2)  # [B, h, N, hd]
            kv = F.linear(context, w_kv, b_kv).view(B, context.shape[1], 2, self.heads, self.head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4)  # 2 x [B, h, M, hd]
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.head_dim**-0.5)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, C))  # [B, h, N, hd] -> [B, N, C]


def gelu_mlp(dim: int, hidden: int) -> nn.Sequential:
    """Two-layer exact-GELU MLP named ``c_fc`` / ``c_proj`` as in CLIP."""
    return nn.Sequential(OrderedDict(c_fc=nn.Linear(dim, hidden), gelu=nn.GELU(), c_proj=nn.Linear(hidden, dim)))


class LayerScale(nn.Module):
    """Per-channel residual-branch scale ``gamma``."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x += ls_1(attn(ln_1(x))); x += ls_2(mlp(ln_2(x)))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, ls_init_value: float | None = None,
                 drop_path: float = 0.0):
        super().__init__()
        self.attn = PEAttention(width, heads)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.drop_path = DropPath(drop_path)
        self.mlp = gelu_mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path(self.ls_1(self.attn(self.ln_1(x), rope=rope, causal=causal)))
        return x + self.drop_path(self.ls_2(self.mlp(self.ln_2(x))))


class Transformer(nn.Module):
    """A stack of `ResidualAttentionBlock` (every block gets the same drop-path rate, as officially)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0,
                 ls_init_value: float | None = None, drop_path: float = 0.0):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, ls_init_value, drop_path) for _ in range(layers))

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, causal: bool = False,
                layer_idx: int = -1) -> torch.Tensor:
        """Run the blocks up to and including ``layer_idx`` (negative counts from the end)."""
        stop = layer_idx % len(self.resblocks)
        for block in self.resblocks[: stop + 1]:
            x = block(x, rope, causal)
        return x

    def forward_intermediates(self, x: torch.Tensor, rope: torch.Tensor | None = None,
                              causal: bool = False) -> list[torch.Tensor]:
        """Every block's output."""
        outs = []
        for block in self.resblocks:
            x = block(x, rope, causal)
            outs.append(x)
        return outs


class AttentionPooling(nn.Module):
    """Learned probes attend to the tokens, then a residual MLP: probe_out + mlp(layernorm(probe_out)).

    No residual around the attention and no norm on the attended tokens (as officially).
    """

    def __init__(self, embed_dim: int, num_heads: int, num_probe: int = 1, mlp_ratio: float = 4.0):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, num_probe, embed_dim))
        self.attn = PEAttention(embed_dim, num_heads)
        self.layernorm = nn.LayerNorm(embed_dim)
        self.mlp = gelu_mlp(embed_dim, int(embed_dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1).to(x.dtype)  # [B, num_probe, C]
        x = self.attn(probe, context=x)
        return x + self.mlp(self.layernorm(x))


# --------------------------------------------------------------------------- vision tower


class PEVisionTransformer(nn.Module):
    """The PE vision encoder (official ``VisionTransformer``; same keywords and defaults).

    Args:
        patch_size, width, layers, heads, mlp_ratio: ViT geometry (MLP hidden = int(width * mlp_ratio)).
        use_ln_pre / use_ln_post: LayerNorm after the embedding / on the final tokens.
        ls_init_value: LayerScale init (None = no LayerScale).
        drop_path: stochastic depth rate of every block.
        image_size: pretraining size; sets the abs pos-embed grid. Other sizes work (pos-embed is
            resized bilinearly, RoPE is rebuilt for the new grid).
        use_abs_posemb / use_rope2d / use_cls_token: position encodings and the [cls] token.
        output_dim: projection width (None = no projection).
        attn_pooler_heads: heads of the attention pooling.
        pool_type: "attn" (probe), "tok" (first token), "avg" (mean) or "none" (all tokens).

    ``forward(x)`` -> [B, output_dim] (or [B, N, width] with pool_type "none");
    ``forward_features(x, norm, layer_idx, strip_cls_token)`` tokens as officially;
    ``forward_intermediates(x)`` every block's tokens.
    """

    def __init__(
        self,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        use_ln_pre: bool = True,
        use_ln_post: bool = True,
        ls_init_value: float | None = None,
        drop_path: float = 0.0,
        image_size: int = 448,
        use_abs_posemb: bool = True,
        use_rope2d: bool = True,
        use_cls_token: bool = False,
        output_dim: int | None = 1280,
        attn_pooler_heads: int = 8,
        pool_type: str = "attn",
    ):
        args = dict(locals())  # before anything else is bound: exactly the constructor arguments
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        if pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type must be one of {POOL_TYPES}, got {pool_type!r}")
        self.patch_size, self.width, self.heads, self.image_size = patch_size, width, heads, image_size
        self.use_cls_token, self.use_abs_posemb, self.use_rope2d = use_cls_token, use_abs_posemb, use_rope2d
        self.pool_type, self.output_dim = pool_type, output_dim or width
        self.posemb_grid_size = image_size // patch_size
        # the keys CLIP declares (read by percli.core.data.transforms.ImagePreprocess), plus input_size
        self.preprocess = {"image_size": image_size, "input_size": [3, image_size, image_size], "mean": list(PE_MEAN),
                           "std": list(PE_STD), "interpolation": "bilinear", "resize_mode": "squash",
                           "crop_pct": 1.0}

        # own tensors first: this is the official state-dict order
        scale = width**-0.5
        if use_cls_token:
            self.class_embedding = nn.Parameter(scale * torch.randn(width))
        if use_abs_posemb:
            self.positional_embedding = nn.Parameter(
                scale * torch.randn(int(use_cls_token) + self.posemb_grid_size**2, width))
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim)) if output_dim is not None else None
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.ln_pre = nn.LayerNorm(width) if use_ln_pre else nn.Identity()
        self.ln_post = nn.LayerNorm(width) if use_ln_post else nn.Identity()
        self.transformer = Transformer(width, layers, heads, mlp_ratio, ls_init_value, drop_path)
        self.attn_pool = AttentionPooling(width, attn_pooler_heads) if pool_type == "attn" else None
        if use_rope2d and (width // heads) % 4:
            raise ValueError(f"2D RoPE needs a head dim (width / heads) divisible by 4, got {width // heads}")

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    def rope_angles(self, grid_h: int, grid_w: int, device: torch.device | None = None) -> torch.Tensor | None:
        """The 2D RoPE angle table for a grid_h x grid_w patch grid (None without RoPE)."""
        if not self.use_rope2d:
            return None
        return rope_2d_angles(grid_h, grid_w, self.width // self.heads, self.use_cls_token, device)

    def sample_abs_posemb(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Absolute pos-embed [1, cls + grid_h * grid_w, width], bilinearly resized (cls row kept)."""
        table = self.positional_embedding
        if (grid_h, grid_w) == (self.posemb_grid_size,) * 2:
            return table[None]
        cls_row, table = table[: int(self.use_cls_token)], table[int(self.use_cls_token):]
        side = self.posemb_grid_size
        table = table.reshape(1, side, side, self.width).permute(0, 3, 1, 2)  # [1, C, side, side]
        table = F.interpolate(table, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        table = table.permute(0, 2, 3, 1).reshape(grid_h * grid_w, self.width)  # [gh * gw, C]
        return torch.cat([cls_row, table], dim=0)[None]

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens after ln_pre [B, cls + gh * gw, C] and the RoPE angles for their grid."""
        B, _, H, W = x.shape
        grid_h, grid_w = H // self.patch_size, W // self.patch_size
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [B, C, gh, gw] -> [B, gh * gw, C]
        if self.use_cls_token:
            x = torch.cat([self.class_embedding.view(1, 1, -1).expand(B, -1, -1), x], dim=1)
        if self.use_abs_posemb:
            x = x + self.sample_abs_posemb(grid_h, grid_w)
        return self.ln_pre(x), self.rope_angles(grid_h, grid_w, x.device)

    def forward_features(self, x: torch.Tensor, norm: bool = False, layer_idx: int = -1,
                         strip_cls_token: bool = False) -> torch.Tensor:
        """Tokens [B, N, width] after block ``layer_idx`` (cls first if any); ``norm`` applies ln_post."""
        x, rope = self._embed(x)
        x = self.transformer(x, rope=rope, layer_idx=layer_idx)
        if norm:
            x = self.ln_post(x)
        if strip_cls_token and self.use_cls_token:
            x = x[:, 1:]
        return x

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output tokens [B, N, width] (cls first if any, no ln_post)."""
        x, rope = self._embed(x)
        return self.transformer.forward_intermediates(x, rope=rope)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Pool normalised tokens [B, N, C] to [B, C] (``pool_type`` "none": unchanged)."""
        if self.pool_type == "attn":
            return self.attn_pool(x).squeeze(1)
        if self.pool_type == "tok":
            return x[:, 0]
        if self.pool_type == "avg":
            return x.mean(dim=1)
        return x

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_post -> pool -> projection, from the last block's tokens."""
        x = self.pool(self.ln_post(tokens))
        return x @ self.proj if self.proj is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image embedding [B, output_dim] (not normalised), or all tokens with pool_type "none"."""
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- text tower and CLIP


class PETextTransformer(nn.Module):
    """The PE CLIP text tower (official ``TextTransformer`` with its released options).

    Token + learned position embedding (sliced to the sequence length), causal blocks, ``ln_final``,
    the EOT token (largest id of each row) ``@ text_projection``.
    """

    def __init__(self, context_length: int = 72, vocab_size: int = 49408, width: int = 512, heads: int = 8,
                 layers: int = 12, mlp_ratio: float = 4.0, ls_init_value: float | None = None,
                 output_dim: int = 1280):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        self.context_length, self.vocab_size = context_length, vocab_size
        # the official code leaves these two uninitialised (torch.empty); open_clip's init is used here
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.text_projection = nn.Parameter(torch.randn(width, output_dim) * width**-0.5)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, ls_init_value)
        self.ln_final = nn.LayerNorm(width)

    def _embed_text(self, text: torch.Tensor) -> torch.Tensor:
        if text.shape[1] > self.context_length:
            raise ValueError(f"text has {text.shape[1]} tokens; this model takes at most {self.context_length}")
        return self.token_embedding(text) + self.positional_embedding[: text.shape[1]]  # [B, L, width]

    def text_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """All token states after ``ln_final`` [B, L, width], before pooling and projection."""
        return self.ln_final(self.transformer(self._embed_text(text), causal=True))

    def pool_text(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The EOT token's state (largest id of each row) ``@ text_projection``: [B, output_dim]."""
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), text.argmax(dim=-1)] @ self.text_projection

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text embedding [B, output_dim] of token ids [B, L] (L <= context_length)."""
        x = self.pool_text(self.text_tokens(text), text)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.encode_text(text)


class PECLIP(PETextTransformer):
    """PE-Core CLIP: image tower ``visual``, text tower at the top level (official key layout), ``logit_scale``.

    Args:
        vision_cfg: `PEVisionTransformer` keywords.
        text_cfg: `PETextTransformer` keywords.
        init_logit_scale: initial log of the inverse temperature.

    ``forward(image, text)`` -> (normalised image features, normalised text features, logit_scale.exp())
    as officially; ``logits = scale * image_features @ text_features.T``.
    """

    def __init__(self, vision_cfg: Mapping, text_cfg: Mapping, init_logit_scale: float = math.log(1 / 0.07)):
        super().__init__(**text_cfg)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.visual = PEVisionTransformer(**vision_cfg)
        self.config = {"vision_cfg": dict(self.visual.config), "text_cfg": {k: plain(v) for k, v in text_cfg.items()},
                       "init_logit_scale": float(init_logit_scale)}
        self.arch = type(self).__name__
        self.preprocess = {**self.visual.preprocess, "context_length": self.context_length}

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image embedding [B, output_dim] of normalised images [B, 3, H, W]."""
        x = self.visual(image)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_video(self, video: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Video embedding [B, output_dim]: the mean of the frame embeddings of video [B, T, 3, H, W]."""
        frames = self.encode_image(video.flatten(0, 1), normalize=normalize)  # [B * T, D]
        return frames.unflatten(0, video.shape[:2]).mean(dim=1)

    def forward_intermediates(self, image: torch.Tensor | None = None,
                              text: torch.Tensor | None = None) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """Every block's tokens of each given tower and the (unnormalised) embeddings computed from them.

        Keys: ``image_intermediates`` ([B, N, width] each, cls first, no ln_post), ``image_features``,
        ``text_intermediates`` ([B, L, width] each, before ln_final), ``text_features``.
        """
        out: dict[str, list[torch.Tensor] | torch.Tensor] = {}
        if image is not None:
            blocks = self.visual.forward_intermediates(image)
            out.update(image_intermediates=blocks, image_features=self.visual.forward_head(blocks[-1]))
        if text is not None:
            blocks = self.transformer.forward_intermediates(self._embed_text(text), causal=True)
            out.update(text_intermediates=blocks, text_features=self.pool_text(self.ln_final(blocks[-1]), text))
        return out

    def forward(self, image: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.logit_scale.exp()


# --------------------------------------------------------------------------- checkpoints


def load_official_state(model: PEVisionTransformer | PECLIP,
                        state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """Load a released PE checkpoint (``.pt`` read with ``weights_only=True``, ``.safetensors`` or a mapping).

    A CLIP file (``visual.*`` + text keys) loads into `PECLIP`, or into a `PEVisionTransformer`
    (its text tower and ``logit_scale`` are then reported as dropped); a vision-only file loads into
    a `PEVisionTransformer`. ``state_dict``/``weights`` wrappers and DDP ``module.`` prefixes are
    removed as officially. Anything else that does not fit raises, naming the keys.
    """
    state = read_state(state_or_path)
    if isinstance(state.get("weights"), Mapping):
        state = state["weights"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    report = LoadReport()
    if isinstance(model, PEVisionTransformer) and any(k.startswith("visual.") for k in state):
        report.dropped = sorted(k for k in state if not k.startswith("visual."))
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    check_fit(model, state, model.arch, hint="a vision-only file? load it into a PEVisionTransformer"
              if isinstance(model, PECLIP) else "")
    model.load_state_dict(state, strict=True)
    return report


# --------------------------------------------------------------------------- released configs

# vision towers of the released models (official PE_VISION_CONFIG), by official name
_CORE = dict(mlp_ratio=4.0, pool_type="attn", use_cls_token=True)
_G14 = dict(image_size=448, patch_size=14, width=1536, layers=50, heads=16, mlp_ratio=8960 / 1536)
VISION_CONFIGS: dict[str, dict] = {
    "PE-Core-T16-384": dict(_CORE, image_size=384, patch_size=16, width=192, layers=12, heads=3, output_dim=512),
    "PE-Core-S16-384": dict(_CORE, image_size=384, patch_size=16, width=384, layers=12, heads=6, output_dim=512),
    "PE-Core-B16-224": dict(_CORE, image_size=224, patch_size=16, width=768, layers=12, heads=12, output_dim=1024),
    "PE-Core-L14-336": dict(_CORE, image_size=336, patch_size=14, width=1024, layers=24, heads=16, output_dim=1024),
    "PE-Core-G14-448": dict(_G14, pool_type="attn", output_dim=1280, use_cls_token=False),
}
# PE-Lang / PE-Spatial: a Core tower without pooling, ln_post and projection (Lang: truncated, LayerScale 0.1)
_DENSE = dict(pool_type="none", use_ln_post=False, output_dim=None)
VISION_CONFIGS.update({
    "PE-Lang-G14-448": dict(VISION_CONFIGS["PE-Core-G14-448"], **_DENSE, ls_init_value=0.1, layers=47),
    "PE-Lang-L14-448": dict(VISION_CONFIGS["PE-Core-L14-336"], **_DENSE, image_size=448, ls_init_value=0.1,
                            layers=23),
    "PE-Spatial-G14-448": dict(VISION_CONFIGS["PE-Core-G14-448"], **_DENSE, ls_init_value=0.1),
    "PE-Spatial-L14-448": dict(VISION_CONFIGS["PE-Core-L14-336"], **_DENSE, image_size=448),
    "PE-Spatial-B16-512": dict(VISION_CONFIGS["PE-Core-B16-224"], **_DENSE, image_size=512),
    "PE-Spatial-S16-512": dict(VISION_CONFIGS["PE-Core-S16-384"], **_DENSE, image_size=512),
    "PE-Spatial-T16-512": dict(VISION_CONFIGS["PE-Core-T16-384"], **_DENSE, image_size=512),
})
_TEXT_TS = dict(context_length=32, width=512, heads=8, layers=12, output_dim=512)
_TEXT_BL = dict(context_length=32, width=1024, heads=16, layers=24, output_dim=1024)
TEXT_CONFIGS: dict[str, dict] = {
    "PE-Core-T16-384": _TEXT_TS, "PE-Core-S16-384": _TEXT_TS, "PE-Core-B16-224": _TEXT_BL,
    "PE-Core-L14-336": _TEXT_BL, "PE-Core-G14-448": dict(context_length=72, width=1280, heads=20, layers=24,
                                                         output_dim=1280),
}


def _build(official_name: str, arch: str, overrides: dict) -> PEVisionTransformer | PECLIP:
    if official_name in TEXT_CONFIGS:
        vision = {**VISION_CONFIGS[official_name], **overrides.pop("vision_cfg", {})}
        text = {**TEXT_CONFIGS[official_name], **overrides.pop("text_cfg", {})}
        model = PECLIP(vision, text, **overrides)
    else:
        model = PEVisionTransformer(**{**VISION_CONFIGS[official_name], **overrides})
    model.arch = arch
    return model


@register_model
def pe_core_t16_384(**kwargs) -> PECLIP:
    return _build("PE-Core-T16-384", "pe_core_t16_384", kwargs)


@register_model
def pe_core_s16_384(**kwargs) -> PECLIP:
    return _build("PE-Core-S16-384", "pe_core_s16_384", kwargs)


@register_model
def pe_core_b16_224(**kwargs) -> PECLIP:
    return _build("PE-Core-B16-224", "pe_core_b16_224", kwargs)


@register_model
def pe_core_l14_336(**kwargs) -> PECLIP:
    return _build("PE-Core-L14-336", "pe_core_l14_336", kwargs)


@register_model
def pe_core_g14_448(**kwargs) -> PECLIP:
    return _build("PE-Core-G14-448", "pe_core_g14_448", kwargs)


@register_model
def pe_lang_l14_448(**kwargs) -> PEVisionTransformer:
    return _build("PE-Lang-L14-448", "pe_lang_l14_448", kwargs)


@register_model
def pe_lang_g14_448(**kwargs) -> PEVisionTransformer:
    return _build("PE-Lang-G14-448", "pe_lang_g14_448", kwargs)


@register_model
def pe_spatial_t16_512(**kwargs) -> PEVisionTransformer:
    return _build("PE-Spatial-T16-512", "pe_spatial_t16_512", kwargs)


@register_model
def pe_spatial_s16_512(**kwargs) -> PEVisionTransformer:
    return _build("PE-Spatial-S16-512", "pe_spatial_s16_512", kwargs)


@register_model
def pe_spatial_b16_512(**kwargs) -> PEVisionTransformer:
    return _build("PE-Spatial-B16-512", "pe_spatial_b16_512", kwargs)


@register_model
def pe_spatial_l14_448(**kwargs) -> PEVisionTransformer:
    return _build("PE-Spatial-L14-448", "pe_spatial_l14_448", kwargs)


@register_model
def pe_spatial_g14_448(**kwargs) -> PEVisionTransformer:
    return _build("PE-Spatial-G14-448", "pe_spatial_g14_448", kwargs)


register_loader(__name__)(load_official_state)
