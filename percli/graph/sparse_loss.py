"""GAE's reconstruction loss without the N x N matrix: every one of A + I and a uniform sample of its zeros.

The dense loss is norm/N² · [pos_weight · Σ_ones softplus(-x) + Σ_zeros softplus(x)] over all N²
entries x = z_u · z_v (gae.forward_loss). Here the ones are summed exactly and the zeros' sum is
estimated from M entries drawn uniformly (with replacement) among the N² - P zeros, scaled by
(N² - P) / M: an unbiased estimate of the same loss with the same pos_weight and norm, in O(P + M)
memory instead of O(N²). M = ratio · P, redrawn every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from percli.graph.gae import kl_divergence


class ZeroEntrySampler:
    """Uniform draws of the zero entries (u, v) of A + I, ordered pairs as the dense matrix counts them."""

    def __init__(self, positives: torch.Tensor, num_nodes: int):
        """positives [2, P]: the ones of A + I, each once."""
        self.num_nodes = num_nodes
        self.keys = torch.sort(positives[0] * num_nodes + positives[1]).values  # row-major entry ids of the ones
        self.num_zeros = num_nodes * num_nodes - len(self.keys)

    def is_one(self, keys: torch.Tensor) -> torch.Tensor:
        at = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        return self.keys[at] == keys

    def __call__(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`count` zero entries [2, count]: entries drawn uniformly from all N², the ones redrawn."""
        n2 = self.num_nodes * self.num_nodes
        # ones are a few per row: a draw hits a zero with probability num_zeros / N², so ~all of a batch is kept
        drawn = torch.empty(0, dtype=torch.int64)
        while len(drawn) < count:
            keys = torch.randint(0, n2, (count - len(drawn),), generator=generator)
            drawn = torch.cat([drawn, keys[~self.is_one(keys)]])
        return torch.stack([drawn // self.num_nodes, drawn % self.num_nodes])


def forward_loss_sparse(z: torch.Tensor, positives: torch.Tensor, zeros: torch.Tensor, num_zeros: int,
                        mu: torch.Tensor, logstd: torch.Tensor | None, pos_weight: float, norm: float) -> torch.Tensor:
    """norm/N² · [pos_weight · Σ_ones softplus(-z_u·z_v) + (num_zeros / M) · Σ_sampled softplus(z_u·z_v)] (+ KL).

    positives [2, P]: all ones of A + I; zeros [2, M]: entries drawn from the num_zeros zeros.
    """
    x_pos = (z[positives[0]] * z[positives[1]]).sum(1)  # [P]
    x_zero = (z[zeros[0]] * z[zeros[1]]).sum(1)  # [M]
    zero_sum = F.softplus(x_zero).sum() * (num_zeros / zeros.shape[1])
    loss = norm * (pos_weight * F.softplus(-x_pos).sum() + zero_sum) / z.shape[0] ** 2
    return loss if logstd is None else loss + kl_divergence(mu, logstd)
