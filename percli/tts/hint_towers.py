"""Frozen pretrained towers that embed a stylization hint: the paper conditions its diffusion model on CLAP (audio)
and CLIP (image) embeddings of the hint clip.

Audio: a model with ``encode_audio`` (percli's FLAP, a CLAP-style language-audio model) or ``forward_features``
giving pooled features (an Audio-MAE classifier), fed the hint's Kaldi fbank as that model's ``preprocess`` says.
Image: a model with ``encode_image`` (CLIP, PE), fed the hint picture resized and normalised by its
``preprocess``. A tower is named by a percli run / checkpoint (its metadata builds the model) or by
``NAME@WEIGHTS`` (a registered model and official weights). Towers stay frozen and out of the stylization
checkpoint, which records their specs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.core.config import ConfigError


def load_tower(spec: str) -> nn.Module:
    from percli.core.checkpoint import read_meta, run_weights
    from percli.models import create_model, create_model_for, load_initial_weights

    if "@" in spec:
        name, weights = spec.split("@", 1)
        model = create_model(name)
    else:
        weights = run_weights(spec)
        meta = read_meta(weights)
        if "name" not in meta:
            raise ConfigError(f"hint tower {spec}: no percli metadata; name the model as NAME@WEIGHTS")
        model = create_model_for(meta["name"], meta.get("kwargs") or {}, weights)
    load_initial_weights(model, weights)
    return model.eval().requires_grad_(False)


class HintTowers(nn.Module):
    """``embed(hint_wave, image)`` -> ``{"audio_embedding": [B, Da], "image_embedding": [B, Di]}`` for the towers
    given; ``audio_dim`` / ``image_dim`` are 0 for a missing one."""

    def __init__(self, audio: str | None = None, image: str | None = None, sample_rate: int = 16000):
        super().__init__()
        self.audio = load_tower(audio) if audio else None
        self.image = load_tower(image) if image else None
        self.sample_rate = sample_rate
        if self.audio is not None and not (hasattr(self.audio, "encode_audio") or "num_mel_bins"
                                           in getattr(self.audio, "preprocess", {})):
            raise ConfigError(f"hint audio tower {audio}: not an fbank audio encoder (FLAP, Audio-MAE)")
        if self.image is not None and not hasattr(self.image, "encode_image"):
            raise ConfigError(f"hint image tower {image}: has no encode_image (use a CLIP or PE model)")
        with torch.no_grad():
            probe = self.embed(torch.zeros(1, sample_rate) + 1e-3, torch.zeros(1, 3, 8, 8))
        self.audio_dim = probe["audio_embedding"].shape[-1] if "audio_embedding" in probe else 0
        self.image_dim = probe["image_embedding"].shape[-1] if "image_embedding" in probe else 0

    @torch.no_grad()
    def embed(self, hint_wave: torch.Tensor | None, image: torch.Tensor | None) -> dict[str, torch.Tensor]:
        from percli.core.data.audio import kaldi_fbank, normalize_fbank

        out = {}
        if self.audio is not None and hint_wave is not None:
            p = self.audio.preprocess
            device = next(self.audio.parameters()).device
            fbank = torch.stack([normalize_fbank(kaldi_fbank(w[None].cpu(), self.sample_rate, p["num_mel_bins"],
                                                             p["target_length"]), p["mean"], p["std"])
                                 for w in hint_wave])[:, None].to(device)  # [B, 1, T, F]
            features = (self.audio.encode_audio(fbank) if hasattr(self.audio, "encode_audio")
                        else self.audio.forward_features(fbank))
            out["audio_embedding"] = features.flatten(1) if features.dim() == 2 else features.mean(1)
        if self.image is not None and image is not None:
            p = self.image.preprocess
            size = p["image_size"] if isinstance(p["image_size"], list) else [p["image_size"]] * 2
            device = next(self.image.parameters()).device
            x = F.interpolate(image.to(device), size=size, mode="bicubic", align_corners=False).clamp(0, 1)
            mean = torch.tensor(p["mean"], device=device)[:, None, None]
            std = torch.tensor(p["std"], device=device)[:, None, None]
            out["image_embedding"] = self.image.encode_image((x - mean) / std)
        return out
