"""AV-SUPERB upstreams of the joint audio-visual encoders: MAViL (``mavil``) and PE-AV (``pe-av``).

* ``mavil``: AV-SUPERB's own MAViL expert (``upstream_models/mavil/expert.py``): 16 kHz Kaldi fbank
  (1024 x 128, each clip normalised by its own mean and 2x std), ``n_frm`` frames at 2 fps resized to the
  video size with ImageNet statistics; per layer, the mean over patch tokens of each block's input and of
  the last output (``audio_feats``, ``video_feats``: [B, 1, E]) and of the fusion blocks (``fusion_feats``
  [B, 1, 2E]), as `VisionTransformerMM.avsuperb_features` returns them.
* ``pe-av``: PE-AV's towers at the codec's frame rate (25 Hz in the releases): every layer of the audio
  tower and of the audio+video tower, [B, La, C] ([cls] dropped), and of the video tower, [B, N, C] over
  16 evenly spaced frames (the release's ``-16-frame`` sampling); ``lengths`` are the valid audio frames.

Both load percli checkpoints or, for PE-AV, a release folder (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

from percli.avsuperb.upstream_common import Batch, _build, _checkpoint_meta, _empty_features, _present, evenly_spaced
from percli.core.data import IMAGENET_MEAN, IMAGENET_STD
from percli.core.data.audio import kaldi_fbank
from percli.models.mavil import VisionTransformerMM
from percli.models.pe_av_loading import PEAVModelSection, load_pe_model, pe_video_frames

DEFAULT_MAVIL = "mavil_vit_base_patch16"
MAVIL_FPS = 2.0
PE_AV_FRAMES = 16


def _mono(wav: torch.Tensor, sample_rate: int, target: int) -> torch.Tensor:
    wav = wav.float().reshape(-1, wav.shape[-1]).mean(dim=0)
    return torchaudio.functional.resample(wav, sample_rate, target) if sample_rate != target else wav


def _mavil_frames(frames: torch.Tensor, index: list[int], size: int) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [T, 3, size, size] in [0, 1] (bilinear, antialiased)."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video frames must be [F, H, W, 3] RGB, got shape {list(frames.shape)}")
    x = frames[torch.tensor(index)].permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class MAViLInputs:
    """AV-SUPERB's MAViL expert preprocessing from a model's ``preprocess`` description (no weights held, so
    data workers can carry it)."""

    def __init__(self, preprocess: dict[str, Any]):
        audio, video = preprocess["audio"], preprocess["video"]
        self.target_length, self.num_mel_bins = int(audio["target_length"]), int(audio["num_mel_bins"])
        self.num_frames, self.size = int(video["frames"]), int(video["size"])
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def preprocess_audio(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Waveform -> fbank [target_length, mel bins], normalised by the clip's own statistics."""
        fbank = kaldi_fbank(_mono(wav, sample_rate, 16000), 16000, self.num_mel_bins, self.target_length)
        return (fbank - fbank.mean()) / (2 * fbank.std().clamp_min(1e-8))

    def preprocess_video(self, frames: torch.Tensor, fps: float) -> torch.Tensor:
        """uint8 [F, H, W, 3] -> [3, n_frm, size, size]: frames at 2 fps from the start (the last one repeated
        for a short clip), ImageNet-normalised."""
        step = max(fps / MAVIL_FPS, 1e-6)
        index = [min(round(i * step), frames.shape[0] - 1) for i in range(self.num_frames)]
        x = (_mavil_frames(frames, index, self.size) - self.mean) / self.std
        return x.permute(1, 0, 2, 3)


class MAViLUpstream(nn.Module):
    """MAViL (fusion layout) as AV-SUPERB's expert runs it."""

    modalities = {"audio", "video"}
    feature_rate = None  # one pooled vector per layer

    def __init__(self, model: VisionTransformerMM):
        super().__init__()
        if not model.av_fusion:
            raise ValueError("the MAViL upstream needs the fusion layout (av_fusion=True), as AV-SUPERB's expert")
        self.model = model
        self.inputs = MAViLInputs(model.preprocess)
        self.preprocess_audio, self.preprocess_video = self.inputs.preprocess_audio, self.inputs.preprocess_video

    def forward(self, batch: Batch) -> dict[str, Any]:
        out = _empty_features()
        audio, video = _present(batch, 0, "audio"), _present(batch, 1, "video")
        if audio is None or video is None:
            raise ValueError("the MAViL upstream needs audio and video for every clip (its features are fused)")
        device = self.model.cls_token.device
        x = torch.stack(audio)[:, None].to(device)  # [B, 1, T, F]
        v = torch.stack(video).to(device)  # [B, 3, n_frm, H, W]
        feats = self.model.avsuperb_features(x, v)
        out.update({k: feats[k] for k in ("audio_feats", "video_feats", "fusion_feats")})
        return out


class PEAVUpstream(nn.Module):
    """PE-AV: every layer of its audio, video and audio+video towers."""

    modalities = {"audio", "video"}

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        avm = model.audio_visual_model
        self.towers = {"audio_feats": avm.audio_model.audio_transformer,
                       "video_feats": avm.visual_model.visual_transformer,
                       "fusion_feats": avm.audio_visual_transformer}
        self.sample_rate, self.hop = model.sampling_rate, model.hop_length
        self.feature_rate = model.sampling_rate / model.hop_length
        self.size = model.image_size

    def preprocess_audio(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return _mono(wav, sample_rate, self.sample_rate)

    def preprocess_video(self, frames: torch.Tensor, fps: float) -> torch.Tensor:
        """uint8 [F, H, W, 3] -> [16, 3, size, size], evenly spaced, as the release's video processor."""
        if frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"video frames must be [F, H, W, 3] RGB, got shape {list(frames.shape)}")
        chosen = frames[torch.tensor(evenly_spaced(PE_AV_FRAMES, frames.shape[0]))].permute(0, 3, 1, 2)
        return pe_video_frames(chosen[None], self.size)[0]

    def _layers(self, run: Any) -> dict[str, list[torch.Tensor]]:
        captured: dict[str, list[torch.Tensor]] = {k: [] for k in self.towers}
        hooks = [layer.register_forward_hook(lambda _m, _i, o, key=key: captured[key].append(o[:, 1:]))
                 for key, tower in self.towers.items() for layer in tower.layers]
        try:
            run()
        finally:
            for hook in hooks:
                hook.remove()
        return captured

    def forward(self, batch: Batch) -> dict[str, Any]:
        out = _empty_features()
        audio, video = _present(batch, 0, "audio"), _present(batch, 1, "video")
        device = next(self.model.parameters()).device
        lengths = [a.shape[-1] for a in audio] if audio is not None else []
        wav = mask = frames = None
        if audio is not None:
            wav = torch.zeros(len(audio), 1, max(lengths), device=device)
            for b, a in enumerate(audio):
                wav[b, 0, : a.shape[-1]] = a
            mask = torch.arange(max(lengths), device=device)[None] < torch.tensor(lengths, device=device)[:, None]
        if video is not None:
            frames = torch.stack(video).to(device)
        out.update({k: v for k, v in self._layers(lambda: self.model(None, frames, wav, None, None, mask)).items()
                    if v})
        if audio is not None:
            out["lengths"] = torch.tensor([-(-n // self.hop) for n in lengths], dtype=torch.long)
        return out


def build_mavil(model: str | None = None, checkpoint: str | None = None,
                model_kwargs: dict[str, Any] | None = None) -> MAViLUpstream:
    """MAViL upstream from a registry name and/or a checkpoint (percli, or AV-SUPERB's ``mavil_base`` .pth).

    A pretraining checkpoint (``mavil_pretrain_vit_*``) loads into the matching ``mavil_vit_*`` encoder.
    """
    meta = _checkpoint_meta(checkpoint)
    name = (model or meta.get("name", DEFAULT_MAVIL)).replace("mavil_pretrain_vit_", "mavil_vit_")
    return MAViLUpstream(_build(VisionTransformerMM, name, dict(model_kwargs or {}), checkpoint, meta))


def build_pe_av(model: str | None = None, checkpoint: str | None = None,
                model_kwargs: dict[str, Any] | None = None) -> PEAVUpstream:
    """PE-AV upstream from a release folder or percli checkpoint (or a registry build with `model_kwargs`)."""
    section = PEAVModelSection(name=model or "pe_av", kwargs=dict(model_kwargs or {}), checkpoint=checkpoint)
    pe, _, _ = load_pe_model(section, "PEAudioVisual")
    return PEAVUpstream(pe)
