"""Self-supervised audio-visual soundscape stylization (Li, Wang, Huang, Owens, Anumanchipalli, ECCV 2024).

No official code is public; the shapes below are percli's reading of the paper, each choice an option:

* :class:`MelVAE`: a ResNet-style convolutional VAE on log-mel spectrograms (``percli.core.mel``), 4x down in time
  and frequency to ``z_channels`` latent maps (AudioLDM's layout), trained with L1 reconstruction + ``kl_weight``
  KL. Log-mels are standardised with ``mel_mean`` / ``mel_std`` before it.
* :class:`SoundscapeLDM`: latent diffusion over the target's VAE latent. The denoiser is a Transformer over
  latent time frames (each frame's ``z_channels x mel/4`` values one token) whose input is the noisy latent
  concatenated with the enhanced-speech latent; each block self-attends, cross-attends to the hint tokens and
  applies an MLP (DiffMAE's ``cross_self`` block), with the diffusion step added to every token. Hint tokens:
  the hint audio (its log-mel through a small conv tower, ``audio_hint="mel"``, or a frozen tower's embedding
  such as CLAP / Audio-MAE, ``audio_hint="embedding"``) and the hint picture (a small conv tower,
  ``image_hint="pixels"``, a frozen CLIP / PE embedding, ``"embedding"``, or ``"none"``). Classifier-free
  guidance: the whole hint is replaced by learned null tokens with probability ``p_uncond`` in training.
  The VAE rides along frozen, so a checkpoint is self-contained.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.core import diffusion
from percli.models import register_loader, register_model
from percli.models.audio_mae import xavier_init
from percli.models.common import LoadReport, load_percli_state, plain, read_state
from percli.models.diffmae import DecoderBlock, timestep_embedding

HINTS_AUDIO = ("mel", "embedding")
HINTS_IMAGE = ("pixels", "embedding", "none")


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class MelVAE(nn.Module):
    """log-mel [B, M, T] <-> latent [B, z, M/4, T/4]; ``forward`` returns (loss, parts)."""

    def __init__(self, n_mels: int = 64, channels: int = 64, z_channels: int = 8, kl_weight: float = 1e-4,
                 mel_mean: float = -5.0, mel_std: float = 2.5):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = "soundscape_vae"
        if n_mels % 4:
            raise ValueError(f"n_mels={n_mels}: the VAE halves the mel axis twice; give a multiple of 4")
        c = channels
        self.encoder = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), ResBlock(c, c),
                                     nn.Conv2d(c, c, 3, stride=2, padding=1), ResBlock(c, 2 * c),
                                     nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), ResBlock(2 * c, 2 * c),
                                     nn.GroupNorm(8, 2 * c), nn.SiLU(), nn.Conv2d(2 * c, 2 * z_channels, 3, padding=1))
        self.decoder = nn.Sequential(nn.Conv2d(z_channels, 2 * c, 3, padding=1), ResBlock(2 * c, 2 * c),
                                     nn.Upsample(scale_factor=2.0), nn.Conv2d(2 * c, 2 * c, 3, padding=1),
                                     ResBlock(2 * c, c), nn.Upsample(scale_factor=2.0), nn.Conv2d(c, c, 3, padding=1),
                                     ResBlock(c, c), nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))

    def checkpoint_meta(self) -> dict:
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config)}

    def _crop(self, mel: torch.Tensor) -> torch.Tensor:
        frames = mel.shape[-1] - mel.shape[-1] % 4
        if frames == 0:
            raise ValueError(f"a log-mel of {mel.shape[-1]} frames is too short for the VAE (needs 4)")
        return mel[..., :frames]

    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of the posterior; frames are cut to a multiple of 4."""
        x = (self._crop(mel) - self.config["mel_mean"]) / self.config["mel_std"]
        mean, logvar = self.encoder(x[:, None]).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)[:, 0] * self.config["mel_std"] + self.config["mel_mean"]

    def forward(self, mel: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean, logvar = self.encode(mel)
        noise = torch.randn(mean.shape, generator=generator, device=generator.device if generator else mean.device)
        z = mean + (0.5 * logvar).exp() * noise.to(mean.device)
        rec = self.decode(z)
        l1 = (rec - self._crop(mel)).abs().mean() / self.config["mel_std"]
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()
        return l1 + self.config["kl_weight"] * kl, {"l1": l1.detach(), "kl": kl.detach()}


class MelTower(nn.Module):
    """A hint's log-mel -> ``tokens`` tokens: three stride-2 convs, mel axis folded in, time pooled."""

    def __init__(self, n_mels: int, width: int, tokens: int, channels: int = 32):
        super().__init__()
        c = channels
        self.convs = nn.Sequential(nn.Conv2d(1, c, 3, 2, 1), nn.SiLU(), nn.Conv2d(c, c, 3, 2, 1), nn.SiLU(),
                                   nn.Conv2d(c, c, 3, 2, 1), nn.SiLU())
        self.pool = nn.AdaptiveAvgPool1d(tokens)
        self.proj = nn.Linear(c * ((n_mels + 7) // 8), width)

    def forward(self, mel: torch.Tensor, mean: float, std: float) -> torch.Tensor:
        x = self.convs(((mel - mean) / std)[:, None])  # [B, c, M/8, T/8]
        x = self.pool(x.flatten(1, 2))  # [B, c*M/8, tokens]
        return self.proj(x.transpose(1, 2))


class PixelTower(nn.Module):
    """The hint picture [B, 3, S, S] in [0, 1] -> a 4x4 grid of tokens."""

    def __init__(self, width: int, channels: int = 32):
        super().__init__()
        c = channels
        self.convs = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.SiLU(), nn.Conv2d(c, c, 3, 2, 1), nn.SiLU(),
                                   nn.Conv2d(c, c, 3, 2, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(4))
        self.proj = nn.Linear(c, width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(image * 2 - 1).flatten(2).transpose(1, 2))  # [B, 16, width]


class SoundscapeLDM(nn.Module):
    """Calling conventions: ``model(target, speech, hint)`` -> (loss, parts) on log-mels [B, M, T] with
    ``hint`` a dict (``mel`` and/or ``audio_embedding``, ``image`` or ``image_embedding``);
    ``model.stylize(speech, hint, ...)`` -> log-mels [B, M, T'] of the speech rendered in the hint's scene."""

    def __init__(self, vae: Mapping[str, Any] | None = None, width: int = 256, depth: int = 6, num_heads: int = 4,
                 mlp_ratio: float = 4.0, audio_hint: str = "mel", audio_tokens: int = 8, audio_embed_dim: int = 512,
                 image_hint: str = "pixels", image_embed_dim: int = 512, p_uncond: float = 0.1,
                 max_frames: int = 256, schedule: str = "linear", num_timesteps: int = 1000,
                 schedule_opts: Mapping[str, float] | None = None, prediction: str = "eps"):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) if k != "vae" else dict(v or {}) for k, v in args.items()
                       if k not in ("self", "__class__")}
        self.arch = "soundscape_ldm"
        if audio_hint not in HINTS_AUDIO or image_hint not in HINTS_IMAGE:
            raise ValueError(f"audio_hint={audio_hint!r} / image_hint={image_hint!r}: choose audio_hint from "
                             f"{HINTS_AUDIO} and image_hint from {HINTS_IMAGE}")
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"prediction={prediction!r}: choose eps, x0 or v")
        self.vae = MelVAE(**(vae or {}))
        self.vae.requires_grad_(False)
        z, m = self.vae.config["z_channels"], self.vae.config["n_mels"] // 4
        self.token_dim = z * m
        self.register_buffer("latent_scale", torch.ones(()))
        self.input_proj = nn.Linear(2 * self.token_dim, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_frames, width))
        self.time_embed = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.audio_tower = (MelTower(self.vae.config["n_mels"], width, audio_tokens) if audio_hint == "mel"
                            else nn.Linear(audio_embed_dim, width))
        self.image_tower = {"pixels": lambda: PixelTower(width), "embedding": lambda: nn.Linear(image_embed_dim, width),
                            "none": nn.Identity}[image_hint]()
        n_hint = (audio_tokens if audio_hint == "mel" else 1) + {"pixels": 16, "embedding": 1, "none": 0}[image_hint]
        self.hint_type = nn.Parameter(torch.zeros(1, n_hint, width))
        self.null_hint = nn.Parameter(torch.zeros(1, n_hint, width))
        self.blocks = nn.ModuleList(DecoderBlock(width, num_heads, "cross_self", mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, self.token_dim)
        self._schedules = diffusion.ScheduleCache(schedule, num_timesteps, schedule_opts)
        for module in (self.input_proj, self.time_embed, self.blocks, self.out):
            module.apply(xavier_init)  # LayerNorms are at (1, 0) already
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.hint_type, std=0.02)
        nn.init.trunc_normal_(self.null_hint, std=0.02)

    def checkpoint_meta(self) -> dict:
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config)}

    def noise_schedule(self, device: torch.device) -> diffusion.NoiseSchedule:
        return self._schedules.on(device)

    # ------------------------------------------------------------------ latents <-> tokens

    def latent(self, mel: torch.Tensor) -> torch.Tensor:
        """Scaled posterior mean as tokens [B, T/4, z * M/4] (deterministic: the mean, not a draw)."""
        with torch.no_grad():
            mean, _ = self.vae.encode(mel)
        return mean.flatten(1, 2).transpose(1, 2) * self.latent_scale

    def mel_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        z = self.vae.config["z_channels"]
        latent = (tokens / self.latent_scale).transpose(1, 2).unflatten(1, (z, -1))  # [B, z, M/4, T/4]
        with torch.no_grad():
            return self.vae.decode(latent)

    def hint_tokens(self, hint: Mapping[str, torch.Tensor]) -> torch.Tensor:
        vae = self.vae.config
        audio_hint, image_hint = self.config["audio_hint"], self.config["image_hint"]
        parts = [self.audio_tower(hint["mel"], vae["mel_mean"], vae["mel_std"]) if audio_hint == "mel"
                 else self.audio_tower(hint["audio_embedding"])[:, None]]
        if image_hint == "pixels":
            parts.append(self.image_tower(hint["image"]))
        elif image_hint == "embedding":
            parts.append(self.image_tower(hint["image_embedding"])[:, None])
        return torch.cat(parts, dim=1) + self.hint_type

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, speech: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        n = x_t.shape[1]
        if n > self.pos_embed.shape[1]:
            raise ValueError(f"{n} latent frames exceed max_frames={self.pos_embed.shape[1]} (about "
                             f"{self.pos_embed.shape[1] * 4} mel frames); build the model with a larger max_frames")
        x = self.input_proj(torch.cat([x_t, speech], dim=-1)) + self.pos_embed[:, :n]
        x = x + self.time_embed(timestep_embedding(t, x.shape[-1]))[:, None]
        for block in self.blocks:
            x = block(x, hint)
        return self.out(self.norm(x))

    # ------------------------------------------------------------------ training and sampling

    def forward(self, target: torch.Tensor, speech: torch.Tensor, hint: Mapping[str, torch.Tensor],
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, cond = self.latent(target), self.latent(speech)
        hint_tokens, dropped = diffusion.drop_condition(self.hint_tokens(hint), self.config["p_uncond"],
                                                        generator, null=self.null_hint[0])
        schedule = self.noise_schedule(x0.device)
        device = generator.device if generator is not None else x0.device
        t = torch.randint(0, schedule.num_steps, (x0.shape[0],), generator=generator, device=device).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=device).to(x0.device)
        x_t = diffusion.q_sample(x0, t, noise, schedule)
        out = self.denoise(x_t, t, cond, hint_tokens)
        target_out = diffusion.training_target(x0, noise, t, schedule, self.config["prediction"])
        loss = F.mse_loss(out, target_out)
        return loss, {"dropped": dropped.float().mean()}

    @torch.no_grad()
    def stylize(self, speech: torch.Tensor, hint: Mapping[str, torch.Tensor] | None, *, steps: int = 50,
                guidance_scale: float = 3.0, eta: float = 0.0, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """Log-mels of ``speech`` (log-mels [B, M, T]) rendered in the scene of ``hint``; ``hint=None`` gives
        the null hint (the hint-zeroed model). DDIM with classifier-free guidance."""
        cond = self.latent(speech)
        null = self.null_hint.expand(cond.shape[0], -1, -1)
        hint_tokens = null if hint is None else self.hint_tokens(hint)
        schedule = self.noise_schedule(cond.device)
        scale = guidance_scale if hint is not None else 1.0
        tokens = diffusion.sample(lambda x, t: self.denoise(x, t, cond, hint_tokens), tuple(cond.shape), schedule,
                                  steps=steps, eta=eta, generator=generator,
                                  parameterization=self.config["prediction"], guidance_scale=scale,
                                  uncond_fn=lambda x, t: self.denoise(x, t, cond, null), device=cond.device)
        return self.mel_from_tokens(tokens)


def load_state(model: nn.Module, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A percli soundscape VAE / LDM state (no official release). An LDM also takes a VAE checkpoint: only its
    ``vae.`` weights are set (the stage-2 start)."""
    state = read_state(state_or_path)
    if isinstance(model, SoundscapeLDM) and not any(k.startswith("vae.") for k in state):
        report = load_percli_state(model.vae, state, "soundscape VAE")
        report.missing = sorted(k for k in model.state_dict() if not k.startswith("vae."))
        return report
    return load_percli_state(model, state, "soundscape")


register_loader(__name__)(load_state)


@register_model
def soundscape_vae(**kwargs) -> MelVAE:
    return MelVAE(**kwargs)


@register_model
def soundscape_ldm(**kwargs) -> SoundscapeLDM:
    return SoundscapeLDM(**kwargs)


@register_model
def soundscape_ldm_tiny(**kwargs) -> SoundscapeLDM:
    model = SoundscapeLDM(**{"vae": {"channels": 16}, "width": 192, "depth": 4, "num_heads": 4, **kwargs})
    model.arch = "soundscape_ldm_tiny"
    return model
