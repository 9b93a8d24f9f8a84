"""The local (Swin-style) decoder block of Audio-MAE (``decoder_mode=1``).

Audio-MAE's release decoder is a stack of shifted-window blocks taken from a patched timm 0.3.2
Swin-V2 implementation (``timm_patch/swin_transformer.py`` in facebookresearch/AudioMAE@bd60e29):

* windows of 4x4 tokens on the (time x freq) patch grid, shifted by (2, 0) on odd blocks;
* **post-norm** residual branches ("res-post-norm": ``x + norm(attn(x))``);
* **scaled cosine attention**: ``cos(q, k) / max(tau, 0.01)`` with a learnable per-head ``tau``;
* a **continuous relative position bias**: a 2 -> 384 -> heads ReLU MLP (``meta_mlp``) evaluated
  on log-spaced relative coordinates ``sign(d) * log(1 + |d|)``.

Parameter names and shapes follow that file, so official state dicts load strictly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

# Additive attention penalty between tokens of different shifted regions (the official value;
# not -inf, so a fully separated row still softmaxes to something finite).
_CROSS_REGION_PENALTY = -100.0


class Mlp(nn.Module):
    """Two linear layers with an activation between them (timm's ``Mlp`` parameter names)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim_out or dim_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Cut a token map into non-overlapping windows.

    Args:
        x: [B, H, W, C] token map.
        window: (wh, ww), dividing H and W.

    Returns:
        [B * H/wh * W/ww, wh * ww, C], windows in raster order, tokens in raster order inside.
    """
    B, H, W, C = x.shape
    wh, ww = window
    # [B, H, W, C] -> [B, H/wh, wh, W/ww, ww, C] -> [B, H/wh, W/ww, wh, ww, C]
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_merge(windows: torch.Tensor, window: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Inverse of `window_partition`: [B * #windows, wh * ww, C] -> [B, H, W, C]."""
    H, W = grid
    wh, ww = window
    C = windows.shape[-1]
    # [B*nH*nW, wh*ww, C] -> [B, nH, nW, wh, ww, C] -> [B, nH, wh, nW, ww, C]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def log_relative_coordinates(window: Sequence[int]) -> torch.Tensor:
    """Log-spaced relative (dy, dx) between every pair of tokens of a window, [A*A, 2] (A = wh*ww)."""
    ys, xs = torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # [2, A]
    # [2, A, 1] - [2, 1, A] -> [2, A, A] -> [A, A, 2] -> [A*A, 2]; row = query, column = key
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).reshape(-1, 2).float()
    return torch.sign(rel) * torch.log1p(rel.abs())


def shifted_window_mask(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
    """Additive mask keeping attention inside the regions that a cyclic shift brought together.

    Region labelling follows the official code, including its treatment of a zero shift along an
    axis (``slice(-0, None)`` covers the whole axis, so that axis contributes a single region).

    Returns:
        [#windows, A, A] with 0 within a region and -100 across regions.
    """
    H, W = grid
    labels = torch.zeros(1, H, W, 1)
    region = 0
    for hs in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for ws in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            labels[:, hs, ws, :] = region
            region += 1
    per_window = window_partition(labels, window).squeeze(-1)  # [#windows, A]
    diff = per_window[:, None, :] - per_window[:, :, None]  # [#windows, A, A]
    return torch.where(diff != 0, _CROSS_REGION_PENALTY, 0.0)


class WindowCosineAttention(nn.Module):
    """Multi-head scaled-cosine attention inside windows with a continuous position bias.

    Args:
        dim: token width.
        num_heads: heads (``dim`` must be divisible).
        window: (wh, ww) window size.
        meta_hidden_dim: hidden width of the position-bias MLP (official: 384).
    """

    def __init__(self, dim: int, num_heads: int, window: Sequence[int], meta_hidden_dim: int = 384):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window = tuple(window)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.meta_mlp = Mlp(2, meta_hidden_dim, num_heads, act_layer=nn.ReLU)
        self.tau = nn.Parameter(torch.ones(num_heads))
        self.register_buffer("rel_coords_log", log_relative_coordinates(self.window), persistent=False)

    def position_bias(self) -> torch.Tensor:
        """[1, heads, A, A] bias from the meta MLP."""
        area = self.window[0] * self.window[1]
        bias = self.meta_mlp(self.rel_coords_log)  # [A*A, heads]
        # [A*A, heads] -> [heads, A, A]
        return bias.transpose(0, 1).reshape(self.num_heads, area, area).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within each window.

        Args:
            x: [B * #windows, A, C] windowed tokens.
            mask: optional [#windows, A, A] additive mask (shifted blocks).
        """
        Bw, A, C = x.shape
        # [Bw, A, 3C] -> [Bw, A, 3, heads, C/heads] -> [3, Bw, heads, A, C/heads]
        q, k, v = self.qkv(x).view(Bw, A, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        norms = q.norm(dim=-1, keepdim=True) @ k.norm(dim=-1, keepdim=True).transpose(-2, -1)
        attn = (q @ k.transpose(-2, -1)) / norms.clamp(min=1e-6)  # cosine similarity, [Bw, heads, A, A]
        attn = attn / self.tau.clamp(min=0.01).view(1, -1, 1, 1)
        attn = attn + self.position_bias()
        if mask is not None:
            nw = mask.shape[0]
            # [Bw, heads, A, A] -> [B, #windows, heads, A, A] so each window gets its own mask
            attn = attn.view(Bw // nw, nw, self.num_heads, A, A) + mask[None, :, None]
            attn = attn.view(Bw, self.num_heads, A, A)
        out = attn.softmax(dim=-1) @ v
        # [Bw, heads, A, C/heads] -> [Bw, A, C]
        return self.proj(out.transpose(1, 2).reshape(Bw, A, C))


class SwinDecoderBlock(nn.Module):
    """Post-norm shifted-window block on a fixed token grid (Audio-MAE ``decoder_mode=1``).

    A window larger than the grid is clipped to it, and an axis the window covers is never
    shifted (as in the official block).

    Args:
        dim: token width.
        num_heads: attention heads.
        grid: (H, W) token grid, tokens arrive flattened in raster order.
        window: (wh, ww) window size.
        shift: (sh, sw) cyclic shift, (0, 0) for a plain window block.
        mlp_ratio: MLP hidden width over ``dim``.
        norm_layer: normalisation factory.
    """

    def __init__(self, dim: int, num_heads: int, grid: Sequence[int], window: Sequence[int] = (4, 4),
                 shift: Sequence[int] = (0, 0), mlp_ratio: float = 4.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.grid = tuple(grid)
        self.window = tuple(min(g, w) for g, w in zip(grid, window, strict=True))
        self.shift = tuple(0 if g <= w else s for g, w, s in zip(grid, self.window, shift, strict=True))
        if any(g % w for g, w in zip(self.grid, self.window, strict=True)):
            raise ValueError(f"token grid {list(self.grid)} is not a multiple of the window {list(self.window)}")
        self.attn = WindowCosineAttention(dim, num_heads, self.window)
        self.norm1 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = norm_layer(dim)
        mask = shifted_window_mask(self.grid, self.window, self.shift) if any(self.shift) else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        H, W = self.grid
        x = x.view(B, H, W, C)  # [B, L, C] -> [B, H, W, C]
        if any(self.shift):
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        out = self.attn(window_partition(x, self.window), mask=self.attn_mask)
        out = window_merge(out, self.window, self.grid)
        if any(self.shift):
            out = torch.roll(out, shifts=self.shift, dims=(1, 2))
        return out.reshape(B, L, C)  # [B, H, W, C] -> [B, L, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H*W, C] -> [B, H*W, C]."""
        x = x + self.norm1(self._window_attention(x))
        return x + self.norm2(self.mlp(x))
