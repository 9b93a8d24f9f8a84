"""FLAP: Fast Language-Audio Pre-training (Yeh, Huang, Sharma, Li, Ghosh; ICASSP 2024; arXiv 2311.01615).

Two towers in one shared space (no official code was found; built from the paper's description):

* ``audio``: an Audio-MAE pretraining model (`AudioMaskedAutoencoderViT`, official names) over
  log-mel fbank [B, 1, T, F] in 16x16 patches. Efficient masking DROPS tokens before the encoder, so
  only the visible ones are encoded: 1-D masking drops whole time columns (every frequency patch of a
  frame), 2-D masking drops individual patches. Each masked view is pooled (mean of its visible
  tokens after the encoder's ``norm``) and projected by ``audio_projection``; the Audio-MAE decoder
  reconstructs the dropped patches from the visible tokens plus mask tokens.
* ``text``: percli's CLIP text transformer (`CLIPTextTransformer`, the CLIP BPE tokenizer), whose
  end-of-text token is projected into the same space; or, with ``text_cfg={"hf_folder": PATH}``, a
  Hugging Face encoder from a local folder (`HFTextTower`: ``AutoModel`` + ``AutoTokenizer``, offline;
  the paper's RoBERTa is ``roberta-base``) whose first token (``<s>`` / ``[CLS]``, or the mean over
  the attention mask with ``pooling="mean"``) goes through ``text_projection``.
* ``logit_scale``: the learnable log inverse temperature (CLIP's init, 1 / 0.07).

``model(fbank, text, mask_ratio=..., mask_1d=..., num_views=N, text_mask=...)`` returns every view's
normalised audio embedding [N, B, D], the normalised text embedding [B, D], ``exp(logit_scale)`` and the
reconstruction loss averaged over the views; the contrastive loss is the recipe's
(`percli.recipes.flap`), which gathers negatives across processes. ``model.make_tokenizer()`` gives the
text tower's tokenizer: texts -> ``{"text": ids [N, L]}`` plus ``"text_mask"`` (the attention mask) for
a Hugging Face tower.

A checkpoint of a Hugging Face tower holds its weights (``text.transformer.*``, ``text.text_projection.*``)
like the rest; its metadata keeps ``text_cfg.hf_folder`` with ``pretrained: false``, so a consumer rebuilds
the tower from the folder's config.json and tokenizer files only, never its weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.core.config import ConfigError
from percli.models import register_loader, register_model
from percli.models.audio_mae import MAE_ONLY_PREFIXES, AudioMaskedAutoencoderViT
from percli.models.clip import CLIPTextCfg, CLIPTextTransformer
from percli.models.clip_tokenizer import CLIPTokenizer
from percli.models.common import LoadReport, check_fit, plain, read_state
from percli.models.hf_text import HFTokenizer, check_hf_folder, hf_encoder

HF_FOLDER_KEY = "model.kwargs.text_cfg.hf_folder"
HF_POOLINGS = ("first", "mean")
HF_TEXT_KEYS = ("hf_folder", "context_length", "pooling", "pretrained")  # `HFTextTower`'s keywords
HF_FOLDER_FIX = f"set {HF_FOLDER_KEY} to a local Hugging Face model folder (config.json + tokenizer files, e.g. " \
    "roberta-base)"


# --------------------------------------------------------------------------- Hugging Face text tower


def hf_text_cfg(text_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`HFTextTower`'s keywords from a ``text_cfg`` with ``hf_folder``, or a `ConfigError` naming the key to fix (an
    unknown key or pooling, a folder without config.json or tokenizer files). The CLIP tower's keys (``width``,
    ``layers``, ...) are dropped: the folder's config.json gives the sizes, and a preset's CLIP sizes may stay
    under ``model.kwargs.text_cfg.hf_folder=PATH``."""
    clip_keys = {f.name for f in dataclasses.fields(CLIPTextCfg)} - set(HF_TEXT_KEYS)
    unknown = sorted(set(text_cfg) - set(HF_TEXT_KEYS) - clip_keys)
    if unknown:
        raise ConfigError(f"model.kwargs.text_cfg: unknown key(s) {', '.join(unknown)} for a Hugging Face text tower; "
                          f"allowed keys: {', '.join(HF_TEXT_KEYS)}")
    pooling = text_cfg.get("pooling", "first")
    if pooling not in HF_POOLINGS:
        raise ConfigError(f"model.kwargs.text_cfg.pooling: got {pooling!r}; allowed values: {', '.join(HF_POOLINGS)}")
    check_hf_folder(text_cfg["hf_folder"], HF_FOLDER_KEY, HF_FOLDER_FIX)
    return {k: v for k, v in text_cfg.items() if k in HF_TEXT_KEYS}


class CLIPTokens:
    """The CLIP BPE tokenizer in the same shape: texts -> ``{"text": ids [N, context_length]}`` (no mask: the tower
    pools its end-of-text token under a causal mask, so the zero padding after it is never attended)."""

    def __init__(self, context_length: int):
        self.tokenizer = CLIPTokenizer(context_length=context_length)

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        return {"text": self.tokenizer(texts)}


class HFTextTower(nn.Module):
    """A Hugging Face encoder (``AutoModel``) from a local folder, pooled and projected into the joint space.

    Args:
        embed_dim: Width of the shared audio-text space.
        hf_folder: Local Hugging Face model folder (config.json, tokenizer files, and the weights when `pretrained`).
        context_length: Tokens per caption, special tokens included (padded / truncated to it).
        pooling: ``first``: the first token's output (RoBERTa's ``<s>``, BERT's ``[CLS]``, as CLAP-style models
            pool); ``mean``: the mean over the attention mask.
        pretrained: Load the folder's weights; False builds from its config.json alone (random init), for weights
            that come next from a percli checkpoint.
    """

    def __init__(self, embed_dim: int, hf_folder: str | Path, context_length: int = 77, pooling: str = "first",
                 pretrained: bool = True):
        super().__init__()
        hf_text_cfg({"hf_folder": hf_folder, "pooling": pooling})
        folder = Path(hf_folder).expanduser().resolve()
        self.transformer = hf_encoder(folder, pretrained, HF_FOLDER_KEY, context_length,
                                      "model.kwargs.text_cfg.context_length")
        hidden = self.transformer.config.hidden_size
        self.text_projection = nn.Linear(hidden, embed_dim, bias=False)
        nn.init.xavier_uniform_(self.text_projection.weight)
        self.pad_token_id = self.transformer.config.pad_token_id
        self.context_length, self.pooling = context_length, pooling
        self.config = {"hf_folder": str(folder), "context_length": context_length, "pooling": pooling,
                       "pretrained": pretrained}
        self.preprocess = {"tokenizer": "hf", "tokenizer_folder": str(folder), "context_length": context_length}

    def encode_text(self, text: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [B, L] and their attention mask [B, L] (1 = token; default: ids != pad id) -> [B, embed_dim]."""
        if attention_mask is None:
            attention_mask = text != self.pad_token_id if self.pad_token_id is not None else torch.ones_like(text)
        attention_mask = attention_mask.long()
        hidden = self.transformer(input_ids=text, attention_mask=attention_mask).last_hidden_state  # [B, L, W]
        if self.pooling == "first":
            pooled = hidden[:, 0]
        else:
            weights = attention_mask[..., None].to(hidden.dtype)  # [B, L] -> [B, L, 1]
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
        return self.text_projection(pooled)


# --------------------------------------------------------------------------- model


class FLAP(nn.Module):
    """Audio-MAE audio tower ``audio`` + text tower ``text`` + ``audio_projection`` + ``logit_scale``.

    Args:
        embed_dim: Width of the shared audio-text space.
        audio_cfg: `AudioMaskedAutoencoderViT` keywords (its ``norm_pix_loss`` is the reconstruction target).
        text_cfg: open_clip ``text_cfg`` fields (`CLIPTextCfg`) for the CLIP text tower; or, with ``hf_folder``,
            `HFTextTower` keywords (``hf_folder``, ``context_length``, ``pooling``, ``pretrained``) for a Hugging
            Face encoder from a local folder.
        quick_gelu: QuickGELU in the CLIP text tower's MLPs (OpenAI CLIP weights).
        init_logit_scale: Initial log inverse temperature.
    """

    def __init__(self, embed_dim: int, audio_cfg: Mapping[str, Any], text_cfg: Mapping[str, Any],
                 quick_gelu: bool = False, init_logit_scale: float = math.log(1 / 0.07)):
        super().__init__()
        self.audio = AudioMaskedAutoencoderViT(**audio_cfg)
        self.hf_text = "hf_folder" in text_cfg
        if self.hf_text:
            self.text = HFTextTower(embed_dim, **hf_text_cfg(text_cfg))
            text_cfg = self.text.config  # the folder resolved: a checkpoint rebuilds from any working directory
        else:
            self.text = CLIPTextTransformer(embed_dim, text_cfg, quick_gelu)
        self.audio_projection = nn.Linear(self.audio.config["embed_dim"], embed_dim, bias=False)
        nn.init.xavier_uniform_(self.audio_projection.weight)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.config = {"embed_dim": embed_dim, "audio_cfg": dict(self.audio.config), "text_cfg": plain(dict(text_cfg)),
                       "quick_gelu": quick_gelu, "init_logit_scale": init_logit_scale}
        self.arch = type(self).__name__
        self.context_length = self.text.context_length
        text_preprocess = self.text.preprocess if self.hf_text else {"tokenizer": "clip_bpe",
                                                                     "context_length": self.context_length}
        self.preprocess = {**self.audio.preprocess, **text_preprocess}

    def saved_config(self) -> dict:
        """The constructor arguments for weights stored beside them: a Hugging Face tower then takes only its folder's
        config.json and tokenizer (``pretrained: false``), its weights being in the checkpoint."""
        config = dict(self.config)
        if self.hf_text:
            config["text_cfg"] = {**config["text_cfg"], "pretrained": False}
        return config

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": self.saved_config(),
                "preprocess": dict(self.preprocess)}

    def make_tokenizer(self) -> HFTokenizer | CLIPTokens:
        """The text tower's tokenizer: texts -> ``{"text": ids [N, L]}`` (+ ``"text_mask"`` for a Hugging Face tower).
        It holds no reference to the model, so data-loader workers can carry it."""
        if self.hf_text:
            return HFTokenizer(self.preprocess["tokenizer_folder"], self.context_length, HF_FOLDER_KEY)
        return CLIPTokens(self.context_length)

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

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor | None = None,
                    normalize: bool = False) -> torch.Tensor:
        """Token ids [B, L] (and, for a Hugging Face tower, their attention mask [B, L]) -> [B, embed_dim]."""
        if self.hf_text:
            features = self.text.encode_text(text, text_mask)
        else:  # CLIP pools its end-of-text token under a causal mask: the padding after it is never seen
            features = self.text.encode_text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, fbank: torch.Tensor, text: torch.Tensor, mask_ratio: float = 0.5, mask_1d: bool = True,
                num_views: int = 2, text_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`num_views` independently masked views of each clip, encoded in one batch (`text_mask`: the attention
        mask of a Hugging Face text tower's tokens).

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
        return {"audio_features": audio, "text_features": self.encode_text(text, text_mask, normalize=True),
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
    """The variant's towers with `overrides`; ``audio_cfg`` / ``text_cfg`` overrides update the variant's keys
    (a ``text_cfg`` with ``hf_folder`` replaces the CLIP text keys: the folder's config.json gives the sizes)."""
    args = {"embed_dim": embed_dim, **overrides}
    args["audio_cfg"] = {**audio, **overrides.get("audio_cfg", {})}
    given = overrides.get("text_cfg", {})
    args["text_cfg"] = dict(given) if "hf_folder" in given else {**text, **given}
    model = FLAP(**args)
    model.arch = name
    return model


@register_model
def flap_vit_base_patch16(**kwargs) -> FLAP:
    """Audio-MAE ViT-B/16 on 1024 x 128 fbank (light global decoder) + the CLIP ViT-B text tower (or a Hugging Face
    encoder: ``text_cfg={"hf_folder": "/models/roberta-base"}``), 512-d space."""
    audio = dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, decoder_embed_dim=512, decoder_depth=4,
                 decoder_num_heads=16, decoder_mode=0, norm_pix_loss=True)
    text = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)
    return _build("flap_vit_base_patch16", audio, text, 512, kwargs)


register_loader(__name__)(load_official_state)
