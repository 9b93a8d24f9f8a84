"""Audio-MAE pretraining ("Masked Autoencoders that Listen"): a ViT over 16x16 fbank patches sees
20% of them; a decoder (local Swin-style windows in the release) predicts the normalised rest.

Official recipe (submit_pretrain_audioset2M.sh): batch 512, blr 2e-4 (lr = blr x batch / 256),
AdamW (0.9, 0.95), wd 1e-4, 33 epochs with 3 warmup, mask ratio 0.8, norm-pix loss, decoder_mode 1,
roll + gain waveform augmentation.

Examples:
  percli pretrain audio-mae                                   # tiny preset on the embedded sounds
  percli pretrain audio-mae --preset as2m data.source=/data/audioset/train.json data.label_csv=labels.csv
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.models import create_model, load_initial_weights
from percli.recipes.audio_common import (
    AudioDataSection,
    audio_dataset,
    model_kwargs,
    save_spectrogram_reconstructions,
)
from percli.recipes.common import (
    TrainedModelSection,
    validate,  # noqa: F401  the command runs it before anything is built
)


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(
        name="audiomae_mae_vit_base_patch16", kwargs={"decoder_mode": 1, "norm_pix_loss": True}))
    data: AudioDataSection = dataclasses.field(default_factory=AudioDataSection)
    mask_ratio: float = 0.8
    mask_2d: bool = False
    """Time/frequency masking (the model's mask_t_prob / mask_f_prob) instead of unstructured."""
    recon_clips: int = 4
    """Clips in the input / masked / reconstruction spectrogram PNG written at the end (0 = none)."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=8))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=2e-4, ref_batch_size=256, weight_decay=1e-4, betas=(0.9, 0.95), warmup_fraction=3 / 33))


class AudioMAETask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.kwargs = model_kwargs(cfg.model.kwargs, cfg.data)

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.model.name, **self.kwargs)
        if not hasattr(model, "forward_decoder"):
            raise ValueError(f"model.name={self.cfg.model.name!r} is not a pretraining model; use an "
                             "audiomae_mae_* name (see `percli ls models`)")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        return model

    def model_meta(self) -> dict[str, Any]:
        d = self.cfg.data
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "audio-mae",
                "sample_rate": d.sample_rate, "num_mel_bins": d.num_mel_bins, "target_length": d.target_length,
                "mean": d.mean, "std": d.std, "mask_ratio": self.cfg.mask_ratio}

    def train_dataset(self) -> Dataset:
        return audio_dataset(self.cfg.data, self.cfg.data.source, "train", train=True)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        loss = model(batch["fbank"], mask_ratio=self.cfg.mask_ratio, mask_2d=self.cfg.mask_2d)[0]
        return {"loss": loss}

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        if self.cfg.recon_clips <= 0:
            return {}
        source = self.cfg.data.val_source or self.cfg.data.source
        dataset = audio_dataset(self.cfg.data, source, "val", train=False)
        path = save_spectrogram_reconstructions(model, dataset, self.cfg.recon_clips, self.cfg.mask_ratio,
                                                run_dir / "reconstructions.png", device=accelerator.device)
        return {"reconstructions": str(path)} if path else {}


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(AudioMAETask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
