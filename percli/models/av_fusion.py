"""A small audio-visual event classifier with early, middle or late fusion: the three victims of Li, Ma, Qu,
Huang, Metze, "Audio-Visual Event Recognition through the lens of Adversary" (ICASSP 2021), which compares how
where the modalities meet changes accuracy and robustness (official ``fusion_module`` 0 = early, 1 = middle, and
the late-fusion ``MMTLF``).

Both branches are ViT tokenisers with fixed sin-cos positions (Audio-MAE's and MAViL's pieces): the fbank
[B, T, F] is cut into ``audio_patch`` squares (time-major), the frames [B, 3, T, H, W] into 2 x ``video_patch`` x
``video_patch`` tubelets. Then, with ``depth`` pre-norm Transformer blocks on every token's path:

* ``early``: the audio and video tokens (plus a learnt embedding of their modality) concatenated into one sequence
  from the start: ``depth`` joint blocks;
* ``middle``: ``depth - fusion_depth`` blocks per modality, then ``fusion_depth`` joint blocks on the concatenation;
* ``late``: ``depth`` blocks per modality, each modality its own classifier; the logits are averaged.

Early and middle fusion pool the mean audio token and the mean video token side by side ([B, 2E], as MAViL's
``head_av``) into one classifier. No official weights exist: checkpoints are percli's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from percli.core.data import IMAGENET_MEAN, IMAGENET_STD
from percli.models import register_loader, register_model
from percli.models.audio_mae import Block, PatchEmbed, sincos_pos_embed_2d
from percli.models.common import LoadReport, load_percli_state, plain
from percli.models.mavil import PatchEmbed3D, sincos_pos_embed_3d

FUSIONS = ("early", "middle", "late")


class AVFusionClassifier(nn.Module):
    """Audio + video -> event logits [B, classes], fused early, in the middle or late (module docstring).

    Args:
        fusion: ``early``, ``middle`` or ``late``.
        num_classes: Events.
        embed_dim, depth, num_heads, mlp_ratio: Transformer width, blocks on each token's path, heads, MLP ratio.
        fusion_depth: Middle fusion's joint blocks (the last ``fusion_depth`` of ``depth``).
        audio_size: Fbank (frames, mel bins), both multiples of ``audio_patch``.
        frames: Video frames (even; sampled at 2 fps), ``video_size`` square, a multiple of ``video_patch``.
    """

    def __init__(self, fusion: str = "middle", num_classes: int = 8, embed_dim: int = 64, depth: int = 4,
                 fusion_depth: int = 2, num_heads: int = 4, mlp_ratio: float = 4.0,
                 audio_size: Sequence[int] = (192, 64), audio_patch: int = 16, frames: int = 4, video_size: int = 32,
                 video_patch: int = 8):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r}: choose one of {', '.join(FUSIONS)}")
        if fusion == "middle" and not 0 < fusion_depth < depth:
            raise ValueError(f"fusion_depth={fusion_depth}: middle fusion needs 0 < fusion_depth < depth={depth}")
        if any(s % audio_patch for s in audio_size) or video_size % video_patch or frames % 2:
            raise ValueError(f"audio_size={list(audio_size)} must be multiples of audio_patch={audio_patch}, "
                             f"video_size={video_size} of video_patch={video_patch}, frames={frames} even")
        self.fusion = fusion
        self.preprocess = {
            "audio": {"sample_rate": 16000, "target_length": int(audio_size[0]), "num_mel_bins": int(audio_size[1]),
                      "norm": "(fbank - fbank.mean()) / (2 * fbank.std())"},
            "video": {"frames": frames, "fps": 2, "size": video_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}}

        self.audio_patch_embed = PatchEmbed(audio_size, audio_patch, 1, embed_dim)
        self.audio_pos_embed = nn.Parameter(sincos_pos_embed_2d(embed_dim, self.audio_patch_embed.grid, False),
                                            requires_grad=False)
        self.video_patch_embed = PatchEmbed3D(frames, video_size, video_patch, embed_dim)
        t, g, _ = self.video_patch_embed.grid
        self.video_pos_embed = nn.Parameter(sincos_pos_embed_3d(embed_dim, g, t, False), requires_grad=False)

        def blocks(n: int) -> nn.ModuleList:
            return nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(n)])

        separate = {"early": 0, "middle": depth - fusion_depth, "late": depth}[fusion]
        self.audio_blocks, self.video_blocks = blocks(separate), blocks(separate)
        if fusion == "late":
            self.audio_norm, self.video_norm = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
            self.audio_head, self.video_head = nn.Linear(embed_dim, num_classes), nn.Linear(embed_dim, num_classes)
        else:
            self.modality_embed = nn.Parameter(torch.zeros(2, embed_dim))  # which tokens are audio, which video
            nn.init.trunc_normal_(self.modality_embed, std=0.02)
            self.fusion_blocks = blocks(depth - separate)
            self.norm = nn.LayerNorm(2 * embed_dim)
            self.head = nn.Linear(2 * embed_dim, num_classes)

    def forward(self, fbank: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """fbank [B, T, F] and video [B, 3, frames, H, W] -> logits [B, classes]."""
        a = self.audio_patch_embed(fbank.unsqueeze(1)) + self.audio_pos_embed  # [B, T, F] -> [B, Na, E]
        v = self.video_patch_embed(video) + self.video_pos_embed  # [B, 3, T, H, W] -> [B, Nv, E]
        for block in self.audio_blocks:
            a = block(a)
        for block in self.video_blocks:
            v = block(v)
        if self.fusion == "late":
            logits_a = self.audio_head(self.audio_norm(a.mean(dim=1)))
            logits_v = self.video_head(self.video_norm(v.mean(dim=1)))
            return (logits_a + logits_v) / 2
        na = a.shape[1]
        x = torch.cat([a + self.modality_embed[0], v + self.modality_embed[1]], dim=1)  # [B, Na + Nv, E]
        for block in self.fusion_blocks:
            x = block(x)
        pooled = torch.cat([x[:, :na].mean(dim=1), x[:, na:].mean(dim=1)], dim=-1)  # [B, 2E]
        return self.head(self.norm(pooled))


def load_state(model: AVFusionClassifier, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A percli av-fusion state dict, strictly (no official weights exist)."""
    return load_percli_state(model, state_or_path, "av-fusion")


register_loader(__name__)(load_state)


@register_model
def av_fusion_tiny(**kwargs) -> AVFusionClassifier:
    """64-wide, 4 blocks per token path (middle: 2 + 2), 4 heads; 2 s of 64-bin fbank, 4 frames of 32 px."""
    model = AVFusionClassifier(**kwargs)
    model.arch = "av_fusion_tiny"
    return model


@register_model
def av_fusion_small(**kwargs) -> AVFusionClassifier:
    """192-wide, 6 blocks per token path (middle: 3 + 3), 3 heads; 4 s of 128-bin fbank, 8 frames of 64 px (for
    real clips: the embedded ones last 2 s)."""
    args = dict(embed_dim=192, depth=6, fusion_depth=3, num_heads=3, audio_size=(400, 128), frames=8, video_size=64)
    model = AVFusionClassifier(**{**args, **kwargs})
    model.arch = "av_fusion_small"
    return model
