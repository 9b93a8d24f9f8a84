"""MMP: multilingual multimodal pre-training (Huang, Patrick, Hu, Neubig, Metze, Hauptmann; NAACL 2021).

A video and ONE text encoder shared by every language, both mapped into a joint space and L2-normalised, so
a caption in any language retrieves the video it describes. The paper's text side is mBERT / XLM-R under a
Transformer-pooling (TP) head and its video side frozen clip features under another TP head. No official code
was released (`berniebear/Multi-HT100M` has data only); this follows the paper's description:

* ``video``: per-second features [B, T, F] (S3D / `percli extract features`) -> linear to ``width``, then the TP
  head (`SequenceEncoder`: learned positions, Transformer, masked mean, linear to ``embed_dim``);
* ``text``: the paper's pretrained multilingual encoder, ``text_encoder={"hf_folder": PATH}`` (a local Hugging
  Face mBERT / XLM-R folder, offline: ``text_backbone`` = its ``AutoModel``, every token's output through
  ``text_in`` to ``width``), or byte-level tokens (`ByteTokenizer`: UTF-8 bytes, any language, no vocabulary
  file) through ``token_embed`` so CPU presets train from scratch; then a TP head of the video's shape. The
  backbone is fine-tuned with the rest (the paper's choice is unverified); a checkpoint holds its weights and
  records ``pretrained: false``, so a consumer rebuilds it from the folder's config.json and tokenizer only.

`conditional_query` is the input of the conditional cross-lingual term (`percli.recipes.mmp`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.core.config import ConfigError
from percli.models import register_loader, register_model
from percli.models.byte_text import ByteVideoTextEncoder
from percli.models.common import LoadReport, load_percli_state
from percli.models.hf_text import HFTokenizer, check_hf_folder, hf_encoder

HF_FOLDER_KEY = "model.kwargs.text_encoder.hf_folder"
TEXT_ENCODER_KEYS = ("hf_folder", "pretrained")


def conditional_query(text: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """Caption x "in the presence of" its video v: ``normalize(x + v)`` [B, D], which the conditional
    cross-lingual term matches against the other language's caption y.

    The paper's exact conditioning is unverified (notes, section 3); the sum of the two unit vectors is the
    simplest reading that makes y depend on both x and v and adds no parameters."""
    return F.normalize(text + video, dim=-1)


class _TokenPairs:
    """A Hugging Face tokenizer in `ByteTokenizer`'s shape: texts -> (ids [N, L], mask [N, L] bool)."""

    def __init__(self, tokenizer: HFTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokenizer(texts)
        return out["text"], out["text_mask"].bool()


def text_encoder_cfg(text_encoder: Mapping[str, Any]) -> dict[str, Any]:
    """``text_encoder`` checked: known keys, a folder with config.json and tokenizer files (else a `ConfigError`
    naming the key)."""
    unknown = sorted(set(text_encoder) - set(TEXT_ENCODER_KEYS))
    if unknown or "hf_folder" not in text_encoder:
        found = f"unknown key(s) {', '.join(unknown)}" if unknown else "no hf_folder"
        raise ConfigError(f"model.kwargs.text_encoder: {found}; give {{hf_folder: PATH}} (and pretrained: true|false)")
    folder = check_hf_folder(text_encoder["hf_folder"], HF_FOLDER_KEY,
                             "give a local Hugging Face mBERT / XLM-R folder (config.json + tokenizer files)")
    return {"hf_folder": str(folder), "pretrained": bool(text_encoder.get("pretrained", True))}


class MMPModel(ByteVideoTextEncoder):
    """A video TP head and one multilingual text encoder into a joint space, with one temperature shared by every
    pair of the objective.

    Args:
        feature_dim: Width of the input video features (S3D: 512).
        embed_dim: Joint space width.
        width, layers, heads: The video and text TP heads' Transformer sizes.
        max_video_len: Most video steps (seconds); context_length: tokens (bytes, or the folder's word pieces) per
            caption, special tokens included.
        text_encoder: ``{"hf_folder": PATH, "pretrained": True}`` for a Hugging Face mBERT / XLM-R under the text TP
            head (``pretrained`` False: built from its config.json, for weights a checkpoint gives next); None: bytes.
    """

    def __init__(self, feature_dim: int = 512, embed_dim: int = 256, width: int = 256, layers: int = 2,
                 heads: int = 4, max_video_len: int = 32, context_length: int = 128,
                 text_encoder: Mapping[str, Any] | None = None):
        args = dict(locals())
        super().__init__(feature_dim, embed_dim, width, layers, heads, max_video_len, context_length)
        self.config = {k: v for k, v in args.items() if k not in ("self", "__class__")}
        if text_encoder is not None:
            cfg = text_encoder_cfg(text_encoder)
            del self.token_embed
            self.text_backbone = hf_encoder(cfg["hf_folder"], cfg["pretrained"], HF_FOLDER_KEY, context_length,
                                            "model.kwargs.context_length")
            self.text_in = nn.Linear(self.text_backbone.config.hidden_size, width)
            self.tokenizer = _TokenPairs(HFTokenizer(cfg["hf_folder"], context_length, HF_FOLDER_KEY))
            self.config["text_encoder"] = {**cfg, "pretrained": False}  # a checkpoint rebuilds it for its weights
        self.arch = type(self).__name__

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] (bytes or the folder's word pieces) + mask [B, L] -> L2-normalised [B, embed_dim]."""
        if self.config["text_encoder"] is None:
            return super().encode_text(ids, mask)
        tokens = self.text_backbone(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, L, hidden]
        return F.normalize(self.text(self.text_in(tokens), mask.bool()), dim=-1)


def load_official_state(model: MMPModel, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A percli MMP state dict, strictly (no official weights were released)."""
    return load_percli_state(model, state_or_path, "MMP")


register_loader(__name__)(load_official_state)


@register_model
def mmp_tiny(**kwargs) -> MMPModel:
    """A CPU-sized MMP model (128-d space, 2-layer video and text TP heads)."""
    model = MMPModel(**{**dict(embed_dim=128, width=128, layers=2, heads=4), **kwargs})
    model.arch = "mmp_tiny"
    return model


@register_model
def mmp_base(**kwargs) -> MMPModel:
    """A larger MMP model (256-d space, 4-layer TP heads)."""
    model = MMPModel(**{**dict(embed_dim=256, width=256, layers=4, heads=4), **kwargs})
    model.arch = "mmp_base"
    return model
