"""Gaussian diffusion core: noise schedules, forward noising, x0/eps/v conversions and samplers.

One implementation serves DiffMAE masked-diffusion pretraining and inpainting (Wei et al., ICCV 2023) and
the latent-diffusion soundscape stylizer. Conventions follow DDPM (Ho et al. 2020) and improved DDPM
(Nichol & Dhariwal 2021): timesteps are integers t in [0, T); index t holds the state after t + 1 noising
steps, with abar_t = ``alphas_cumprod[t]`` and x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. Timestep
tensors are int64 [B]; the coefficients they select broadcast over any trailing shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

PARAMETERIZATIONS = ("x0", "eps", "v")
SAMPLERS = ("ddim", "ddpm")
# Options each schedule accepts, with their defaults.
SCHEDULE_OPTIONS: dict[str, dict[str, float]] = {"linear": {}, "cosine": {"s": 0.008},
                                                 "diffmae": {"s": 0.008, "rho": 0.8}}

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{option}={value!r} is not valid; choose one of: {', '.join(choices)}")


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Per-timestep diffusion coefficients, computed in float64 and stored as float32 [T] tensors.

    Attributes:
        betas: per-step noise variance beta_t.
        alphas_cumprod: abar_t = prod_{s <= t} (1 - beta_s), strictly decreasing in (0, 1].
        alphas_cumprod_prev: abar_{t-1}, with abar_{-1} = 1 standing for the clean data.
        posterior_variance: variance of q(x_{t-1} | x_t, x0), DDPM's "fixed small" reverse variance.
        posterior_mean_x0: weight of x0 in the mean of q(x_{t-1} | x_t, x0).
        posterior_mean_xt: weight of x_t in that mean.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_mean_x0: torch.Tensor
    posterior_mean_xt: torch.Tensor

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> NoiseSchedule:
        """Derives every coefficient from a [T] tensor of betas in (0, 1)."""
        betas = betas.double()
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
        abar = torch.cumprod(1 - betas, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        fields = {
            "betas": betas, "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev,
            "posterior_variance": betas * (1 - abar_prev) / (1 - abar),
            "posterior_mean_x0": betas * abar_prev.sqrt() / (1 - abar),
            "posterior_mean_xt": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar),
        }
        return cls(**{name: value.float() for name, value in fields.items()})


def _cosine_alphas_cumprod(num_steps: int, s: float) -> torch.Tensor:
    """abar(u) = f(u) / f(0) with f(u) = cos^2((u + s) / (1 + s) * pi / 2), at u = t / T for t = 0..T."""
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


def check_schedule(name: str, num_steps: int, opts: dict[str, float]) -> None:
    """Raise ValueError naming what is wrong with a schedule's name, length or options (builds nothing)."""
    _check_choice("schedule", name, tuple(SCHEDULE_OPTIONS))
    unknown = sorted(set(opts) - set(SCHEDULE_OPTIONS[name]))
    if unknown:
        valid = ", ".join(SCHEDULE_OPTIONS[name]) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for schedule {name!r}; valid options: {valid}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")


def make_schedule(name: str, num_steps: int = 1000, **opts: float) -> NoiseSchedule:
    """Builds a named noise schedule.

    - ``linear``: DDPM's betas from 1e-4 to 0.02, both scaled by 1000 / num_steps (improved DDPM's
      ``get_named_beta_schedule``) so any length covers the same noise range; needs num_steps > 20.
    - ``cosine``: abar(u) = f(u) / f(0), f(u) = cos^2((u + s) / (1 + s) * pi / 2) at u = t / T, offset ``s``
      (default 0.008); beta_t = 1 - abar((t + 1) / T) / abar(t / T), clipped at 0.999.
    - ``diffmae``: the cosine schedule with its noise standard deviation raised to the power ``rho``,
      sqrt(1 - abar'_t) = sqrt(1 - abar_t)^rho, i.e. 1 - abar'_t = (1 - abar_t)^rho, kept variance
      preserving. rho < 1 adds noise at every step (DiffMAE trains its decoder on noisier inputs);
      rho = 1 is exactly ``cosine``. CAUTION: the DiffMAE paper text (Wei et al. 2023, arXiv 2304.03283)
      could not be consulted when this was written, so both this form and the default rho = 0.8 are a
      best reading, not a verified transcription; check them against the paper before relying on them.

    Args:
        name: one of ``linear``, ``cosine``, ``diffmae``.
        num_steps: number of diffusion steps T.
        **opts: schedule options: ``s`` (cosine, diffmae) and ``rho`` (diffmae).
    """
    check_schedule(name, num_steps, opts)
    opts = {**SCHEDULE_OPTIONS[name], **opts}
    if name == "linear":
        scale = 1000 / num_steps
        if scale * 0.02 >= 1:
            raise ValueError(f"num_steps={num_steps} is too few for the linear schedule (needs > 20)")
        return NoiseSchedule.from_betas(torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64))
    if opts["s"] < 0:
        raise ValueError(f"s must be >= 0, got {opts['s']}")
    abar = _cosine_alphas_cumprod(num_steps, opts["s"])
    if name == "diffmae":
        if opts["rho"] <= 0:
            raise ValueError(f"rho must be > 0, got {opts['rho']}")
        abar = 1 - (1 - abar) ** opts["rho"]
    # abar(1) is ~0, which would make the last beta 1 (an undefined posterior): clip as Nichol & Dhariwal do.
    return NoiseSchedule.from_betas((1 - abar[1:] / abar[:-1]).clamp(max=0.999))


class ScheduleCache:
    """A model's schedule, built from (name, steps, options) and kept per device on first use: derived tensors,
    not weights, so they stay out of the state dict and a model builds on the meta device."""

    def __init__(self, name: str, num_steps: int, opts: dict[str, float] | None = None):
        self.args = (name, num_steps, dict(opts or {}))
        check_schedule(*self.args)
        self._by_device: dict[torch.device, NoiseSchedule] = {}

    def on(self, device: torch.device) -> NoiseSchedule:
        if device not in self._by_device:
            schedule = make_schedule(self.args[0], self.args[1], **self.args[2])
            self._by_device[device] = NoiseSchedule(
                **{f: getattr(schedule, f).to(device) for f in schedule.__dataclass_fields__})
        return self._by_device[device]


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] on like's device and dtype, shaped to broadcast over like's trailing dims."""
    picked = values.to(device=like.device, dtype=like.dtype)[t.to(like.device)]
    return picked.reshape(t.shape[0], *([1] * (like.ndim - 1)))  # [B] -> [B, 1, ..., 1]


def _signal_noise(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    abar = _at(schedule.alphas_cumprod, t, like)
    return abar.sqrt(), (1 - abar).sqrt()


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Samples q(x_t | x0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

    Args:
        x0: [B, ...] clean data.
        t: [B] int64 timesteps.
        noise: standard Gaussian noise shaped like x0.
        schedule: the noise schedule.
    """
    signal, sigma = _signal_noise(schedule, t, x0)
    return signal * x0 + sigma * noise


def training_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
                    parameterization: str) -> torch.Tensor:
    """What the model should output for x_t = q_sample(x0, t, noise) under a parameterization.

    ``v`` is Salimans & Ho's velocity, sqrt(abar_t) noise - sqrt(1 - abar_t) x0.
    """
    _check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    if parameterization == "x0":
        return x0
    if parameterization == "eps":
        return noise
    signal, sigma = _signal_noise(schedule, t, x0)
    return signal * noise - sigma * x0


def predict_x0(model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
               parameterization: str) -> torch.Tensor:
    """The clean-data estimate implied by a model output at (x_t, t)."""
    _check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    if parameterization == "x0":
        return model_out
    signal, sigma = _signal_noise(schedule, t, x_t)
    if parameterization == "eps":
        return (x_t - sigma * model_out) / signal
    return signal * x_t - sigma * model_out


def predict_eps(model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
                parameterization: str) -> torch.Tensor:
    """The noise estimate implied by a model output at (x_t, t)."""
    _check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    if parameterization == "eps":
        return model_out
    signal, sigma = _signal_noise(schedule, t, x_t)
    if parameterization == "x0":
        return (x_t - signal * model_out) / sigma
    return sigma * x_t + signal * model_out


def q_posterior(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance (broadcastable [B, 1, ...]) of the Gaussian q(x_{t-1} | x_t, x0)."""
    mean = _at(schedule.posterior_mean_x0, t, x_t) * x0 + _at(schedule.posterior_mean_xt, t, x_t) * x_t
    return mean, _at(schedule.posterior_variance, t, x_t)


def _randn(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device | str,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (a CPU generator may drive CUDA sampling), then moved."""
    drawn_on = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=drawn_on, dtype=dtype).to(device)


def _clip(x0: torch.Tensor, clip_x0: float | None) -> torch.Tensor:
    return x0 if clip_x0 is None else x0.clamp(-clip_x0, clip_x0)


def ddpm_step(model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, *,
              parameterization: str = "x0", clip_x0: float | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1}: a draw from q(x_{t-1} | x_t, x0_hat) with the fixed-small variance.

    Args:
        model_out: the model's output at (x_t, t).
        x_t: [B, ...] current state.
        t: [B] int64 timesteps.
        schedule: the noise schedule.
        parameterization: what model_out predicts: ``x0``, ``eps`` or ``v``.
        clip_x0: clamp x0_hat to [-clip_x0, clip_x0] (data range), or None.
        generator: source of the step's noise.
    """
    x0 = _clip(predict_x0(model_out, x_t, t, schedule, parameterization), clip_x0)
    mean, variance = q_posterior(x0, x_t, t, schedule)
    noise = _randn(x_t.shape, generator, x_t.device, x_t.dtype)
    # The posterior variance at t = 0 is exactly 0 (abar_{-1} = 1), so the last step returns the mean.
    return mean + variance.sqrt() * noise


def _ddim_step(x0: torch.Tensor, eps: torch.Tensor, abar: float, abar_prev: float, eta: float,
               generator: torch.Generator | None) -> torch.Tensor:
    """Song et al.'s update from abar to abar_prev; eta = 0 is deterministic, eta = 1 matches DDPM's variance."""
    sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
    if sigma > 0:
        x_prev = x_prev + sigma * _randn(x0.shape, generator, x0.device, x0.dtype)
    return x_prev


def _sampling_timesteps(num_steps: int, steps: int | None, sampler: str) -> list[int]:
    if sampler == "ddpm":
        if steps not in (None, num_steps):
            raise ValueError(f"steps={steps}: the ddpm sampler runs all {num_steps} schedule steps; "
                             "use sampler='ddim' to take fewer")
        return list(range(num_steps - 1, -1, -1))
    steps = num_steps if steps is None else steps
    if not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be in [1, {num_steps}], got {steps}")
    # Spacing >= 1 keeps the rounded timesteps distinct; the first is always T - 1.
    return torch.linspace(num_steps - 1, 0, steps, dtype=torch.float64).round().long().tolist()


def sample(denoise_fn: DenoiseFn, shape: tuple[int, ...], schedule: NoiseSchedule, *, steps: int | None = None,
           sampler: str = "ddim", eta: float = 0.0, generator: torch.Generator | None = None,
           parameterization: str = "x0", clip_x0: float | None = None, guidance_scale: float = 1.0,
           uncond_fn: DenoiseFn | None = None, x_T: torch.Tensor | None = None,
           known: tuple[torch.Tensor, torch.Tensor] | None = None,
           device: torch.device | str | None = None) -> torch.Tensor:
    """Runs the reverse process from Gaussian noise to a sample.

    With ``known`` the sampler inpaints (RePaint-style replacement, without RePaint's resampling jumps):
    before each model call the known entries of x_t are overwritten with the known values noised to
    level t by q_sample, and the returned sample holds the known values exactly.

    Args:
        denoise_fn: the conditional model, called as denoise_fn(x_t, t) with t a [B] int64 tensor.
        shape: [B, ...] shape of the sample.
        schedule: the noise schedule the model was trained with.
        steps: DDIM steps, evenly spaced over the schedule (default: all). DDPM always runs all.
        sampler: ``ddim`` (Song et al.) or ``ddpm`` (ancestral sampling).
        eta: DDIM stochasticity; 0 makes the sample a deterministic function of the start noise.
        generator: the only source of randomness (start noise, step noise, noised known values).
        parameterization: what the model predicts: ``x0``, ``eps`` or ``v``.
        clip_x0: clamp each x0 estimate to [-clip_x0, clip_x0], or None.
        guidance_scale: classifier-free guidance s; the model output becomes uncond + s (cond - uncond).
            At 1 the conditional output is used as is and uncond_fn is never called.
        uncond_fn: the unconditional model (same signature), required when guidance_scale != 1.
        x_T: start noise of ``shape``; drawn from the generator when None.
        known: (values, mask) with values of ``shape`` and a mask broadcastable to it, true where known.
        device: where to sample; defaults to x_T's device, else the generator's, else CPU.
    """
    _check_choice("sampler", sampler, SAMPLERS)
    _check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    if guidance_scale != 1.0 and uncond_fn is None:
        raise ValueError(f"guidance_scale={guidance_scale} needs uncond_fn (the unconditional model); "
                         "pass it or set guidance_scale=1")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    timesteps = _sampling_timesteps(schedule.num_steps, steps, sampler)
    if x_T is not None:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        x = x_T if device is None else x_T.to(device)
    else:
        device = device or (generator.device if generator is not None else "cpu")
        x = _randn(shape, generator, device)
    if known is not None:
        values, mask = known[0].to(x), known[1].to(x.device).bool()
    abar = schedule.alphas_cumprod.double().tolist()
    for i, t in enumerate(timesteps):
        t_batch = torch.full((shape[0],), t, dtype=torch.long, device=x.device)
        if known is not None:
            noise = _randn(x.shape, generator, x.device, x.dtype)
            x = torch.where(mask, q_sample(values, t_batch, noise, schedule), x)
        out = denoise_fn(x, t_batch)
        if guidance_scale != 1.0:
            uncond = uncond_fn(x, t_batch)
            out = uncond + guidance_scale * (out - uncond)
        if sampler == "ddpm":
            x = ddpm_step(out, x, t_batch, schedule, parameterization=parameterization, clip_x0=clip_x0,
                          generator=generator)
            continue
        x0 = _clip(predict_x0(out, x, t_batch, schedule, parameterization), clip_x0)
        eps = predict_eps(x0, x, t_batch, schedule, "x0")  # consistent with the (clipped) x0 estimate
        abar_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        x = _ddim_step(x0, eps, abar[t], abar_prev, eta, generator)
    return x if known is None else torch.where(mask, values, x)


def drop_condition(cond: torch.Tensor, p: float, generator: torch.Generator | None = None,
                   null: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replaces each batch row's condition by a null value with probability p (classifier-free guidance training).

    Args:
        cond: [B, ...] conditions (embeddings, or class indices with a reserved null index).
        p: drop probability in [0, 1].
        generator: source of the per-row coin flips, on cond's device.
        null: value for dropped rows, broadcastable to one row; zeros when None.

    Returns:
        The conditions with dropped rows replaced, and the [B] bool mask of dropped rows.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    dropped = torch.rand(cond.shape[0], generator=generator, device=cond.device) < p  # [B]
    null_value = torch.as_tensor(0 if null is None else null, dtype=cond.dtype, device=cond.device)
    rows = dropped.reshape(-1, *([1] * (cond.ndim - 1)))  # [B] -> [B, 1, ..., 1]
    return torch.where(rows, null_value, cond), dropped
