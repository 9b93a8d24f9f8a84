"""The Llama-3 decoder of PerceptionLM, with the parameter names of perception_models' ``core/transformer.py``.

Pre-norm blocks (RMSNorm computed in float32) of grouped-query attention without biases and a SwiGLU
feed-forward; rotary position embedding on interleaved channel pairs ``(x[2i], x[2i+1])``, optionally with
the Llama-3.1 long-context frequency scaling. `LlamaTransformer` holds what the official ``BaseTransformer``
and the text half of ``LMTransformer`` hold, at the top level of the state dict: ``tok_embeddings``,
``layers.N.attention.{wq,wk,wv,wo}``, ``layers.N.feed_forward.{w1,w2,w3}``, ``layers.N.attention_norm``,
``layers.N.ffn_norm``, ``norm`` and ``output`` (a `TiedLinear` around ``tok_embeddings`` with weight tying,
listed as ``output.tied_module.weight``).

Attention takes ``mask="causal"`` (SDPA's causal mask), ``None`` (attend to everything given) or a boolean
tensor broadcastable to [B, heads, Lq, Lk] (True = attend), and optionally the keys/values of earlier tokens
(``past``) for decoding with a KV cache; caches hold [B, kv_heads, S, head_dim] tensors after RoPE.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values [B, kv_heads, S, head_dim]
Mask = str | torch.Tensor | None

# Llama-3 special tokens the release uses (128000 + k): <|begin_of_text|>, <|end_of_text|>, <|image|>, <|eot_id|>
BOS_ID, END_OF_TEXT_ID, IMAGE_TOKEN_ID, EOT_ID = 128000, 128001, 128002, 128009
VIDEO_TOKEN_ID = 128003  # the Hugging Face port's <|video|>; the release uses <|image|> for video frames too


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Llama's SwiGLU width: int(2 * 4 * dim / 3), times ``ffn_dim_multiplier``, rounded up to ``multiple_of``."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# --------------------------------------------------------------------------- rotary embedding


def llama3_scale_frequencies(freqs: torch.Tensor, scale_factor: float, low_freq_factor: float,
                             high_freq_factor: float, old_context_len: int) -> torch.Tensor:
    """Llama-3.1 context extension of RoPE frequencies (identity when ``scale_factor`` is 1).

    Wavelengths shorter than old_context_len / high_freq_factor keep their frequency, those longer than
    old_context_len / low_freq_factor are divided by ``scale_factor``; in between the two are blended
    with weight smooth = (old_context_len / wavelength - low) / (high - low). Same float32 operations,
    in the same order, as the official per-frequency loop.
    """
    if scale_factor == 1:
        return freqs
    low_wavelen, high_wavelen = old_context_len / low_freq_factor, old_context_len / high_freq_factor
    if low_wavelen < high_wavelen:
        raise ValueError(f"low_freq_factor {low_freq_factor} must not exceed high_freq_factor {high_freq_factor}")
    wavelen = 2 * math.pi / freqs
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * freqs / scale_factor + smooth * freqs
    scaled = torch.where(wavelen > low_wavelen, freqs / scale_factor, blended)
    return torch.where(wavelen < high_wavelen, freqs, scaled)


class RotaryEmbedding(nn.Module):
    """The rotation table ``freqs_cis`` [positions, head_dim / 2, 2, 2] = [[cos, -sin], [sin, cos]] per pair.

    A non-persistent buffer of ``max_seqlen`` rows as officially; `table` extends it when a longer
    sequence needs it (and rebuilds it after a meta-device construction).
    """

    def __init__(self, theta: float, head_dim: int, max_seqlen: int = 1024, scale_factor: float = 1,
                 low_freq_factor: float = 1, high_freq_factor: float = 32, old_context_len: int = 8192):
        super().__init__()
        self.theta, self.head_dim, self.max_seqlen = theta, head_dim, max_seqlen
        self.scaling = dict(scale_factor=scale_factor, low_freq_factor=low_freq_factor,
                            high_freq_factor=high_freq_factor, old_context_len=old_context_len)
        self.register_buffer("freqs_cis", self.precompute(max_seqlen), persistent=False)

    def precompute(self, end: int, device: torch.device | None = None) -> torch.Tensor:
        dim = self.head_dim
        freqs = 1.0 / (self.theta ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim))
        freqs = llama3_scale_frequencies(freqs, **self.scaling)
        angles = torch.outer(torch.arange(end, device=freqs.device), freqs).float()  # [end, hd/2]
        cos, sin = angles.cos(), angles.sin()
        return torch.stack((cos, -sin, sin, cos), dim=-1).view(end, dim // 2, 2, 2)

    def reset_parameters(self) -> None:
        """Recompute the table (after `to_empty` from the meta device)."""
        self.freqs_cis = self.precompute(max(self.max_seqlen, self.freqs_cis.shape[0]), self.freqs_cis.device)

    def table(self, end: int, device: torch.device) -> torch.Tensor:
        """Rows [0, end) of the table on `device` (float32 even after the model was cast to a lower precision)."""
        if self.freqs_cis.is_meta and device.type != "meta":
            self.freqs_cis = self.precompute(max(self.max_seqlen, end), device)
        elif self.freqs_cis.shape[0] < end or self.freqs_cis.dtype != torch.float32:
            self.freqs_cis = self.precompute(max(self.freqs_cis.shape[0], end), self.freqs_cis.device)
        return self.freqs_cis[:end].to(device)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Rows of the token positions: [S] -> [S, hd/2, 2, 2], or [B, S] -> [B, S, hd/2, 2, 2]."""
        end = int(positions.max()) + 1 if positions.numel() else 1
        return self.table(end, positions.device)[positions]


def apply_rotary_emb(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the pairs (x[2i], x[2i+1]) of q [B, S, H, hd] and k [B, S, KV, hd] in float32.

    ``freqs_cis`` is [S, hd/2, 2, 2] (shared by the batch) or [B, S, hd/2, 2, 2] (positions per row).
    """
    rows = freqs_cis if freqs_cis.dim() == 5 else freqs_cis[None]
    rows = rows[:, :, None, :, :, :].float()  # [B|1, S, 1, hd/2, 2, 2]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        pairs = x.reshape(*x.shape[:-1], -1, 1, 2)  # [B, S, H, hd/2, 1, 2]
        return (pairs * rows).sum(5).flatten(3).type_as(x)  # [B, S, H, hd/2, 2] -> [B, S, H, hd]

    return rotate(xq), rotate(xk)


# --------------------------------------------------------------------------- blocks


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and cast back."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).type_as(x)


class TiedLinear(nn.Module):
    """The output projection sharing the token embedding's weight (registered as the child ``tied_module``)."""

    def __init__(self, tied_module: nn.Module):
        super().__init__()
        if not hasattr(tied_module, "weight"):
            raise AttributeError(f"{type(tied_module).__name__} has no weight to tie to")
        self.tied_module = tied_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.tied_module.weight)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, KV, S, hd] -> [B, KV * n_rep, S, hd]: kv head j serves query heads j * n_rep ... j * n_rep + n_rep - 1."""
    if n_rep == 1:
        return x
    B, kv, S, hd = x.shape
    return x[:, :, None].expand(B, kv, n_rep, S, hd).reshape(B, kv * n_rep, S, hd)


class Attention(nn.Module):
    """Grouped-query attention with RoPE on q and k, no biases, SDPA's default scale."""

    def __init__(self, dim: int, head_dim: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        self.dim, self.head_dim, self.n_heads, self.n_kv_heads = dim, head_dim, n_heads, n_kv_heads
        self.heads_per_group = n_heads // n_kv_heads
        self.wq = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor, mask: Mask = "causal",
                past: KV | None = None) -> tuple[torch.Tensor, KV]:
        """Output [B, S, dim] and the keys/values of `past` + these tokens."""
        B, S, _ = x.shape
        xq = self.wq(x).view(B, S, self.n_heads, self.head_dim)
        xk = self.wk(x).view(B, S, self.n_kv_heads, self.head_dim)
        xv = self.wv(x).view(B, S, self.n_kv_heads, self.head_dim)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis)
        q, k, v = (t.transpose(1, 2) for t in (xq, xk, xv))  # [B, S, heads, hd] -> [B, heads, S, hd]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if isinstance(mask, str) and mask != "causal":
            raise ValueError(f"mask {mask!r}: use 'causal', None or a boolean tensor")
        causal = isinstance(mask, str)
        if causal and past is not None:
            raise ValueError("mask='causal' aligns queries with the first keys; pass a boolean mask with a cache")
        out = F.scaled_dot_product_attention(q, repeat_kv(k, self.heads_per_group), repeat_kv(v, self.heads_per_group),
                                             attn_mask=None if causal else mask, is_causal=causal)
        return self.wo(out.transpose(1, 2).reshape(B, S, -1)), (k, v)  # [B, H, S, hd] -> [B, S, H * hd]


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.dim, self.hidden_dim = dim, hidden_dim
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """h = x + attention(attention_norm(x)); out = h + feed_forward(ffn_norm(h))."""

    def __init__(self, dim: int, head_dim: int, n_heads: int, n_kv_heads: int, hidden_dim: int, norm_eps: float):
        super().__init__()
        self.attention = Attention(dim, head_dim, n_heads, n_kv_heads)
        self.feed_forward = FeedForward(dim, hidden_dim)
        self.attention_norm = RMSNorm(dim, eps=norm_eps)
        self.ffn_norm = RMSNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor, mask: Mask = "causal", past: KV | None = None,
                return_kv: bool = False) -> torch.Tensor | tuple[torch.Tensor, KV]:
        attended, kv = self.attention(self.attention_norm(x), freqs_cis, mask, past)
        h = x + attended
        out = h + self.feed_forward(self.ffn_norm(h))
        return (out, kv) if return_kv else out


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean NLL of log_softmax(logits) in float32 (the official ``core.transformer.cross_entropy``)."""
    return F.nll_loss(F.log_softmax(logits.flatten(end_dim=-2).float(), -1), target.flatten())


# --------------------------------------------------------------------------- the decoder


class LlamaTransformer(nn.Module):
    """Token embedding, Llama blocks, final RMSNorm and output projection (official keywords and names).

    Args:
        dim, n_layers: width and depth.
        head_dim / n_heads: one of them (the other is derived); n_kv_heads: key/value heads (GQA; None = n_heads).
        ffn_dim_multiplier, multiple_of: the SwiGLU width rule (`ffn_hidden_dim`).
        norm_eps: RMSNorm epsilon.
        rope_theta, rope_scale_factor, low_freq_factor, high_freq_factor, old_context_len: RoPE and its
            Llama-3.1 scaling (`llama3_scale_frequencies`; scale factor 1 = none).
        max_seqlen: rows of the precomputed RoPE table (the trained context).
        vocab_size: embedding rows; weight_tying: output shares ``tok_embeddings.weight``.
    """

    def __init__(self, dim: int = 512, n_layers: int = 8, head_dim: int | None = None, n_heads: int | None = None,
                 n_kv_heads: int | None = None, ffn_dim_multiplier: float | None = None, multiple_of: int = 256,
                 norm_eps: float = 1e-5, rope_theta: float = 10000.0, old_context_len: int = 8192,
                 rope_scale_factor: float = 1, low_freq_factor: float = 1, high_freq_factor: float = 32,
                 max_seqlen: int = 1024, vocab_size: int = -1, weight_tying: bool = False):
        super().__init__()
        if head_dim is None and n_heads is None:
            raise ValueError("give head_dim or n_heads")
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.dim, self.max_seqlen, self.weight_tying = dim, max_seqlen, weight_tying
        self.head_dim = head_dim or dim // n_heads
        self.n_heads = n_heads or dim // head_dim
        self.n_kv_heads = n_kv_heads or self.n_heads
        if self.n_heads % self.n_kv_heads or dim % self.n_heads:
            raise ValueError(f"{self.n_heads} heads must split into {self.n_kv_heads} kv groups and divide dim {dim}")
        self.grad_checkpointing = False
        # registration order = the official state-dict order
        self.rope_embeddings = RotaryEmbedding(rope_theta, self.head_dim, max_seqlen, rope_scale_factor,
                                               low_freq_factor, high_freq_factor, old_context_len)
        hidden = ffn_hidden_dim(dim, multiple_of, ffn_dim_multiplier)
        self.layers = nn.ModuleList(TransformerBlock(dim, self.head_dim, self.n_heads, self.n_kv_heads, hidden,
                                                     norm_eps) for _ in range(n_layers))
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.output = TiedLinear(self.tok_embeddings) if weight_tying else nn.Linear(dim, vocab_size, bias=False)

    def init_language_weights(self) -> None:
        """The official init: truncated normals (std dim^-0.5, FFN output hidden^-0.5, cut at 3 std), unit norms."""
        def trunc(w: torch.Tensor, std: float) -> None:
            nn.init.trunc_normal_(w, mean=0.0, std=std, a=-3 * std, b=3 * std)

        std = self.dim ** -0.5
        for layer in self.layers:
            for w in (layer.attention.wq, layer.attention.wk, layer.attention.wv, layer.attention.wo):
                trunc(w.weight, std)
            trunc(layer.feed_forward.w1.weight, std)
            trunc(layer.feed_forward.w3.weight, std)
            trunc(layer.feed_forward.w2.weight, layer.feed_forward.hidden_dim ** -0.5)
            nn.init.ones_(layer.attention_norm.weight)
            nn.init.ones_(layer.ffn_norm.weight)
        nn.init.ones_(self.norm.weight)
        trunc(self.tok_embeddings.weight, std)
        if not self.weight_tying:
            trunc(self.output.weight, std)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each decoder layer in the backward pass (training with gradients only)."""
        self.grad_checkpointing = enable

    def freqs_for(self, seqlen: int, tok_idx: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """RoPE rows of positions ``tok_idx`` ([S] or [B, S]), or of 0 .. seqlen - 1."""
        if tok_idx is None:
            return self.rope_embeddings.table(seqlen, device)
        return self.rope_embeddings(tok_idx.to(device))

    def run_layers(self, h: torch.Tensor, tok_idx: torch.Tensor | None = None, mask: Mask = "causal") -> torch.Tensor:
        """Hidden states [B, S, dim] through every block (the official ``BaseTransformer.forward``)."""
        freqs = self.freqs_for(h.shape[1], tok_idx, h.device)
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            h = checkpoint(layer, h, freqs, mask, use_reentrant=False) if recompute else layer(h, freqs, mask)
        return h

    def run_layers_cached(self, h: torch.Tensor, positions: torch.Tensor, mask: Mask,
                          past: list[KV] | None) -> tuple[torch.Tensor, list[KV]]:
        """New tokens' hidden states [B, S, dim] at RoPE ``positions`` [B, S] and every layer's keys/values."""
        freqs = self.rope_embeddings(positions)
        cache = []
        for i, layer in enumerate(self.layers):
            h, kv = layer(h, freqs, mask, past[i] if past else None, return_kv=True)
            cache.append(kv)
        return h, cache

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """output(norm(h))."""
        return self.output(self.norm(h))
