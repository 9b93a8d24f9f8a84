"""Byte-level text and the Transformer-pooling encoder the video-language models share (support-set, MMP).

* `ByteTokenizer`: UTF-8 bytes as tokens, so any language needs no vocabulary file;
* `SequenceEncoder`: a sequence of vectors (per-second video features, token embeddings) -> learned positions,
  a pre-norm Transformer encoder, masked mean and a linear map: MMP's "Transformer pooling (TP) head";
* `ByteVideoTextEncoder`: per-second video features and byte-level captions into one L2-normalised space with
  a learnable temperature, the two towers both models build on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class ByteTokenizer:
    """UTF-8 bytes as tokens: pad 0, bos 1, eos 2, byte b -> b + 3 (vocabulary 259), any language."""

    pad, bos, eos, offset, vocab_size = 0, 1, 2, 3, 259

    def __init__(self, context_length: int = 64):
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> ids [N, context_length] (bos, bytes, eos; cut, eos kept) and the mask of real tokens."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.full((len(texts), self.context_length), self.pad, dtype=torch.long)
        for row, text in enumerate(texts):
            body = [b + self.offset for b in text.encode("utf-8")][: self.context_length - 2]
            tokens = [self.bos, *body, self.eos]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids, ids != self.pad

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text (stops at eos, skips pad/bos, replaces broken UTF-8)."""
        out = bytearray()
        for i in ids:
            if int(i) == self.eos:
                break
            if int(i) >= self.offset:
                out.append(int(i) - self.offset)
        return out.decode("utf-8", errors="replace")


class SequenceEncoder(nn.Module):
    """Inputs [B, L, width] + mask [B, L] -> learned positions, pre-norm Transformer encoder, masked mean, linear."""

    def __init__(self, width: int, layers: int, heads: int, max_len: int, embed_dim: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, max_len, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, embed_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pos.shape[1]:
            raise ValueError(f"sequence of {x.shape[1]} steps is longer than the model's {self.pos.shape[1]} positions")
        x = self.norm(self.blocks(x + self.pos[:, : x.shape[1]], src_key_padding_mask=~mask))
        weights = mask[..., None].to(x.dtype)  # [B, L, 1]
        return self.out((x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0))


class ByteVideoTextEncoder(nn.Module):
    """``video_in`` + ``video`` (a `SequenceEncoder` over per-second features) and ``token_embed`` + ``text`` (one
    over byte tokens), both to ``embed_dim`` and L2-normalised, and ``logit_scale`` (CLIP's initial 1 / 0.07).

    Subclasses set ``config`` / ``arch`` and add their own heads.
    """

    def __init__(self, feature_dim: int, embed_dim: int, width: int, layers: int, heads: int, max_video_len: int,
                 context_length: int):
        super().__init__()
        self.tokenizer = ByteTokenizer(context_length)
        self.video_in = nn.Linear(feature_dim, width)
        self.video = SequenceEncoder(width, layers, heads, max_video_len, embed_dim)
        self.token_embed = nn.Embedding(ByteTokenizer.vocab_size, width)
        self.text = SequenceEncoder(width, layers, heads, context_length, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def checkpoint_meta(self) -> dict:
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config)}

    def encode_video(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, feature_dim] features + mask [B, T] -> L2-normalised [B, embed_dim]."""
        return F.normalize(self.video(self.video_in(features), mask), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Byte ids [B, L] + mask [B, L] of captions in any language -> L2-normalised [B, embed_dim]."""
        return F.normalize(self.text(self.token_embed(ids), mask), dim=-1)

    def encode_texts(self, texts: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """Caption strings -> L2-normalised [N, embed_dim] (tokenised here)."""
        ids, mask = self.tokenizer(texts)
        device = device or self.logit_scale.device
        return self.encode_text(ids.to(device), mask.to(device))
