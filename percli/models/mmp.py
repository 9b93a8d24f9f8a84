"""MMP: multilingual multimodal pre-training (Huang, Patrick, Hu, Neubig, Metze, Hauptmann; NAACL 2021).

A video and ONE text encoder shared by every language, both mapped into a joint space and L2-normalised, so
a caption in any language retrieves the video it describes. The paper's text side is mBERT / XLM-R under a
Transformer-pooling (TP) head and its video side frozen clip features under another TP head. No official code
was released (`berniebear/Multi-HT100M` has data only); this follows the paper's description:

* ``video``: per-second features [B, T, F] (S3D / `percli extract features`) -> linear to ``width``, then the TP
  head (`SequenceEncoder`: learned positions, Transformer, masked mean, linear to ``embed_dim``);
* ``text``: byte-level tokens (`ByteTokenizer`: UTF-8 bytes, any language, no vocabulary file) -> embedding,
  then a TP head of the same shape. The byte encoder stands in for mBERT / XLM-R so CPU presets train from
  scratch; a pretrained multilingual encoder is not wired in yet.

`conditional_query` is the input of the conditional cross-lingual term (`percli.recipes.mmp`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.byte_text import ByteVideoTextEncoder
from percli.models.common import LoadReport, load_percli_state


def conditional_query(text: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """Caption x "in the presence of" its video v: ``normalize(x + v)`` [B, D], which the conditional
    cross-lingual term matches against the other language's caption y.

    The paper's exact conditioning is unverified (notes, section 3); the sum of the two unit vectors is the
    simplest reading that makes y depend on both x and v and adds no parameters."""
    return F.normalize(text + video, dim=-1)


class MMPModel(ByteVideoTextEncoder):
    """A video TP head and one multilingual byte-level text encoder into a joint space, with one temperature
    shared by every pair of the objective.

    Args:
        feature_dim: Width of the input video features (S3D: 512).
        embed_dim: Joint space width.
        width, layers, heads: The video and text encoders' Transformer sizes.
        max_video_len: Most video steps (seconds); context_length: bytes per caption (special tokens included).
    """

    def __init__(self, feature_dim: int = 512, embed_dim: int = 256, width: int = 256, layers: int = 2,
                 heads: int = 4, max_video_len: int = 32, context_length: int = 128):
        args = dict(locals())
        super().__init__(feature_dim, embed_dim, width, layers, heads, max_video_len, context_length)
        self.config = {k: v for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__


def load_official_state(model: MMPModel, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A percli MMP state dict, strictly (no official weights were released)."""
    return load_percli_state(model, state_or_path, "MMP")


register_loader(__name__)(load_official_state)


@register_model
def mmp_tiny(**kwargs) -> MMPModel:
    """A CPU-sized MMP model (128-d space, 2-layer video and text TP heads)."""
    model = MMPModel(**{**dict(embed_dim=128, width=128, layers=2, heads=4), **kwargs})
    model.arch = "mmp_tiny"
    return model


@register_model
def mmp_base(**kwargs) -> MMPModel:
    """A larger MMP model (256-d space, 4-layer TP heads)."""
    model = MMPModel(**{**dict(embed_dim=256, width=256, layers=4, heads=4), **kwargs})
    model.arch = "mmp_base"
    return model
