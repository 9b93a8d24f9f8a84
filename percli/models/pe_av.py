"""PE-AV and PE-A-Frame (Vyas et al., 2025): Perception Encoder for audio, video, audio+video and text.

Parameter names, shapes, constructor keywords and outputs follow the official release
(facebookresearch/perception_models@3e352cc, ``core/audio_visual_encoder/``), so a released checkpoint
folder (``config.json`` + ``model.safetensors``, as ``facebook/pe-av-*`` / ``facebook/pe-a-frame-*``)
loads strictly through `from_folder`, and ``tests/test_golden.py`` matches the official outputs.

* audio: 48 kHz waveform -> frozen DAC-VAE latents (`percli.models.dac_vae`, 25 Hz in the releases)
  -> ``data_proj`` -> ``audio_transformer``;
* video: frames -> PE vision tower (``pe_encoder``, attention-pooled and projected; each frame's feature
  L2-normalised) -> ``proj`` -> ``data_proj`` -> ``visual_transformer``;
* audio+video: the video tokens are projected (``modality_aligner``: 1x1 conv), resized to the audio
  length by nearest neighbour unless every clip already has as many video as audio steps, layer-normed,
  concatenated with the audio tokens and projected (``concat_modality_proj``, ``data_proj``) into the
  ``audio_visual_transformer``;
* text: ModernBERT (`percli.models.modernbert`), hidden state ``nth_text_layer`` (before the final norm),
  first token;
* eight ``ContrastiveHead`` s (LayerNorm eps 1e-6 -> Linear without bias) to ``output_dim``. Embeddings
  are returned unnormalised (the release has no logit scale for PE-AV).

Each tower (`Transformer`) prepends a [cls] token, mixes neighbours with a masked GroupNorm/SiLU/conv
residual block, then runs Llama-style blocks (RMSNorm, q/k RMSNorm per head, interleaved RoPE with base
max(10000, 2 * max_position_embeddings), SwiGLU) and a final RMSNorm and ``output`` Linear; the pooled
output is the [cls] token. Masks are booleans, True = valid.

PE-A-Frame keeps the audio and text towers and scores every audio frame against a text with
sigmoid(logit_scale * <frame, text> + logit_bias) (no exp on the scale), from which `frame_spans` cuts
(start, end) seconds above a threshold (0.3 by default).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.common import LoadReport, check_fit, plain, read_state
from percli.models.dac_vae import DacEncoderVAE
from percli.models.modernbert import ModernBert
from percli.models.pe import VISION_CONFIGS, PEVisionTransformer

DEFAULT_DAC = {"encoder_hidden_size": 64, "downsampling_ratios": [2, 8, 10, 12], "decoder_hidden_size": 1536,
               "n_codebooks": 16, "codebook_size": 1024, "codebook_dim": 128, "quantizer_dropout": 0,
               "sampling_rate": 48000}
DEFAULT_TEXT = {"model_type": "modernbert", "hidden_size": 1024, "intermediate_size": 2624,
                "num_hidden_layers": 28, "num_attention_heads": 16, "global_attn_every_n_layers": 3,
                "global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "classifier_pooling": "mean",
                "position_embedding_type": "absolute", "tie_word_embeddings": True}
DEFAULT_PE_ENCODER = "PE-Core-L14-336"
SPAN_THRESHOLD = 0.3


# --------------------------------------------------------------------------- tower blocks


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).type_as(x)


class RotaryTable(nn.Module):
    """RoPE rotations [L, head_dim / 2, 2, 2] = [[cos, -sin], [sin, cos]] per (position, frequency)."""

    def __init__(self, theta: float, head_dim: int, max_seqlen: int):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
        angles = torch.outer(torch.arange(max_seqlen), freqs).float()
        cos, sin = angles.cos(), angles.sin()
        self.register_buffer("freqs_cis", torch.stack((cos, -sin, sin, cos), -1).view(*angles.shape, 2, 2),
                             persistent=False)

    def forward(self, seqlen: int) -> torch.Tensor:
        if seqlen > self.freqs_cis.shape[0]:
            raise ValueError(f"a sequence of {seqlen} steps is longer than this tower's max_position_embeddings "
                             f"({self.freqs_cis.shape[0]}); cut the input (e.g. 30 s of audio) or raise it")
        return self.freqs_cis[:seqlen]


def apply_rotary(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [B, heads, L, hd] by table [L, hd/2, 2, 2]."""
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2)
    return (pairs * table[None, None].float()).sum(-1).flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps)
        self.k_norm = RMSNorm(self.head_dim, eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, n, self.heads, -1)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, n, self.heads, -1)).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(apply_rotary(q, rope), apply_rotary(k, rope), v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, hidden: int, intermediate: int, heads: int, eps: float):
        super().__init__()
        self.self_attn = Attention(hidden, heads, eps)
        self.mlp = MLP(hidden, intermediate)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def masked_group_norm(norm: nn.GroupNorm, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """GroupNorm of x [B, C, L] whose statistics skip invalid steps (mask [B, L]); invalid outputs are 0."""
    if mask is None:
        return norm(x)
    b, c, n = x.shape
    groups = x.view(b, norm.num_groups, -1, n)
    keep = mask[:, None, None, :].to(x.dtype)
    count = keep.sum((2, 3), keepdim=True) * groups.shape[2]
    mean = (groups * keep).sum((2, 3), keepdim=True) / count
    var = ((groups - mean).pow(2) * keep).sum((2, 3), keepdim=True) / count
    y = ((groups - mean) / torch.sqrt(var + norm.eps)).view(b, c, n)
    y = y * norm.weight.view(1, -1, 1) + norm.bias.view(1, -1, 1)
    return y * mask[:, None, :].to(x.dtype)


class ConvBlock1d(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.groupnorm = nn.GroupNorm(1, hidden)
        self.project = nn.Conv1d(hidden, hidden, kernel_size=3, padding="same")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.project(F.silu(masked_group_norm(self.groupnorm, x, mask)))


class ResnetBlock1d(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.block1 = ConvBlock1d(hidden)
        self.block2 = ConvBlock1d(hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return x + self.block2(self.block1(x, mask), mask)


class Embeddings(nn.Module):
    """Prepend [cls] and run the residual conv block over time: [B, L, C] -> [B, 1 + L, C] (and the mask)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.resnet_block = ResnetBlock1d(hidden)
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if mask is not None:
            mask = F.pad(mask.bool(), (1, 0), value=True)
        return self.resnet_block(x.transpose(1, 2), mask).transpose(1, 2), mask


def tower_config(hidden_size: int = 1024, intermediate_size: int = 2752, num_hidden_layers: int = 16,
                 num_attention_heads: int = 8, num_key_value_heads: int | None = None, hidden_act: str = "silu",
                 max_position_embeddings: int = 10_000, rms_norm_eps: float = 1e-5, attention_bias: bool = False,
                 **_unused: object) -> dict:
    """A tower's keywords (official ``TransformerConfig`` defaults), checked; ``rope_theta`` is unused there."""
    if num_key_value_heads not in (None, num_attention_heads):
        raise ValueError("PE-AV towers need num_key_value_heads == num_attention_heads (the release has no "
                         f"grouped-query attention), got {num_key_value_heads} vs {num_attention_heads}")
    if hidden_act != "silu" or attention_bias:
        raise ValueError("PE-AV towers are SwiGLU (hidden_act 'silu') without attention bias; "
                         f"got hidden_act={hidden_act!r}, attention_bias={attention_bias}")
    return {"hidden_size": hidden_size, "intermediate_size": intermediate_size, "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads, "max_position_embeddings": max_position_embeddings,
            "rms_norm_eps": rms_norm_eps}


class Transformer(nn.Module):
    """A PE-AV tower: inputs_embeds [B, L, C] (+ mask [B, L]) -> (last_hidden_state [B, L, C], pooled [B, C])."""

    def __init__(self, **config: object):
        super().__init__()
        cfg = tower_config(**config)
        hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["rms_norm_eps"]
        self.hidden_size = hidden
        self.embeddings = Embeddings(hidden)
        self.layers = nn.ModuleList(DecoderLayer(hidden, cfg["intermediate_size"], heads, eps)
                                    for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(hidden, eps)
        self.rope_embeddings = RotaryTable(max(10_000, 2 * cfg["max_position_embeddings"]), hidden // heads,
                                           cfg["max_position_embeddings"])
        self.output = nn.Linear(hidden, hidden, bias=False)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = self.embeddings(inputs_embeds, attention_mask)
        keys = None if mask is None else mask[:, None, None, :]
        rope = self.rope_embeddings(x.shape[1])
        for layer in self.layers:
            x = layer(x, rope, keys)
        x = self.output(self.norm(x))
        return x[:, 1:], x[:, 0]


class AlignModalities(nn.Module):
    """Project video tokens (1x1 conv) and resize them to the audio steps (nearest), then LayerNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=1)
        self.layer_norm = nn.LayerNorm(channels)

    @staticmethod
    def _sizes(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return torch.full((x.shape[0],), x.shape[-1], device=x.device, dtype=torch.long)
        return mask.sum(-1).long()

    def forward(self, audio: torch.Tensor, audio_mask: torch.Tensor | None, video: torch.Tensor,
                video_mask: torch.Tensor | None) -> torch.Tensor:
        """audio [B, La, C], video [B, Lv, C] -> video on the audio steps [B, max valid La, C]."""
        video = self.conv(video.transpose(1, 2))
        audio_sizes = self._sizes(audio.transpose(1, 2), audio_mask)
        video_sizes = self._sizes(video, video_mask)
        if not torch.equal(audio_sizes, video_sizes):
            resized = video.new_zeros(video.shape[0], video.shape[1], int(audio_sizes.max()))
            for i, (n_video, n_audio) in enumerate(zip(video_sizes.tolist(), audio_sizes.tolist())):
                resized[i, :, :n_audio] = F.interpolate(video[i:i + 1, :, :n_video], size=n_audio, mode="nearest")[0]
            video = resized
        return self.layer_norm(video.transpose(1, 2))


class AVTransformer(Transformer):
    """The audio+video tower: aligned video concatenated with the audio tokens, masked like the audio."""

    def __init__(self, **config: object):
        super().__init__(**config)
        self.modality_aligner = AlignModalities(self.hidden_size)
        self.concat_modality_proj = nn.Linear(2 * self.hidden_size, self.hidden_size)
        self.data_proj = nn.Linear(self.hidden_size, self.hidden_size)

    def forward(self, audio: torch.Tensor, video: torch.Tensor, audio_mask: torch.Tensor | None = None,
                video_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        aligned = self.modality_aligner(audio, audio_mask, video, video_mask)
        x = self.data_proj(self.concat_modality_proj(torch.cat([audio, aligned], dim=-1)))
        return super().forward(x, audio_mask)


# --------------------------------------------------------------------------- encoders


@dataclass
class TowerOutput:
    """A tower's tokens and pooled [cls]; ``mask`` is its valid-step mask (None = all valid)."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    mask: torch.Tensor | None = None
    features: torch.Tensor | None = None  # the tower's input features: codec latents or L2-normed PE features


class AudioEncoder(nn.Module):
    """Waveform [B, 1, T] (mask [B, T]) or codec latents [B, La, D] (mask [B, La]) -> audio tower output."""

    def __init__(self, dac_vae_encoder: Mapping | None = None, audio_transformer: Mapping | None = None,
                 **_unused: object):
        super().__init__()
        dac = dict(dac_vae_encoder or DEFAULT_DAC)
        tower = dict(audio_transformer or {})
        self.data_proj = nn.Linear(dac.get("codebook_dim", 8), tower_config(**tower)["hidden_size"])
        self.dac_vae_encoder = DacEncoderVAE(**dac)
        self.audio_transformer = Transformer(**tower)

    def forward(self, input_values: torch.Tensor | None, padding_mask: torch.Tensor | None = None,
                input_features: torch.Tensor | None = None) -> TowerOutput:
        if input_features is None:
            features = self.dac_vae_encoder(input_values).transpose(1, 2)
            mask = None if padding_mask is None else padding_mask[:, :: self.dac_vae_encoder.hop_length]
        else:
            features, mask = input_features, padding_mask
        tokens, pooled = self.audio_transformer(self.data_proj(features), mask)
        return TowerOutput(tokens, pooled, mask, features)


def pe_vision_tower(pe_encoder: str | Mapping) -> PEVisionTransformer:
    """The PE frame encoder: an official PE name (its vision config) or explicit vision keywords."""
    if isinstance(pe_encoder, Mapping):
        return PEVisionTransformer(**pe_encoder)
    if pe_encoder not in VISION_CONFIGS:
        raise ValueError(f"unknown pe_encoder {pe_encoder!r}; use one of {sorted(VISION_CONFIGS)} or a mapping "
                         "of PEVisionTransformer keywords")
    return PEVisionTransformer(**VISION_CONFIGS[pe_encoder])


class VisualEncoder(nn.Module):
    """Frames [B, N, 3, H, W] (mask [B, N]) or PE features [B, N, D] -> video tower output."""

    def __init__(self, pe_encoder: str | Mapping = DEFAULT_PE_ENCODER, visual_transformer: Mapping | None = None,
                 fixed_len_video: bool = False, **_unused: object):
        super().__init__()
        tower = dict(visual_transformer or {})
        hidden = tower_config(**tower)["hidden_size"]
        self.fixed_len_video = fixed_len_video
        self.pe_encoder = pe_vision_tower(pe_encoder)
        self.proj = nn.Linear(self.pe_encoder.output_dim, hidden, bias=False)
        self.data_proj = nn.Linear(hidden, hidden)
        self.visual_transformer = Transformer(**tower)

    @property
    def image_size(self) -> int:
        return self.pe_encoder.image_size

    def forward(self, pixel_values_videos: torch.Tensor | None, padding_mask_videos: torch.Tensor | None = None,
                pe_features: torch.Tensor | None = None) -> TowerOutput:
        if pe_features is None:
            b, n = pixel_values_videos.shape[:2]
            frames = self.pe_encoder(pixel_values_videos.flatten(0, 1))
            pe_features = F.normalize(frames.view(b, n, -1), dim=-1)
        tokens, pooled = self.visual_transformer(self.data_proj(self.proj(pe_features)), padding_mask_videos)
        return TowerOutput(tokens, pooled, padding_mask_videos, pe_features)


class AudioVisualEncoder(nn.Module):
    def __init__(self, audio_model: Mapping | None = None, visual_model: Mapping | None = None,
                 audio_visual_transformer: Mapping | None = None, **_unused: object):
        super().__init__()
        self.audio_model = AudioEncoder(**(audio_model or {}))
        self.visual_model = VisualEncoder(**(visual_model or {}))
        self.audio_visual_transformer = AVTransformer(**(audio_visual_transformer or {}))

    def forward(self, input_values: torch.Tensor | None, pixel_values_videos: torch.Tensor | None,
                padding_mask: torch.Tensor | None = None, padding_mask_videos: torch.Tensor | None = None,
                pe_features: torch.Tensor | None = None, input_features: torch.Tensor | None = None
                ) -> tuple[TowerOutput, TowerOutput, TowerOutput]:
        """(audio, video, audio+video) tower outputs."""
        audio = self.audio_model(input_values, padding_mask, input_features)
        video = self.visual_model(pixel_values_videos, padding_mask_videos, pe_features)
        tokens, pooled = self.audio_visual_transformer(audio.last_hidden_state, video.last_hidden_state,
                                                       audio.mask, padding_mask_videos)
        return audio, video, TowerOutput(tokens, pooled, audio.mask)


class ContrastiveHead(nn.Module):
    """LayerNorm (eps 1e-6) -> Linear without bias."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim, eps=1e-6)
        self.proj = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.layer_norm(x))


class _TextMixin(nn.Module):
    """The ModernBERT text tower read at ``nth_text_layer`` (None = last hidden state), first token pooled."""

    text_model: ModernBert
    nth_text_layer: int | None

    def text_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden state read [B, N, C], pooled first token [B, C])."""
        last, states = self.text_model(input_ids, attention_mask, output_hidden_states=self.nth_text_layer is not None)
        hidden = last if self.nth_text_layer is None else states[self.nth_text_layer]
        return hidden, hidden[:, 0]

    def _describe(self, args: dict) -> None:
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__", "_unused")}
        self.arch = type(self).__name__


# --------------------------------------------------------------------------- the models


EMBEDDINGS = ("audio_embeds", "audio_visual_embeds", "visual_embeds", "audio_text_embeds",
              "audio_visual_text_embeds", "visual_text_embeds", "audio_plus_text_embeds", "visual_plus_text_embeds")


class PEAudioVisual(_TextMixin):
    """PE-AV; keywords are those of its ``config.json`` (defaults: the official constructor defaults).

    ``forward`` returns a dict with the eight embeddings of the modalities given (None for the rest), plus
    ``audio`` / ``video`` / ``audio_visual`` tower outputs and ``text`` (hidden state, pooled).
    """

    def __init__(self, audio_visual_model: Mapping | None = None, text_model: Mapping | None = None,
                 output_dim: int = 1024, nth_text_layer: int | None = 22, **_unused: object):
        super().__init__()
        self._describe(dict(locals()))
        self.nth_text_layer = nth_text_layer
        self.audio_visual_model = AudioVisualEncoder(**(audio_visual_model or {}))
        self.text_model = ModernBert(**(text_model or DEFAULT_TEXT))
        avm = self.audio_visual_model
        text = self.text_model.hidden_size
        audio = avm.audio_model.audio_transformer.hidden_size
        video = avm.visual_model.visual_transformer.hidden_size
        self.audio_visual_text_head = ContrastiveHead(text, output_dim)
        self.audio_text_head = ContrastiveHead(text, output_dim)
        self.visual_text_head = ContrastiveHead(text, output_dim)
        self.audio_visual_head = ContrastiveHead(avm.audio_visual_transformer.hidden_size, output_dim)
        self.audio_head = ContrastiveHead(audio, output_dim)
        self.visual_head = ContrastiveHead(video, output_dim)
        self.visual_plus_text_head = ContrastiveHead(video + text, output_dim)
        self.audio_plus_text_head = ContrastiveHead(audio + text, output_dim)
        self.output_dim = output_dim
        self.sampling_rate = avm.audio_model.dac_vae_encoder.sampling_rate
        self.hop_length = avm.audio_model.dac_vae_encoder.hop_length
        self.image_size = avm.visual_model.image_size
        # frames as the release's VideoProcessor: squashed to the PE size (bilinear), mean = std = 0.5
        self.preprocess = {**avm.visual_model.pe_encoder.preprocess, "sample_rate": self.sampling_rate,
                           "hop_length": self.hop_length}

    def checkpoint_meta(self) -> dict:
        """Name and constructor arguments, to store beside the weights."""
        return {"arch": self.arch, "config": self.config}

    # single-modality encoders (the official method names)
    def encode_audio(self, input_values: torch.Tensor | None, padding_mask: torch.Tensor | None = None,
                     input_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.audio_head(self.audio_visual_model.audio_model(input_values, padding_mask,
                                                                   input_features).pooler_output)

    def encode_video(self, pixel_values_videos: torch.Tensor | None, padding_mask_videos: torch.Tensor | None = None,
                     pe_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.visual_head(self.audio_visual_model.visual_model(pixel_values_videos, padding_mask_videos,
                                                                     pe_features).pooler_output)

    def encode_audio_video(self, input_values: torch.Tensor | None, pixel_values_videos: torch.Tensor | None,
                           padding_mask: torch.Tensor | None = None, padding_mask_videos: torch.Tensor | None = None,
                           pe_features: torch.Tensor | None = None, input_features: torch.Tensor | None = None
                           ) -> torch.Tensor:
        av = self.audio_visual_model(input_values, pixel_values_videos, padding_mask, padding_mask_videos,
                                     pe_features, input_features)[2]
        return self.audio_visual_head(av.pooler_output)

    def encode_audio_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.audio_text_head(self.text_output(input_ids, attention_mask)[1])

    def encode_video_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.visual_text_head(self.text_output(input_ids, attention_mask)[1])

    def encode_audio_video_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                                ) -> torch.Tensor:
        return self.audio_visual_text_head(self.text_output(input_ids, attention_mask)[1])

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values_videos: torch.Tensor | None = None,
                input_values: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                padding_mask_videos: torch.Tensor | None = None, padding_mask: torch.Tensor | None = None,
                pe_features: torch.Tensor | None = None, input_features: torch.Tensor | None = None) -> dict:
        out: dict = dict.fromkeys(EMBEDDINGS)
        text = self.text_output(input_ids, attention_mask) if input_ids is not None else None
        has_audio = input_values is not None or input_features is not None
        audio = video = None
        if has_audio and (pixel_values_videos is not None or pe_features is not None):
            audio, video, av = self.audio_visual_model(input_values, pixel_values_videos, padding_mask,
                                                       padding_mask_videos, pe_features, input_features)
            out["audio_visual_embeds"] = self.audio_visual_head(av.pooler_output)
            out["audio_visual"] = av
        elif pixel_values_videos is not None or pe_features is not None:
            video = self.audio_visual_model.visual_model(pixel_values_videos, padding_mask_videos, pe_features)
        elif has_audio:
            audio = self.audio_visual_model.audio_model(input_values, padding_mask, input_features)
        if audio is not None:
            out["audio_embeds"] = self.audio_head(audio.pooler_output)
            out["audio"] = audio
        if video is not None:
            out["visual_embeds"] = self.visual_head(video.pooler_output)
            out["video"] = video
        if text is not None:
            out["text"] = text
            pooled = text[1]
            if audio is not None:
                out["audio_text_embeds"] = self.audio_text_head(pooled)
                out["audio_plus_text_embeds"] = self.audio_plus_text_head(torch.cat([audio.pooler_output, pooled], -1))
            if video is not None:
                out["visual_text_embeds"] = self.visual_text_head(pooled)
                out["visual_plus_text_embeds"] = self.visual_plus_text_head(
                    torch.cat([video.pooler_output, pooled], -1))
            if audio is not None and video is not None or audio is None and video is None:
                out["audio_visual_text_embeds"] = self.audio_visual_text_head(pooled)
        return out


def frame_spans(probs: torch.Tensor, threshold: float, seconds_per_frame: float) -> list[list[list[float]]]:
    """Per row of probs [B, L]: [start_s, end_s] runs of frames with prob > threshold (end exclusive)."""
    edges = torch.diff(F.pad(probs > threshold, (1, 1), value=False).int(), dim=1)
    spans = []
    for row in edges:
        starts = (row == 1).nonzero().flatten()
        ends = (row == -1).nonzero().flatten()
        spans.append([[float(s) * seconds_per_frame, float(e) * seconds_per_frame] for s, e in zip(starts, ends)])
    return spans


class PEAudioFrame(_TextMixin):
    """PE-A-Frame: per-frame audio embeddings scored against a text (sound event detection).

    ``forward`` returns ``audio_embeds`` [B, La, D] (one per codec frame), ``text_embeds`` [B, D],
    ``logits`` / ``probs`` [B, La] and, with ``return_spans``, ``spans`` per row in seconds.
    """

    def __init__(self, audio_model: Mapping | None = None, text_model: Mapping | None = None,
                 output_dim: int = 1024, nth_text_layer: int | None = 22, **_unused: object):
        super().__init__()
        self._describe(dict(locals()))
        self.nth_text_layer = nth_text_layer
        self.text_model = ModernBert(**(text_model or DEFAULT_TEXT))
        self.audio_model = AudioEncoder(**(audio_model or {}))
        self.text_head = ContrastiveHead(self.text_model.hidden_size, output_dim)
        self.audio_head = ContrastiveHead(self.audio_model.audio_transformer.hidden_size, output_dim)
        self.logit_scale = nn.Parameter(torch.tensor([0.0]))
        self.logit_bias = nn.Parameter(torch.tensor([0.0]))
        self.output_dim = output_dim
        self.sampling_rate = self.audio_model.dac_vae_encoder.sampling_rate
        self.hop_length = self.audio_model.dac_vae_encoder.hop_length

    def checkpoint_meta(self) -> dict:
        return {"arch": self.arch, "config": self.config}

    def frame_logits(self, audio_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """scale * <frame, text> + bias: audio_embeds [B, L, D], text_embeds [B, D] -> [B, L]."""
        return (audio_embeds @ text_embeds[:, :, None]).squeeze(-1) * self.logit_scale + self.logit_bias

    def forward(self, input_ids: torch.Tensor, input_values: torch.Tensor | None = None,
                input_features: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, threshold: float = SPAN_THRESHOLD,
                return_spans: bool = True) -> dict:
        audio = self.audio_model(input_values, padding_mask, input_features)
        text = self.text_output(input_ids, attention_mask)
        text_embeds = self.text_head(text[1])
        audio_embeds = self.audio_head(audio.last_hidden_state)
        logits = self.frame_logits(audio_embeds, text_embeds)
        out = {"audio_embeds": audio_embeds, "text_embeds": text_embeds, "logits": logits, "probs": logits.sigmoid(),
               "audio": audio, "text": text, "spans": None}
        if return_spans:
            out["spans"] = frame_spans(out["probs"], threshold, self.hop_length / self.sampling_rate)
        return out


# --------------------------------------------------------------------------- loading


TRAINING_ONLY = ("pair_logits.",)
"""Submodules `percli pretrain pe-av` adds for its losses (the pairs' temperatures): not part of the model."""


def load_official_state(model: PEAudioVisual | PEAudioFrame,
                        state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """Load a released PE-AV / PE-A-Frame state (``model.safetensors``, a checkpoint folder, or a mapping), or
    a percli training checkpoint, whose loss temperatures (`TRAINING_ONLY`) are dropped unless `model` has them."""
    if isinstance(state_or_path, (str, Path)) and Path(state_or_path).is_dir():
        state_or_path = Path(state_or_path) / "model.safetensors"
    state = read_state(state_or_path)
    own = model.state_dict()
    dropped = sorted(k for k in state if k.startswith(TRAINING_ONLY) and k not in own)
    state = {k: v for k, v in state.items() if k not in dropped}
    missing = check_fit(model, state, model.arch, tolerated=TRAINING_ONLY)
    model.load_state_dict(state, strict=not missing)
    return LoadReport(dropped=dropped, missing=missing)


def from_folder(folder: str | Path, weights: bool = True) -> PEAudioVisual | PEAudioFrame:
    """Build the model a released checkpoint folder describes (its ``config.json``) and load its weights.

    The folder is a local copy of ``facebook/pe-av-*`` or ``facebook/pe-a-frame-*`` (revision
    ``perception_models``): ``config.json`` + ``model.safetensors``. A config with ``audio_visual_model`` is
    PE-AV, one with ``audio_model`` is PE-A-Frame.
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no config.json: give the folder of a PE-AV / PE-A-Frame release "
                         "(config.json + model.safetensors)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err})") from err
    if not isinstance(config, dict) or not ({"audio_visual_model", "audio_model"} & set(config)):
        raise ValueError(f"{config_file} has neither 'audio_visual_model' (PE-AV) nor 'audio_model' (PE-A-Frame)")
    model = PEAudioVisual(**config) if "audio_visual_model" in config else PEAudioFrame(**config)
    if weights:
        load_official_state(model, folder)
    return model


@register_model
def pe_av(**kwargs) -> PEAudioVisual:
    """PE-AV with the official constructor defaults (a released size: `from_folder` its config.json)."""
    return PEAudioVisual(**kwargs)


@register_model
def pe_a_frame(**kwargs) -> PEAudioFrame:
    """PE-A-Frame with the official constructor defaults (a released size: `from_folder` its config.json)."""
    return PEAudioFrame(**kwargs)


register_loader(__name__)(load_official_state)
