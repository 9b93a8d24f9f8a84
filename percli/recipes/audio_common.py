"""Config section, datasets and the spectrogram reconstruction plot shared by the Audio-MAE recipes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from percli.core import chart
from percli.core.config import ConfigError
from percli.core.data import AUDIOSET_MEAN, AUDIOSET_STD, build_dataset
from percli.core.data.audio_layouts import ESC50_CSV, SPEECH_COMMANDS_LISTS, esc50_csv, esc50_folds, is_speech_commands
from percli.recipes.reconstruction import ROWS, denormalize_patches, first_samples

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FRAME_SHIFT_S = 0.010  # the fbank's frame shift (Kaldi fbank, 10 ms): frame k starts at k * 10 ms


@dataclasses.dataclass
class AudioDataSection:
    source: str = "embedded"
    """`embedded` (built-in synthesised sounds), a folder of class sub-folders, a .jsonl manifest
    ({"path": ..., "labels": [...]}), an AST-style .json (with label_csv), or the official tree of ESC-50
    (the folder holding meta/esc50.csv and audio/) or Speech Commands (word folders, validation_list.txt,
    testing_list.txt)."""
    val_source: str | None = None
    """Evaluation data; when unset, `embedded` evaluates on its held-out split, ESC-50 on data.fold and Speech
    Commands on data.eval_split."""
    fold: int | None = None
    """ESC-50: the held-out fold (1-5). Training reads the other four folds, evaluation this one; 5-fold
    cross-validation is one run per fold and the mean of their top-1. null = every fold (no held-out clips)."""
    eval_split: Literal["validation", "testing"] = "validation"
    """Speech Commands: the list evaluation reads (validation_list.txt or testing_list.txt); training reads
    every clip in neither list, from the word folders (SPC-2's 35 classes; _background_noise_ is none)."""
    keywords: list[str] = dataclasses.field(default_factory=list)
    """Speech Commands as keyword spotting (SPC-1, `--preset spc1`): these words are classes, with `_silence_`
    (1 s windows of _background_noise_) and `_unknown_` (the other words), each about a tenth of a split, drawn
    with a fixed seed. Empty = every word folder is a class (SPC-2)."""
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
    """Fbank dataset for the `split` ("train" or "val") of `source`; augmentations only when `train`."""
    features = dict(sample_rate=data.sample_rate, num_mel_bins=data.num_mel_bins, target_length=data.target_length,
                    mean=data.mean, std=data.std, train=train)
    if train:
        features.update(freqm=data.freqm, timem=data.timem, roll_mag_aug=data.roll_mag_aug, mixup=data.mixup)
    if source == "embedded":
        size = data.embedded_size if split == "train" else max(data.embedded_size // 4, 1)
        return build_dataset(source, kind="audio", split=split, num_clips=size, **features)
    return build_dataset(source, kind="audio", label_csv=data.label_csv, fold=data.fold, keywords=data.keywords,
                         split="train" if split == "train" else data.eval_split, **features)


def eval_source(data: AudioDataSection) -> str | None:
    """The evaluation data: data.val_source, else data.source when it holds clips of its own to evaluate on
    (the embedded val split, ESC-50's data.fold, Speech Commands' data.eval_split list); None when there is none."""
    if data.val_source:
        return data.val_source
    own = data.source == "embedded" or (data.fold is not None and esc50_csv(data.source)) \
        or is_speech_commands(data.source)
    return data.source if own else None


def check_layout(data: AudioDataSection) -> None:
    """ConfigError naming the key when data.fold or data.eval_split does not fit the data (checked by dry runs)."""
    if data.fold is not None:
        meta = esc50_csv(data.source)
        if meta is None:
            raise ConfigError(f"data.fold: data.source={data.source} has no {ESC50_CSV.as_posix()}; data.fold picks "
                              "an ESC-50 fold: give the ESC-50 root (ESC-50-master, holding meta/ and audio/) as "
                              "data.source, or set data.fold=null")
        folds = esc50_folds(meta)
        if data.fold not in folds:
            raise ConfigError(f"data.fold: {data.fold} is not a fold of {meta}; its folds are "
                              f"{', '.join(map(str, folds))}")
    if data.keywords:
        if not is_speech_commands(data.source):
            raise ConfigError(f"data.keywords: data.source={data.source} is not a Speech Commands tree (word folders "
                              "and validation_list.txt / testing_list.txt); keyword spotting relabels one: give its "
                              "root, or set data.keywords=[]")
        root = Path(data.source).expanduser()
        missing = [word for word in data.keywords if not (root / word).is_dir()]
        if missing:
            words = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
            raise ConfigError(f"data.keywords: {', '.join(missing)} not word folder(s) of {root}; its words are "
                              f"{', '.join(words)}")
    source = eval_source(data)
    if source and is_speech_commands(source):
        listed = Path(source).expanduser() / SPEECH_COMMANDS_LISTS[data.eval_split]
        if not listed.is_file():
            raise ConfigError(f"data.eval_split: {listed} does not exist; set data.eval_split to the list this "
                              f"Speech Commands tree has ({', '.join(SPEECH_COMMANDS_LISTS)})")


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
