"""percli from Python: the same models, preprocessing and runs as the command line.

```python
import percli

model, transform = percli.load("runs/finetune-hiera-X")       # a run dir, checkpoint dir or .safetensors
logits = model(transform(image).unsqueeze(0))                  # eval mode; logits (Hiera: return_probs=True)
summary = percli.train("finetune", "hiera", ["train.max_steps=20"], run_dir="runs/ft")
```

Everything here goes through what the CLI uses: `create_model` is the registry's, `create_transform`
builds the eval transform the eval jobs build from a model's preprocessing description, and `train`
runs a job through the one run path (`percli.commands.run.execute`), raising `PercliError` where the CLI
would exit non-zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from percli.commands.run import PercliError, execute

__all__ = ["PercliError", "create_model", "create_transform", "load", "train"]

# What a percli checkpoint's metadata adds to its model's own preprocessing (the recipes' model_meta: the
# normalisation and crop a run trained with; the fbank settings of an audio run).


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """A registered model (`percli ls models`), keyword arguments overriding the variant's defaults."""
    from percli.models import create_model as registry_create

    return registry_create(name, **kwargs)


@dataclass(frozen=True)
class FbankTransform:
    """Audio file or waveform [1, T] at `sample_rate` -> the normalised Kaldi fbank [1, target_length,
    num_mel_bins] an Audio-MAE takes (the eval path of the audio datasets, no augmentation)."""

    sample_rate: int
    num_mel_bins: int
    target_length: int
    mean: float
    std: float

    def __call__(self, audio: str | Path | torch.Tensor) -> torch.Tensor:
        from percli.core.data.audio import kaldi_fbank, load_audio, normalize_fbank

        wave = load_audio(audio, self.sample_rate) if isinstance(audio, str | Path) else audio
        fbank = kaldi_fbank(wave, self.sample_rate, self.num_mel_bins, self.target_length)
        return normalize_fbank(fbank, self.mean, self.std).unsqueeze(0)


def _video_eval(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    from percli.core.data import video_transform

    frames_first = video_transform(size, mean, std, train=False)

    def transform(clip: torch.Tensor) -> torch.Tensor:
        """uint8 [T, C, H, W] -> FloatTensor[C, T, size, size] (channels first, as the model takes it)."""
        return frames_first(clip).permute(1, 0, 2, 3)

    return transform


def create_transform(model_or_meta: nn.Module | Mapping[str, Any]) -> Callable[[Any], torch.Tensor]:
    """The evaluation transform a model's preprocessing describes (what `percli eval` applies).

    Args:
        model_or_meta: a model (its ``preprocess``), a ``preprocess`` mapping, or a percli checkpoint's
            metadata (``percli.core.checkpoint.read_meta``), whose mean/std/crop override the model's.

    Returns:
        Images: PIL image or uint8 [3, H, W] -> [3, H', W'] as ``ImagePreprocess`` reads the model's
        description: Hiera bicubic resize to size / 0.875 and centre crop; DINOv2 resize 256, crop 224;
        CLIP centre-crops, PE squashes. Video Hiera:
        uint8 [T, C, H, W] -> [C, T, S, S]. Audio-MAE: audio file or waveform [1, T] -> fbank [1, T', F].

    Raises:
        ValueError: the model describes no image, video or fbank input (a codec, a speech LM).
    """
    from percli.core.data.transforms import ImagePreprocess

    pre = _preprocess_of(model_or_meta)
    if "num_mel_bins" in pre:
        return FbankTransform(int(pre.get("sample_rate", 16000)), int(pre["num_mel_bins"]),
                              int(pre["target_length"]), float(pre["mean"]), float(pre["std"]))
    size = pre.get("input_size") or []
    if len(size) == 4 and "mean" in pre and "std" in pre:  # video [C, T, H, W]
        return _video_eval(int(size[-1]), pre["mean"], pre["std"])
    try:  # every image family describes its preprocessing alike (size, resize mode, crop, interpolation)
        return ImagePreprocess.of(pre).eval_transform()
    except ValueError:
        raise ValueError(f"the preprocessing {pre} describes no image, video or fbank input (image_size / "
                         "input_size, mean, std); percli.create_transform covers image, video and Audio-MAE "
                         "models") from None


def _preprocess_of(model_or_meta: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(model_or_meta, nn.Module):
        return dict(getattr(model_or_meta, "preprocess", None) or {})
    meta = dict(model_or_meta)
    if "name" not in meta:  # a preprocess mapping itself
        return meta
    # a checkpoint's metadata: the preprocessing of the model it names (built on the meta device: no
    # memory, no weights), then what the checkpoint stored, then what its run trained with
    with torch.device("meta"):
        built = create_model(meta["name"], **(meta.get("kwargs") or {}))
    stored = meta.get("preprocess") or (meta.get("model") or {}).get("preprocess") or {}
    from percli.core.data.transforms import with_trained_preprocess

    return with_trained_preprocess({**getattr(built, "preprocess", {}), **stored}, meta)


def load(path: str | Path) -> tuple[nn.Module, Callable[[Any], torch.Tensor]]:
    """The model of a percli run dir (its latest checkpoint), checkpoint dir or safetensors file, rebuilt
    from the file's metadata with its weights, in eval mode, and its eval transform.

    The model carries the checkpoint's preprocessing (``model.preprocess``) and, for classifiers,
    ``model.classes`` (the class names in output order).

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: a file without percli metadata naming its model, a damaged file (CheckpointError), or
            weights that do not fit the model the metadata describes.
    """
    from percli.core.checkpoint import read_meta, read_weights, run_weights
    from percli.core.data.transforms import with_trained_preprocess
    from percli.models import create_model_for, family_fit

    weights = run_weights(Path(path))
    meta = read_meta(weights)
    name = meta.get("name")
    if not name:
        raise ValueError(f"{weights} carries no model name in its metadata; build the model with "
                         "percli.create_model(NAME) and load the file into it")
    model = create_model_for(name, meta.get("kwargs") or {}, weights)
    report = family_fit(model, read_weights(weights)[0])
    missing = list(getattr(report, "missing", None) or [])
    if missing:
        raise ValueError(f"{weights} does not hold every weight of {name}: {len(missing)} missing "
                         f"({', '.join(missing[:4])}...); is it a checkpoint of another model?")
    if hasattr(model, "preprocess"):
        model.preprocess = with_trained_preprocess(model.preprocess, meta)
    if meta.get("classes"):
        model.classes = list(meta["classes"])
    model.eval()
    transform = create_transform(model)
    return model, transform


def train(verb: str, method: str, overrides: Sequence[str] = (), run_dir: str | Path | None = None,
          preset: str | None = None, *, config: str | Path | None = None, resume: bool = False,
          overwrite: bool = False) -> dict[str, Any]:
    """Run a job as `percli VERB METHOD [overrides]` does, and return its summary.

    Args:
        verb, method: as on the command line (`"pretrain", "hiera-mae"`, `"eval", "classify"`,
            `"curate", "metaclip run"`; `percli ls recipes` lists them).
        overrides: dotted ``key=value`` strings (``"train.max_steps=20"``).
        run_dir: where the run writes (default runs/<verb>-<method>-<UTC time>; eval jobs: a temporary
            dir, removed at the end, unless given).
        preset, config, resume, overwrite: ``--preset``, ``--config``, ``--resume``, ``--overwrite``.

    Returns:
        The summary (also the run dir's summary.json): ``status``, ``run_dir``, ``metrics`` (fractions
        where they are shares), ``counts``, and the job's own keys.

    Raises:
        PercliError: a bad config, run dir or input (``exit_code`` 2), a divergence (3) or a signal
            (128+N), with the message the CLI prints.
    """
    from percli.jobs import JOBS

    job = next((j for j in JOBS if (j.verb, j.method) == (verb, method)), None)
    if job is None:
        known = ", ".join(f"{j.verb} {j.method}".strip() for j in JOBS)
        raise PercliError(f"unknown job {f'{verb} {method}'.strip()!r}; choose from {known}")
    if isinstance(overrides, str):
        raise TypeError("overrides is a list of 'key=value' strings, e.g. ['train.max_steps=20']")
    return execute(job, overrides=list(overrides), config_file=str(config) if config else None, preset=preset,
                   run_dir=Path(run_dir) if run_dir is not None else None, resume=resume, overwrite=overwrite)
