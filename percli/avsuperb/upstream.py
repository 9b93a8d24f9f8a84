"""AV-SUPERB upstreams: encoders that return per-layer feature lists for audio, video and fusion.

The protocol (official ``interfaces.py`` / ``upstream_models/example/expert.py``): an upstream
preprocesses one clip's waveform or frames itself, and ``forward`` takes a batch of
``(audio, video)`` pairs and returns ``{"audio_feats", "video_feats", "fusion_feats"}``, each a list
(one entry per layer) of tensors of identical shape (B, T, D); an absent modality gives ``[]``.
percli upstreams also return an optional ``"lengths"`` LongTensor (B,): the valid T of each clip
(padding excluded); heads treat a missing ``"lengths"`` as "every frame is valid".

Built in: ``audio-mae`` (percli `AudioViT`), ``hiera-video`` (percli `Hiera` video models),
``audio-mae+hiera-video`` (their fusion), ``mavil`` and ``pe-av`` (joint audio-visual encoders,
`percli.avsuperb.av_upstreams`), and ``module:factory`` for a user's upstream.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

from percli.avsuperb.av_upstreams import build_mavil, build_pe_av
from percli.avsuperb.upstream_common import (
    Batch,
    _build,
    _checkpoint_meta,
    _empty_features,
    _present,
    evenly_spaced,
)
from percli.core.data.audio import kaldi_fbank, normalize_fbank
from percli.models.audio_mae import AudioViT
from percli.models.hiera import Hiera

DEFAULT_AUDIO_MODEL = "audiomae_vit_base_patch16"
DEFAULT_VIDEO_MODEL = "hiera_base_16x224"
_FBANK_FRAMES_PER_S = 100.0  # Kaldi fbank frame shift of 10 ms


class AudioMAEUpstream(nn.Module):
    """Audio-MAE ViT: every block's patch tokens, averaged over frequency -> (B, T/p, C) per layer.

    Audio is resampled, turned into the model's Kaldi fbank (mel bins, normalisation) and cropped to
    its time length; shorter clips are zero-padded to it in `forward`, and ``"lengths"`` counts the
    patch rows that hold real audio.
    """

    modalities = {"audio"}

    def __init__(self, model: AudioViT, preprocess: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        pre = {**model.preprocess, **(preprocess or {})}
        self.sample_rate = int(pre["sample_rate"])
        self.target_length, self.num_mel_bins = model.img_size
        self.mean, self.std = float(pre["mean"]), float(pre["std"])
        self.feature_rate = _FBANK_FRAMES_PER_S / model.patch_size

    def preprocess_audio(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Mono waveform [T] (or [C, T]) -> normalised fbank [frames <= target_length, mel bins]."""
        wav = wav.float().reshape(-1, wav.shape[-1]).mean(dim=0)  # [C, T] -> [T]
        if sample_rate != self.sample_rate:
            wav = torchaudio.functional.resample(wav, sample_rate, self.sample_rate)
        fbank = kaldi_fbank(wav, self.sample_rate, self.num_mel_bins, target_length=None)
        return normalize_fbank(fbank[: self.target_length], self.mean, self.std)

    def preprocess_video(self, frames: torch.Tensor, fps: float) -> None:
        """Video is not used by this upstream."""
        return None

    def forward(self, batch: Batch) -> dict[str, Any]:
        out = _empty_features()
        fbanks = _present(batch, 0, "audio")
        if fbanks is None:
            return out
        frames = torch.tensor([f.shape[0] for f in fbanks])
        # zero fbank *after* normalisation, as the official dataset pads the normalised features
        x = torch.stack([F.pad(f, (0, 0, 0, self.target_length - f.shape[0])) for f in fbanks]).unsqueeze(1)
        grid_t, grid_f = self.model.grid
        layers = []
        for tokens in self.model.forward_intermediates(x.to(self.model.cls_token.device)):
            B, _, C = tokens.shape
            # [B, 1+L, C] -> drop cls -> [B, T/p, F/p, C] (time-major) -> mean over freq -> [B, T/p, C]
            layers.append(tokens[:, 1:].reshape(B, grid_t, grid_f, C).mean(dim=2))
        out["audio_feats"] = layers
        out["lengths"] = torch.clamp(torch.ceil(frames / self.model.patch_size).long(), 1, grid_t)
        return out


# --------------------------------------------------------------------------------------------- video


class HieraVideoUpstream(nn.Module):
    """Hiera video: the outputs of every block of the last stage, averaged over space -> (B, T', C).

    After the last q-pool the unrolled token order is raster order (T', H', W'), so a block's
    [B, N, C] output reshapes straight to the grid (checked against `forward_intermediates` in
    tests/test_avsuperb_upstream.py); that needs ``q_pool == len(stages) - 1``, as all released
    Hiera models have.
    """

    modalities = {"video"}

    def __init__(self, model: Hiera):
        super().__init__()
        if len(model.input_size) != 3:
            raise ValueError(f"{model.arch} is an image model (input_size {model.input_size}); use a video "
                             f"Hiera such as {DEFAULT_VIDEO_MODEL}")
        num_stages = len(model.stage_ends)
        if model.q_pool != num_stages - 1:
            raise ValueError(f"{model.arch} pools {model.q_pool} of {num_stages - 1} stage transitions; its last "
                             "stage is then not in raster order (use q_pool = len(stages) - 1)")
        self.model = model
        self.num_frames, self.height, self.width = model.input_size
        self.mean = torch.tensor(model.preprocess["mean"]).view(3, 1, 1, 1)
        self.std = torch.tensor(model.preprocess["std"]).view(3, 1, 1, 1)
        pools = model.q_pool
        self.grid = [t // s**pools for t, s in zip(model.tokens_spatial_shape, model.q_stride, strict=True)]
        self.feature_rate = None  # frames are sampled over the whole clip: the rate depends on its duration
        self._captured: list[torch.Tensor] = []
        first = model.stage_ends[-2] + 1
        for block in model.blocks[first:]:
            block.register_forward_hook(lambda _m, _i, output: self._captured.append(output))

    def preprocess_audio(self, wav: torch.Tensor, sample_rate: int) -> None:
        """Audio is not used by this upstream."""
        return None

    def last_stage_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs [B, T'*H'*W', C] of the last stage's blocks for clips [B, 3, T, H, W]."""
        self._captured.clear()
        try:
            self.model.forward_features(x)
            return list(self._captured)
        finally:
            self._captured.clear()

    def preprocess_video(self, frames: torch.Tensor, fps: float) -> torch.Tensor:
        """uint8 frames [F, H, W, 3] -> [3, T, H_in, W_in]: T frames spread uniformly over the clip,
        resized (bilinear) to the model's input and normalised with its mean/std."""
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"video frames must be [F, H, W, 3] RGB, got shape {list(frames.shape)}")
        index = torch.linspace(0, frames.shape[0] - 1, self.num_frames).round().long()
        x = frames[index].permute(0, 3, 1, 2).float() / 255.0  # [T, 3, H, W]
        x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False, antialias=True)
        return (x.permute(1, 0, 2, 3) - self.mean) / self.std  # [3, T, H, W]

    def forward(self, batch: Batch) -> dict[str, Any]:
        out = _empty_features()
        clips = _present(batch, 1, "video")
        if clips is None:
            return out
        x = torch.stack(clips).to(self.model.patch_embed.proj.weight.device)
        # [B, T'*H'*W', C] (raster order) -> [B, T', H', W', C] -> mean over space -> [B, T', C]
        out["video_feats"] = [t.reshape(t.shape[0], *self.grid, t.shape[-1]).mean(dim=(2, 3))
                              for t in self.last_stage_tokens(x)]
        out["lengths"] = torch.full((len(clips),), self.grid[0], dtype=torch.long)
        return out


# -------------------------------------------------------------------------------------------- fusion


class FusionUpstream(nn.Module):
    """Audio and video upstreams side by side; ``fusion_feats`` concatenates them layer by layer.

    Layer counts are matched by taking evenly spaced layers of the deeper model; video features are
    linearly interpolated in time to the audio T (onto each clip's valid audio frames, see
    `stretch_in_time`), then concatenated along D (audio first). A clip longer than the audio
    model's window keeps its audio start only, while its video covers it all.
    """

    modalities = {"audio", "video"}

    def __init__(self, audio: nn.Module, video: nn.Module):
        super().__init__()
        self.audio, self.video = audio, video
        self.feature_rate = audio.feature_rate

    def preprocess_audio(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return self.audio.preprocess_audio(wav, sample_rate)

    def preprocess_video(self, frames: torch.Tensor, fps: float) -> torch.Tensor:
        return self.video.preprocess_video(frames, fps)

    def forward(self, batch: Batch) -> dict[str, Any]:
        a, v = self.audio(batch), self.video(batch)
        out = {"audio_feats": a["audio_feats"], "video_feats": v["video_feats"], "fusion_feats": []}
        out["lengths"] = a.get("lengths", v.get("lengths"))
        if not (a["audio_feats"] and v["video_feats"]):
            return out
        n = min(len(a["audio_feats"]), len(v["video_feats"]))
        audio_layers = [a["audio_feats"][i] for i in evenly_spaced(n, len(a["audio_feats"]))]
        video_layers = [v["video_feats"][i] for i in evenly_spaced(n, len(v["video_feats"]))]
        steps = audio_layers[0].shape[1]
        valid = out["lengths"].tolist() if out["lengths"] is not None else [steps] * len(batch)
        for al, vl in zip(audio_layers, video_layers, strict=True):
            out["fusion_feats"].append(torch.cat([al, stretch_in_time(vl, valid, steps)], dim=-1))
        return out


def stretch_in_time(x: torch.Tensor, lengths: list[int], steps: int) -> torch.Tensor:
    """Linearly interpolate each clip's [T_v, C] onto its first ``lengths[b]`` of `steps` frames (rest zero).

    The video frames span the whole clip, the audio's valid frames too (padding excluded), so each
    clip's video is stretched over its own valid audio frames.
    """
    out = x.new_zeros(x.shape[0], steps, x.shape[2])
    for b, n in enumerate(lengths):
        # [T_v, C] -> [1, C, T_v] -> [1, C, n] -> [n, C]
        out[b, :n] = F.interpolate(x[b].T[None], size=n, mode="linear", align_corners=False)[0].T
    return out


# ------------------------------------------------------------------------------------------- loading


def build_audio_mae(model: str | None = None, checkpoint: str | None = None,
                    model_kwargs: dict[str, Any] | None = None) -> AudioMAEUpstream:
    """Audio-MAE upstream from a registry name and/or a checkpoint (percli dir/.safetensors or official .pth).

    A pretraining checkpoint (``audiomae_mae_vit_*``) loads into the matching ``audiomae_vit_*`` encoder.
    """
    meta = _checkpoint_meta(checkpoint)
    name = (model or meta.get("name", DEFAULT_AUDIO_MODEL)).replace("audiomae_mae_vit_", "audiomae_vit_")
    vit = _build(AudioViT, name, dict(model_kwargs or {}), checkpoint, meta)
    return AudioMAEUpstream(vit, {k: meta[k] for k in ("sample_rate", "mean", "std") if meta.get(k) is not None})


def build_hiera_video(model: str | None = None, checkpoint: str | None = None,
                      model_kwargs: dict[str, Any] | None = None) -> HieraVideoUpstream:
    """Hiera video upstream from a registry name and/or a checkpoint."""
    meta = _checkpoint_meta(checkpoint)
    name = model or meta.get("name", DEFAULT_VIDEO_MODEL)
    return HieraVideoUpstream(_build(Hiera, name, dict(model_kwargs or {}), checkpoint, meta))


_BUILTIN = {"audio-mae": build_audio_mae, "hiera-video": build_hiera_video}
AV_BUILTIN = {"mavil": build_mavil, "pe-av": build_pe_av}  # the joint audio-visual encoders


def _load_user_upstream(spec: str, checkpoint: str | None, kw: dict[str, Any]) -> nn.Module:
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise ValueError(f"upstream {spec!r}: a user upstream is written module:factory (e.g. my_pkg.experts:build)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"upstream {spec!r}: cannot import {module_name!r} ({error}); put it on PYTHONPATH "
                         "or install its package") from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"upstream {spec!r}: {module_name} has no callable {factory_name!r}")
    upstream = factory(**kw, **({"checkpoint": checkpoint} if checkpoint is not None else {}))
    required = ("preprocess_audio", "preprocess_video", "forward")
    lacking = [name for name in required if not callable(getattr(upstream, name, None))]
    if not isinstance(upstream, nn.Module) or lacking:
        raise TypeError(f"upstream {spec!r}: {factory_name}() must return an nn.Module with preprocess_audio, "
                        f"preprocess_video and forward; got a {type(upstream).__name__} "
                        f"(lacking {', '.join(lacking) or 'nn.Module'})")
    if not hasattr(upstream, "modalities"):
        upstream.modalities = {"audio", "video"}
    if not hasattr(upstream, "feature_rate"):
        upstream.feature_rate = None
    return upstream


def load_upstream(spec: str, checkpoint: str | None = None, **kw: Any) -> nn.Module:
    """Build an upstream from its spec.

    Args:
        spec: ``audio-mae`` | ``hiera-video`` | ``mavil`` | ``pe-av`` (keywords ``model``, ``model_kwargs``),
            ``audio-mae+hiera-video``
            (keywords ``audio`` and ``video``: dicts of those keywords plus ``checkpoint`` for each side), or
            ``module:factory`` (``factory(**kw)`` is called; ``checkpoint`` is passed when given).
        checkpoint: weights for a single built-in model (percli checkpoint dir/.safetensors or official .pth).
        kw: see `spec`; tiny test models come from ``model_kwargs`` overrides.

    Raises:
        ValueError / TypeError naming the problem and the fix.
    """
    if spec in _BUILTIN:
        return _BUILTIN[spec](checkpoint=checkpoint, **kw)
    if spec in AV_BUILTIN:
        return AV_BUILTIN[spec](checkpoint=checkpoint, **kw)
    if spec == "audio-mae+hiera-video":
        if checkpoint is not None:
            raise ValueError("the fusion upstream takes one checkpoint per side: pass audio={'checkpoint': ...} "
                             "and video={'checkpoint': ...}")
        unknown = sorted(set(kw) - {"audio", "video"})
        if unknown:
            raise ValueError(f"fusion upstream keywords are 'audio' and 'video' (dicts), not {unknown}")
        return FusionUpstream(build_audio_mae(**kw.get("audio", {})), build_hiera_video(**kw.get("video", {})))
    if ":" in spec:
        return _load_user_upstream(spec, checkpoint, kw)
    raise ValueError(f"unknown upstream {spec!r}: use audio-mae, hiera-video, audio-mae+hiera-video, mavil, pe-av or "
                     "module:factory")

