"""Config section, datasets and the spectrogram reconstruction plot shared by the Audio-MAE recipes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from percli.core import chart
from percli.core.config import ConfigError
from percli.core.data import AUDIOSET_MEAN, AUDIOSET_STD, build_dataset
from percli.recipes.reconstruction import ROWS, denormalize_patches, first_samples

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FRAME_SHIFT_S = 0.010  # the fbank's frame shift (Kaldi fbank, 10 ms): frame k starts at k * 10 ms


@dataclasses.dataclass
class AudioDataSection:
    source: str = "embedded"
    """`embedded` (built-in synthesised sounds), a folder of class sub-folders, a .jsonl manifest
    ({"path": ..., "labels": [...]}) or an AST-style .json (with label_csv)."""
    val_source: str | None = None
    """Evaluation data; for `embedded` the held-out split is used when this is unset."""
    label_csv: str | None = None
    """AudioSet class_labels_indices.csv (index,mid,display_name) for AST-style JSON data."""
    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024
    """Fbank frames per clip (10 ms hop: 1024 = 10.24 s); shorter clips are zero-padded."""
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD
    """Fbank normalisation (x - mean) / (2 std); `percli`'s compute_fbank_stats gives yours."""
    roll_mag_aug: bool = True
    freqm: int = 0
    timem: int = 0
    """SpecAugment maximum widths (AudioSet finetuning: 48 mel bins, 192 frames)."""
    mixup: float = 0.0
    """Probability of mixing a clip with another (waveform mixup, lambda ~ Beta(10, 10))."""
    embedded_size: int = 800
    """Clips in the embedded training split (its val split has a quarter of that)."""


def audio_dataset(data: AudioDataSection, source: str, split: str, train: bool) -> Dataset:
    """Fbank dataset for `source`; augmentations only when `train`."""
    features = dict(sample_rate=data.sample_rate, num_mel_bins=data.num_mel_bins, target_length=data.target_length,
                    mean=data.mean, std=data.std, train=train)
    if train:
        features.update(freqm=data.freqm, timem=data.timem, roll_mag_aug=data.roll_mag_aug, mixup=data.mixup)
    if source == "embedded":
        size = data.embedded_size if split == "train" else max(data.embedded_size // 4, 1)
        return build_dataset(source, kind="audio", split=split, num_clips=size, **features)
    return build_dataset(source, kind="audio", label_csv=data.label_csv, **features)


def eval_audio_section(model: nn.Module, meta: dict[str, Any], source: str, label_csv: str | None,
                       embedded_size: int) -> AudioDataSection:
    """Fbank settings to evaluate `model` on: frames and mel bins fit its input; sample rate and mean/std
    are the percli checkpoint's (`meta`), else the model's defaults (16 kHz, AudioSet's)."""
    settings = {**model.preprocess, **{k: meta[k] for k in ("sample_rate", "mean", "std") if k in meta}}
    return AudioDataSection(source=source, label_csv=label_csv, embedded_size=embedded_size, **{
        k: settings[k] for k in ("sample_rate", "num_mel_bins", "target_length", "mean", "std")})


def model_kwargs(kwargs: dict[str, Any], data: AudioDataSection, where: str = "model.kwargs") -> dict[str, Any]:
    """Constructor arguments with the spectrogram size taken from the data settings (`where`: their config key)."""
    out = dict(kwargs)
    size = [data.target_length, data.num_mel_bins]
    if list(out.setdefault("img_size", size)) != size:
        raise ConfigError(f"{where}.img_size={list(out['img_size'])} differs from [data.target_length, "
                          f"data.num_mel_bins]={size}; set one to match the other")
    return out


@torch.no_grad()
def spectrogram_reconstruction_figure(model: nn.Module, x: torch.Tensor, mask_ratio: float) -> Figure:
    """Labelled rows input / masked / reconstruction (one column per clip) of fbanks `x` [N, 1, T, F], as a Figure."""
    was_training = model.training
    model.eval()
    latent, mask, ids_restore = model.forward_encoder(x, mask_ratio, generator=torch.Generator().manual_seed(0))
    pred = model.forward_decoder(latent, ids_restore)  # [N, L, p*p]
    model.train(was_training)
    target = model.patchify(x)
    if model.norm_pix_loss:
        pred = denormalize_patches(pred, target)
    removed = mask.unsqueeze(-1).bool()
    masked = model.unpatchify(torch.where(removed, torch.full_like(target, float("nan")), target))  # NaN: drawn white
    recon = model.unpatchify(torch.where(removed, pred, target))
    rows = [t[:, 0].float().cpu().numpy() for t in (x, masked, recon)]  # [N, 1, T, F] -> [N, T, F]
    return chart.spectrogram_grid(list(zip(ROWS, rows, strict=True)),
                                  f"Audio-MAE reconstructions (mask ratio {mask_ratio:g}; visible patches pasted back)",
                                  FRAME_SHIFT_S, "log-mel fbank, normalised")


def save_spectrogram_reconstructions(model: nn.Module, dataset: Dataset, n: int, mask_ratio: float, path: Path,
                                     device: torch.device | str = "cpu") -> Path | None:
    """Write the first `n` readable clips' grid (see `spectrogram_reconstruction_figure`) to `path` as a PNG."""
    x = first_samples(dataset, n, "fbank")
    if x is None:
        return None
    return chart.save_png(spectrogram_reconstruction_figure(model, x.to(device), mask_ratio), path)
