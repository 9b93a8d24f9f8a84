"""CLIP (Radford et al., 2021) with a ViT image tower and a causal text Transformer, open_clip-compatible.

Parameter names and shapes follow open_clip's ``CLIP`` (mlfoundations/open_clip v3.3.0,
``src/open_clip/model.py`` and ``transformer.py``), so open_clip and MetaCLIP checkpoints load
strictly: the image tower lives under ``visual.``, the text tower's tensors sit at the top level
(``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``, ``text_projection``)
beside the learnable ``logit_scale``. ``tests/test_golden.py`` checks the outputs against open_clip.

Image tower: patchify (a bias-free conv) -> [cls] + patches -> + learned positions -> ``ln_pre`` ->
pre-norm blocks -> ``ln_post`` -> the class token (``pool_type='tok'``, every released ViT
config) or the mean of the patch tokens (``'avg'``) -> ``@ proj``. Text tower: token + position
embeddings -> blocks under a causal mask -> ``ln_final`` -> the token at the highest id of each row
(the end-of-text token of the CLIP tokenizer) -> ``@ text_projection``. ``quick_gelu=True`` (OpenAI
and MetaCLIP weights) uses x * sigmoid(1.702 x) in every MLP. CoCa's attentional pooler, layer
scale and the custom attention variants of open_clip are not implemented.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.common import LoadReport, check_fit, read_state

# OpenAI CLIP's image normalisation, used by every open_clip / MetaCLIP ViT release.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPVisionCfg:
    """The open_clip ``vision_cfg`` fields percli supports (open_clip's defaults)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_width: int = 64  # heads = width // head_width
    mlp_ratio: float = 4.0
    pool_type: str = "tok"  # "tok": class token, "avg": mean of patch tokens


@dataclass
class CLIPTextCfg:
    """The open_clip ``text_cfg`` fields percli supports (open_clip's defaults)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0


def _as_cfg(cls: type, cfg: Mapping | object) -> CLIPVisionCfg | CLIPTextCfg:
    if isinstance(cfg, cls):
        return cfg
    unknown = sorted(set(cfg) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}: unsupported open_clip options {unknown}; percli's CLIP supports "
                         f"{[f.name for f in fields(cls)]} (standard ViT / causal text towers only)")
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


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); torch's fused-QKV attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act_layer: type[nn.Module]):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict(
            [("c_fc", nn.Linear(width, hidden)), ("gelu", act_layer()), ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of `ResidualAttentionBlock` on [B, N, C] tokens."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act_layer: type[nn.Module]):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, act_layer) for _ in range(layers)])

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


class VisionTransformer(nn.Module):
    """open_clip's ViT image tower (``CLIP.visual``) with class-token or average pooling."""

    def __init__(self, cfg: CLIPVisionCfg, output_dim: int, act_layer: type[nn.Module]):
        super().__init__()
        if cfg.pool_type not in ("tok", "avg"):
            raise ValueError(f"pool_type must be 'tok' or 'avg', got {cfg.pool_type!r}")
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} must be a multiple of patch_size {cfg.patch_size}")
        self.image_size, self.patch_size, self.pool_type = cfg.image_size, cfg.patch_size, cfg.pool_type
        self.grid_size = cfg.image_size // cfg.patch_size
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(self.grid_size ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, width // cfg.head_width, cfg.mlp_ratio, act_layer)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, output_dim))
        for param in (self.class_embedding, self.positional_embedding, self.proj):  # open_clip: width**-0.5 * randn
            nn.init.normal_(param, std=width ** -0.5)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, H, W] -> tokens [B, 1 + gh*gw, C] after ``ln_pre``."""
        x = self.conv1(image)  # [B, C, gh, gw]
        x = x.flatten(2).transpose(1, 2)  # [B, C, gh, gw] -> [B, gh*gw, C]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, C]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Final tokens [B, 1 + N, C] -> pooled [B, C] (``ln_post`` on every token first, as open_clip)."""
        x = self.ln_post(x)
        return x[:, 0] if self.pool_type == "tok" else x[:, 1:].mean(dim=1)

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
        gh, gw = image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size
        patches = [t[:, 1:] for t in kept]
        if output_fmt == "NCHW":  # [B, gh*gw, C] -> [B, C, gh, gw]
            patches = [t.reshape(t.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous() for t in patches]
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {"image_intermediates": patches}
        if output_extra_tokens:
            out["image_intermediates_prefix"] = [t[:, :1] for t in kept]
        if not intermediates_only:
            out["image_features"] = self.pool(x) @ self.proj
        return out


class CLIP(nn.Module):
    """open_clip's ``CLIP``: ViT image tower ``visual``, causal text tower at top level, ``logit_scale``.

    ``CLIP(embed_dim, vision_cfg, text_cfg, quick_gelu)`` takes open_clip's model-config content
    (the ``model_configs/*.json`` dicts). Calling conventions:
        ``image_features, text_features, logit_scale = model(image, text)`` (features L2-normalised,
        ``logit_scale`` already exponentiated); ``encode_image`` / ``encode_text`` (``normalize=False``
        by default); ``get_logits(image, text)`` -> (logits_per_image, logits_per_text);
        ``forward_intermediates`` for block outputs of either tower.
    """

    def __init__(self, embed_dim: int, vision_cfg: Mapping | CLIPVisionCfg, text_cfg: Mapping | CLIPTextCfg,
                 quick_gelu: bool = False, init_logit_scale: float = math.log(1 / 0.07)):
        super().__init__()
        vision, text = _as_cfg(CLIPVisionCfg, vision_cfg), _as_cfg(CLIPTextCfg, text_cfg)
        self.config = {"embed_dim": embed_dim, "vision_cfg": asdict(vision), "text_cfg": asdict(text),
                       "quick_gelu": quick_gelu, "init_logit_scale": init_logit_scale}
        self.arch = type(self).__name__
        act_layer = QuickGELU if quick_gelu else nn.GELU
        self.visual = VisionTransformer(vision, embed_dim, act_layer)
        self.context_length, self.vocab_size = text.context_length, text.vocab_size
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(torch.empty(text.context_length, text.width))
        self.transformer = Transformer(text.width, text.layers, text.heads, text.mlp_ratio, act_layer)
        self.ln_final = LayerNorm(text.width)
        self.text_projection = nn.Parameter(torch.empty(text.width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.preprocess = {"image_size": vision.image_size, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                           "interpolation": "bicubic", "resize_mode": "shortest",
                           "tokenizer": "clip_bpe", "context_length": text.context_length}
        self.init_text_parameters()

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
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @torch.jit.ignore
    def no_weight_decay(self) -> list[str]:
        """Parameter names open_clip excludes from weight decay (besides gains, biases and logit_scale)."""
        return ["positional_embedding", "visual.positional_embedding", "visual.class_embedding"]

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    # -- text tower
    def _text_tokens(self, text: torch.Tensor, indices: Sequence[int] = (), stop_early: bool = False,
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Token ids [B, L] (L <= context_length) -> final tokens [B, L, W] and chosen block outputs."""
        length = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:length]
        causal = torch.full((length, length), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
        return self.transformer.forward_intermediates(x, causal, indices, stop_early)

    def _text_pool(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``ln_final``, then the end-of-text token (the highest id of each row) -> ``@ text_projection``."""
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids [B, L] -> text embeddings [B, embed_dim]."""
        features = self._text_pool(self._text_tokens(text)[0], text)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Images [B, 3, H, W] (OpenAI mean/std normalised) -> image embeddings [B, embed_dim]."""
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def get_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled cosine similarities: logits_per_image [B_img, B_txt] and its transpose."""
        image_features, text_features, scale = self(image, text)
        logits = scale * image_features @ text_features.T
        return logits, logits.T

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(normalised image features, normalised text features, exp(logit_scale)); a missing input gives None."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
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
    OpenAI's size entries are dropped and a [1]-shaped ``logit_scale`` is read as a scalar. Anything
    else that does not fit raises, naming the keys; a checkpoint for another image size needs its
    position table resized first.
    """
    state = read_state(state_or_path)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    report = LoadReport(source_format="open_clip")
    report.dropped = sorted(k for k in state if k in _OPENAI_SIZE_KEYS)
    state = {k: v for k, v in state.items() if k not in report.dropped}
    if "logit_scale" in state and state["logit_scale"].numel() == 1:  # some releases store it as shape [1]
        state["logit_scale"] = state["logit_scale"].reshape(())
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
