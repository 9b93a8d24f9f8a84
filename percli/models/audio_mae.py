"""Audio-MAE ("Masked Autoencoders that Listen", Huang et al., NeurIPS 2022), official-compatible.

Two models over log-mel spectrograms [B, 1, T, F] (AudioSet: 1024 frames x 128 mel bins, 16x16
patches -> a 64 (time) x 8 (freq) token grid, tokens flattened time-major):

* `AudioMaskedAutoencoderViT`: the pretraining MAE (official ``models_mae.MaskedAutoencoderViT``),
  with the global Transformer decoder (``decoder_mode=0``) or the local shifted-window decoder
  (``decoder_mode=1``, see `percli.models.audio_mae_decoder`), unstructured or 2-D time/freq masking.
* `AudioViT`: the fine-tuning classifier (official ``models_vit.VisionTransformer`` as built by
  ``main_finetune_as.py``), with fine-tune time/freq masking. Returns logits (no sigmoid).

Parameter names and shapes follow facebookresearch/AudioMAE@bd60e29, so official state dicts load
strictly, and ``tests/test_golden.py`` checks the outputs against the official code. Where the
official code hard-codes the AudioSet geometry (64x8 grid for 2-D masking and the local decoder),
percli uses the model's own patch grid, which is identical for 1024x128 inputs and makes smaller
inputs (e.g. 256x64 or 128x64) work.

Randomness: every masking function takes optional explicit ``noise`` tensors (the exact draws of
the official ``torch.rand`` calls) and an optional ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.audio_mae_decoder import Mlp, SwinDecoderBlock
from percli.models.common import LoadReport, check_fit, make_norm, plain, read_state
from percli.models.hiera import DropPath  # identical stochastic depth

# Kaldi fbank statistics of AudioSet used by the official recipes; inputs are (fbank - mean) / (2 * std).
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


def default_preprocess(img_size: Sequence[int]) -> dict:
    """Preprocessing metadata stored with the model (kaldi fbank as in the official dataset.py)."""
    return {"sample_rate": 16000, "num_mel_bins": int(img_size[1]), "target_length": int(img_size[0]),
            "frame_shift_ms": 10, "frame_length_ms": 25, "window_type": "hanning",
            "mean": AUDIOSET_MEAN, "std": AUDIOSET_STD, "norm": "(fbank - mean) / (2 * std)"}


# --------------------------------------------------------------------------- position embeddings

def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim] as ``[sin(pos * w), cos(pos * w)]``, w = 10000^(-i / (dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos.to(torch.float64).reshape(-1, 1) * omega[None]  # [M, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid: Sequence[int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding over a ``grid = (rows, cols)`` raster, [1, (1+) rows*cols, dim].

    Position ``r * cols + c`` gets ``[sincos(c), sincos(r)]`` (column half first, as the official
    ``get_2d_sincos_pos_embed_flexible``); the optional cls slot is zeros. Computed in float64.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows, cols = grid
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, c), sincos_1d(dim // 2, r)], dim=1)  # [rows*cols, dim]
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, dim), emb])
    return emb.float().unsqueeze(0)


# --------------------------------------------------------------------------- ViT pieces

class Attention(nn.Module):
    """Global multi-head self-attention (timm 0.3.2 names ``qkv``/``proj``), via SDPA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # [B, N, 3C] -> [B, N, 3, heads, C/heads] -> [3, B, heads, N, C/heads]
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # scale = head_dim ** -0.5 as the official
        # [B, heads, N, C/heads] -> [B, N, C]
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Spectrogram -> tokens with one conv (official ``PatchEmbed_org`` / ``PatchEmbed_new``).

    ``grid`` is the (time, freq) token grid the conv produces; tokens are flattened time-major.
    """

    def __init__(self, img_size: Sequence[int], patch_size: int, in_chans: int, embed_dim: int,
                 stride: int | None = None):
        super().__init__()
        stride = stride or patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride)
        self.grid = tuple((s - patch_size) // stride + 1 for s in img_size)
        self.num_patches = math.prod(self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, 1, T, F] -> [B, C, T/p, F/p] -> [B, T/p * F/p, C]
        return self.proj(x).flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------- masking

def _rand(shape: Sequence[int], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(*shape, generator=generator, device=gen_device).to(device)


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample unstructured masking: keep the ``int(L * (1 - mask_ratio))`` lowest-noise tokens.

    Args:
        x: [N, L, D] tokens.
        mask_ratio: fraction removed.
        noise: [N, L] uniform draws (drawn with `generator` when omitted).
        generator: RNG for the noise.

    Returns:
        kept tokens [N, len_keep, D] (in ascending-noise order), mask [N, L] (1 = removed, 0 = kept,
        float) and ids_restore [N, L] (``argsort(argsort(noise))``).
    """
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    if noise is None:
        noise = _rand((N, L), x.device, generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :len_keep, None].expand(-1, -1, D))
    mask = torch.ones(N, L, device=x.device)
    mask[:, :len_keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


def _draw_2d_noise(N: int, grid: Sequence[int], device: torch.device, noise_t: torch.Tensor | None,
                   noise_f: torch.Tensor | None, generator: torch.Generator | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    # official draw order: time first, then frequency
    if noise_t is None:
        noise_t = _rand((N, grid[0]), device, generator)
    if noise_f is None:
        noise_f = _rand((N, grid[1]), device, generator)
    return noise_t, noise_f


def random_masking_2d(x: torch.Tensor, grid: Sequence[int], mask_t_prob: float, mask_f_prob: float,
                      noise_t: torch.Tensor | None = None, noise_f: torch.Tensor | None = None,
                      generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pretraining time/frequency masking: drop whole time rows and whole frequency columns.

    A token survives if both its time row and its frequency column are among the
    ``int(T * (1 - mask_t_prob))`` / ``int(F * (1 - mask_f_prob))`` lowest-noise ones.

    Args:
        x: [N, T*F, D] tokens, time-major.
        grid: (T, F).
        noise_t: [N, T], noise_f: [N, F] uniform draws (drawn in that order when omitted).

    Returns:
        kept tokens [N, keep_t*keep_f, D] in raster order, mask [N, T*F] (1 = removed) and
        ids_restore [N, T*F] (kept tokens first in raster order, then removed ones).
    """
    N, L, D = x.shape
    T, Fq = grid
    keep_t, keep_f = int(T * (1 - mask_t_prob)), int(Fq * (1 - mask_f_prob))
    noise_t, noise_f = _draw_2d_noise(N, grid, x.device, noise_t, noise_f, generator)
    removed_t = torch.argsort(torch.argsort(noise_t, dim=1), dim=1) >= keep_t  # [N, T] rank >= keep
    removed_f = torch.argsort(torch.argsort(noise_f, dim=1), dim=1) >= keep_f  # [N, F]
    # [N, T, 1] | [N, 1, F] -> [N, T, F] -> [N, T*F]
    mask = (removed_t[:, :, None] | removed_f[:, None, :]).flatten(1).float()
    # Kept tokens first, each group in raster order. The official code sorts `index + 999 * mask`
    # over the whole batch, which is the same ordering while T*F <= 999 (AudioSet: 512).
    ids_shuffle = torch.argsort(mask, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :keep_t * keep_f, None].expand(-1, -1, D))
    return kept, mask, ids_restore


def finetune_masking_2d(x: torch.Tensor, grid: Sequence[int], mask_t_prob: float, mask_f_prob: float,
                        noise_t: torch.Tensor | None = None, noise_f: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Fine-tune time/frequency masking (official ``models_vit.random_masking_2d``).

    Unlike `random_masking_2d`, the kept rows and columns come out in ascending-noise order
    (gathered, not unshuffled); with position embeddings already added this only permutes tokens.

    Args:
        x: [N, T*F, D] tokens, time-major.
        grid: (T, F).
        noise_t: [N, T], noise_f: [N, F] uniform draws (drawn in that order when omitted).

    Returns:
        [N, keep_t * keep_f, D].
    """
    N, _, D = x.shape
    T, Fq = grid
    keep_t, keep_f = int(T * (1 - mask_t_prob)), int(Fq * (1 - mask_f_prob))
    noise_t, noise_f = _draw_2d_noise(N, grid, x.device, noise_t, noise_f, generator)
    rows = torch.argsort(noise_t, dim=1)[:, :keep_t]  # [N, keep_t]
    cols = torch.argsort(noise_f, dim=1)[:, :keep_f]  # [N, keep_f]
    x = x.view(N, T, Fq, D)  # [N, T*F, D] -> [N, T, F, D]
    x = torch.gather(x, 1, rows[:, :, None, None].expand(-1, -1, Fq, D))  # [N, keep_t, F, D]
    x = torch.gather(x, 2, cols[:, None, :, None].expand(-1, keep_t, -1, D))  # [N, keep_t, keep_f, D]
    return x.reshape(N, keep_t * keep_f, D)


# --------------------------------------------------------------------------- pretraining MAE

class AudioMaskedAutoencoderViT(nn.Module):
    """Audio-MAE pretraining model (official ``MaskedAutoencoderViT`` with ``audio_exp=True``).

    Keyword arguments are the official ones (``decoder_depth``/``decoder_num_heads`` only apply to
    the global decoder; the local decoder's 16 blocks x 16 heads are official constants, exposed
    as ``local_decoder_depth``/``local_decoder_heads``/``local_window`` for small experiments).

    Quirk kept for checkpoint compatibility: the official pretraining model builds its sin-cos
    position table on a (F/p, T/p) grid (``PatchEmbed_org.patch_hw`` is width-first) while tokens
    are time-major, so token ``k`` is encoded as row ``k // (T/p)``, column ``k % (T/p)``. Released
    checkpoints carry that table; `AudioViT` (fine-tuning) loads it from them.

    ``use_custom_patch`` (official, AST-style): overlapping 16x16 patches at ``stride`` 10 (``PatchEmbed_new``):
    a (101, 12) grid for 1024 x 128, time-major, with the sin-cos table on that (time, freq) grid as it is (the
    quirk above belongs to ``PatchEmbed_org``). Reconstruction targets are the overlapping patches
    (``unfold``); `unpatchify` averages where patches overlap. The local decoder then uses the official constants
    for this grid: 6x6 windows, shift (2, 0), the time axis padded to a multiple of 6 by repeating its last row
    (101 -> 102), the padding dropped from the prediction.

    Calling conventions:
        ``loss, pred, mask = model(imgs, mask_ratio=0.8)`` (``mask_2d=True`` for time/freq masking;
        ``noise``/``noise_t``/``noise_f``/``generator`` pin the randomness).
        ``forward_encoder`` -> (latent [N, 1+keep, C], mask [N, L], ids_restore [N, L]);
        ``forward_decoder(latent, ids_restore)`` -> pred [N, L, p*p*in_chans];
        ``forward_loss(imgs, pred, mask)`` -> scalar loss on removed patches.
    """

    def __init__(
        self,
        img_size: Sequence[int] = (1024, 128),
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_layer: str | Callable[[int], nn.Module] = "LayerNorm",
        norm_pix_loss: bool = False,
        audio_exp: bool = True,
        decoder_mode: int = 0,
        mask_t_prob: float = 0.6,
        mask_f_prob: float = 0.5,
        mask_2d: bool = False,
        use_custom_patch: bool = False,
        stride: int = 10,
        pos_trainable: bool = False,
        local_decoder_depth: int = 16,
        local_decoder_heads: int = 16,
        local_window: Sequence[int] = (4, 4),
        no_shift: bool = False,
    ):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        if not audio_exp:
            raise ValueError("audio_exp=False is the image MAE; percli's Audio-MAE models spectrograms only")
        if decoder_mode not in (0, 1):
            raise ValueError(f"decoder_mode must be 0 (global) or 1 (local Swin), got {decoder_mode}")
        if not use_custom_patch and any(s % patch_size for s in img_size):
            raise ValueError(f"img_size {list(img_size)} must be a multiple of patch_size {patch_size}")
        norm = make_norm(norm_layer)
        self.img_size = tuple(img_size)
        self.patch_size, self.in_chans = patch_size, in_chans
        self.decoder_mode = decoder_mode
        self.norm_pix_loss = norm_pix_loss
        self.mask_t_prob, self.mask_f_prob, self.mask_2d = mask_t_prob, mask_f_prob, mask_2d
        self.preprocess = default_preprocess(img_size)
        self.stride = stride if use_custom_patch else patch_size
        self.use_custom_patch = use_custom_patch

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, stride=self.stride)
        self.grid = self.patch_embed.grid  # (time, freq) tokens
        L = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, L + 1, embed_dim), requires_grad=pos_trainable)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, L + 1, decoder_embed_dim), requires_grad=pos_trainable)
        if use_custom_patch:  # the official constants of the overlapping grid's local decoder
            local_window = (6, 6)
        rows = -(-self.grid[0] // local_window[0]) * local_window[0] if use_custom_patch else self.grid[0]
        self.decoder_grid = (rows, self.grid[1])
        if decoder_mode == 1:
            self.decoder_blocks = nn.ModuleList([
                SwinDecoderBlock(decoder_embed_dim, local_decoder_heads, self.decoder_grid, local_window,
                                 shift=(0, 0) if (i % 2 == 0 or no_shift) else (2, 0),
                                 mlp_ratio=mlp_ratio, norm_layer=norm)
                for i in range(local_decoder_depth)])
        else:
            self.decoder_blocks = nn.ModuleList([
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, norm_layer=norm) for _ in range(decoder_depth)])
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.initialize_weights()

    def official_pos_grid(self) -> tuple[int, int]:
        """The (rows, cols) grid of the official pretraining sin-cos table: (F/p, T/p), or with overlapping
        patches the token grid itself (see class doc)."""
        return self.grid if self.use_custom_patch else (self.grid[1], self.grid[0])

    def initialize_weights(self) -> None:
        """Official init: fixed sin-cos tables, xavier-uniform linears and patch conv, N(0, 0.02) tokens."""
        with torch.no_grad():
            grid = self.official_pos_grid()
            self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], grid))
            self.decoder_pos_embed.copy_(sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], grid))
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(xavier_init)

    @torch.jit.ignore
    def no_weight_decay(self) -> list[str]:
        """Parameter names excluded from weight decay."""
        return ["pos_embed", "decoder_pos_embed", "cls_token", "mask_token"]

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    # -- geometry
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """[N, C, T, F] -> [N, (T/p)*(F/p), p*p*C], patches time-major, pixels (row, col, chan); with overlapping
        patches [N, rows*cols, p*p] (one channel, as the official ``unfold``)."""
        N, C = imgs.shape[:2]
        p = self.patch_size
        if self.use_custom_patch:
            x = imgs.unfold(2, p, self.stride).unfold(3, p, self.stride)  # [N, C, rows, cols, p, p]
            return x.permute(0, 2, 3, 4, 5, 1).reshape(N, self.grid[0] * self.grid[1], p * p * C)
        h, w = imgs.shape[2] // p, imgs.shape[3] // p
        x = imgs.reshape(N, C, h, p, w, p)  # [N, C, h, p, w, p]
        x = torch.einsum("nchpwq->nhwpqc", x)  # [N, h, w, p, p, C]
        return x.reshape(N, h * w, p * p * C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, p*p*C] -> [N, C, T, F] on the model's grid (overlapping patches averaged where they overlap;
        pixels no patch covers are 0)."""
        p, (h, w), C = self.patch_size, self.grid, self.in_chans
        if self.use_custom_patch:
            cols = x.reshape(x.shape[0], h * w, p, p, C).permute(0, 4, 2, 3, 1).reshape(x.shape[0], C * p * p, h * w)
            size, kw = self.img_size, {"kernel_size": p, "stride": self.stride}
            summed = F.fold(cols, size, **kw)
            count = F.fold(torch.ones_like(cols[:1]), size, **kw)
            return summed / count.clamp(min=1)
        x = x.reshape(x.shape[0], h, w, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # [N, C, h, p, w, p]
        return x.reshape(x.shape[0], C, h * p, w * p)

    # -- masking
    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See module-level `random_masking`."""
        return random_masking(x, mask_ratio, noise=noise, generator=generator)

    def random_masking_2d(self, x: torch.Tensor, mask_t_prob: float, mask_f_prob: float,
                          noise_t: torch.Tensor | None = None, noise_f: torch.Tensor | None = None,
                          generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See module-level `random_masking_2d` (on this model's token grid)."""
        return random_masking_2d(x, self.grid, mask_t_prob, mask_f_prob, noise_t, noise_f, generator)

    # -- forward
    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, mask_2d: bool = False, *,
                        noise: torch.Tensor | None = None, noise_t: torch.Tensor | None = None,
                        noise_f: torch.Tensor | None = None, generator: torch.Generator | None = None,
                        mask_t_prob: float | None = None, mask_f_prob: float | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed, mask and encode the kept tokens.

        Args:
            x: [N, C, T, F] spectrograms.
            mask_ratio: fraction of tokens removed (unstructured masking).
            mask_2d: use time/freq masking with ``self.mask_t_prob`` / ``self.mask_f_prob`` instead.
            noise: [N, L] draws for unstructured masking; noise_t [N, T/p] and noise_f [N, F/p] for 2-D.
            generator: RNG for whichever noise is not given.
            mask_t_prob, mask_f_prob: override the model's time/freq rates for this call (``mask_f_prob=0``
                drops whole time columns only, FLAP's 1-D masking).

        Returns:
            latent [N, 1 + kept, C] (after ``norm``), mask [N, L] (1 = removed), ids_restore [N, L].
        """
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        if mask_2d:
            x, mask, ids_restore = self.random_masking_2d(
                x, self.mask_t_prob if mask_t_prob is None else mask_t_prob,
                self.mask_f_prob if mask_f_prob is None else mask_f_prob, noise_t, noise_f, generator)
        else:
            x, mask, ids_restore = self.random_masking(x, mask_ratio, noise, generator)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Decode every patch from the encoded kept tokens.

        Args:
            x: [N, 1 + kept, C] encoder output.
            ids_restore: [N, L] from `forward_encoder`.

        Returns:
            [N, L, p*p*in_chans] predicted (possibly normalised) pixels, time-major.
        """
        x = self.decoder_embed(x)
        N, L, D = x.shape[0], ids_restore.shape[1], x.shape[2]
        fill = self.mask_token.expand(N, L + 1 - x.shape[1], -1)
        # [N, kept + removed, D] in shuffled order -> original token order
        tokens = torch.gather(torch.cat([x[:, 1:], fill], dim=1), 1, ids_restore[:, :, None].expand(-1, -1, D))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        if self.decoder_mode != 0:
            x = x[:, 1:]  # the local decoder works on the token grid only: the cls slot is dropped
            pad = self.decoder_grid[0] - self.grid[0]
            if pad:  # overlapping patches: repeat the last time row up to the window multiple (official)
                x = x.reshape(N, *self.grid, D)
                x = torch.cat([x, x[:, -1:].expand(-1, pad, -1, -1)], dim=1).reshape(N, -1, D)
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))
        if self.decoder_mode == 0:
            return pred[:, 1:]
        return pred[:, :L]  # the padded rows come last in time-major order

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     norm_pix_loss: bool | None = None) -> torch.Tensor:
        """Mean squared error on removed patches (per-patch normalised targets if ``norm_pix_loss``).

        Args:
            imgs: [N, C, T, F]; pred: [N, L, p*p*C]; mask: [N, L] (1 = removed).
            norm_pix_loss: defaults to the model's setting.
        """
        target = self.patchify(imgs)
        if self.norm_pix_loss if norm_pix_loss is None else norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as the official
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # [N, L]
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.8, *, mask_2d: bool | None = None,
                noise: torch.Tensor | None = None, noise_t: torch.Tensor | None = None,
                noise_f: torch.Tensor | None = None, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (loss, pred [N, L, p*p*C], mask [N, L]); ``mask_2d`` defaults to ``self.mask_2d``."""
        latent, mask, ids_restore = self.forward_encoder(
            imgs, mask_ratio, self.mask_2d if mask_2d is None else mask_2d,
            noise=noise, noise_t=noise_t, noise_f=noise_f, generator=generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


def xavier_init(m: nn.Module) -> None:
    """MAE's init of linear layers (Xavier uniform, zero bias) and LayerNorms (1, 0), for `module.apply`."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- fine-tuning ViT

class AudioViT(nn.Module):
    """Audio-MAE fine-tuning classifier (official ``models_vit.VisionTransformer`` + AudioSet patch embed).

    ``global_pool=True`` (official default for AudioSet): mean of patch tokens -> ``fc_norm`` ->
    ``head``; ``False``: ``norm`` -> cls token -> ``head`` (the official class deletes ``norm``
    unconditionally, so only the global-pool path runs there). Outputs are logits (no sigmoid).

    ``mask_2d`` selects fine-tune masking: time/freq (official; its ``if self.random_masking_2d``
    always takes this path) or, when False, unstructured masking with ratio ``mask_t_prob``.

    ``use_custom_patch``: overlapping 16x16 patches at ``stride`` 10, the (101, 12) grid of the official
    fine-tuning's ``PatchEmbed_new`` (its 1213-row position table comes from the pretrained checkpoint).

    Calling conventions:
        ``model(x)`` logits; ``model(x, mask_t_prob=0.2, mask_f_prob=0.2)`` with time/freq masking
        (``noise_t``/``noise_f``/``generator`` pin it); ``forward_features`` pooled features;
        ``forward_intermediates`` every block's tokens.
    """

    def __init__(
        self,
        img_size: Sequence[int] = (1024, 128),
        patch_size: int = 16,
        in_chans: int = 1,
        num_classes: int = 527,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: str | Callable[[int], nn.Module] = "LayerNorm",
        global_pool: bool = True,
        mask_2d: bool = True,
        use_custom_patch: bool = False,
        stride: int = 10,
    ):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        norm = make_norm(norm_layer)
        self.img_size, self.patch_size = tuple(img_size), patch_size
        self.global_pool, self.mask_2d = global_pool, mask_2d
        self.num_features = embed_dim
        self.preprocess = default_preprocess(img_size)

        # use_custom_patch: the official fine-tuning's overlapping PatchEmbed_new (16x16 at stride 10: (101, 12))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                      stride=stride if use_custom_patch else None)
        self.grid = self.patch_embed.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # fine-tuning replaces pos_embed by a frozen table (normally the pretrained checkpoint's)
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(embed_dim, self.grid), requires_grad=False)
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=r, norm_layer=norm) for r in rates])
        if not global_pool:
            self.norm = norm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if global_pool:
            self.fc_norm = norm(embed_dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_vit_init)

    @torch.jit.ignore
    def no_weight_decay(self) -> list[str]:
        """Parameter names excluded from weight decay."""
        return ["pos_embed", "cls_token"]

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    def _embed(self, x: torch.Tensor, mask_t_prob: float = 0.0, mask_f_prob: float = 0.0,
               noise_t: torch.Tensor | None = None, noise_f: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        if mask_t_prob > 0.0 or mask_f_prob > 0.0:
            if self.mask_2d:
                x = finetune_masking_2d(x, self.grid, mask_t_prob, mask_f_prob, noise_t, noise_f, generator)
            else:
                x = random_masking(x, mask_t_prob, noise=noise_t, generator=generator)[0]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool:
            return self.fc_norm(x[:, 1:].mean(dim=1))
        return self.norm(x)[:, 0]

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output tokens (cls first, no final norm), each [B, 1 + L, C]."""
        x = self._embed(x)
        outs = []
        for blk in self.blocks:
            x = blk(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor, mask_t_prob: float = 0.0, mask_f_prob: float = 0.0, *,
                         noise_t: torch.Tensor | None = None, noise_f: torch.Tensor | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Pooled features [B, C] (optionally with fine-tune masking, see `forward`)."""
        x = self._embed(x, mask_t_prob, mask_f_prob, noise_t, noise_f, generator)
        for blk in self.blocks:
            x = blk(x)
        return self._pool(x)

    def forward(self, x: torch.Tensor, mask_t_prob: float = 0.0, mask_f_prob: float = 0.0, *,
                noise_t: torch.Tensor | None = None, noise_f: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits [B, num_classes].

        Args:
            x: [B, 1, T, F] normalised fbank.
            mask_t_prob / mask_f_prob: fine-tune masking rates (0 = none).
            noise_t: [B, T/p], noise_f: [B, F/p] explicit draws; generator for the rest.
        """
        features = self.forward_features(x, mask_t_prob, mask_f_prob, noise_t=noise_t, noise_f=noise_f,
                                         generator=generator)
        return self.head(features)


def _vit_init(m: nn.Module) -> None:
    # timm 0.3.2 ViT init (the official fine-tune then loads pretrained weights over it)
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- checkpoints

MAE_ONLY_PREFIXES = ("decoder_", "mask_token")


def convert_official_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official encoder names -> timm ``VisionTransformer`` names (1 input channel, 16x16 patches).

    The official encoder already uses timm's names (``patch_embed.proj``, ``blocks.i.attn.qkv``,
    ``fc_norm``/``norm``, ``head``), so this drops the pretraining-only tensors (decoder,
    ``mask_token``). Build the timm model with ``img_size=(1024, 128), in_chans=1``,
    ``global_pool='avg'`` for a global-pool fine-tuned checkpoint (``fc_norm``), or
    ``global_pool='token'``/``num_classes=0`` for a pretrained encoder (``norm``), as the
    ``gaunernst/vit_base_patch16_1024_128.audiomae_as2m`` port does.
    """
    return {k: v for k, v in state.items() if not k.startswith(MAE_ONLY_PREFIXES)}


def convert_timm_to_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``VisionTransformer`` names -> official Audio-MAE encoder names (see `convert_official_to_timm`)."""
    unsupported = [k for k in state if k.startswith(("reg_token", "attn_pool", "norm_pre", "blocks.0.ls1"))]
    if unsupported:
        raise ValueError(f"timm checkpoint has tensors Audio-MAE does not: {unsupported[:4]}")
    return {k: v for k, v in state.items() if not k.startswith("head_drop")}


def load_official_state(model: nn.Module, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """Load official (or timm-port) Audio-MAE weights, strictly except as documented.

    Handles ``{"model": ...}`` checkpoints (.pth, ``weights_only=True``), .safetensors and plain
    mappings, and a pretraining checkpoint into an `AudioViT`: decoder tensors and ``mask_token``
    are dropped, ``pos_embed`` comes from the file (as ``main_finetune_as.py`` does; it is
    recomputed only if the file has none), and ``fc_norm``/``head`` stay at their init (the MAE's
    encoder ``norm`` is dropped for a global-pool classifier). A classifier checkpoint with another
    ``num_classes`` drops its head. Anything else that does not fit raises, naming the keys.
    """
    state = read_state(state_or_path)
    report = LoadReport()
    own = model.state_dict()
    is_mae_model = hasattr(model, "decoder_pred")
    from_mae = any(k.startswith(MAE_ONLY_PREFIXES) for k in state)
    if from_mae and not is_mae_model:
        report.dropped = sorted(k for k in state if k.startswith(MAE_ONLY_PREFIXES))
        if "fc_norm.weight" in own:
            report.dropped += sorted(k for k in state if k.startswith("norm."))
    if "head.weight" in state and "head.weight" in own and state["head.weight"].shape != own["head.weight"].shape:
        report.dropped += ["head.weight", "head.bias"]
        report.head_reset = True
    state = {k: v for k, v in state.items() if k not in report.dropped}
    tolerated: tuple[str, ...] = ()
    if "head.weight" not in state:
        tolerated += ("head.",)
    if from_mae and not is_mae_model:
        tolerated += ("fc_norm.", "norm.")
    if not is_mae_model:
        tolerated += ("pos_embed",)  # fixed sin-cos: the model's own table is kept if the file lacks it
    report.missing = check_fit(model, state, type(model).__name__, tolerated=tolerated)
    model.load_state_dict(state, strict=False)
    return report


# --------------------------------------------------------------------------- registered variants

_SIZES = {  # embed_dim, depth, num_heads, patch_size
    "small_patch16": (384, 12, 6, 16),
    "base_patch16": (768, 12, 12, 16),
    "large_patch16": (1024, 24, 16, 16),
    "huge_patch14": (1280, 32, 16, 14),
}


def _build_vit(name: str, size: str, overrides: dict) -> AudioViT:
    dim, depth, heads, patch = _SIZES[size]
    args = dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch, drop_path_rate=0.1)
    model = AudioViT(**{**args, **overrides})
    model.arch = name
    return model


def _build_mae(name: str, size: str, overrides: dict) -> AudioMaskedAutoencoderViT:
    dim, depth, heads, patch = _SIZES[size]
    # the AudioSet-2M release recipe: local decoder, normalised-pixel loss
    args = dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch, decoder_embed_dim=512,
                decoder_num_heads=16, decoder_mode=1, norm_pix_loss=True)
    model = AudioMaskedAutoencoderViT(**{**args, **overrides})
    model.arch = name
    return model


@register_model
def audiomae_vit_small_patch16(**kwargs) -> AudioViT:
    return _build_vit("audiomae_vit_small_patch16", "small_patch16", kwargs)


@register_model
def audiomae_vit_base_patch16(**kwargs) -> AudioViT:
    return _build_vit("audiomae_vit_base_patch16", "base_patch16", kwargs)


@register_model
def audiomae_vit_large_patch16(**kwargs) -> AudioViT:
    return _build_vit("audiomae_vit_large_patch16", "large_patch16", kwargs)


@register_model
def audiomae_vit_huge_patch14(**kwargs) -> AudioViT:
    return _build_vit("audiomae_vit_huge_patch14", "huge_patch14", kwargs)


@register_model
def audiomae_mae_vit_small_patch16(**kwargs) -> AudioMaskedAutoencoderViT:
    return _build_mae("audiomae_mae_vit_small_patch16", "small_patch16", kwargs)


@register_model
def audiomae_mae_vit_base_patch16(**kwargs) -> AudioMaskedAutoencoderViT:
    return _build_mae("audiomae_mae_vit_base_patch16", "base_patch16", kwargs)


@register_model
def audiomae_mae_vit_large_patch16(**kwargs) -> AudioMaskedAutoencoderViT:
    return _build_mae("audiomae_mae_vit_large_patch16", "large_patch16", kwargs)


register_loader(__name__)(load_official_state)
