"""Which PE-AV / PE-A-Frame a job runs, with its text tokenizer and input preprocessing.

``model.checkpoint`` is a release folder (``config.json`` + ``model.safetensors`` [+ ``tokenizer.json``], a
local copy of ``facebook/pe-av-*`` / ``facebook/pe-a-frame-*``), a percli checkpoint (its metadata rebuilds
the model and names its tokenizer), or unset: a fresh ``model.name`` with ``model.kwargs``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torchvision.transforms.v2 import functional as TF

from percli.core.config import ConfigError

VIDEO_MEAN = VIDEO_STD = 0.5  # the release's VideoProcessor: x / 255, then (x - 0.5) / 0.5


@dataclasses.dataclass
class PEAVModelSection:
    name: str = "pe_av"
    """pe_av or pe_a_frame (`percli ls models`), built with `kwargs` when no checkpoint gives the config."""
    kwargs: dict = dataclasses.field(default_factory=dict)
    """Constructor arguments as a release's config.json spells them (audio_visual_model, text_model, ...)."""
    checkpoint: str | None = None
    """A release folder (config.json + model.safetensors) or a percli checkpoint dir / .safetensors."""
    tokenizer: str = "auto"
    """auto (the release folder's tokenizer.json, the percli checkpoint's, else clip_bpe), clip_bpe, or a folder /
    tokenizer.json of ModernBERT's Hugging Face tokenizer."""
    context_length: int = 64
    """Most text tokens, [CLS] and [SEP] included."""
    grad_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (less memory, same gradients)."""

    def check(self) -> None:
        if self.checkpoint and not Path(self.checkpoint).expanduser().exists():
            raise ConfigError(f"model.checkpoint: {self.checkpoint} does not exist")
        if self.tokenizer not in ("auto", "clip_bpe") and not Path(self.tokenizer).expanduser().exists():
            raise ConfigError(f"model.tokenizer: {self.tokenizer} does not exist (auto, clip_bpe, or a folder with "
                              "tokenizer.json)")


def _tokenizer(section: PEAVModelSection, folder: Path | None, saved: dict | None) -> Any:
    from percli.models.pe_av_tokenizer import PETextTokenizer

    if section.tokenizer == "clip_bpe":
        return PETextTokenizer("clip_bpe", context_length=section.context_length)
    if section.tokenizer != "auto":
        return PETextTokenizer("hf", section.tokenizer, section.context_length)
    if folder is not None:
        if not (folder / "tokenizer.json").is_file():
            raise ValueError(f"{folder} has no tokenizer.json: copy ModernBERT's tokenizer.json from the release next "
                             "to its config.json, or set model.tokenizer=PATH")
        return PETextTokenizer("hf", str(folder), section.context_length)
    if saved:
        return PETextTokenizer.from_meta(saved)
    return PETextTokenizer("clip_bpe", context_length=section.context_length)


def load_pe_model(section: PEAVModelSection, arch: str, train: bool = False) -> tuple[nn.Module, Any, dict]:
    """(model, tokenizer, metadata) of the section; `arch` (PEAudioVisual or PEAudioFrame) is what the job needs.

    The model is in eval mode unless `train`; the metadata holds its name, constructor config and rates, and a
    percli checkpoint's training vocabulary (``labels``, ``queries``) when it has one."""
    from percli.core.checkpoint import read_meta, read_weights
    from percli.models import create_model
    from percli.models.pe_av import from_folder, load_official_state

    path = Path(section.checkpoint).expanduser() if section.checkpoint else None
    saved: dict = {}
    if path is None:
        model = create_model(section.name, **section.kwargs)
        tokenizer = _tokenizer(section, None, None)
    elif path.is_dir() and (path / "config.json").is_file():
        model = from_folder(path)
        tokenizer = _tokenizer(section, path, None)
    else:
        saved = read_meta(path)
        if saved.get("name") not in ("pe_av", "pe_a_frame"):
            raise ValueError(f"{path} is not a PE-AV / PE-A-Frame checkpoint (its metadata names "
                             f"{saved.get('name')!r}); give a release folder or a percli pretrain pe-av checkpoint")
        model = create_model(saved["name"], **saved.get("kwargs", {}))
        load_official_state(model, read_weights(path)[0])
        tokenizer = _tokenizer(section, None, saved.get("tokenizer"))
    if type(model).__name__ != arch:
        raise ValueError(f"model.checkpoint={section.checkpoint}: a {type(model).__name__}, but this job needs a "
                         f"{arch} ({'pe_av' if arch == 'PEAudioVisual' else 'pe_a_frame'})")
    vocab = model.text_model.embeddings.tok_embeddings.num_embeddings
    if tokenizer.vocab_size > vocab:
        raise ConfigError(f"model.tokenizer: {tokenizer.kind} has {tokenizer.vocab_size} ids but the text tower "
                          f"embeds {vocab}; set model.kwargs.text_model.vocab_size={tokenizer.vocab_size} or use the "
                          "model's own tokenizer")
    model.train(train)
    meta = {"name": "pe_av" if arch == "PEAudioVisual" else "pe_a_frame", "kwargs": model.config,
            "sampling_rate": model.sampling_rate, "hop_length": model.hop_length,
            **{key: saved[key] for key in ("labels", "queries") if key in saved}}
    if hasattr(model, "image_size"):
        meta["image_size"] = model.image_size
    return model, tokenizer, meta


def pe_video_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 frames [B, N, 3, H, W] -> the release's model input: resized to size x size (bilinear, antialiased,
    on the uint8 frames as torchvision does), scaled to [0, 1] and normalised with mean = std = 0.5."""
    b, n = frames.shape[:2]
    x = frames.flatten(0, 1)
    if tuple(x.shape[-2:]) != (size, size):
        x = TF.resize(x, [size, size], antialias=True)
    x = (x.float() / 255 - VIDEO_MEAN) / VIDEO_STD
    return x.view(b, n, *x.shape[1:])
