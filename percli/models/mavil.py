"""MAViL ("Masked Audio-Video Learners", Huang et al., NeurIPS 2023): the audio-video ViT of AV-SUPERB.

The official MAViL repository holds no code; the only public encoder is AV-SUPERB's
``upstream_models/mavil/models_vitmm.py::VisionTransformerMM`` as ``expert.py::UpstreamExpert`` builds it
(roger-tseng/av-superb@696e269). `VisionTransformerMM` keeps its parameter names and shapes, so its
checkpoints load strictly, and ``tests/test_golden.py`` checks every output against the official code:

* audio tower: 16x16 patches of a [B, 1, T, F] Kaldi fbank (1024 x 128 -> a 64 x 8 grid, time-major),
  ``cls_token``, frozen 2-D sin-cos ``pos_embed``, ``blocks``;
* video tower: (2, 16, 16) tubelets of [B, 3, n_frm, 224, 224] clips (8 frames at 2 fps), ``cls_token_v``,
  3-D sin-cos ``pos_embed_v`` (frozen unless ``pos_train``), ``blocks_v``;
* ``av_fusion``: ``depth_av`` joint blocks ``blocks_av`` on [audio tokens, video tokens] (both CLS kept),
  pooled as [mean audio patches, mean video patches] (2E); the fine-tuned layout (``ft``, 3 fusion blocks)
  adds ``fc_norm_av`` / ``head_av``, the pretrained one (2 blocks) has no norm and no head.
  Without fusion: ``fc_norm_a`` / ``head_a`` and ``fc_norm_v`` / ``head_v`` per tower.

Nothing normalises the towers' outputs (the official class deletes timm's final ``norm``). Masking (the
fine-tune augmentation) takes the official draws as ``mask_noise_t`` / ``mask_noise_f`` / ``mask_noise_v``
or a ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from percli.models import register_loader, register_model
from percli.models.audio_mae import (
    Block,  # timm ViT block: norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2
    PatchEmbed,  # patch_embed.proj Conv2d, time-major tokens
    default_preprocess,
    finetune_masking_2d,  # the official time/frequency masking (kept rows/columns in noise order)
    random_masking,
    sincos_1d,
    sincos_pos_embed_2d,
)
from percli.models.common import LoadReport, check_fit, make_norm, plain, read_state

TUBELET = 2  # frames per video token (official: temporal kernel = stride = 2)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def sincos_pos_embed_3d(dim: int, grid: int, frames: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed video table [1, (1+) frames*grid*grid, dim] (official ``get_3d_sincos_pos_embed``).

    Token ``(t * grid + h) * grid + w`` gets ``[sincos_t (dim/4), 2-D spatial sincos (3*dim/4)]``.
    """
    if dim % 16:
        raise ValueError(f"3-D sin-cos position embedding needs a width divisible by 16, got {dim}")
    spatial = sincos_pos_embed_2d(dim // 4 * 3, (grid, grid), cls_token=False)[0]  # [H*W, 3D/4]
    temporal = sincos_1d(dim // 4, torch.arange(frames)).float()  # [T, D/4]
    # [T, 1, D/4] and [1, H*W, 3D/4] -> [T, H*W, D] -> [T*H*W, D]
    emb = torch.cat([temporal[:, None].expand(-1, grid * grid, -1),
                     spatial[None].expand(frames, -1, -1)], dim=-1).reshape(-1, dim)
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, dim), emb])
    return emb.unsqueeze(0)


def mask_keep_ids(noise: torch.Tensor, mask_prob: float) -> torch.Tensor:
    """Indices a masking with `noise` [B, L] keeps: the ``int(L * (1 - mask_prob))`` lowest-noise ones."""
    return torch.argsort(noise, dim=1)[:, :int(noise.shape[1] * (1 - mask_prob))]


class PatchEmbed3D(nn.Module):
    """Video -> tokens with one Conv3d over (TUBELET, p, p) tubelets (official ``PatchEmbed3D_new``)."""

    def __init__(self, frames: int, size: int, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        kernel = (TUBELET, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        self.grid = (frames // TUBELET, size // patch_size, size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        # [B, 3, T, H, W] -> [B, C, T/2, H/p, W/p] -> [B, T/2 * H/p * W/p, C]
        return self.proj(v).flatten(2).transpose(1, 2)


def _pool_av(xv: torch.Tensor, audio_len: int) -> torch.Tensor:
    """[B, (1+Na) + (1+Nv), E] fused tokens -> [B, 2E] = [mean audio patches, mean video patches]."""
    return torch.cat([xv[:, 1:audio_len].mean(dim=1), xv[:, audio_len + 1:].mean(dim=1)], dim=-1)


class VisionTransformerMM(nn.Module):
    """MAViL's audio-video encoder with its classifiers (official ``VisionTransformerMM`` + the expert's
    audio patch embedding for ``img_size``).

    Calling conventions:
        ``model(x, v)``: logits, [B, classes] with fusion (``head_av``; needs ``ft``), else
        ``(logits_a, logits_v)``; ``mask_t_prob`` / ``mask_f_prob`` / ``mask_v_prob`` > 0 masks first.
        ``forward_features_av(x, v)``: pooled features ([B, 2E], or ``(fa, fv)`` without fusion).
        ``forward_features_a(x)`` / ``forward_features_v(v)``: one tower's features (no-fusion layout; ``model(x,
        None)`` / ``model(None, v)`` its logits). ``avsuperb_features(x, v)``: the
        per-layer dict AV-SUPERB's expert extracts. Video longer than ``n_frm`` frames is cut to its first
        ``n_frm`` (as the official ``forward``); it must be ``video_size`` square.
    """

    def __init__(
        self,
        img_size: Sequence[int] = (1024, 128),
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: str | Callable[[int], nn.Module] = "LayerNorm",
        num_classes: int = 527,
        drop_path_rate: float = 0.1,
        global_pool: bool = True,
        mask_2d: bool = True,
        av_fusion: bool = True,
        depth_av: int = 2,
        n_frm: int = 8,
        pos_train: bool = False,
        ft: bool = False,
        video_size: int = 224,
    ):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        if not global_pool:
            raise ValueError("MAViL pools globally only (the official class asserts global_pool=True)")
        norm = make_norm(norm_layer)
        self.av_fusion, self.depth_av, self.n_frm, self.mask_2d, self.ft = av_fusion, depth_av, n_frm, mask_2d, ft
        self.num_classes, self.embed_dim = num_classes, embed_dim
        # the expert normalises each clip by its own fbank statistics (its AudioSet mean/std are commented out)
        per_clip = {"mean": None, "std": None, "norm": "(fbank - fbank.mean()) / (2 * fbank.std())"}
        self.preprocess = {"audio": default_preprocess(img_size) | per_clip,
                           "video": {"frames": n_frm, "fps": 2, "size": video_size, "mean": IMAGENET_MEAN,
                                     "std": IMAGENET_STD}}

        # parameters first, then modules: the official state_dict order
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        audio_embed = PatchEmbed(img_size, patch_size, 1, embed_dim)
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(embed_dim, audio_embed.grid), requires_grad=False)
        self.cls_token_v = nn.Parameter(torch.zeros(1, 1, embed_dim))
        video_embed = PatchEmbed3D(n_frm, video_size, patch_size, embed_dim)
        self.pos_embed_v = nn.Parameter(sincos_pos_embed_3d(embed_dim, video_embed.grid[1], video_embed.grid[0]),
                                        requires_grad=pos_train)

        def blocks(n: int, rates: Sequence[float] | None = None) -> nn.ModuleList:
            return nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=rates[i] if rates else 0.0,
                                        norm_layer=norm) for i in range(n)])

        self.patch_embed = audio_embed
        # stochastic depth in the audio tower only (timm's VisionTransformer builds it; the other towers have none)
        self.blocks = blocks(depth, [r.item() for r in torch.linspace(0, drop_path_rate, depth, device="cpu")])
        if not av_fusion:
            self.fc_norm_a, self.fc_norm_v = norm(embed_dim), norm(embed_dim)
            self.head_a, self.head_v = nn.Linear(embed_dim, num_classes), nn.Linear(embed_dim, num_classes)
        self.patch_embed_v = video_embed
        self.blocks_v = blocks(depth)
        if av_fusion:
            self.blocks_av = blocks(depth_av)
            if ft:
                self.fc_norm_av = norm(2 * embed_dim)
                self.head_av = nn.Linear(2 * embed_dim, num_classes)
        for token in (self.cls_token, self.cls_token_v):
            nn.init.trunc_normal_(token, std=0.02)
        self.apply(_vit_init)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay (as the official)."""
        return {"pos_embed", "cls_token", "pos_embed_v", "cls_token_v"}

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    # ----------------------------------------------------------------------- towers

    def embed_audio(self, x: torch.Tensor, mask_t_prob: float | None = None, mask_f_prob: float = 0.0,
                    noise_t: torch.Tensor | None = None, noise_f: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, 1, T, F] fbank -> [B, 1 + L, E] tokens (CLS first), masked when `mask_t_prob` is not None."""
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        if mask_t_prob is not None:
            if self.mask_2d:
                x = finetune_masking_2d(x, self.patch_embed.grid, mask_t_prob, mask_f_prob, noise_t, noise_f, generator)
            else:
                x = random_masking(x, mask_t_prob, noise=noise_t, generator=generator)[0]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def embed_video(self, v: torch.Tensor, mask_v_prob: float | None = None, noise_v: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, 3, T, H, W] clip (first ``n_frm`` frames used) -> [B, 1 + L, E] tokens (CLS first), masked when
        `mask_v_prob` is not None."""
        v = self.patch_embed_v(v[:, :, :self.n_frm]) + self.pos_embed_v[:, 1:]
        if mask_v_prob is not None:
            v = random_masking(v, mask_v_prob, noise=noise_v, generator=generator)[0]
        cls = (self.cls_token_v + self.pos_embed_v[:, :1]).expand(v.shape[0], -1, -1)
        return torch.cat([cls, v], dim=1)

    def _encode(self, x: torch.Tensor, v: torch.Tensor, masks: tuple[float, float, float] | None,
                noise: tuple, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        # the official masked path masks both towers whenever any rate is > 0 (draw order: t, f, v)
        mt, mf, mv = masks if masks is not None else (None, 0.0, None)
        x = self.embed_audio(x, mt, mf, noise[0], noise[1], generator)
        v = self.embed_video(v, mv, noise[2], generator)
        for blk in self.blocks:
            x = blk(x)
        for blk in self.blocks_v:
            v = blk(v)
        return x, v

    # ----------------------------------------------------------------------- pooled features and heads

    def forward_features_av(self, x: torch.Tensor, v: torch.Tensor, mask_t_prob: float = 0.0,
                            mask_f_prob: float = 0.0, mask_v_prob: float = 0.0, *,
                            mask_noise_t: torch.Tensor | None = None, mask_noise_f: torch.Tensor | None = None,
                            mask_noise_v: torch.Tensor | None = None, generator: torch.Generator | None = None
                            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pooled features: [B, 2E] with fusion (through ``fc_norm_av`` in the fine-tuned layout), else
        ``(fc_norm_a(mean audio patches), fc_norm_v(mean video patches))``, each [B, E].

        Args:
            x: [B, 1, T, F] normalised fbank; v: [B, 3, >= n_frm, H, W] normalised clip.
            mask_t_prob / mask_f_prob / mask_v_prob: masking rates of audio time rows, audio frequency columns
                and video tokens (all 0: no masking).
            mask_noise_t [B, T/p], mask_noise_f [B, F/p], mask_noise_v [B, Lv]: the official draws; drawn from
                `generator` in that order when omitted.
        """
        masked = mask_t_prob > 0.0 or mask_f_prob > 0.0 or mask_v_prob > 0.0
        x, v = self._encode(x, v, (mask_t_prob, mask_f_prob, mask_v_prob) if masked else None,
                            (mask_noise_t, mask_noise_f, mask_noise_v), generator)
        if not self.av_fusion:
            return self.fc_norm_a(x[:, 1:].mean(dim=1)), self.fc_norm_v(v[:, 1:].mean(dim=1))
        xv = torch.cat([x, v], dim=1)  # [B, (1+Na) + (1+Nv), E]
        for blk in self.blocks_av:
            xv = blk(xv)
        pooled = _pool_av(xv, x.shape[1])
        return self.fc_norm_av(pooled) if self.ft else pooled

    def forward_features_av_mask(self, x: torch.Tensor, v: torch.Tensor, mask_t_prob: float, mask_f_prob: float,
                                 mask_v_prob: float, **noise: torch.Tensor | torch.Generator | None
                                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The official name of the masked `forward_features_av` (same arguments)."""
        return self.forward_features_av(x, v, mask_t_prob, mask_f_prob, mask_v_prob, **noise)

    def forward_features_a(self, x: torch.Tensor) -> torch.Tensor:
        """Audio-only pooled features [B, E] (``fc_norm_a``: the no-fusion layout only, as the official)."""
        if self.av_fusion:
            raise ValueError("forward_features_a needs the no-fusion layout (fc_norm_a); this model has av_fusion")
        x = self.embed_audio(x)
        for blk in self.blocks:
            x = blk(x)
        return self.fc_norm_a(x[:, 1:].mean(dim=1))

    def forward_features_v(self, v: torch.Tensor) -> torch.Tensor:
        """Video-only pooled features [B, E] (``fc_norm_v``), the counterpart of `forward_features_a`."""
        if self.av_fusion:
            raise ValueError("forward_features_v needs the no-fusion layout (fc_norm_v); this model has av_fusion")
        v = self.embed_video(v)
        for blk in self.blocks_v:
            v = blk(v)
        return self.fc_norm_v(v[:, 1:].mean(dim=1))

    def forward_head(self, features: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of `forward_features_av`'s output."""
        if not self.av_fusion:
            return self.head_a(features[0]), self.head_v(features[1])
        if not self.ft:
            raise ValueError("the pretrained fusion layout (ft=False) has no classifier; build with ft=True "
                             "(depth_av=3, as the fine-tuned checkpoints) or use forward_features_av")
        return self.head_av(features)

    def forward(self, x: torch.Tensor | None, v: torch.Tensor | None, mask_t_prob: float = 0.0,
                mask_f_prob: float = 0.0, mask_v_prob: float = 0.0, **noise: torch.Tensor | torch.Generator | None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits: [B, classes] with fusion, ``(logits_a, logits_v)`` without (see `forward_features_av`).

        The official ``forward`` takes AV-SUPERB's list of (audio, video) pairs and returns
        ``(logits, logits.detach())`` with fusion; stack the pairs into `x` and `v` instead. Without fusion,
        ``model(x, None)`` / ``model(None, v)`` run one tower (no masking): ``head_a`` / ``head_v`` logits.
        """
        if not self.av_fusion and (x is None or v is None):
            return self.head_a(self.forward_features_a(x)) if v is None else self.head_v(self.forward_features_v(v))
        return self.forward_head(self.forward_features_av(x, v, mask_t_prob, mask_f_prob, mask_v_prob, **noise))

    # ----------------------------------------------------------------------- AV-SUPERB

    @torch.no_grad()
    def avsuperb_features(self, x: torch.Tensor, v: torch.Tensor, fc_norm_last: bool | None = None
                          ) -> dict[str, list[torch.Tensor]]:
        """The per-layer features AV-SUPERB's MAViL expert returns (fusion layout).

        ``audio_feats`` / ``video_feats``: depth + 1 entries [B, 1, E], the mean over patch tokens (CLS dropped)
        of each block's input, then of the last output; ``*_seq_feats`` the same tokens unpooled [B, L, E].
        ``fusion_seq_feats``: depth_av + 1 entries [B, (1+Na) + (1+Nv), E] (both CLS kept); ``fusion_feats``
        [B, 1, 2E] pooled as `forward_features_av`, the last one through ``fc_norm_av`` when `fc_norm_last`
        (default: the model has it, i.e. the fine-tuned layout, as the expert decides from the checkpoint).
        No final norm anywhere (the official model has none).
        """
        if not self.av_fusion:
            raise ValueError("AV-SUPERB's MAViL expert needs the fusion layout (av_fusion=True)")
        out: dict[str, list[torch.Tensor]] = {k: [] for k in ("video_feats", "audio_feats", "fusion_feats",
                                                               "video_seq_feats", "audio_seq_feats",
                                                               "fusion_seq_feats")}

        def run(tokens: torch.Tensor, blocks: nn.ModuleList, name: str) -> torch.Tensor:
            for blk in [*blocks, None]:
                out[f"{name}_seq_feats"].append(tokens[:, 1:])
                out[f"{name}_feats"].append(tokens[:, 1:].mean(dim=1, keepdim=True))  # [B, 1, E]
                if blk is not None:
                    tokens = blk(tokens)
            return tokens

        x = run(self.embed_audio(x), self.blocks, "audio")
        v = run(self.embed_video(v), self.blocks_v, "video")
        xv = torch.cat([x, v], dim=1)
        for blk in [*self.blocks_av, None]:
            out["fusion_seq_feats"].append(xv)
            out["fusion_feats"].append(_pool_av(xv, x.shape[1])[:, None])  # [B, 1, 2E]
            if blk is not None:
                xv = blk(xv)
        if self.ft if fc_norm_last is None else fc_norm_last:
            out["fusion_feats"][-1] = self.fc_norm_av(out["fusion_feats"][-1])
        return out


def _vit_init(m: nn.Module) -> None:
    # timm ViT init (the official leaves the video/fusion modules at PyTorch defaults; checkpoints replace all)
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- checkpoints

POS_TABLES = ("pos_embed", "pos_embed_v")  # fixed sin-cos: the model's own table is kept if a file lacks it
HEADS = ("head_av.", "head_a.", "head_v.")
CLASSIFIERS = ("fc_norm_av.", "fc_norm_a.", "fc_norm_v.", *HEADS)  # absent from the pretrained layout
FINE_TUNED = ("blocks_av.", "fc_norm_av.", "head_av.")  # what a fine-tuned file may have beyond the pretrained layout


def load_official_state(model: nn.Module, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """Load a MAViL checkpoint (``{"model": ...}`` .pth with ``weights_only=True``, .safetensors or a mapping).

    As the expert's ``load_state_dict(strict=False)``, tensors the encoder does not have (pretraining-only
    modules; the fusion and the other tower for a model without them) are dropped and reported; unlike it,
    anything the model needs and the file lacks raises, except the fixed sin-cos tables and the classifiers
    (``fc_norm_*``/``head_*``: the pretrained layout has none; one whose ``num_classes`` differs is dropped),
    left at init. Into the fine-tuned fusion layout, fusion blocks the file lacks start at init too (the
    pretrained layout has 2, the fine-tuned one 3). A fine-tuned file (3 fusion blocks + ``fc_norm_av``/
    ``head_av``) into a fusion model needs ``depth_av=3, ft=True``.
    """
    state = read_state(state_or_path)
    own = model.state_dict()
    report = LoadReport()
    fine_tuned_only = sorted(k for k in state if k not in own and k.startswith(FINE_TUNED))
    if fine_tuned_only and model.av_fusion:
        raise RuntimeError(f"checkpoint has {fine_tuned_only[:4]}, which {model.arch} lacks: it is the fine-tuned "
                           "layout; build the model with depth_av=3, ft=True")
    for head in HEADS:
        w = head + "weight"
        if w in state and w in own and state[w].shape != own[w].shape:
            report.dropped += [w, head + "bias"]
            report.head_reset = True
    report.dropped += sorted(k for k in state if k not in own)
    state = {k: v for k, v in state.items() if k not in report.dropped}
    tolerated = POS_TABLES + CLASSIFIERS + (("blocks_av.",) if model.av_fusion and model.ft else ())
    report.missing = check_fit(model, state, model.arch, tolerated=tolerated,
                               hint="build the model with the checkpoint's sizes (embed_dim, depth, n_frm, img_size)")
    model.load_state_dict(state, strict=False)
    return report


# --------------------------------------------------------------------------- registered variants

_SIZES = {  # embed_dim, depth, num_heads (official vitmm_*; 16x16 patches as the expert builds them)
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}


def _build(name: str, size: str, overrides: dict) -> VisionTransformerMM:
    dim, depth, heads = _SIZES[size]
    # the expert's pretrained layout: 2 fusion blocks, no classifier (depth_av=3, ft=True: the fine-tuned one)
    args = dict(embed_dim=dim, depth=depth, num_heads=heads, depth_av=2, ft=False, n_frm=8, drop_path_rate=0.1)
    model = VisionTransformerMM(**{**args, **overrides})
    model.arch = name
    return model


@register_model
def mavil_vit_small_patch16(**kwargs) -> VisionTransformerMM:
    return _build("mavil_vit_small_patch16", "small", kwargs)


@register_model
def mavil_vit_base_patch16(**kwargs) -> VisionTransformerMM:
    return _build("mavil_vit_base_patch16", "base", kwargs)


@register_model
def mavil_vit_large_patch16(**kwargs) -> VisionTransformerMM:
    return _build("mavil_vit_large_patch16", "large", kwargs)


@register_model
def mavil_vit_huge_patch16(**kwargs) -> VisionTransformerMM:
    return _build("mavil_vit_huge_patch16", "huge", kwargs)


register_loader(__name__)(load_official_state)
