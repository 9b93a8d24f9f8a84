"""YouTube-8M classifiers: the official starter models and the CMU Informedia ones (Huang, Yuan, Lan, Jiang,
Hauptmann, "Video Representation Learning and Latent Concept Mining for Large-scale Multi-label Video
Classification", arXiv 1707.01408).

Every model returns per-class probabilities [B, C] (a mixture of sigmoids has no logit), trained with the
official cross-entropy on probabilities.

* ``MoeHead``: the official ``MoeModel`` (google/youtube-8m ``video_level_models.py``): per class a softmax
  gate over ``num_mixtures`` logistic experts and one dummy expert that always says "no" (its gate takes
  probability mass, its prediction is 0); gates without bias, experts with. Default 2 mixtures (the starter's).
* ``LogisticModel``: the official one-layer logistic baseline.
* ``HypercolumnMoe`` (video level): an MLP with residual links whose input and hidden layers are concatenated
  (a *hypercolumn*) and fed to the MoE head, so the classifier sees every level of the representation.
* ``LatentConceptModel`` (second stage): the first stage's class scores are read as latent concepts (logits of
  the probabilities), optionally with the video's features, and a hypercolumn MLP over them models how
  concepts co-occur before its MoE head predicts the labels again.
* ``TemporalSegmentModel`` (frame level): the valid frames are split into ``num_segments`` equal segments,
  each mean-pooled; ``fusion="concat"`` concatenates the segments for one hypercolumn MLP, ``"shared"`` runs
  one MLP on every segment and max-pools the segments' hypercolumns (a label shown in any part of the video).

The paper's layer widths, depths and normalisation are not public (the release repository could not be read):
the hidden widths, depths, LayerNorm and ReLU here are percli's choices and marked as such in the presets.
There is no released checkpoint, so the loader reads percli checkpoints (strict state dicts).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from percli.models import register_loader, register_model
from percli.models.common import LoadReport, load_percli_state

_LOGIT_CLAMP = 1e-6  # probabilities -> logits: keep a saturated first-stage score finite


def _official_init(linear: nn.Linear) -> nn.Linear:
    """slim.fully_connected's initialisers: Glorot-uniform weights, zero biases."""
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


class MoeHead(nn.Module):
    """The official mixture of logistic experts with a dummy expert (module docstring)."""

    def __init__(self, in_dim: int, num_classes: int, num_mixtures: int = 2):
        super().__init__()
        self.num_classes, self.num_mixtures = num_classes, num_mixtures
        self.gates = _official_init(nn.Linear(in_dim, num_classes * (num_mixtures + 1), bias=False))
        self.experts = _official_init(nn.Linear(in_dim, num_classes * num_mixtures))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, m = x.shape[0], self.num_classes, self.num_mixtures
        gates = self.gates(x).reshape(b, c, m + 1).softmax(-1)  # [B, C*(M+1)] -> [B, C, M+1], class-major
        experts = torch.sigmoid(self.experts(x).reshape(b, c, m))  # [B, C*M] -> [B, C, M]
        return (gates[..., :m] * experts).sum(-1)  # the dummy expert (gate m) predicts 0


class ResidualBlock(nn.Module):
    """h + relu(norm(W h))."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(torch.relu(self.norm(self.fc(x))))


class HypercolumnMLP(nn.Module):
    """Input norm, a projection to `hidden`, `depth` residual blocks; returns the hypercolumn (the normalised input
    and every hidden layer concatenated), `out_dim` wide."""

    def __init__(self, in_dim: int, hidden: int, depth: int, dropout: float = 0.0):
        super().__init__()
        self.input_norm = nn.LayerNorm(in_dim)
        self.stem = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, dropout) for _ in range(depth))
        self.out_dim = in_dim + hidden * (depth + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(x)
        layers = [x, torch.relu(self.stem(x))]
        for block in self.blocks:
            layers.append(block(layers[-1]))
        return torch.cat(layers, dim=-1)  # [..., in + hidden * (depth + 1)]


class LogisticModel(nn.Module):
    """The official logistic baseline: one linear layer, sigmoid."""

    arch = "yt8m_logistic"
    input_kind = "video"

    def __init__(self, feature_dim: int = 1152, num_classes: int = 4716):
        super().__init__()
        self.fc = _official_init(nn.Linear(feature_dim, num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(features))


class MoeModel(nn.Module):
    """The official video-level MoE."""

    arch = "yt8m_moe"
    input_kind = "video"

    def __init__(self, feature_dim: int = 1152, num_classes: int = 4716, num_mixtures: int = 2):
        super().__init__()
        self.moe = MoeHead(feature_dim, num_classes, num_mixtures)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.moe(features)


class HypercolumnMoe(nn.Module):
    """Residual MLP, hypercolumn of its layers, MoE head (video level)."""

    arch = "yt8m_hypercolumn_moe"
    input_kind = "video"

    def __init__(self, feature_dim: int = 1152, num_classes: int = 4716, hidden: int = 1024, depth: int = 2,
                 num_mixtures: int = 2, dropout: float = 0.0):
        super().__init__()
        self.mlp = HypercolumnMLP(feature_dim, hidden, depth, dropout)
        self.moe = MoeHead(self.mlp.out_dim, num_classes, num_mixtures)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.moe(self.mlp(features))


class LatentConceptModel(nn.Module):
    """Second stage over the first stage's scores (and optionally the features): module docstring."""

    arch = "yt8m_concepts"
    input_kind = "concepts"

    def __init__(self, num_classes: int = 4716, feature_dim: int = 0, hidden: int = 1024, depth: int = 2,
                 num_mixtures: int = 2, dropout: float = 0.0):
        super().__init__()
        self.feature_dim = feature_dim
        self.mlp = HypercolumnMLP(num_classes + feature_dim, hidden, depth, dropout)
        self.moe = MoeHead(self.mlp.out_dim, num_classes, num_mixtures)

    def forward(self, scores: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        concepts = torch.logit(scores.clamp(_LOGIT_CLAMP, 1 - _LOGIT_CLAMP))  # [B, C]
        if self.feature_dim:
            if features is None:
                raise ValueError(f"this concept model reads the {self.feature_dim}-d features too; pass them")
            concepts = torch.cat([concepts, features], dim=-1)  # [B, C + D]
        return self.moe(self.mlp(concepts))


def segment_means(frames: torch.Tensor, num_frames: torch.Tensor, num_segments: int) -> torch.Tensor:
    """[B, T, D] frames (the first `num_frames` valid) -> [B, S, D]: the means of S equal runs of valid frames.

    Segment s of a video with n frames covers frames [floor(s n / S), max(floor((s + 1) n / S), start + 1)),
    so each holds at least one frame (a video shorter than S repeats frames); a video with no frame gives zeros.
    """
    t = frames.shape[1]
    n = num_frames.clamp(max=t).to(frames.dtype)[:, None, None]  # [B, 1, 1]
    s = torch.arange(num_segments, device=frames.device, dtype=frames.dtype)[None, :, None]  # [1, S, 1]
    steps = torch.arange(t, device=frames.device, dtype=frames.dtype)[None, None, :]  # [1, 1, T]
    start = torch.floor(s * n / num_segments)
    end = torch.maximum(torch.floor((s + 1) * n / num_segments), start + 1)
    weights = ((steps >= start) & (steps < end) & (steps < n)).to(frames.dtype)  # [B, S, T]
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1)
    return torch.einsum("bst,btd->bsd", weights, frames)


class TemporalSegmentModel(nn.Module):
    """Frame level: segment means, fused by concatenation or a shared per-segment MLP, MoE head."""

    arch = "yt8m_segments"
    input_kind = "frame"

    def __init__(self, feature_dim: int = 1152, num_classes: int = 4716, num_segments: int = 5,
                 fusion: str = "concat", hidden: int = 1024, depth: int = 1, num_mixtures: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        if fusion not in ("concat", "shared"):
            raise ValueError(f"fusion={fusion!r}: concat or shared")
        self.num_segments, self.fusion = num_segments, fusion
        self.mlp = HypercolumnMLP(feature_dim * (num_segments if fusion == "concat" else 1), hidden, depth, dropout)
        self.moe = MoeHead(self.mlp.out_dim, num_classes, num_mixtures)

    def forward(self, frames: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        segments = segment_means(frames, num_frames, self.num_segments)  # [B, S, D]
        if self.fusion == "concat":
            return self.moe(self.mlp(segments.flatten(1)))  # [B, S*D]
        return self.moe(self.mlp(segments).amax(dim=1))  # [B, S, H'] -> [B, H']


def load_state(model: nn.Module, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A percli checkpoint of the model, strictly (no official weights were released)."""
    return load_percli_state(model, state_or_path, "YouTube-8M")


register_loader(__name__)(load_state)


@register_model
def yt8m_logistic(**kwargs) -> LogisticModel:
    """The starter's LogisticModel."""
    return LogisticModel(**kwargs)


@register_model
def yt8m_moe(**kwargs) -> MoeModel:
    """The starter's MoeModel (2 mixtures)."""
    return MoeModel(**kwargs)


@register_model
def yt8m_hypercolumn_moe(**kwargs) -> HypercolumnMoe:
    """Residual MLP (1024 wide, 2 blocks; percli's sizes), hypercolumn to a 2-mixture MoE."""
    return HypercolumnMoe(**kwargs)


@register_model
def yt8m_concepts(**kwargs) -> LatentConceptModel:
    """Latent concept mining on first-stage scores (1024 wide, 2 blocks; percli's sizes)."""
    return LatentConceptModel(**kwargs)


@register_model
def yt8m_segments(**kwargs) -> TemporalSegmentModel:
    """Temporal segments (5, concatenated; percli's choice) of frame-level features, MLP, MoE."""
    return TemporalSegmentModel(**kwargs)
