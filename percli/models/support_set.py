"""Support-set bottlenecks (Patrick, Huang, Asano, Metze, Hauptmann, Henriques, Vedaldi; ICLR 2021).

A video-text model whose contrastive objective is paired with generative cross-captioning: the caption of
sample i is decoded from ``e_i``, an attention-weighted sum of the OTHER samples' video embeddings (the
support set, j != i), so related samples are pulled together instead of only pushed apart. No official code
was found; this follows the paper's description and exposes what it leaves open:

* ``video``: per-second features [B, T, F] (S3D / `percli extract features`) -> linear, learned positions,
  a Transformer encoder, masked mean, linear to ``embed_dim``;
* ``text``: byte-level tokens (`ByteTokenizer`, any language, no vocabulary file) -> the same encoder shape;
* ``bottleneck``: ``a_ij = softmax_j(<q(x_i), k(v_j)> / sqrt(d))`` over the batch, ``e_i = sum_j a_ij val(v_j)``;
  the query ``x_i`` is sample i's video embedding (``query="video"``) or its caption's (``"text"``), and
  ``cross=True`` masks j = i out (the paper's cross-captioning; False is its "captioning" ablation);
* ``decoder``: a Transformer decoder that reads ``e_i`` as its one memory token and predicts caption i's bytes
  (teacher forcing, cross-entropy over the real tokens).

`max_margin_ranking` is the bidirectional hinge the paper's contrastive term builds on (Collaborative Experts /
MMT); the recipe can use InfoNCE instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.byte_text import ByteTokenizer, ByteVideoTextEncoder
from percli.models.common import LoadReport, load_percli_state


class SupportSetAttention(nn.Module):
    """``e_i = sum_j softmax_j(<q(x_i), k(v_j)> / sqrt(d)) val(v_j)`` over the batch (j != i when `cross`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, video: torch.Tensor, cross: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B, D], video [B, D] (the support set) -> e [B, D] and the weights [B, B] (row i: sample i)."""
        if cross and query.shape[0] < 2:
            raise ValueError("cross-captioning needs at least 2 samples in the batch (the support set is the others)")
        logits = self.q(query) @ self.k(video).T / math.sqrt(query.shape[-1])  # [B, B]
        if cross:
            logits = logits.masked_fill(torch.eye(len(logits), dtype=torch.bool, device=logits.device), float("-inf"))
        weights = logits.softmax(dim=-1)
        return weights @ self.v(video), weights


class CaptionDecoder(nn.Module):
    """Byte-level Transformer decoder reading one memory vector: caption log-likelihood by teacher forcing."""

    def __init__(self, dim: int, width: int, layers: int, heads: int, max_len: int, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.zeros(1, max_len, width))
        nn.init.normal_(self.pos, std=0.02)
        self.memory = nn.Linear(dim, width)
        layer = nn.TransformerDecoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def logits(self, ids: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, L, vocab] of `ids` [B, L] given the bottleneck `e` [B, dim]."""
        L = ids.shape[1]
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=ids.device), diagonal=1)
        x = self.embed(ids) + self.pos[:, :L]
        return self.head(self.norm(self.blocks(x, self.memory(e)[:, None], tgt_mask=causal)))

    def loss(self, ids: torch.Tensor, mask: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of every real token after the first, predicted from the ones before it."""
        logits = self.logits(ids[:, :-1], e)
        target = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100)


class SupportSetModel(ByteVideoTextEncoder):
    """Video and text encoders into one space, the support-set bottleneck and the caption decoder.

    Args:
        feature_dim: Width of the input video features (S3D: 512).
        embed_dim: Joint space width.
        width, layers, heads: The encoders' and decoder's Transformer sizes.
        max_video_len: Most video steps (seconds); context_length: bytes per caption (special tokens included).
        query: ``video`` or ``text``: whose embedding queries the support set.
    """

    def __init__(self, feature_dim: int = 512, embed_dim: int = 256, width: int = 256, layers: int = 2,
                 heads: int = 4, decoder_layers: int = 2, max_video_len: int = 32, context_length: int = 64,
                 query: str = "video"):
        args = dict(locals())
        if query not in ("video", "text"):
            raise ValueError(f"query={query!r}: use 'video' or 'text'")
        super().__init__(feature_dim, embed_dim, width, layers, heads, max_video_len, context_length)
        self.config = {k: v for k, v in args.items() if k not in ("self", "__class__")}
        self.arch, self.query = type(self).__name__, query
        self.bottleneck = SupportSetAttention(embed_dim)
        self.decoder = CaptionDecoder(embed_dim, width, decoder_layers, heads, context_length, ByteTokenizer.vocab_size)

    def forward(self, features: torch.Tensor, video_mask: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor,
                cross: bool = True) -> dict[str, torch.Tensor]:
        """Both embeddings, the caption loss of decoding each caption from its support-set bottleneck, and the
        attention weights [B, B]."""
        video, text = self.encode_video(features, video_mask), self.encode_text(ids, text_mask)
        e, weights = self.bottleneck(video if self.query == "video" else text, video, cross)
        return {"video_embeds": video, "text_embeds": text, "caption_loss": self.decoder.loss(ids, text_mask, e),
                "attention": weights, "logit_scale": self.logit_scale.exp()}


def max_margin_ranking(similarity: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Bidirectional hinge over a [B, B] similarity (pair i on the diagonal): for every i and negative j,
    ``max(0, m + s_ij - s_ii) + max(0, m + s_ji - s_ii)``, averaged over the B (B - 1) negatives."""
    positive = similarity.diagonal()
    off = ~torch.eye(len(similarity), dtype=torch.bool, device=similarity.device)
    rows = (margin + similarity - positive[:, None]).clamp_min(0)  # video i against captions j
    cols = (margin + similarity - positive[None, :]).clamp_min(0)  # caption j against videos i
    return (rows[off].sum() + cols[off].sum()) / off.sum().clamp_min(1)


def load_official_state(model: SupportSetModel, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A percli support-set state dict, strictly (no official weights were released)."""
    return load_percli_state(model, state_or_path, "support-set")


register_loader(__name__)(load_official_state)


@register_model
def support_set_tiny(**kwargs) -> SupportSetModel:
    """A CPU-sized support-set model (128-d space, 2-layer encoders and decoder)."""
    args = dict(embed_dim=128, width=128, layers=2, heads=4, decoder_layers=2)
    model = SupportSetModel(**{**args, **kwargs})
    model.arch = "support_set_tiny"
    return model


@register_model
def support_set_base(**kwargs) -> SupportSetModel:
    """A larger support-set model (256-d space, 4-layer encoders, 2-layer decoder)."""
    args = dict(embed_dim=256, width=256, layers=4, heads=4, decoder_layers=2)
    model = SupportSetModel(**{**args, **kwargs})
    model.arch = "support_set_base"
    return model
