"""The DAC-VAE audio front end of PE-AV / PE-A-Frame (Vyas et al., 2025).

PE-AV turns a 48 kHz mono waveform into continuous latents with the encoder of a Descript Audio Codec
(DAC: Kumar et al., 2023) followed by the mean half of a VAE bottleneck; no quantiser is used. The module
names and shapes are those of the official release (facebookresearch/perception_models@3e352cc,
``core/audio_visual_encoder/audio_codec.py``, whose encoder is transformers' ``DacEncoder``):

* ``encoder.conv1`` (1 -> C, k7) -> ``encoder.block.i`` (three residual units with dilations 1, 3, 9, each
  Snake -> conv k7 -> Snake -> conv k1 plus the skip, then Snake and a strided conv doubling the width)
  -> ``encoder.snake1`` -> ``encoder.conv2`` (k3, to ``hidden_size``);
* ``bottleneck.in_proj`` (k1, to 2 x ``codebook_dim``) whose first half is the latent (the second half,
  the log-scale, and ``bottleneck.out_proj`` are kept for the checkpoint but unused by the encoder).

Plain ``Conv1d`` weights (no weight-norm parametrisation), as in the released checkpoints. A waveform
whose length is not a multiple of the hop (the product of the strides) is reflect-padded on the right.
The codec is frozen in PE-AV: `DacEncoderVAE.forward` runs without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class Snake1d(nn.Module):
    """Snake activation x + sin(alpha x)^2 / (alpha + 1e-9), one alpha per channel ([1, C, 1])."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """Snake -> dilated conv k7 -> Snake -> conv k1, added to the input (length preserved)."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.snake1 = Snake1d(channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


class EncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9), Snake, then a conv of stride ``stride`` doubling the width."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.res_unit1 = ResidualUnit(channels, 1)
        self.res_unit2 = ResidualUnit(channels, 3)
        self.res_unit3 = ResidualUnit(channels, 9)
        self.snake1 = Snake1d(channels)
        self.conv1 = nn.Conv1d(channels, 2 * channels, kernel_size=2 * stride, stride=stride,
                               padding=math.ceil(stride / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.snake1(self.res_unit3(self.res_unit2(self.res_unit1(x)))))


class DacEncoder(nn.Module):
    """DAC's convolutional encoder: [B, 1, T] -> [B, hidden_size, T / prod(strides)]."""

    def __init__(self, encoder_hidden_size: int, downsampling_ratios: Sequence[int], hidden_size: int):
        super().__init__()
        self.conv1 = nn.Conv1d(1, encoder_hidden_size, kernel_size=7, padding=3)
        self.block = nn.ModuleList(EncoderBlock(encoder_hidden_size * 2**i, stride)
                                   for i, stride in enumerate(downsampling_ratios))
        width = encoder_hidden_size * 2 ** len(downsampling_ratios)
        self.snake1 = Snake1d(width)
        self.conv2 = nn.Conv1d(width, hidden_size, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


class VAEBottleneck(nn.Module):
    """1x1 conv to (mean, log-scale); the encoder keeps the mean."""

    def __init__(self, input_dim: int, bottleneck_dim: int):
        super().__init__()
        self.in_proj = nn.Conv1d(input_dim, 2 * bottleneck_dim, kernel_size=1)
        self.out_proj = nn.Conv1d(bottleneck_dim, input_dim, kernel_size=1)  # the decoder side; unused here

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.in_proj(z).chunk(2, dim=1)[0]


class DacEncoderVAE(nn.Module):
    """Waveform [B, 1, T] -> latents [B, codebook_dim, ceil(T / hop_length)] (frozen, no gradients).

    Keywords follow transformers' ``DacConfig`` as PE-AV's config.json spells them. ``hidden_size``
    defaults to ``encoder_hidden_size * 2**len(downsampling_ratios)``; the bottleneck reads
    ``codebook_size`` channels (equal to ``hidden_size`` in every PE-AV release). The decoder and
    quantiser keywords are accepted and ignored (the encoder does not use them).
    """

    def __init__(self, encoder_hidden_size: int = 64, downsampling_ratios: Sequence[int] = (2, 8, 10, 12),
                 codebook_size: int = 1024, codebook_dim: int = 128, sampling_rate: int = 48000,
                 hidden_size: int | None = None, **_decoder_and_quantiser: object):
        super().__init__()
        hidden_size = hidden_size or encoder_hidden_size * 2 ** len(downsampling_ratios)
        self.encoder = DacEncoder(encoder_hidden_size, downsampling_ratios, hidden_size)
        self.bottleneck = VAEBottleneck(codebook_size, codebook_dim)
        self.hop_length = math.prod(downsampling_ratios)
        self.sampling_rate = sampling_rate
        self.codebook_dim = codebook_dim

    def pad(self, wav: torch.Tensor) -> torch.Tensor:
        """Reflect-pad the last axis on the right to a multiple of ``hop_length`` (needs > 1 sample)."""
        rest = wav.shape[-1] % self.hop_length
        if not rest:
            return wav
        if wav.shape[-1] <= self.hop_length - rest:
            raise ValueError(f"a waveform of {wav.shape[-1]} samples is too short to reflect-pad to a multiple "
                             f"of the codec hop ({self.hop_length}); give at least {self.hop_length - rest + 1}")
        return F.pad(wav, (0, self.hop_length - rest), mode="reflect")

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.bottleneck(self.encoder(self.pad(wav)))
