"""MAViL pretraining model (Huang et al., NeurIPS 2023): the AV-SUPERB encoder plus MAE decoders and contrast heads.

The official MAViL repository holds no code, so the pretraining modules follow the paper's description and
the conventions of the MAE family it builds on (Audio-MAE for audio, MAE-ST for video); the encoder is
`VisionTransformerMM` unchanged, so a pretraining checkpoint's encoder keys are the released layout's and it
loads into `percli finetune mavil`, `eval retrieval` and the AV-SUPERB upstream (the modules below are
reported as dropped there).

* ``decoder_*`` (audio) and ``decoder_*_v`` (video): MAE decoders (linear embed, ``mask_token``, fixed
  sin-cos positions, ``decoder_depth`` ViT blocks, norm, linear prediction) that fill the masked tokens of the
  fused (``blocks_av``) audio and video sequences. Stage 1 predicts raw patches (audio 16x16 fbank patches,
  video 2x16x16 RGB tubelets; per-patch normalised with ``norm_pix_loss``); stage 2 (``target_dim`` set)
  predicts a frozen teacher's contextualised features, ``target_dim`` wide.
* ``audio_proj`` / ``video_proj``: heads from a tower's mean patch token to the ``proj_dim`` space of the intra-
  and inter-modal InfoNCE: a BatchNorm without affine (``proj_norm="batch"``, as SimCLR / MoCo v3 heads) then a
  linear layer. The towers have no final norm (as the released encoder), and their mean patch tokens are
  nearly the same vector for every clip at init (the fixed sin-cos positions dominate the mean: cosine 0.999
  between different clips of the embedded set), which a plain linear head only slowly escapes; the batch
  statistics remove that shared component (on a fixed batch of 32 clips: InfoNCE 0.07 after 40 steps, against
  2.8 without). ``proj_norm="none"`` is the plain linear head.

``model(fbank, video)`` runs two independently masked views of each modality through the towers (the contrastive
views) and fuses and decodes the first; the losses are the recipe's (`percli.recipes.mavil_pretrain`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.audio_mae import Block, random_masking, sincos_pos_embed_2d, xavier_init
from percli.models.common import LoadReport, check_fit, read_state
from percli.models.common import patchify as patchify_audio  # [B, 1, T, F] -> time-major (p, p) patches
from percli.models.mavil import _SIZES, TUBELET, VisionTransformerMM, sincos_pos_embed_3d
from percli.models.mavil import load_official_state as load_encoder_state

PRETRAIN_ONLY = ("decoder_", "mask_token", "audio_proj.", "video_proj.")
"""Key prefixes of the pretraining modules (absent from the released encoder layout)."""
TARGET_LAYERS = ("decoder_pred.", "decoder_pred_v.")  # raw patches (stage 1) or the teacher's width (stage 2)


def patchify_video(v: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 3, T, H, W] -> [B, T/2 * H/p * W/p, 2*p*p*3], tubelets in the Conv3d token order (t, h, w)."""
    B, C, T, H, W = v.shape
    p = patch_size
    x = v.reshape(B, C, T // TUBELET, TUBELET, H // p, p, W // p, p)
    x = torch.einsum("bctuhpwq->bthwupqc", x)  # [B, T/2, H/p, W/p, 2, p, p, C]
    return x.reshape(B, -1, TUBELET * p * p * C)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """MSE over the masked tokens (mask 1); `normalize`: each target token standardised by its own mean and
    (unbiased) variance, MAE's ``norm_pix_loss``."""
    if normalize:
        target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
    per_token = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # [B, L]
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


class ProjectionHead(nn.Module):
    """``norm`` (BatchNorm1d without affine, or identity) then ``fc`` (Linear)."""

    def __init__(self, dim: int, out: int, norm: str):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"proj_norm={norm!r}: use 'batch' or 'none'")
        self.norm = nn.BatchNorm1d(dim, affine=False) if norm == "batch" else nn.Identity()
        self.fc = nn.Linear(dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class MAViLPretrain(VisionTransformerMM):
    """`VisionTransformerMM` (fusion, pretrained layout) + audio/video MAE decoders + contrastive projections.

    Args (beyond the encoder's):
        decoder_embed_dim, decoder_depth, decoder_num_heads: both decoders' sizes (MAE's 512 / 8 / 16).
        proj_dim: width of the contrastive space; proj_norm: ``batch`` (default) or ``none`` before its linear layer.
        norm_pix_loss: stage-1 targets standardised per patch.
        target_dim: stage 2: the teacher's feature width the decoders predict (None: raw patches, stage 1).
    """

    def __init__(self, *, decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                 proj_dim: int = 512, proj_norm: str = "batch", norm_pix_loss: bool = True,
                 target_dim: int | None = None, **encoder):
        if not encoder.get("av_fusion", True) or encoder.get("ft", False):
            raise ValueError("MAViL pretraining uses the fused, pretrained layout (av_fusion=True, ft=False)")
        super().__init__(**encoder)
        self.config.update(decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
                           decoder_num_heads=decoder_num_heads, proj_dim=proj_dim, proj_norm=proj_norm,
                           norm_pix_loss=norm_pix_loss,
                           target_dim=target_dim)
        self.norm_pix_loss, self.target_dim = norm_pix_loss, target_dim
        E, D, p = self.embed_dim, decoder_embed_dim, self.patch_embed.proj.kernel_size[0]
        self.patch_size = p
        norm = type(self.blocks[0].norm1)
        audio_grid, (t, h, _) = self.patch_embed.grid, self.patch_embed_v.grid

        def blocks() -> nn.ModuleList:
            return nn.ModuleList([Block(D, decoder_num_heads, 4.0, True, norm_layer=norm)
                                  for _ in range(decoder_depth)])

        self.decoder_embed = nn.Linear(E, D)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed_2d(D, audio_grid), requires_grad=False)
        self.decoder_blocks = blocks()
        self.decoder_norm = norm(D)
        self.decoder_pred = nn.Linear(D, target_dim or p * p)
        self.decoder_embed_v = nn.Linear(E, D)
        self.mask_token_v = nn.Parameter(torch.zeros(1, 1, D))
        self.decoder_pos_embed_v = nn.Parameter(sincos_pos_embed_3d(D, h, t), requires_grad=False)
        self.decoder_blocks_v = blocks()
        self.decoder_norm_v = norm(D)
        self.decoder_pred_v = nn.Linear(D, target_dim or TUBELET * p * p * 3)
        self.audio_proj = ProjectionHead(E, proj_dim, proj_norm)
        self.video_proj = ProjectionHead(E, proj_dim, proj_norm)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred,
                       self.decoder_embed_v, self.decoder_blocks_v, self.decoder_norm_v, self.decoder_pred_v,
                       self.audio_proj, self.video_proj):
            module.apply(xavier_init)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.mask_token_v, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token", "mask_token_v", "decoder_pos_embed", "decoder_pos_embed_v"}

    # ----------------------------------------------------------------------- encoding

    def _tower(self, tokens: torch.Tensor, cls: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        x = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for blk in blocks:
            x = blk(x)
        return x

    def encode_masked(self, x: torch.Tensor, v: torch.Tensor, mask_ratio_a: float, mask_ratio_v: float,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Unstructured random masking of both modalities, then the towers on the kept tokens.

        Returns ``audio`` [B, 1 + ka, E], ``video`` [B, 1 + kv, E] (CLS first), ``mask_a`` [B, La] /
        ``mask_v`` [B, Lv] (1 = masked) and ``ids_a`` / ``ids_v`` [B, L] (restore order).
        """
        a = self.patch_embed(x) + self.pos_embed[:, 1:]
        a, mask_a, ids_a = random_masking(a, mask_ratio_a, generator=generator)
        w = self.patch_embed_v(v[:, :, :self.n_frm]) + self.pos_embed_v[:, 1:]
        w, mask_v, ids_v = random_masking(w, mask_ratio_v, generator=generator)
        return {"audio": self._tower(a, self.cls_token + self.pos_embed[:, :1], self.blocks),
                "video": self._tower(w, self.cls_token_v + self.pos_embed_v[:, :1], self.blocks_v),
                "mask_a": mask_a, "mask_v": mask_v, "ids_a": ids_a, "ids_v": ids_v}

    def fuse(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``blocks_av`` on [audio tokens, video tokens] -> the fused audio and video parts (CLS kept)."""
        xv = torch.cat([audio, video], dim=1)
        for blk in self.blocks_av:
            xv = blk(xv)
        return xv[:, :audio.shape[1]], xv[:, audio.shape[1]:]

    def project(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Towers' outputs [B, 1 + L, E] -> L2-normalised contrastive embeddings (mean of patch tokens)."""
        return (F.normalize(self.audio_proj(audio[:, 1:].mean(dim=1)), dim=-1),
                F.normalize(self.video_proj(video[:, 1:].mean(dim=1)), dim=-1))

    def encode_audio(self, x: torch.Tensor) -> torch.Tensor:
        """Whole fbank [B, 1, T, F] -> normalised audio embedding [B, proj_dim]."""
        a = self._tower(self.patch_embed(x) + self.pos_embed[:, 1:], self.cls_token + self.pos_embed[:, :1],
                        self.blocks)
        return F.normalize(self.audio_proj(a[:, 1:].mean(dim=1)), dim=-1)

    def encode_video(self, v: torch.Tensor) -> torch.Tensor:
        """Whole clip [B, 3, T, H, W] -> normalised video embedding [B, proj_dim]."""
        w = self._tower(self.patch_embed_v(v[:, :, :self.n_frm]) + self.pos_embed_v[:, 1:],
                        self.cls_token_v + self.pos_embed_v[:, :1], self.blocks_v)
        return F.normalize(self.video_proj(w[:, 1:].mean(dim=1)), dim=-1)

    def towers(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unmasked audio [B, 1 + La, E] and video [B, 1 + Lv, E] towers' outputs (CLS first)."""
        return self._encode(x, v, None, (None, None, None), None)

    @torch.no_grad()
    def contextual_features(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-2 targets of this model as teacher: the fused audio [B, La, E] and video [B, Lv, E] patch tokens
        of the unmasked clip (CLS dropped)."""
        a, w = self.fuse(*self.towers(x, v))
        return a[:, 1:], w[:, 1:]

    # ----------------------------------------------------------------------- decoding

    def _decode(self, tokens: torch.Tensor, ids_restore: torch.Tensor, suffix: str) -> torch.Tensor:
        """Fused tokens [B, 1 + kept, E] -> predictions for every patch [B, L, out] (CLS slot dropped)."""
        embed, mask_token = getattr(self, "decoder_embed" + suffix), getattr(self, "mask_token" + suffix)
        x = embed(tokens)
        B, L, D = x.shape[0], ids_restore.shape[1], x.shape[2]
        fill = mask_token.expand(B, L + 1 - x.shape[1], -1)
        # kept tokens then mask tokens -> the original token order
        patches = torch.gather(torch.cat([x[:, 1:], fill], dim=1), 1, ids_restore[:, :, None].expand(-1, -1, D))
        x = torch.cat([x[:, :1], patches], dim=1) + getattr(self, "decoder_pos_embed" + suffix)
        for blk in getattr(self, "decoder_blocks" + suffix):
            x = blk(x)
        return getattr(self, "decoder_pred" + suffix)(getattr(self, "decoder_norm" + suffix)(x))[:, 1:]

    def forward(self, x: torch.Tensor, v: torch.Tensor, mask_ratio_a: float = 0.8,
                         mask_ratio_v: float = 0.9, views: int = 2, generator: torch.Generator | None = None
                         ) -> dict[str, torch.Tensor]:
        """`views` independently masked views of each clip through the towers; the first is fused and decoded.

        Returns:
            ``audio_embeds`` / ``video_embeds`` [views, B, proj_dim] (normalised), ``pred_a`` [B, La, out_a],
            ``pred_v`` [B, Lv, out_v] and the first view's ``mask_a`` / ``mask_v`` (1 = masked).
        """
        B = x.shape[0]
        enc = self.encode_masked(x.repeat(views, 1, 1, 1), v.repeat(views, 1, 1, 1, 1), mask_ratio_a, mask_ratio_v,
                                 generator)
        ea, ev = self.project(enc["audio"], enc["video"])
        fa, fv = self.fuse(enc["audio"][:B], enc["video"][:B])
        return {"audio_embeds": ea.view(views, B, -1), "video_embeds": ev.view(views, B, -1),
                "pred_a": self._decode(fa, enc["ids_a"][:B], ""), "pred_v": self._decode(fv, enc["ids_v"][:B], "_v"),
                "mask_a": enc["mask_a"][:B], "mask_v": enc["mask_v"][:B]}

    def raw_targets(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-1 reconstruction targets: fbank patches [B, La, p*p] and video tubelets [B, Lv, 2*p*p*3]."""
        return patchify_audio(x, self.patch_size), patchify_video(v[:, :, :self.n_frm], self.patch_size)


def load_official_state(model: nn.Module, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A `MAViLPretrain` state dict (strictly, but for prediction layers of another width: a stage-1 file starting
    a stage-2 student, which are dropped and left at init), or encoder-only MAViL weights (AV-SUPERB's
    ``mavil_base`` .pth or a `finetune mavil` checkpoint: fine-tuned fusion/heads dropped) whose pretraining
    modules are reported as left at init."""
    state = read_state(state_or_path)
    if any(k.startswith(PRETRAIN_ONLY) for k in state):
        own = model.state_dict()
        # a stage-1 file starting a stage-2 student (or back): the prediction layers differ in width only
        report = LoadReport(source_format="percli", dropped=sorted(
            k for k in state if k.startswith(TARGET_LAYERS) and k in own and state[k].shape != own[k].shape))
        state = {k: t for k, t in state.items() if k not in report.dropped}
        report.missing = check_fit(model, state, model.arch, tolerated=tuple(report.dropped),
                                   hint="build the MAViL pretraining model the checkpoint was trained as")
        model.load_state_dict(state, strict=False)
        return report
    encoder = VisionTransformerMM(**{k: v for k, v in model.config.items() if k in _ENCODER_ARGS})
    ft_only = [k for k in state if k.startswith(("fc_norm_av.", "head_av.")) or k.startswith("blocks_av.")
               and int(k.split(".")[1]) >= model.depth_av]
    report = load_encoder_state(encoder, {k: t for k, t in state.items() if k not in ft_only})
    model.load_state_dict(encoder.state_dict(), strict=False)
    report.dropped = sorted(set(report.dropped) | set(ft_only))
    report.missing = list(report.missing) + [k for k in model.state_dict() if k.startswith(PRETRAIN_ONLY)]
    return report


_ENCODER_ARGS = set(inspect.signature(VisionTransformerMM).parameters)


def _build(name: str, size: str, overrides: dict) -> MAViLPretrain:
    dim, depth, heads = _SIZES[size]
    args = dict(embed_dim=dim, depth=depth, num_heads=heads, depth_av=2, n_frm=8, drop_path_rate=0.0,
                decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, proj_dim=512)
    model = MAViLPretrain(**{**args, **overrides})
    model.arch = name
    return model


@register_model
def mavil_pretrain_vit_small_patch16(**kwargs) -> MAViLPretrain:
    return _build("mavil_pretrain_vit_small_patch16", "small", kwargs)


@register_model
def mavil_pretrain_vit_base_patch16(**kwargs) -> MAViLPretrain:
    return _build("mavil_pretrain_vit_base_patch16", "base", kwargs)


@register_model
def mavil_pretrain_vit_large_patch16(**kwargs) -> MAViLPretrain:
    return _build("mavil_pretrain_vit_large_patch16", "large", kwargs)


register_loader(__name__)(load_official_state)
