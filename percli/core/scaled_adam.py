"""ScaledAdam and the Eden LR schedule (icefall's Zipformer optimizer; VoiceCraft's release trains with both).

ScaledAdam is Adam whose step for a tensor is proportional to that tensor's RMS ("param_rms", measured every
`size_update_period` steps), so every weight matrix moves by about the same *relative* amount whatever its
size; the tensor's overall scale is learned on its own, as if the tensor were `p * exp(s)` with `s` a scalar
trained by Adam at `lr * scalar_lr_scale`, kept inside [param_min_rms, param_max_rms]. Tensors of one element
take a plain Adam step (at `lr * scalar_lr_scale`, clamped to +-scalar_max). There is no bias correction of
the first moment: the momentum `delta` is a decayed sum of past parameter changes. Gradients are clipped
globally: the model's gradient norm (each tensor's gradient times its RMS, the size of the update it causes)
is kept below `clipping_scale` times the median norm of the last `clipping_update_period` steps.

Where VoiceCraft's copy (an older icefall) differs: it scaled a copy of the gradient by the clipping factor
and then read the unclipped `p.grad` for the Adam step, so its clipping only reached the scale update;
later icefall clips the gradient itself (in place), and so does this implementation. Parameters are
updated one tensor at a time rather than stacked by shape (same arithmetic, fewer kernels saved).

Eden: lr = base_lr * ((step^2 + lr_steps^2) / lr_steps^2)^-0.25 * ((epoch^2 + lr_epochs^2) / lr_epochs^2)^-0.25,
times a warmup that rises linearly from 0.5 to 1 over `warmup_steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


def eden_factor(step: float, epoch: float, lr_steps: float, lr_epochs: float, warmup_steps: float) -> float:
    """Eden's LR multiplier at optimizer step `step` (icefall's "batch") and `epoch`."""
    decay = ((step**2 + lr_steps**2) / lr_steps**2) ** -0.25 * ((epoch**2 + lr_epochs**2) / lr_epochs**2) ** -0.25
    warmup = 1.0 if step >= warmup_steps else 0.5 + 0.5 * step / warmup_steps
    return decay * warmup


def _rms(p: torch.Tensor) -> torch.Tensor:
    return p.pow(2).mean().sqrt()


class ScaledAdam(torch.optim.Optimizer):
    """Adam with updates relative to each tensor's RMS, a learned tensor scale and median-based clipping.

    Args:
        params: parameters or parameter groups (a group's "lr" is its own, as with any optimizer).
        lr: the base learning rate (icefall and VoiceCraft: 0.03-0.05 under Eden).
        betas: momentum of the parameter change and of the squared gradient.
        clipping_scale: clip the model's gradient norm to this times the median of the recent norms; None: no
            clipping. One clipping spans all groups; its settings come from the first group.
        clipping_update_period: steps between two estimates of the median (and before the first clipping).
        scalar_lr_scale: LR factor of the scale updates and of one-element tensors.
        eps: added to the Adam denominator.
        param_min_rms: the RMS a tensor's step is proportional to is at least this; below it the scale
            stops shrinking.
        param_max_rms: above this RMS the scale shrinks at a fixed rate.
        scalar_max: one-element tensors are clamped to +-scalar_max.
        size_update_period: steps between two scale updates (each uses the gradients of the steps between).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.03, betas: tuple[float, float] = (0.9, 0.98),
                 clipping_scale: float | None = None, clipping_update_period: int = 100,
                 scalar_lr_scale: float = 0.1, eps: float = 1e-8, param_min_rms: float = 1e-5,
                 param_max_rms: float = 3.0, scalar_max: float = 10.0, size_update_period: int = 4):
        defaults = dict(lr=lr, betas=tuple(betas), clipping_scale=clipping_scale,
                        clipping_update_period=clipping_update_period, scalar_lr_scale=scalar_lr_scale, eps=eps,
                        param_min_rms=param_min_rms, param_max_rms=param_max_rms, scalar_max=scalar_max,
                        size_update_period=size_update_period)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip = self._clipping_factor()
        for group in self.param_groups:
            for p in group["params"]:
                # a parameter without a gradient takes a zero one (momentum still moves it), as icefall stacks it
                grad = torch.zeros_like(p) if p.grad is None else p.grad
                if clip != 1.0:
                    grad = grad * clip
                state = self.state[p]
                if not state:
                    self._init_state(group, p, state)
                self._update(group, p, grad, state)
        return loss

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        state["step"] = 0
        state["delta"] = torch.zeros_like(p)  # the momentum: a decayed sum of parameter changes
        state["exp_avg_sq"] = torch.zeros_like(p)
        if p.numel() > 1:
            state["param_rms"] = _rms(p)  # [] (0-dim)
            state["scale_exp_avg_sq"] = torch.zeros_like(state["param_rms"])
            state["scale_grads"] = torch.zeros(group["size_update_period"], device=p.device, dtype=p.dtype)

    def _clipping_factor(self) -> float:
        """The factor (<= 1) every gradient is multiplied by this step. The norms, the threshold and the
        step count live in the first parameter's state, so they are saved and restored with it."""
        first_group = self.param_groups[0]
        scale, period = first_group["clipping_scale"], first_group["clipping_update_period"]
        first = self.state[first_group["params"][0]]
        step = first.get("step", 0)
        if scale is None or step == 0:
            return 1.0
        sumsq = 0.0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                # a tensor's update is proportional to its RMS: its gradient counts at that size
                weighted = p.grad if p.numel() == 1 else p.grad * self.state[p]["param_rms"]
                sumsq = sumsq + weighted.pow(2).sum()
        norm = torch.as_tensor(sumsq).sqrt()
        if "model_norms" not in first:
            first["model_norms"] = torch.zeros(period, device=norm.device, dtype=norm.dtype)
        first["model_norms"][step % period] = norm
        if step % period == 0:
            median = first["model_norms"].sort().values[min(period - 1, (period // 4) * 2)]
            first["model_norm_threshold"] = scale * float(median)
        if step < period:
            return 1.0  # no median yet
        return min(1.0, first["model_norm_threshold"] / (float(norm) + 1e-20))

    def _update(self, group: dict[str, Any], p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        step = state["step"]
        delta = state["delta"]
        delta.mul_(beta1)
        if p.numel() == 1:
            self._scalar_step(group, p, grad, state)
        else:
            period = group["size_update_period"]
            state["scale_grads"][step % period] = (p * grad).sum()  # d loss / d log-scale of p
            if step % period == period - 1:
                state["param_rms"].copy_(_rms(p))
                if step > 0:
                    self._scale_step(group, p, state)
            exp_avg_sq = state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            correction = 1 - beta2 ** (step + 1)
            if correction < 0.99:  # bias-corrected while it matters, not in place
                exp_avg_sq = exp_avg_sq / correction
            size = state["param_rms"].clamp(min=group["param_min_rms"])
            delta.add_(grad / (exp_avg_sq.sqrt() + group["eps"]) * (-group["lr"] * (1 - beta1) * size))
            p.add_(delta)
        state["step"] = step + 1

    def _scale_step(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        """Adam on the log-scale of p, once per `size_update_period` steps with their summed gradients."""
        beta1, beta2 = group["betas"]
        scale_grads, rms = state["scale_grads"], state["param_rms"]
        period = len(scale_grads)
        beta2_period = beta2**period  # one scale step spans `period` steps
        state["scale_exp_avg_sq"].mul_(beta2_period).add_(scale_grads.pow(2).mean(), alpha=1 - beta2_period)
        # icefall multiplies by sqrt(1 - beta2^k) here (not divides): smaller scale steps at the start
        correction = 1 - beta2_period ** ((state["step"] + 1) // period)
        size_lr = group["lr"] * group["scalar_lr_scale"]
        scale_step = -size_lr * correction**0.5 * scale_grads.sum() / (state["scale_exp_avg_sq"].sqrt() + group["eps"])
        scale_step = torch.where(rms < group["param_min_rms"], torch.zeros_like(scale_step), scale_step)
        scale_step = torch.where(rms > group["param_max_rms"], torch.full_like(scale_step, -size_lr * period),
                                 scale_step)
        state["delta"].add_(p * scale_step, alpha=1 - beta1)

    def _scalar_step(self, group: dict[str, Any], p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> None:
        """Plain Adam without first-moment bias correction for one-element tensors, at the scalar LR."""
        beta1, beta2 = group["betas"]
        exp_avg_sq = state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq / (1 - beta2 ** (state["step"] + 1))).sqrt() + group["eps"]
        state["delta"].add_(grad / denom, alpha=-group["lr"] * group["scalar_lr_scale"] * (1 - beta1))
        p.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
        p.add_(state["delta"])
