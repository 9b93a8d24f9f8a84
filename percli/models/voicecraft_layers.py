"""VoiceCraft's building blocks: token and sinusoidal embeddings, the pre-LN decoder with a KV cache,
and top-k / top-p sampling (the model itself is `percli.models.voicecraft`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class TokenEmbedding(nn.Module):
    """``nn.Embedding`` + dropout, named ``word_embeddings`` as in the official checkpoints."""

    def __init__(self, dim: int, vocab_size: int, dropout: float = 0.0):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.word_embeddings(tokens))


def sinusoidal_table(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """[length, dim] interleaved sin/cos code: ``pe[p, 2i] = sin(p w_i)``, ``pe[p, 2i+1] = cos(p w_i)``."""
    position = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class SinePositionalEmbedding(nn.Module):
    """``x + alpha * pe`` with a learnable scalar ``alpha`` (initialised to 1), then dropout."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.dim = dim
        self.alpha = nn.Parameter(torch.ones(1))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """``x [B, T, D]`` whose first step sits at position ``offset``."""
        pe = sinusoidal_table(offset + x.shape[1], self.dim, x.device)[offset:].to(x.dtype)
        return self.dropout(x + self.alpha * pe)


KVCache = tuple[torch.Tensor, torch.Tensor]  # keys, values [B, heads, S, head_dim]


class SelfAttention(nn.Module):
    """Multi-head self-attention with the packed ``in_proj`` of ``nn.MultiheadAttention``."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"d_model {dim} is not divisible by nhead {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None,
                past: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """``x [B, S, D]``; ``attend`` [B, 1, S, S_past + S] bool (True = may attend) or None (all).

        Returns the output and the keys/values of the past and new steps (the cache to pass next).
        """
        B, S, D = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, S, 3D]
        qkv = qkv.view(B, S, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)  # [3, B, H, S, hd]
        q, k, v = qkv.unbind(0)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, S, D)  # [B, H, S, hd] -> [B, S, D]
        return self.out_proj(out), (k, v)


class DecoderLayer(nn.Module):
    """Pre-LN Transformer layer: ``x + SA(LN x)``, then ``x + FFN(LN x)`` with a ReLU FFN."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads, dropout)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(4 * dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None,
                past: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        h, present = self.self_attn(self.norm1(x), attend, past)
        x = x + self.dropout1(h)
        x = x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(self.norm2(x))))))
        return x, present


class Decoder(nn.Module):
    """The layer stack and final LayerNorm (official ``decoder.layers.*`` / ``decoder.norm``)."""

    def __init__(self, dim: int, num_heads: int, depth: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer(dim, num_heads, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None,
                past: Sequence[KVCache] | None = None) -> tuple[torch.Tensor, list[KVCache]]:
        presents = []
        for i, layer in enumerate(self.layers):
            x, present = layer(x, attend, None if past is None else past[i])
            presents.append(present)
        return self.norm(x), presents


# --------------------------------------------------------------------------- sampling

def sample_top_k_top_p(logits: torch.Tensor, top_k: int = 40, top_p: float = 1.0, temperature: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``logits [N, C]``: temperature, then top-k and nucleus filtering.

    ``top_k <= 0`` and ``top_p >= 1`` disable their filter; the nucleus keeps the smallest prefix whose
    probability reaches ``top_p`` (the first token is always kept).
    """
    logits = logits / temperature if temperature != 1.0 else logits.clone()
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits[logits < kth] = -math.inf
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses the threshold
        drop[..., 0] = False
        logits[drop.scatter(-1, order, drop)] = -math.inf
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
