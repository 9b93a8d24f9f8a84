"""Graph autoencoders (Kipf & Welling 2016): a two-layer GCN encoder and an inner-product decoder.

GAE encodes Z = GCN(X, Â); VGAE encodes a Gaussian per node (mu, log sigma) and samples Z from it.
Both reconstruct the adjacency as sigma(Z Zᵀ) and are trained with a class-balanced binary cross
entropy over all N² pairs (VGAE adds the KL term), with Â = D^-½ (A + I) D^-½. sparse_loss.py
estimates the same loss from sampled pairs for graphs whose N x N logits do not fit.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn


def normalize_adjacency(adjacency: sp.spmatrix) -> torch.Tensor:
    """Â = D^-½ (A + I) D^-½ as a sparse COO tensor [N, N]."""
    a = sp.coo_matrix(adjacency + sp.eye(adjacency.shape[0], dtype=np.float32))
    inv_sqrt_degree = np.power(np.asarray(a.sum(1)).ravel(), -0.5)
    values = inv_sqrt_degree[a.row] * a.data * inv_sqrt_degree[a.col]
    indices = torch.as_tensor(np.stack([a.row, a.col]), dtype=torch.int64)
    return torch.sparse_coo_tensor(indices, torch.as_tensor(values, dtype=torch.float32), a.shape,
                                   check_invariants=True).coalesce()


class GraphConvolution(nn.Module):
    """H' = Â H W without bias, Glorot-uniform W (as GAE)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        bound = math.sqrt(6.0 / (in_features + out_features))
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, adj_norm: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(adj_norm, x @ self.weight)  # [N, F] @ [F, out] -> [N, out]


class GraphAutoEncoder(nn.Module):
    """GAE (variational=False) or VGAE: ReLU GCN (hidden1) -> linear GCN (hidden2) for mu (and log sigma)."""

    def __init__(self, in_features: int, hidden1: int = 32, hidden2: int = 16, variational: bool = False):
        super().__init__()
        self.variational = variational
        self.gc1 = GraphConvolution(in_features, hidden1)
        self.gc_mu = GraphConvolution(hidden1, hidden2)
        self.gc_logstd = GraphConvolution(hidden1, hidden2) if variational else None

    def forward_encoder(self, x: torch.Tensor, adj_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """mu [N, hidden2] and, for VGAE, log sigma [N, hidden2]."""
        hidden = F.relu(self.gc1(x, adj_norm))
        return self.gc_mu(hidden, adj_norm), self.gc_logstd(hidden, adj_norm) if self.variational else None

    def forward_latent(self, x: torch.Tensor, adj_norm: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Z [N, hidden2], mu and log sigma; Z is sampled only for a training VGAE (else Z = mu)."""
        mu, logstd = self.forward_encoder(x, adj_norm)
        z = mu + torch.randn_like(mu) * logstd.exp() if self.variational and self.training else mu
        return z, mu, logstd

    def forward(self, x: torch.Tensor, adj_norm: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Reconstruction logits Z Zᵀ [N, N], mu and log sigma."""
        z, mu, logstd = self.forward_latent(x, adj_norm)
        return forward_decoder(z), mu, logstd


def forward_decoder(z: torch.Tensor) -> torch.Tensor:
    """Inner-product decoder: logits Z Zᵀ [N, N] (sigma of them is the edge probability)."""
    return z @ z.t()


def reconstruction_weights(train_adjacency: sp.spmatrix) -> tuple[float, float]:
    """(pos_weight, norm) of GAE: pos_weight = (N² - |A|) / |A|, norm = N² / (2 (N² - |A|)), |A| = sum of A."""
    n2, edges = float(train_adjacency.shape[0]) ** 2, float(train_adjacency.sum())
    return (n2 - edges) / edges, n2 / (2.0 * (n2 - edges))


def forward_loss(logits: torch.Tensor, positives: torch.Tensor, mu: torch.Tensor, logstd: torch.Tensor | None,
                 pos_weight: float, norm: float) -> torch.Tensor:
    """norm · BCE-with-logits(Z Zᵀ, A + I; pos_weight); VGAE adds KL = -(0.5/N) mean_i Σ_d (1 + 2 log σ - μ² - σ²).

    `positives` [2, P] indexes the ones of A + I. The weighted BCE of an entry is pos_weight · softplus(-x)
    for a one and softplus(x) for a zero, so the mean is [Σ_all softplus(x) + Σ_ones (pos_weight ·
    softplus(-x) - softplus(x))] / N²: one dense pass instead of a dense target matrix.
    """
    x_pos = logits[positives[0], positives[1]]
    bce = (F.softplus(logits).sum() + (pos_weight * F.softplus(-x_pos) - F.softplus(x_pos)).sum()) / logits.numel()
    loss = norm * bce
    return loss if logstd is None else loss + kl_divergence(mu, logstd)


def kl_divergence(mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """VGAE's KL term -(0.5/N) mean_i Σ_d (1 + 2 log σ - μ² - σ²) (GAE's 1/N scaling of the per-node mean)."""
    return -0.5 / mu.shape[0] * torch.mean(torch.sum(1 + 2 * logstd - mu.pow(2) - logstd.exp().pow(2), dim=1))
