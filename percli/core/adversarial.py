"""Adversarial perturbations of a classifier's inputs as pure tensor functions: Lp-ball projections, steepest-ascent
steps, FGSM, PGD and the universal (input-agnostic) perturbation, over a dict of modalities.

After Li, Ma, Qu, Huang, Metze, "Audio-Visual Event Recognition through the lens of Adversary" (ICASSP 2021):
projected gradient ascent on the loss of the *true* labels (binary cross-entropy for multi-label data,
cross-entropy for single-label), a step and a ball in the same norm, inputs clamped to the feature range, and one
perturbation shared by the whole evaluation set (the official notebook's ``delta_global``).

Conventions:

* Inputs are ``{modality: tensor [B, ...]}`` (``"audio"``: fbank, ``"video"``: frames, or any names). Only the
  modalities named in ``eps`` are perturbed; the others are passed to the loss unchanged, so audio only, video
  only and both are one code path. Each attacked modality has its own radius ``eps[m]`` (the caller scales it to
  that modality's feature range), its own ball and its own step ``step_size * eps[m]``: the perturbation lives in
  the product of the balls.
* Norms are per example, over every value but the batch dimension: ``linf`` (max |d|), ``l2``, ``l1``.
* ``loss_fn(inputs) -> scalar`` is the loss to *maximise*, summed over the batch (`attack_loss`), so every example
  gets the gradient of its own loss whatever the batch size.
* Gradients are taken with respect to the clamped adversarial input (not through the clamp, whose gradient is
  zero at the bounds), as the official notebook does; the perturbation is projected onto its ball, then the input
  is clamped to ``bounds[m] = (low, high)``, so ``x + delta`` always lies in both.

Steepest-ascent directions (the unit-norm step that most increases a linearised loss): ``linf`` the sign of the
gradient; ``l2`` the gradient over its L2 norm; ``l1`` the *sparse* L1 step of standard L1 PGD (Tramer & Boneh,
NeurIPS 2019, "SLIDE"; advertorch's ``SparseL1Descent``): the gradient's sign on its top ``1 - l1_sparsity`` share
of coordinates by magnitude, scaled to unit L1 norm. The exact L1 steepest direction moves one coordinate only,
which makes PGD crawl and pile the budget on a few values.

The L1 projection is the exact one of Duchi, Shalev-Shwartz, Singer & Chandra (ICML 2008): soft-thresholding at
the threshold found by sorting the magnitudes, O(n log n) per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")
Inputs = Mapping[str, torch.Tensor]
Bounds = Mapping[str, tuple[float, float]]
LossFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """The loss of the true labels, summed over the batch: BCE on multi-hot ``labels`` [B, C] (multi-label) or
    cross-entropy on class indices ``labels`` [B] (single-label)."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def lp_norm(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-example norm [B] of ``delta`` [B, ...] over all values but the batch dimension."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    return flat.norm(p=2 if norm == "l2" else 1, dim=1)


def ball_radius(eps: float, span: float, values: int, norm: Norm) -> float:
    """The radius of the ``norm`` ball whose perturbations are ``eps x span`` per value on average: ``eps * span``
    (linf), ``eps * span * sqrt(values)`` (l2), ``eps * span * values`` (l1) -- the L2 and L1 norms of an L-inf
    perturbation of ``eps * span`` at each of the ``values`` values of an example. ``span`` is the input's
    feature range (max - min), so one eps means the same relative perturbation for every modality and norm."""
    size = {"linf": 1.0, "l2": math.sqrt(values), "l1": float(values)}[norm]
    return eps * span * size


def project_l1(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of each example of ``delta`` [B, ...] onto the L1 ball of radius ``eps`` (Duchi et
    al. 2008): ``sign(v) * max(|v| - theta, 0)`` with ``theta = (sum of the rho largest |v| - eps) / rho``, rho the
    number of sorted magnitudes ``mu_j`` with ``mu_j > (sum_{i <= j} mu_i - eps) / j``."""
    if eps <= 0:
        return torch.zeros_like(delta)
    flat = delta.flatten(1)  # [B, n]
    magnitude = flat.abs()
    mu = magnitude.sort(dim=1, descending=True).values
    cumulative = mu.cumsum(dim=1)
    j = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    rho = (mu * j > cumulative - eps).sum(dim=1, keepdim=True)  # [B, 1]: the condition holds for j = 1..rho
    theta = (cumulative.gather(1, rho - 1) - eps) / rho
    shrunk = flat.sign() * (magnitude - theta).clamp_min(0)
    inside = magnitude.sum(dim=1, keepdim=True) <= eps  # already in the ball: unchanged
    return torch.where(inside, flat, shrunk).view_as(delta)


def project(delta: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """Each example of ``delta`` [B, ...] projected onto the ``norm`` ball of radius ``eps`` (the nearest point in
    L2 distance; for ``l2`` and ``linf`` a rescale and a clip)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        scale = (eps / lp_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)  # [B]
        return delta * scale.view(-1, *([1] * (delta.dim() - 1)))
    if norm == "l1":
        return project_l1(delta, eps)
    raise ValueError(f"norm={norm!r}: choose one of {', '.join(NORMS)}")


def ascent_direction(grad: torch.Tensor, norm: Norm, l1_sparsity: float = 0.95) -> torch.Tensor:
    """The unit-norm steepest-ascent direction of each example of ``grad`` [B, ...] in ``norm`` (module docstring):
    its sign (linf), itself over its L2 norm (l2), or its sign on its largest ``1 - l1_sparsity`` share of
    coordinates divided by their number (l1, at least one coordinate)."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / lp_norm(grad, "l2").clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
    if norm == "l1":
        flat = grad.flatten(1)
        k = max(1, round((1.0 - l1_sparsity) * flat.shape[1]))
        top = flat.abs().topk(k, dim=1).indices  # [B, k]
        direction = torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top).sign() / k)
        return direction.view_as(grad)
    raise ValueError(f"norm={norm!r}: choose one of {', '.join(NORMS)}")


def _clamped(x: torch.Tensor, delta: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return (x + delta).clamp(*bounds)


def _input_gradients(loss_fn: LossFn, inputs: Inputs, adversarial: dict[str, torch.Tensor]
                     ) -> tuple[dict[str, torch.Tensor], float]:
    """d loss / d input of each attacked modality at ``adversarial`` (the others clean), and the loss."""
    with torch.enable_grad():
        leaves = {m: x.detach().requires_grad_(True) for m, x in adversarial.items()}
        loss = loss_fn({**inputs, **leaves})
        grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads)), float(loss.detach())


def random_start(x: torch.Tensor, norm: Norm, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random perturbation inside the ball: uniform in the L-inf cube of half-side ``eps``, projected onto the
    ``norm`` ball (uniform in the ball for linf; a valid, not uniform, start for l2 and l1)."""
    cube = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
    return project((2 * cube.to(x.device, x.dtype) - 1) * eps, norm, eps)


def pgd(loss_fn: LossFn, inputs: Inputs, eps: Mapping[str, float], bounds: Bounds, norm: Norm = "linf",
        steps: int = 20, step_size: float = 0.1, random_init: bool = False, l1_sparsity: float = 0.95,
        generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Projected gradient ascent of ``loss_fn`` on each example's own perturbation (Madry et al., ICLR 2018).

    Args:
        loss_fn: ``inputs -> scalar`` loss to maximise (`attack_loss` of the model's logits), summed over the batch.
        inputs: Clean inputs by modality, [B, ...] each.
        eps: Ball radius of each modality to attack (absolute, in the input's units); others stay clean.
        bounds: ``(low, high)`` feature range of each attacked modality; adversarial inputs are clamped to it.
        norm: ``linf``, ``l2`` or ``l1``: the step's and the ball's norm.
        steps: Ascent steps.
        step_size: Each step's length as a fraction of its modality's eps.
        random_init: Start from a random point of the ball (`random_start`) instead of the clean input.
        l1_sparsity: The L1 step's share of coordinates left unchanged (`ascent_direction`).
        generator: Random source of the start.

    Returns:
        The adversarial inputs of the attacked modalities (the clean tensors of the others), detached.
    """
    delta = {m: random_start(inputs[m], norm, e, generator) if random_init else torch.zeros_like(inputs[m])
             for m, e in eps.items()}
    adversarial = {m: _clamped(inputs[m], delta[m], bounds[m]) for m in eps}
    for _ in range(steps):
        grads, _ = _input_gradients(loss_fn, inputs, adversarial)
        for m, e in eps.items():
            x = inputs[m]
            moved = adversarial[m] - x + step_size * e * ascent_direction(grads[m], norm, l1_sparsity)
            adversarial[m] = _clamped(x, project(moved, norm, e), bounds[m])
    return {**inputs, **{m: a.detach() for m, a in adversarial.items()}}


def fgsm(loss_fn: LossFn, inputs: Inputs, eps: Mapping[str, float], bounds: Bounds, norm: Norm = "linf",
         l1_sparsity: float = 0.95) -> dict[str, torch.Tensor]:
    """The fast gradient (sign) method (Goodfellow et al., ICLR 2015) in any norm: one steepest-ascent step of
    length eps from the clean input, clamped to the feature range (`pgd` with one step of size 1)."""
    return pgd(loss_fn, inputs, eps, bounds, norm, steps=1, step_size=1.0, l1_sparsity=l1_sparsity)


def apply_universal(inputs: Inputs, delta: Mapping[str, torch.Tensor], bounds: Bounds) -> dict[str, torch.Tensor]:
    """Inputs with one shared perturbation added to every example: ``delta[m]`` has the per-example shape of
    ``inputs[m]`` ([...] for inputs [B, ...]); each sum is clamped to the modality's range."""
    return {**inputs, **{m: _clamped(inputs[m], d.unsqueeze(0), bounds[m]) for m, d in delta.items()}}


def universal_step(loss_fn: LossFn, inputs: Inputs, delta: Mapping[str, torch.Tensor], eps: Mapping[str, float],
                   bounds: Bounds, norm: Norm = "linf", step_size: float = 0.1, l1_sparsity: float = 0.95
                   ) -> tuple[dict[str, torch.Tensor], float]:
    """One ascent step of a universal perturbation on one batch, and the batch's loss before it.

    The gradient of the batch's summed loss with respect to the shared ``delta[m]`` (the sum of the per-example
    input gradients) gives one steepest-ascent step of ``step_size * eps[m]``, then the projection onto the ball:
    a pass over the evaluation set's batches is a pass of stochastic PGD on one perturbation. The official notebook
    instead averages the per-example steps of a batch, adds them weighted by the batch's share of the set and
    projects only the per-example steps; here ``delta`` itself always lies in its ball.

    Args:
        delta: The current perturbation of each attacked modality, of per-example shape (start: zeros).

    Returns:
        The updated perturbations and the batch's loss at the old ones.
    """
    adversarial = apply_universal(inputs, delta, bounds)
    grads, loss = _input_gradients(loss_fn, inputs, {m: adversarial[m] for m in delta})
    updated = {}
    for m, d in delta.items():
        shared = grads[m].sum(dim=0, keepdim=True)  # [1, ...]: d loss / d delta
        moved = d.unsqueeze(0) + step_size * eps[m] * ascent_direction(shared, norm, l1_sparsity)
        updated[m] = project(moved, norm, eps[m])[0].detach()
    return updated, loss
