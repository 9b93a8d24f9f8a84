"""MHA-VSE: a multilingual visual-semantic embedding with K diverse attention heads (Huang, Chang, Hauptmann,
EMNLP 2019, "Multi-Head Attention with Diversity for Learning Grounded Multilingual Multimodal Representations").

Each language's sentence and each image's regions are encoded into states (a bidirectional GRU over subword
embeddings; a linear map of the region features), and K attention heads pool the states, each into its own
vector (structured self-attention, Lin et al. 2017: ``A = softmax(W2 tanh(W1 H^T))``, one row of A per head).
A head's vector is projected into the joint space and L2-normalised; the embedding is the concatenation of the
K unit heads divided by sqrt(K), so the cosine of two embeddings is the mean of the K head cosines. Training
aligns English-image, German-image and English-German (any two languages) pairs with VSE++'s hardest-negative
triplet loss (`triplet_ranking`) and makes the heads of one input attend to different things with a diversity
regulariser (`diversity_loss`).

No official code is public and the paper's text could not be read here; where it is silent, percli chooses and
exposes the choice:

* ``share_text_encoder`` (False): one GRU per language (the paper's "English and German sentence encoders") or
  one shared; the subword embedding table is shared (one multilingual vocabulary);
* the diversity term (`diversity_loss`): ``hinge`` (default: ``sum_{k != l} max(0, cos(h_k, h_l) - delta)`` on
  the head vectors, heads pushed apart beyond a margin, the form later descriptions of the paper give) or
  ``frobenius`` (``||A A^T - I||_F^2`` on the attention maps, Lin et al.'s penalty); within each encoder only;
* region features pass a linear layer (no detector is trained): bottom-up-style region features, or grid
  features of a frozen image encoder, are inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.common import LoadReport, load_percli_state, plain

DIVERSITY_FORMS = ("hinge", "frobenius")


class HeadPooling(nn.Module):
    """K-head structured self-attention pooling: states [B, L, d] -> heads [B, K, e] (unit norm) and the
    attention maps [B, K, L] (zero on padding)."""

    def __init__(self, dim: int, heads: int, attn_dim: int, embed_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, attn_dim, bias=False)
        self.w2 = nn.Linear(attn_dim, heads, bias=False)
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.w2(torch.tanh(self.w1(states))).transpose(1, 2)  # [B, L, d] -> [B, K, L]
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        attention = scores.softmax(dim=-1)
        heads = F.normalize(self.proj(attention @ states), dim=-1)  # [B, K, L] @ [B, L, d] -> [B, K, e]
        return heads, attention


class TextEncoder(nn.Module):
    """Subword embeddings (given) -> bidirectional GRU -> K-head pooling."""

    def __init__(self, word_dim: int, hidden: int, layers: int, heads: int, attn_dim: int, embed_dim: int):
        super().__init__()
        self.gru = nn.GRU(word_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.pool = HeadPooling(2 * hidden, heads, attn_dim, embed_dim)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = mask.sum(dim=1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(words, lengths, batch_first=True, enforce_sorted=False)
        states, _ = self.gru(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=words.shape[1])
        return self.pool(states, mask)


class MHAVSE(nn.Module):
    """The model of the module docstring.

    Calling conventions:
        ``encode_text(ids, mask, language)`` / ``encode_image(regions, mask)``: ``(embedding [B, K*e] unit
        norm, heads [B, K, e], attention [B, K, L])``.
    """

    def __init__(self, vocab_size: int = 16000, languages: Sequence[str] = ("en", "de"), region_dim: int = 2048,
                 word_dim: int = 300, hidden: int = 512, gru_layers: int = 1, heads: int = 4, attn_dim: int = 512,
                 embed_dim: int = 1024, share_text_encoder: bool = False, pad_id: int = 0):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        if heads < 1 or not languages:
            raise ValueError(f"heads={heads}, languages={list(languages)}: need at least one head and one language")
        self.languages = tuple(languages)
        self.num_heads = heads
        self.word_embed = nn.Embedding(vocab_size, word_dim, padding_idx=pad_id)
        names = ("shared",) if share_text_encoder else self.languages
        self.text = nn.ModuleDict({n: TextEncoder(word_dim, hidden, gru_layers, heads, attn_dim, embed_dim)
                                   for n in names})
        self.region_proj = nn.Linear(region_dim, 2 * hidden)
        self.image_pool = HeadPooling(2 * hidden, heads, attn_dim, embed_dim)

    def checkpoint_meta(self) -> dict:
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config)}

    def _joint(self, heads: torch.Tensor) -> torch.Tensor:
        return heads.flatten(1) / math.sqrt(self.num_heads)  # unit heads -> a unit vector; cos = mean head cos

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, language: str
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if language not in self.languages:
            raise ValueError(f"language {language!r}: this model was built for {', '.join(self.languages)}")
        encoder = self.text["shared"] if "shared" in self.text else self.text[language]
        heads, attention = encoder(self.word_embed(ids), mask)
        return self._joint(heads), heads, attention

    def encode_image(self, regions: torch.Tensor, mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heads, attention = self.image_pool(self.region_proj(regions), mask)
        return self._joint(heads), heads, attention


# --------------------------------------------------------------------------- losses


def triplet_ranking(similarity: torch.Tensor, margin: float = 0.2, max_violation: bool = True) -> torch.Tensor:
    """VSE++'s bidirectional hinge over a [B, B] similarity (pair i on the diagonal), summed over the batch:
    per positive, ``max(0, margin - s_ii + s_ij)`` for the negatives j of its row and of its column; with
    `max_violation` only the hardest negative of each (VSE++'s MH loss), else the sum over all (VSE0)."""
    positive = similarity.diagonal()
    eye = torch.eye(len(similarity), dtype=torch.bool, device=similarity.device)
    rows = (margin + similarity - positive[:, None]).clamp_min(0).masked_fill(eye, 0)  # query i, candidates j
    cols = (margin + similarity - positive[None, :]).clamp_min(0).masked_fill(eye, 0)  # candidate j, queries i
    if max_violation:
        return rows.max(dim=1).values.sum() + cols.max(dim=0).values.sum()
    return rows.sum() + cols.sum()


def head_similarity(heads: torch.Tensor) -> torch.Tensor:
    """Mean cosine between the different heads of each input: [B, K, e] (unit rows) -> [B]."""
    k = heads.shape[1]
    if k < 2:
        return heads.new_zeros(heads.shape[0])
    gram = heads @ heads.transpose(1, 2)  # [B, K, K]
    off = ~torch.eye(k, dtype=torch.bool, device=heads.device)
    return gram[:, off].mean(dim=1)


def diversity_loss(heads: torch.Tensor, attention: torch.Tensor, form: str = "hinge",
                   delta: float = 0.0) -> torch.Tensor:
    """The diversity regulariser of one encoder's output, averaged over the batch.

    ``hinge``: ``sum_{k != l} max(0, cos(h_k, h_l) - delta)`` over the unit head vectors [B, K, e];
    ``frobenius``: ``||A A^T - I||_F^2`` over the attention maps [B, K, L] (rows sum to 1).
    """
    if form == "hinge":
        k = heads.shape[1]
        gram = heads @ heads.transpose(1, 2)
        off = ~torch.eye(k, dtype=torch.bool, device=heads.device)
        return (gram[:, off] - delta).clamp_min(0).sum(dim=1).mean()
    if form == "frobenius":
        eye = torch.eye(attention.shape[1], device=attention.device)
        return (attention @ attention.transpose(1, 2) - eye).square().sum(dim=(1, 2)).mean()
    raise ValueError(f"diversity form {form!r}: choose one of {', '.join(DIVERSITY_FORMS)}")


def load_state(model: MHAVSE, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A percli MHA-VSE state dict, strictly (no official weights were released)."""
    return load_percli_state(model, state_or_path, "mha-vse")


register_loader(__name__)(load_state)


@register_model
def mha_vse(**kwargs) -> MHAVSE:
    """The paper-sized model: 300-d word embeddings, a 512-per-direction BiGRU, 2048-d region features, 1024-d
    heads (K = 4; sizes chosen, the paper's text could not be read here)."""
    model = MHAVSE(**kwargs)
    model.arch = "mha_vse"
    return model


@register_model
def mha_vse_tiny(**kwargs) -> MHAVSE:
    """A CPU-sized MHA-VSE: 64-d words, a 64-per-direction GRU, 64-d heads, K = 4."""
    args = dict(word_dim=64, hidden=64, attn_dim=64, embed_dim=64, heads=4, vocab_size=1000, region_dim=256)
    model = MHAVSE(**{**args, **kwargs})
    model.arch = "mha_vse_tiny"
    return model
