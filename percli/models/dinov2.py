"""DINOv2 backbone (Oquab et al., 2023; registers: Darcet et al., 2024), official-compatible.

`DinoVisionTransformer` keeps the official constructor keywords, parameter names and outputs of
facebookresearch/dinov2@b8931f7 (``dinov2/models/vision_transformer.py``), so the released
``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` files load strictly (`load_official_state`) and
``tests/test_golden.py`` matches the official outputs:

* patch conv -> optional ``mask_token`` substitution -> [cls] -> learned pos-embed, bicubically
  interpolated to other input sizes exactly as the official code (scale-factor "offset" kludge of
  0.1 for the plain models, output size and antialias for the ``_reg`` ones) -> registers inserted
  after cls (no pos-embed) -> pre-norm blocks with LayerScale (GELU MLP, or the packed SwiGLU
  ``w12``/``w3`` of ViT-g) -> final ``norm``.
* ``forward_features`` returns the official dict; ``get_intermediate_layers`` the official tuple;
  ``forward_intermediates`` every block's tokens for percli's encoder interface.

timm ships the same weights as ``vit_*_patch14[_reg4]_dinov2`` under other names;
`convert_official_to_timm` / `convert_timm_to_official` translate, and `load_official_state`
accepts either. Images: RGB, ImageNet mean/std; the hub models are built for 518 px (37x37 patches)
and interpolate the position table to any multiple of 14.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.audio_mae import Attention, PatchEmbed  # same qkv/proj and patch-conv names
from percli.models.audio_mae_decoder import Mlp  # fc1 / GELU / fc2
from percli.models.common import LoadReport, check_fit, plain, read_state
from percli.models.hiera import DropPath  # identical stochastic depth
from percli.models.pe import LayerScale  # per-channel ``gamma``

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FFN_LAYERS = ("mlp", "swiglu", "swiglufused")
# The official block computes a residual branch on a random subset of the batch above this rate
# (cheaper than computing it for every sample and zeroing some); below it, plain per-sample DropPath.
_SUBSET_DROP_PATH_ABOVE = 0.1


# --------------------------------------------------------------------------- blocks

class SwiGLUFFN(nn.Module):
    """SwiGLU with one packed input projection: ``w3(silu(a) * b)`` where ``[a, b] = w12(x)``.

    ``hidden`` is the width after the 2/3 rule; `swiglu_hidden` computes it as the official
    ``SwiGLUFFNFused`` does (ViT-g: 4 * 1536 -> 4096).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)  # [B, N, 2H] -> 2 x [B, N, H]
        return self.w3(F.silu(gate) * value)


def swiglu_hidden(hidden: int) -> int:
    """Two thirds of the MLP width, rounded up to a multiple of 8."""
    return (int(hidden * 2 / 3) + 7) // 8 * 8


def drop_add_residual(x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor],
                      drop_rate: float) -> torch.Tensor:
    """``x + branch(x)`` for a random subset of ``(1 - drop_rate)`` of the samples, rescaled.

    The skipped samples cost nothing; the kept ones' residual is scaled by ``B / kept`` so the
    expectation matches ``x + branch(x)`` (the official large-drop-rate path).
    """
    B = x.shape[0]
    kept = max(int(B * (1 - drop_rate)), 1)
    rows = torch.randperm(B, device=x.device)[:kept]
    residual = branch(x[rows])  # [kept, N, C]
    # [B, N*C] += (B/kept) * residual at `rows`
    out = torch.index_add(x.flatten(1), 0, rows, residual.flatten(1).to(x.dtype), alpha=B / kept)
    return out.view_as(x)


class DinoBlock(nn.Module):
    """Pre-norm block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(ffn(norm2(x)))``.

    ``init_values`` None or 0 means no LayerScale (as the official ``init_values`` falsy).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, init_values: float | None = None, ffn_layer: str = "mlp"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = Mlp(dim, hidden) if ffn_layer == "mlp" else SwiGLUFFN(dim, swiglu_hidden(hidden))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path_rate = drop_path
        self.drop_path = DropPath(drop_path)

    def attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls1(self.attn(self.norm1(x)))

    def ffn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_path_rate > _SUBSET_DROP_PATH_ABOVE:
            x = drop_add_residual(x, self.attn_branch, self.drop_path_rate)
            return drop_add_residual(x, self.ffn_branch, self.drop_path_rate)
        x = x + self.drop_path(self.attn_branch(x))
        return x + self.drop_path(self.ffn_branch(x))


# --------------------------------------------------------------------------- the model

class DinoVisionTransformer(nn.Module):
    """The DINOv2 ViT backbone (official ``DinoVisionTransformer``; ``head`` is an Identity).

    Token layout: ``[cls, registers..., patches...]`` with patches in raster order; only cls and
    patches carry a position embedding. ``num_prefix_tokens`` = 1 + registers.

    Calling conventions:
        ``model(x)`` the normalised cls token [B, C]; ``model(x, masks, is_training=True)`` the
        `forward_features` dict. ``forward_features(x, masks)`` also takes lists of crops (and of
        masks), returning one dict per crop batch. ``masks`` [B, num_patches] bool, True = the
        patch embedding is replaced by ``mask_token`` (iBOT masking).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        init_values: float | None = None,
        ffn_layer: str = "mlp",
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
    ):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        if ffn_layer not in FFN_LAYERS:
            raise ValueError(f"ffn_layer must be one of {FFN_LAYERS}, got {ffn_layer!r}")
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_features = self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.num_prefix_tokens = 1 + num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.preprocess = {"input_size": [in_chans, *img_size], "mean": list(IMAGENET_MEAN),
                           "std": list(IMAGENET_STD), "interpolation": "bicubic",
                           # the official linear / k-NN evaluation: resize 256, centre crop 224 (a model
                           # smaller than that, e.g. a tiny preset's, at its own size with the same ratio)
                           "image_size": min(224, min(img_size)), "resize_mode": "shortest", "crop_pct": 224 / 256}

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) \
            if num_register_tokens else None
        rates = [drop_path_rate] * depth if drop_path_uniform else \
            [r.item() for r in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.ModuleList([
            DinoBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, rate, init_values, ffn_layer) for rate in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # stays zero at init, as official
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():  # linears only: the conv and LayerNorms keep PyTorch's init
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    # ----------------------------------------------------------------------- tokens

    def interpolate_pos_encoding(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The position table for an image of ``height x width`` pixels, [1, 1 + h*w, C].

        `tokens` [B, 1 + h*w, C] (cls + patches) only give the patch count and dtype. Arguments
        are positional-compatible with the official ``(x, w, h)``, which names the image's
        dim 2 ``w``. The table's grid is resized bicubically; with ``interpolate_offset`` the
        official passes ``scale_factor = (h + offset) / M`` (not an output size), which changes
        the sampling positions, so it is reproduced as is.
        """
        num_patches, num_table = tokens.shape[1] - 1, self.pos_embed.shape[1] - 1
        if num_patches == num_table and height == width:
            return self.pos_embed
        rows, cols = height // self.patch_size, width // self.patch_size
        return resample_pos_table(self.pos_embed, rows, cols, self.interpolate_offset,
                                  self.interpolate_antialias).to(tokens.dtype)

    def prepare_tokens_with_masks(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Images [B, 3, H, W] -> tokens [B, 1 + R + H/p*W/p, C] (cls, registers, patches)."""
        B, _, H, W = x.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"input {H}x{W} is not a multiple of the patch size {self.patch_size}; "
                             f"resize or pad it (e.g. to {H // self.patch_size * self.patch_size}x"
                             f"{W // self.patch_size * self.patch_size})")
        x = self.patch_embed(x)  # [B, L, C]
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        x = x + self.interpolate_pos_encoding(x, H, W)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], dim=1)
        return x

    # ----------------------------------------------------------------------- outputs

    def _split(self, x: torch.Tensor, masks: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
        x_norm = self.norm(x)
        return {"x_norm_clstoken": x_norm[:, 0], "x_norm_regtokens": x_norm[:, 1:self.num_prefix_tokens],
                "x_norm_patchtokens": x_norm[:, self.num_prefix_tokens:], "x_prenorm": x, "masks": masks}

    def forward_features(self, x: torch.Tensor | list[torch.Tensor],
                         masks: torch.Tensor | list[torch.Tensor | None] | None = None) -> dict | list[dict]:
        """The official feature dict: ``x_norm_clstoken`` [B, C], ``x_norm_regtokens`` [B, R, C],
        ``x_norm_patchtokens`` [B, L, C], ``x_prenorm`` [B, 1+R+L, C] and ``masks``.

        A list of crop batches (multi-crop) gives a list of dicts; the official code runs them as
        one block-diagonal xFormers batch, percli runs them one after the other (same values).
        """
        if isinstance(x, list):
            if masks is not None and not isinstance(masks, list):
                raise TypeError("with a list of crop batches, give masks as a list too (None for unmasked batches)")
            masks_list = masks if masks is not None else [None] * len(x)
            return [self.forward_features(crops, crop_masks) for crops, crop_masks in zip(x, masks_list)]
        x = self.prepare_tokens_with_masks(x, masks)
        for block in self.blocks:
            x = block(x)
        return self._split(x, masks)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output tokens [B, 1+R+L, C] (cls, registers, patches; no final norm)."""
        x = self.prepare_tokens_with_masks(x)
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def get_intermediate_layers(self, x: torch.Tensor, n: int | Sequence[int] = 1, reshape: bool = False,
                                return_class_token: bool = False, norm: bool = True) -> tuple:
        """Patch tokens of the last `n` blocks (or of the blocks listed in `n`), as the official.

        Each is [B, L, C], or [B, C, H/p, W/p] with `reshape`; with `return_class_token` each entry
        is a pair (patches, cls [B, C]). `norm` applies the final LayerNorm first.
        """
        depth = len(self.blocks)
        take = range(depth - n, depth) if isinstance(n, int) else n
        if any(not 0 <= i < depth for i in take) or (isinstance(n, int) and not 0 < n <= depth):
            raise ValueError(f"blocks {list(take)} out of range for a {depth}-block model")
        outputs = [out for i, out in enumerate(self.forward_intermediates(x)) if i in take]
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        patches = [out[:, self.num_prefix_tokens:] for out in outputs]
        if reshape:
            B, _, H, W = x.shape
            # [B, h*w, C] -> [B, h, w, C] -> [B, C, h, w]
            patches = [p.reshape(B, H // self.patch_size, W // self.patch_size, -1).permute(0, 3, 1, 2).contiguous()
                       for p in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens))
        return tuple(patches)

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None,
                is_training: bool = False) -> torch.Tensor | dict:
        """``head(x_norm_clstoken)`` [B, C], or the `forward_features` dict when `is_training`."""
        features = self.forward_features(x, masks)
        return features if is_training else self.head(features["x_norm_clstoken"])


def resample_pos_table(pos_embed: torch.Tensor, rows: int, cols: int, offset: float = 0.1,
                       antialias: bool = False) -> torch.Tensor:
    """A [1, 1 + M*M, C] position table (cls + square patch grid) resized to [1, 1 + rows*cols, C].

    The official bicubic resize: with an ``offset`` it passes ``scale_factor = (rows + offset) / M``
    (not an output size), which changes the sampling positions, so it is reproduced as is.
    """
    table = pos_embed.float()
    num_table, dim = table.shape[1] - 1, table.shape[2]
    side = math.isqrt(num_table)
    if side * side != num_table:
        raise ValueError(f"pos_embed holds {num_table} patch positions, not a square grid")
    size = {"scale_factor": ((rows + offset) / side, (cols + offset) / side)} if offset else {"size": (rows, cols)}
    # [1, M*M, C] -> [1, C, M, M] -> [1, C, rows, cols]
    grid = table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **size)
    if tuple(grid.shape[-2:]) != (rows, cols):
        raise RuntimeError(f"pos-embed interpolation gave {tuple(grid.shape[-2:])}, expected {(rows, cols)}")
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)  # [1, C, r, c] -> [1, r*c, C]
    return torch.cat([table[:, :1], patch_pos], dim=1)


class DinoLinearClassifier(nn.Module):
    """A backbone and a linear head on [cls token, mean of the patch tokens] of the last block.

    The layout and names of the official hub classifiers (``dinov2_vit*14_lc`` with ``layers=1``):
    ``backbone.*`` and ``linear_head.{weight,bias}``; ``create_model("dinov2_vits14", num_classes=N)``
    builds one. ``forward`` returns logits.
    """

    def __init__(self, backbone: DinoVisionTransformer, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.linear_head = nn.Linear(2 * backbone.embed_dim, num_classes)
        nn.init.normal_(self.linear_head.weight, std=0.01)  # as DINOv2's linear evaluation heads
        nn.init.zeros_(self.linear_head.bias)
        self.arch = backbone.arch
        self.preprocess = backbone.preprocess
        self.config = {"input_size": backbone.preprocess["input_size"][1:], "num_classes": num_classes}

    def forward(self, x: torch.Tensor, return_logits: bool = True) -> torch.Tensor:
        out = self.backbone.forward_features(x)
        return self.linear_head(torch.cat([out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(dim=1)], dim=-1))


# --------------------------------------------------------------------------- checkpoints

_SWIGLU_OFFICIAL = re.compile(r"^(blocks\.\d+\.mlp\.)(w12|w3)\.")
_MLP_TIMM = re.compile(r"^(blocks\.\d+\.mlp\.)(fc1|fc2)\.")


def convert_official_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names -> timm ``vit_*_patch14[_reg4]_dinov2`` names (what timm's loader does).

    ``mask_token`` is dropped (timm has none); the packed SwiGLU ``w12``/``w3`` become
    ``fc1``/``fc2`` (timm's ``SwiGLUPacked``); with registers timm uses a "no embed class"
    layout: ``reg_token``, the cls position folded into ``cls_token`` and ``pos_embed`` without
    its cls slot.
    """
    out = {_SWIGLU_OFFICIAL.sub(lambda m: m[1] + {"w12": "fc1", "w3": "fc2"}[m[2]] + ".", k): v
           for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return out


def convert_timm_to_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``vit_*_patch14[_reg4]_dinov2`` names -> official names (the inverse of `convert_official_to_timm`).

    A packed SwiGLU is recognised by its shapes (``fc1`` twice as wide as ``fc2``'s input). A
    ``pos_embed`` without a cls slot (square patch count) gets a zero one, the cls position
    staying folded into ``cls_token``: the outputs are the same. timm keeps no ``mask_token``, so
    none is returned (the official init is zeros).
    """
    out = dict(state)
    for key in [k for k in out if k.endswith(".mlp.fc1.weight")]:
        prefix = key.removesuffix("fc1.weight")
        if out[key].shape[0] == 2 * out[prefix + "fc2.weight"].shape[1]:
            for name in [k for k in out if k.startswith(prefix)]:
                out[_MLP_TIMM.sub(lambda m: m[1] + {"fc1": "w12", "fc2": "w3"}[m[2]] + ".", name)] = out.pop(name)
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
    pos = out.get("pos_embed")
    if pos is not None and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
        out["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)
    return out


def load_official_state(model: DinoVisionTransformer | DinoLinearClassifier,
                        state_or_path: Mapping[str, torch.Tensor] | str | Path, *,
                        resample_pos_embed: bool = False) -> LoadReport:
    """Load a released backbone (.pth read with ``weights_only=True``, .safetensors or a mapping).

    Official files load strictly. timm-named files (no ``mask_token``) are converted with
    `convert_timm_to_official`; ``mask_token`` then stays at its zero init (reported as missing).
    A training checkpoint (official ``teacher_checkpoint.pth`` or a ``percli pretrain dinov2`` step,
    keys ``teacher.backbone.*``) gives its teacher backbone, as the official evaluations use it.
    Anything else that does not fit raises, naming the keys.
    """
    state = read_state(state_or_path)
    if isinstance(model, DinoLinearClassifier):
        return _load_classifier(model, state)
    report = LoadReport()
    for prefix in ("teacher.backbone.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            report.source_format = "training checkpoint"
            break
    if "mask_token" not in state:
        state = convert_timm_to_official(state)
        report.source_format = "timm"
    hint = ""
    own_pos = model.state_dict()["pos_embed"]
    if "pos_embed" in state and state["pos_embed"].shape[1] != own_pos.shape[1] and resample_pos_embed:
        rows, cols = (n // model.patch_size for n in model.preprocess["input_size"][1:])
        state = {**state, "pos_embed": resample_pos_table(state["pos_embed"], rows, cols, model.interpolate_offset,
                                                          model.interpolate_antialias).to(own_pos.dtype)}
    elif "pos_embed" in state and state["pos_embed"].shape[1] != own_pos.shape[1]:
        side = math.isqrt(state["pos_embed"].shape[1] - 1) * model.patch_size
        hint = (f"the checkpoint's position table is for {side} px; build the model with img_size={side} "
                "(it interpolates to any input size at run time, as the official hub models)")
    tolerated = ("mask_token",) if report.source_format == "timm" else ()
    report.missing = check_fit(model, state, model.arch, tolerated=tolerated, hint=hint)
    model.load_state_dict(state, strict=False)
    return report


def _load_classifier(model: DinoLinearClassifier, state: Mapping[str, torch.Tensor]) -> LoadReport:
    """A classifier checkpoint (``backbone.*`` + ``linear_head.*``) or any backbone file (the head then
    stays at init, reported missing). The position table is resampled to the classifier's input size
    with the official interpolation, so a 518 px release finetunes at 224 px (or any size)."""
    head = {k.removeprefix("linear_head."): v for k, v in state.items() if k.startswith("linear_head.")}
    report = load_official_state(model.backbone, {k: v for k, v in state.items() if not k.startswith("linear_head.")},
                                 resample_pos_embed=True)
    own = model.linear_head.state_dict()
    if head and all(k in head and head[k].shape == v.shape for k, v in own.items()):
        model.linear_head.load_state_dict(head)
    else:  # a new head: a backbone file, or another number of classes
        report.missing = [*report.missing, "linear_head.weight", "linear_head.bias"]
        report.dropped = [*report.dropped, *(f"linear_head.{k}" for k in head)]
        report.head_reset = bool(head)
    return report


# --------------------------------------------------------------------------- registered variants

_SIZES = {  # embed_dim, depth, num_heads, ffn_layer (the official vit_small/base/large/giant2)
    "s": (384, 12, 6, "mlp"),
    "b": (768, 12, 12, "mlp"),
    "l": (1024, 24, 16, "mlp"),
    "g": (1536, 40, 24, "swiglufused"),
}


def _build(name: str, size: str, registers: bool, overrides: dict) -> DinoVisionTransformer | DinoLinearClassifier:
    """A released configuration; ``num_classes=N`` wraps it in a `DinoLinearClassifier`."""
    dim, depth, heads, ffn = _SIZES[size]
    # as the torch.hub entry points build the released models
    args = dict(img_size=518, patch_size=14, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=4,
                init_values=1.0, ffn_layer=ffn, num_register_tokens=4 if registers else 0,
                interpolate_antialias=registers, interpolate_offset=0.0 if registers else 0.1)
    num_classes = overrides.pop("num_classes", 0)
    model = DinoVisionTransformer(**{**args, **overrides})
    model.arch = name
    return DinoLinearClassifier(model, num_classes) if num_classes else model


@register_model
def dinov2_vits14(**kwargs) -> DinoVisionTransformer:
    return _build("dinov2_vits14", "s", False, kwargs)


@register_model
def dinov2_vitb14(**kwargs) -> DinoVisionTransformer:
    return _build("dinov2_vitb14", "b", False, kwargs)


@register_model
def dinov2_vitl14(**kwargs) -> DinoVisionTransformer:
    return _build("dinov2_vitl14", "l", False, kwargs)


@register_model
def dinov2_vitg14(**kwargs) -> DinoVisionTransformer:
    return _build("dinov2_vitg14", "g", False, kwargs)


@register_model
def dinov2_vits14_reg(**kwargs) -> DinoVisionTransformer:
    return _build("dinov2_vits14_reg", "s", True, kwargs)


@register_model
def dinov2_vitb14_reg(**kwargs) -> DinoVisionTransformer:
    return _build("dinov2_vitb14_reg", "b", True, kwargs)


@register_model
def dinov2_vitl14_reg(**kwargs) -> DinoVisionTransformer:
    return _build("dinov2_vitl14_reg", "l", True, kwargs)


@register_model
def dinov2_vitg14_reg(**kwargs) -> DinoVisionTransformer:
    return _build("dinov2_vitg14_reg", "g", True, kwargs)


register_loader(__name__)(load_official_state)
