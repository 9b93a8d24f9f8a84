"""RT60 error of generated speech, measured with a trained blind RT60 estimator.

Acoustic-matching work scores a generated clip's reverberation by a network that regresses RT60 from its
spectrogram (the "RTE" metric of Visual Acoustic Matching, Chen et al., CVPR 2022, which the stylization paper's
evaluation follows). percli trains that estimator on generated scenes alone: clips of training utterances
rendered in fresh random scenes (RT60 log-uniform over ``RANGE``, which covers the scenes'), never the held-out
scenes or utterances. It is a small conv net on the clip's log-mel regressing log RT60, trained once per
evaluation config and saved (``rt60_estimator.safetensors``), so a run's figures can be re-read later.

The signal-processing estimator (`percli.core.acoustics.blind_rt60`) is kept for audio with clean pauses; on 2 s
noisy speech it finds no free decay in about half the clips, which is why this one exists.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.core.mel import MelConfig, log_mel
from percli.tts.scenes import Scene, render

RANGE = (0.15, 1.3)


class RT60Estimator(nn.Module):
    """log-mel [B, M, T] -> RT60 in seconds [B]."""

    def __init__(self, channels: int = 32, mel_mean: float = -5.0, mel_std: float = 2.5):
        super().__init__()
        self.mel_mean, self.mel_std = mel_mean, mel_std
        layers, cin = [], 1
        for cout in (channels, channels, 2 * channels, 2 * channels):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.SiLU()]
            cin = cout
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(2 * cin, 1)

    def features(self, mel: torch.Tensor) -> torch.Tensor:
        """Mean- and max-pooled conv features [B, 2C]: an acoustic embedding (the hint-match score uses it)."""
        x = self.convs(((mel - self.mel_mean) / self.mel_std)[:, None]).flatten(2)  # [B, C, M/16 * T/16]
        return torch.cat([x.mean(-1), x.amax(-1)], dim=1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(mel))[:, 0].exp()


def random_scene(rng: np.random.Generator, index: int) -> Scene:
    low, high = RANGE
    return Scene(index=index, rt60=float(math.exp(rng.uniform(math.log(low), math.log(high)))),
                 drr_db=float(rng.uniform(-6, 6)), tilt=float(rng.uniform(0, 2)), hum_hz=float(rng.uniform(50, 400)),
                 hum_db=float(rng.uniform(-12, 6)), snr_db=float(rng.uniform(15, 35)))


def training_clips(utterances: list[torch.Tensor], count: int, samples: int, mel: MelConfig, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` log-mels of utterances rendered in fresh random scenes, and their RT60s."""
    rng = np.random.default_rng([seed, 31337])
    mels, rt60s = [], []
    for i in range(count):
        scene = random_scene(rng, 1_000_000 + seed * 100_000 + i)
        wave = render(utterances[int(rng.integers(len(utterances)))], scene, samples, mel.sample_rate, rng)
        mels.append(log_mel(wave, mel)[:, : samples // mel.hop_length])
        rt60s.append(scene.rt60)
    return torch.stack(mels), torch.tensor(rt60s)


def train_estimator(utterances: list[torch.Tensor], *, clips: int = 2000, steps: int = 1500, batch_size: int = 32,
                    clip_s: float = 2.0, mel: MelConfig = MelConfig(), seed: int = 0) -> RT60Estimator:
    """A fitted estimator (Adam 1e-3, cosine decay, L1 on log RT60); seeded, CPU-sized."""
    torch.manual_seed(seed)
    x, y = training_clips(utterances, clips, round(clip_s * mel.sample_rate), mel, seed)
    model = RT60Estimator()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=generator)
        loss = F.l1_loss(model(x[idx]).log(), y[idx].log())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def estimate(model: RT60Estimator, mels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([model(mels[i:i + batch_size]) for i in range(0, len(mels), batch_size)])


def save(model: RT60Estimator, path: Path) -> None:
    from percli.core.checkpoint import save_weights

    save_weights(path, model.state_dict(), {"task": "rt60-estimator"})


def load(path: Path) -> RT60Estimator:
    from percli.core.checkpoint import load_tensors

    model = RT60Estimator()
    model.load_state_dict(load_tensors(path))
    return model.eval()
