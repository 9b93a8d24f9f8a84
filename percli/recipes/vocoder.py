"""`percli pretrain vocoder`: a HiFi-GAN generator (`percli.models.hifigan`) for the soundscape log-mels.

Trained on recordings of the generated scenes (the embedded speech, or a clean-speech manifest, recorded in the
training scenes: reverberation and noise beds included, as the stylized outputs hold them), random
``segment_s`` crops, with the GAN-free loss of `percli.models.hifigan.vocoder_loss` (45 x mel L1 + multi-resolution
STFT). The held-out loss is the mel L1 on held-out scenes; at the end it is compared with Griffin-Lim on the same
held-out clips (``griffin_lim_mel_l1``). `percli tts stylize --vocoder RUN` and `percli eval stylize --vocoder RUN`
use the run; without one they fall back to Griffin-Lim.

Examples:
  percli pretrain vocoder                                   # tiny generator, CPU
  percli pretrain vocoder --preset v1 data.source=/data/speech/manifest.jsonl   # HiFi-GAN V1 widths, 16 kHz
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.mel import MelConfig, griffin_lim, log_mel
from percli.models import create_model, load_initial_weights
from percli.models.hifigan import mel_l1_loss, vocoder_loss
from percli.recipes.common import TrainedModelSection
from percli.recipes.common import validate as validate_model
from percli.recipes.soundscape import SceneData, SceneDataSection, prepare_scenes
from percli.tts import scenes


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="hifigan_16k_v1"))
    data: SceneDataSection = dataclasses.field(default_factory=SceneDataSection)
    segment_s: float = 0.5
    """Training crop length in seconds."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(max_steps=200000, batch_size=16))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=2e-4, ref_batch_size=16, weight_decay=0.01, betas=(0.8, 0.99), warmup_fraction=0.0))


class Recordings(Dataset):
    """Seeded crops of utterances recorded in a split's scenes: ``wave`` [segment samples]."""

    def __init__(self, split: scenes.SceneSplit, size: int, segment: int, mel: MelConfig, seed: int):
        self.split, self.size, self.segment, self.mel, self.seed = split, size, segment, mel, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, index, 49979687])
        scene = self.split.scenes[int(rng.integers(len(self.split.scenes)))]
        dry = self.split.utterances[int(rng.integers(len(self.split.utterances)))]
        wave = scenes.render(dry, scene, dry.numel(), self.mel.sample_rate, rng)
        start = int(rng.integers(0, max(1, wave.numel() - self.segment)))
        return {"wave": scenes.fit_length(wave[start:], self.segment)}


class VocoderTask:
    def __init__(self, cfg: Config, scene_data: SceneData):
        self.cfg, self.scene_data = cfg, scene_data
        self.segment = round(cfg.segment_s * scene_data.mel.sample_rate) // scene_data.mel.hop_length \
            * scene_data.mel.hop_length

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.model.name, **self.cfg.model.kwargs)
        mel = self.scene_data.mel
        if model.config["num_mels"] != mel.n_mels or model.config["hop_length"] != mel.hop_length:
            raise ConfigError(f"model.name={self.cfg.model.name}: {model.config['num_mels']} mels, hop "
                              f"{model.config['hop_length']}; the soundscape mels have {mel.n_mels}, hop "
                              f"{mel.hop_length}: use a hifigan_16k_* variant")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        return model

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.cfg.model.name, "kwargs": dict(self.cfg.model.kwargs), "task": "vocoder",
                "mel": dataclasses.asdict(self.scene_data.mel)}

    def _data(self, split: str, size: int) -> Dataset:
        return Recordings(self.scene_data.splits[split], size, self.segment, self.scene_data.mel,
                          self.cfg.data.seed + (1 if split == "val" else 0))

    def train_dataset(self) -> Dataset:
        return self._data("train", self.cfg.data.train_items)

    def eval_dataset(self) -> Dataset:
        return self._data("val", self.cfg.data.val_items)

    def _mel(self, wave: torch.Tensor) -> torch.Tensor:
        return log_mel(wave, self.scene_data.mel)[..., : wave.shape[-1] // self.scene_data.mel.hop_length]

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        wave = batch["wave"]
        return vocoder_loss(model(self._mel(wave)), wave, self.scene_data.mel)

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        wave = batch["wave"]
        with torch.no_grad():
            l1 = mel_l1_loss(model(self._mel(wave)), wave, self.scene_data.mel)
        return {"mel_l1_sum": float(l1) * len(wave), "count": float(len(wave))}

    def eval_reduce(self, sums: dict[str, float]) -> dict[str, float]:
        return {"mel_l1": sums.get("mel_l1_sum", 0.0) / max(sums.get("count", 0.0), 1.0)}

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        data = self.eval_dataset()
        waves = torch.stack([data[i]["wave"] for i in range(min(len(data), 32))])
        mels = self._mel(waves)
        with torch.no_grad():
            trained = float(mel_l1_loss(model(mels.to(accelerator.device)).float().cpu(), waves,
                                        self.scene_data.mel))
        gl = float(mel_l1_loss(griffin_lim(mels, self.scene_data.mel, generator=torch.Generator().manual_seed(0)),
                               waves, self.scene_data.mel))
        return {"heldout_mel_l1": trained, "griffin_lim_mel_l1": gl, "clips": len(waves)}


def validate(cfg: Config) -> None:
    validate_model(cfg)
    if cfg.segment_s * MelConfig().sample_rate < 4 * MelConfig().hop_length:
        raise ConfigError(f"segment_s={cfg.segment_s}: give at least 0.04 s")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    scene_data = prepare_scenes(cfg.data, ctx.run_dir, ctx.accelerator)
    return engine.train(VocoderTask(cfg, scene_data), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator,
                        resume=ctx.resume)
