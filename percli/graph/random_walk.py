"""The random-walk regulariser of RWR-GAE: DeepWalk walks and a skip-gram loss on the encoder's mu.

Coupled form (per the research notes, the one behind the README numbers): the encoder's mu is the skip-gram "word"
embedding and each node has a learned context vector c. A walk gives (source s, context t) pairs
within `window_size` steps; the loss is -log softmax_n(mu_n · c_s)[t] over all nodes n (or the
negative-sampling bound), and it backpropagates into the encoder. The repo's later version gave
the skip-gram its own node embeddings, which leaves the encoder untouched (see the research notes).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn


def random_walks(adjacency: sp.csr_matrix, number_walks: int, walk_length: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Uniform random walks [W, walk_length], `number_walks` from every node with a neighbour, shuffled.

    A walk only reaches nodes through edges, so every node after the start has a neighbour too.
    """
    degree = np.diff(adjacency.indptr)
    starts = np.tile(np.flatnonzero(degree > 0), number_walks)
    walks = np.empty((len(starts), walk_length), dtype=np.int64)
    walks[:, 0] = rng.permutation(starts)
    for step in range(1, walk_length):
        current = walks[:, step - 1]
        offset = (rng.random(len(current)) * degree[current]).astype(np.int64)
        walks[:, step] = adjacency.indices[adjacency.indptr[current] + offset]
    return walks


def skipgram_pairs(walks: np.ndarray, window_size: int) -> np.ndarray:
    """(source, context) pairs [P, 2]: every position with every other position at most `window_size` away."""
    length = walks.shape[1]
    pairs = [np.stack([walks[:, i], walks[:, j]], axis=1)
             for i in range(length) for j in range(max(0, i - window_size), min(length, i + window_size + 1))
             if i != j]
    return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)


class SkipGramContext(nn.Module):
    """Per-node context vectors c [N, D] and the skip-gram loss of (source, context) pairs against mu."""

    def __init__(self, num_nodes: int, dim: int):
        super().__init__()
        self.context = nn.Embedding(num_nodes, dim)
        nn.init.zeros_(self.context.weight)  # word2vec starts its output vectors at zero

    def forward(self, mu: torch.Tensor, pairs: torch.Tensor, negative: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean over pairs of -log p(t | s); full softmax over the N nodes, or `negative` > 0 sampled negatives."""
        if negative > 0:
            return self.negative_sampling_loss(mu, pairs, negative, generator)
        return self.full_softmax_loss(mu, pairs)

    def full_softmax_loss(self, mu: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """-log softmax_n(mu_n · c_s)[t] = logsumexp_n(mu_n · c_s) - mu_t · c_s, averaged over pairs.

        The log-normaliser depends only on the source, so it is computed once per distinct source:
        O(S·N) for S sources instead of O(P·N) for P pairs.
        """
        sources, source_row = torch.unique(pairs[:, 0], return_inverse=True)
        log_normalizer = torch.logsumexp(self.context(sources) @ mu.t(), dim=1)  # [S, D] @ [D, N] -> [S]
        pair_scores = (self.context(pairs[:, 0]) * mu[pairs[:, 1]]).sum(1)  # [P]
        return (log_normalizer[source_row] - pair_scores).mean()

    def negative_sampling_loss(self, mu: torch.Tensor, pairs: torch.Tensor, negative: int,
                               generator: torch.Generator | None) -> torch.Tensor:
        """-log σ(mu_t · c_s) - Σ_k log σ(-mu_k · c_s), negatives k drawn from the unigram^0.75 of the contexts."""
        c = self.context(pairs[:, 0])  # [P, D]
        positive = F.logsigmoid((mu[pairs[:, 1]] * c).sum(1))
        cdf = torch.bincount(pairs[:, 1], minlength=mu.shape[0]).double().pow(0.75).cumsum(0)
        draws = torch.rand(len(pairs), negative, generator=generator, dtype=torch.float64) * cdf[-1]
        noise = torch.searchsorted(cdf, draws, right=True).clamp_(max=mu.shape[0] - 1)  # inverse-CDF sampling [P, K]
        negatives = F.logsigmoid(-(mu[noise] * c.unsqueeze(1)).sum(2)).sum(1)  # [P, K, D] -> [P]
        return -(positive + negatives).mean()
