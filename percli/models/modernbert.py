"""ModernBERT (Warner et al., 2024): the text tower of PE-AV and PE-A-Frame.

Module names, shapes and numerics follow transformers' ``ModernBertModel`` (v4.55, the version the
PE-AV release pins), so a released ``text_model.*`` state loads strictly:

* ``embeddings.tok_embeddings`` -> ``embeddings.norm`` (LayerNorm, no bias by default);
* ``layers.i``: pre-norm blocks; ``attn_norm`` (absent, an identity, in layer 0) -> ``attn.Wqkv`` ->
  RoPE (rotate-half convention) -> attention -> ``attn.Wo``; ``mlp_norm`` -> ``mlp.Wi`` (input and gate
  halves) -> GELU(input) * gate -> ``mlp.Wo``. Layer i is *global* (full attention, RoPE base
  ``global_rope_theta``) when ``i % global_attn_every_n_layers == 0``, else *local* (keys within
  ``local_attention // 2`` positions, RoPE base ``local_rope_theta``);
* ``final_norm``.

Padding is an additive mask (the dtype's minimum), as the reference SDPA path does, so padded positions
carry finite values. ``forward`` returns the last hidden state after ``final_norm`` and, if asked, every
hidden state: entry 0 = embeddings, entry i = output of layer i-1 (before ``final_norm``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models.common import plain


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last axis."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class RotaryEmbedding(nn.Module):
    """cos/sin tables [1, L, head_dim] of RoPE with base ``theta`` (frequencies repeated for both halves)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]
        angles = torch.cat([freqs, freqs], dim=-1)[None]
        return angles.cos(), angles.sin()


class ModernBertAttention(nn.Module):
    def __init__(self, hidden_size: int, heads: int, theta: float, window: int | None, bias: bool):
        super().__init__()
        if hidden_size % heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({heads})")
        self.heads, self.head_dim, self.window = heads, hidden_size // heads, window
        self.Wqkv = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)
        self.rotary_emb = RotaryEmbedding(self.head_dim, theta)
        self.Wo = nn.Linear(hidden_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, global_mask: torch.Tensor, local_mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.Wqkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, h, N, hd]
        cos, sin = self.rotary_emb(torch.arange(n, device=x.device))
        cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        mask = global_mask if self.window is None else local_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.Wo(out.transpose(1, 2).reshape(b, n, -1))


class ModernBertMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool):
        super().__init__()
        self.Wi = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.Wo = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(F.gelu(inputs) * gate)


class ModernBertLayer(nn.Module):
    def __init__(self, index: int, hidden_size: int, intermediate_size: int, heads: int, theta: float,
                 window: int | None, norm_eps: float, norm_bias: bool, attention_bias: bool, mlp_bias: bool):
        super().__init__()
        self.attn_norm = nn.Identity() if index == 0 else nn.LayerNorm(hidden_size, eps=norm_eps, bias=norm_bias)
        self.attn = ModernBertAttention(hidden_size, heads, theta, window, attention_bias)
        self.mlp_norm = nn.LayerNorm(hidden_size, eps=norm_eps, bias=norm_bias)
        self.mlp = ModernBertMLP(hidden_size, intermediate_size, mlp_bias)

    def forward(self, x: torch.Tensor, global_mask: torch.Tensor, local_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), global_mask, local_mask)
        return x + self.mlp(self.mlp_norm(x))


class ModernBertEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, pad_token_id: int, norm_eps: float, norm_bias: bool):
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.norm = nn.LayerNorm(hidden_size, eps=norm_eps, bias=norm_bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tok_embeddings(input_ids))


class ModernBert(nn.Module):
    """ModernBERT encoder; keywords are those of a ModernBERT ``config.json`` (unknown ones are ignored).

    Defaults are ModernBERT-large's shape as PE-AV's code declares it (``DFLT_TEXT_ENCODER_CONFIG``).
    """

    def __init__(self, vocab_size: int = 50368, hidden_size: int = 1024, intermediate_size: int = 2624,
                 num_hidden_layers: int = 28, num_attention_heads: int = 16, global_attn_every_n_layers: int = 3,
                 local_attention: int = 128, global_rope_theta: float = 160000.0,
                 local_rope_theta: float | None = 10000.0, norm_eps: float = 1e-5, norm_bias: bool = False,
                 attention_bias: bool = False, mlp_bias: bool = False, pad_token_id: int = 50283,
                 max_position_embeddings: int = 8192, hidden_activation: str = "gelu", **_unused: object):
        args = {k: plain(v) for k, v in locals().items() if k not in ("self", "_unused", "__class__")}
        super().__init__()
        if hidden_activation != "gelu":
            raise ValueError(f"ModernBert supports hidden_activation 'gelu' (exact erf), got {hidden_activation!r}")
        self.config = args
        self.hidden_size, self.local_attention = hidden_size, local_attention
        self.embeddings = ModernBertEmbeddings(vocab_size, hidden_size, pad_token_id, norm_eps, norm_bias)
        self.layers = nn.ModuleList()
        for i in range(num_hidden_layers):
            is_global = i % global_attn_every_n_layers == 0
            theta = global_rope_theta if is_global or local_rope_theta is None else local_rope_theta
            self.layers.append(ModernBertLayer(i, hidden_size, intermediate_size, num_attention_heads, theta,
                                               None if is_global else local_attention // 2, norm_eps, norm_bias,
                                               attention_bias, mlp_bias))
        self.final_norm = nn.LayerNorm(hidden_size, eps=norm_eps, bias=norm_bias)

    def masks(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive masks [B, 1, N, N]: padding keys get the dtype's minimum; the local one also far keys."""
        lowest = torch.finfo(dtype).min
        n = attention_mask.shape[1]
        keys = attention_mask[:, None, None, :].to(dtype).expand(-1, 1, n, n)
        global_mask = (1.0 - keys) * lowest
        rows = torch.arange(n, device=attention_mask.device)
        near = (rows[None, :] - rows[:, None]).abs() <= self.local_attention // 2
        return global_mask, global_mask.masked_fill(~near[None, None], lowest)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """input_ids [B, N] (attention_mask [B, N], 1 = token) -> (last hidden state, hidden states or None)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids)
        global_mask, local_mask = self.masks(attention_mask, x.dtype)
        states = [x]
        for layer in self.layers:
            x = layer(x, global_mask, local_mask)
            states.append(x)
        return self.final_norm(x), (tuple(states) if output_hidden_states else None)
