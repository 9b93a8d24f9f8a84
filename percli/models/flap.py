"""FLAP: Fast Language-Audio Pre-training (Yeh, Huang, Sharma, Li, Ghosh; ICASSP 2024; arXiv 2311.01615).

Two towers in one shared space (no official code was found; built from the paper's description):

* ``audio``: an Audio-MAE pretraining model (`AudioMaskedAutoencoderViT`, official names) over
  log-mel fbank [B, 1, T, F] in 16x16 patches. Efficient masking DROPS tokens before the encoder, so
  only the visible ones are encoded: 1-D masking drops whole time columns (every frequency patch of a
  frame), 2-D masking drops individual patches. Each masked view is pooled (mean of its visible
  tokens after the encoder's ``norm``) and projected by ``audio_projection``; the Audio-MAE decoder
  reconstructs the dropped patches from the visible tokens plus mask tokens.
* ``text``: percli's CLIP text transformer (`CLIPTextTransformer`, the CLIP BPE tokenizer), whose
  end-of-text token is projected into the same space.
* ``logit_scale``: the learnable log inverse temperature (CLIP's init, 1 / 0.07).

``model(fbank, text, mask_ratio=..., mask_1d=..., num_views=N)`` returns every view's normalised
audio embedding [N, B, D], the normalised text embedding [B, D], ``exp(logit_scale)`` and the
reconstruction loss averaged over the views; the contrastive loss is the recipe's
(`percli.recipes.flap`), which gathers negatives across processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.audio_mae import MAE_ONLY_PREFIXES, AudioMaskedAutoencoderViT
from percli.models.clip import CLIPTextTransformer
from percli.models.common import LoadReport, check_fit, plain, read_state


class FLAP(nn.Module):
    """Audio-MAE audio tower ``audio`` + CLIP text tower ``text`` + ``audio_projection`` + ``logit_scale``.

    Args:
        embed_dim: Width of the shared audio-text space.
        audio_cfg: `AudioMaskedAutoencoderViT` keywords (its ``norm_pix_loss`` is the reconstruction target).
        text_cfg: open_clip ``text_cfg`` fields (`CLIPTextCfg`).
        quick_gelu: QuickGELU in the text tower's MLPs (OpenAI CLIP weights).
        init_logit_scale: Initial log inverse temperature.
    """

    def __init__(self, embed_dim: int, audio_cfg: Mapping[str, Any], text_cfg: Mapping[str, Any],
                 quick_gelu: bool = False, init_logit_scale: float = math.log(1 / 0.07)):
        super().__init__()
        self.audio = AudioMaskedAutoencoderViT(**audio_cfg)
        self.text = CLIPTextTransformer(embed_dim, text_cfg, quick_gelu)
        self.audio_projection = nn.Linear(self.audio.config["embed_dim"], embed_dim, bias=False)
        nn.init.xavier_uniform_(self.audio_projection.weight)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.config = {"embed_dim": embed_dim, "audio_cfg": dict(self.audio.config), "text_cfg": plain(dict(text_cfg)),
                       "quick_gelu": quick_gelu, "init_logit_scale": init_logit_scale}
        self.arch = type(self).__name__
        self.context_length = self.text.context_length
        self.preprocess = {**self.audio.preprocess, "tokenizer": "clip_bpe", "context_length": self.context_length}

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    def forward_audio(self, fbank: torch.Tensor, mask_ratio: float = 0.0, mask_1d: bool = True,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Drop ``mask_ratio`` of the tokens (whole time columns if `mask_1d`, else single patches), encode the rest.

        Returns:
            latent [B, 1 + kept, C], mask [B, L] (1 = dropped), ids_restore [B, L] (see `forward_encoder`).
        """
        if mask_1d:
            return self.audio.forward_encoder(fbank, 0.0, mask_2d=True, mask_t_prob=mask_ratio, mask_f_prob=0.0,
                                              generator=generator)
        return self.audio.forward_encoder(fbank, mask_ratio, generator=generator)

    def pool_audio(self, latent: torch.Tensor) -> torch.Tensor:
        """Mean of the visible tokens (cls excluded) -> ``audio_projection``: [B, embed_dim]."""
        return self.audio_projection(latent[:, 1:].mean(dim=1))

    def encode_audio(self, fbank: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Every token of fbank [B, 1, T, F] encoded (nothing dropped, as at evaluation) -> [B, embed_dim]."""
        features = self.pool_audio(self.forward_audio(fbank, 0.0)[0])  # 1-D masking at rate 0 keeps raster order
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids [B, L] -> [B, embed_dim]."""
        features = self.text.encode_text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, fbank: torch.Tensor, text: torch.Tensor, mask_ratio: float = 0.5, mask_1d: bool = True,
                num_views: int = 2) -> dict[str, torch.Tensor]:
        """`num_views` independently masked views of each clip, encoded in one batch.

        Returns:
            ``audio_features`` [num_views, B, D] and ``text_features`` [B, D] (L2-normalised), ``logit_scale``
            (exponentiated) and ``recon_loss`` (MSE on the dropped patches, mean over views).
        """
        B = fbank.shape[0]
        views = fbank.repeat(num_views, 1, 1, 1)  # [V*B, 1, T, F], view-major: each row gets its own mask
        latent, mask, ids_restore = self.forward_audio(views, mask_ratio, mask_1d)
        pred = self.audio.forward_decoder(latent, ids_restore)
        # mask_ratio 0 (the no-masking ablation) leaves nothing to reconstruct: a zero that keeps the decoder in use
        recon_loss = self.audio.forward_loss(views, pred, mask) if mask.any() else pred.sum() * 0.0
        audio = F.normalize(self.pool_audio(latent), dim=-1).view(num_views, B, -1)  # [V*B, D] -> [V, B, D]
        return {"audio_features": audio, "text_features": self.encode_text(text, normalize=True),
                "logit_scale": self.logit_scale.exp(), "recon_loss": recon_loss}


# --------------------------------------------------------------------------- checkpoints


def load_official_state(model: FLAP, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A FLAP state dict (strictly), or Audio-MAE pretraining weights for the audio tower.

    Audio-MAE weights (the official ``{"model": ...}`` .pth or a `percli pretrain audio-mae` checkpoint)
    must fit the encoder exactly; their decoder and ``mask_token`` load when the decoder has the same
    layout, else they are reported as dropped and the light decoder starts at its init. The text tower,
    ``audio_projection`` and ``logit_scale`` are reported as left at init.
    """
    state = read_state(state_or_path)
    if any(k.startswith(("audio.", "text.")) for k in state):
        check_fit(model, state, model.arch, hint="build the FLAP model the checkpoint was trained as")
        model.load_state_dict(state)
        return LoadReport(source_format="percli")
    own = model.audio.state_dict()
    decoder = {k for k in own if k.startswith(MAE_ONLY_PREFIXES)}
    theirs = {k for k in state if k.startswith(MAE_ONLY_PREFIXES)}
    report = LoadReport()
    if theirs != decoder or any(state[k].shape != own[k].shape for k in theirs):
        report.dropped = [f"audio.{k}" for k in sorted(theirs)]
        state = {k: v for k, v in state.items() if k not in theirs}
    missing = check_fit(model.audio, state, "FLAP's audio tower (an Audio-MAE pretraining model)",
                        tolerated=MAE_ONLY_PREFIXES if report.dropped else (),
                        hint="give an Audio-MAE pretraining checkpoint whose encoder has the audio_cfg sizes, "
                             "or a FLAP checkpoint")
    model.audio.load_state_dict(state, strict=False)
    report.missing = [f"audio.{k}" for k in missing] + [k for k in model.state_dict() if not k.startswith("audio.")]
    return report


# --------------------------------------------------------------------------- registered variants


def _build(name: str, audio: dict, text: dict, embed_dim: int, overrides: dict) -> FLAP:
    """The variant's towers with `overrides`; ``audio_cfg`` / ``text_cfg`` overrides update the variant's keys."""
    args = {"embed_dim": embed_dim, **overrides}
    args["audio_cfg"] = {**audio, **overrides.get("audio_cfg", {})}
    args["text_cfg"] = {**text, **overrides.get("text_cfg", {})}
    model = FLAP(**args)
    model.arch = name
    return model


@register_model
def flap_vit_base_patch16(**kwargs) -> FLAP:
    """Audio-MAE ViT-B/16 on 1024 x 128 fbank (light global decoder) + the CLIP ViT-B text tower, 512-d space."""
    audio = dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, decoder_embed_dim=512, decoder_depth=4,
                 decoder_num_heads=16, decoder_mode=0, norm_pix_loss=True)
    text = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)
    return _build("flap_vit_base_patch16", audio, text, 512, kwargs)


register_loader(__name__)(load_official_state)
