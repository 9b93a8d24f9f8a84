"""The random-walk regulariser of RWR-GAE: DeepWalk walks and a skip-gram loss on the encoder's mu.

Coupled form, as in the version of MysteryVaibhav/RWR-GAE behind the README numbers (gae/train.py at
025ab54, Jan 2019): the encoder's mu is the skip-gram "word" embedding and each node s has a learned
context vector c_s (initialised N(0, 1)). A pair (s, t) costs -log softmax_n(mu_n · c_s)[t] over all
nodes n (or a negative-sampling bound). Each epoch takes a few walks; its pairs are visited one at a
time: each adds its gradient w.r.t. mu to the encoder's (a sum, not a mean) and the context vectors
take one Adam step per pair. The repo's later HEAD gave the skip-gram its own node embeddings, which
leaves the encoder untouched (see the research notes).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn


class WalkStarts:
    """The start nodes of each epoch's walks: `per_epoch` nodes at a time from one shuffle of the non-isolated nodes.

    Epoch e takes the (e mod K)-th block of `per_epoch` nodes, K = (number of nodes) // per_epoch, so the
    starts cycle through the shuffled list (the early repo's chunked schedule).
    """

    def __init__(self, adjacency: sp.csr_matrix, per_epoch: int, rng: np.random.Generator):
        self.order = rng.permutation(np.flatnonzero(np.diff(adjacency.indptr) > 0))
        self.per_epoch = per_epoch
        self.blocks = max(1, len(self.order) // per_epoch)

    def __call__(self, epoch: int) -> np.ndarray:
        block = epoch % self.blocks
        return self.order[block * self.per_epoch:(block + 1) * self.per_epoch]


def random_walks(adjacency: sp.csr_matrix, starts: np.ndarray, walk_length: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Uniform random walks [len(starts), walk_length] from nodes that have a neighbour.

    A walk only reaches nodes through edges, so every node after the start has a neighbour too.
    """
    degree = np.diff(adjacency.indptr)
    walks = np.empty((len(starts), walk_length), dtype=np.int64)
    walks[:, 0] = starts
    for step in range(1, walk_length):
        current = walks[:, step - 1]
        offset = (rng.random(len(current)) * degree[current]).astype(np.int64)
        walks[:, step] = adjacency.indices[adjacency.indptr[current] + offset]
    return walks


def skipgram_pairs(walks: np.ndarray, window_size: int) -> np.ndarray:
    """(source, context) pairs [P, 2], walk by walk.

    `window_size` 0 (the early repo's default): the start node with every later node of its walk.
    `window_size` w > 0: every position with every other position at most w away.
    """
    length = walks.shape[1]
    if window_size == 0:
        links = [(0, j) for j in range(1, length)]
    else:
        links = [(i, j) for i in range(length) for j in range(max(0, i - window_size), min(length, i + window_size + 1))
                 if i != j]
    if not links:
        return np.empty((0, 2), dtype=np.int64)
    source, context = (np.array(side) for side in zip(*links))
    return np.stack([walks[:, source], walks[:, context]], axis=2).reshape(-1, 2)


class SkipGramContext(nn.Module):
    """Per-node context vectors c [N, D] and the skip-gram loss of (source, context) pairs against mu.

    `degree` sets the negative-sampling noise, degree^0.75 (word2vec's unigram^0.75: a node's frequency
    in long walks is proportional to its degree).
    """

    def __init__(self, degree: np.ndarray, dim: int):
        super().__init__()
        self.context = nn.Embedding(len(degree), dim)
        # Xavier-uniform, as the repo had until 8cc3ed2; its later torch.randn start (std 1, ~40x larger) makes
        # the summed walk gradient swamp the GAE loss and collapses mu (Cora AUC ~0.67 in the authors' code too).
        nn.init.xavier_uniform_(self.context.weight)
        self.register_buffer("noise_cdf", torch.as_tensor(degree, dtype=torch.float64).pow(0.75).cumsum(0))

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
        """-log σ(mu_t · c_s) - Σ_k log σ(-mu_k · c_s), negatives k drawn from degree^0.75."""
        c = self.context(pairs[:, 0])  # [P, D]
        positive = F.logsigmoid((mu[pairs[:, 1]] * c).sum(1))
        draws = torch.rand(len(pairs), negative, generator=generator, dtype=torch.float64) * self.noise_cdf[-1]
        noise = torch.searchsorted(self.noise_cdf, draws, right=True).clamp_(max=mu.shape[0] - 1)  # [P, K]
        negatives = F.logsigmoid(-(mu[noise] * c.unsqueeze(1)).sum(2)).sum(1)  # [P, K, D] -> [P]
        return -(positive + negatives).mean()


def walk_gradient(skipgram: SkipGramContext, optimizer: torch.optim.Optimizer, mu: torch.Tensor, pairs: torch.Tensor,
                  negative: int = 0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """Visit the pairs one at a time: the summed gradient of their losses w.r.t. mu [N, D], and the summed loss.

    After each pair the context vectors take one step of `optimizer`, so a later pair sees the updated
    c; mu stays this epoch's encoder output throughout (the encoder steps once, after all pairs).
    """
    leaf = mu.detach().requires_grad_()
    total = 0.0
    for pair in pairs.split(1):
        optimizer.zero_grad()
        loss = skipgram(leaf, pair, negative, generator)
        loss.backward()  # leaf.grad adds up over the pairs
        optimizer.step()
        total += loss.item()
    return (leaf.grad if leaf.grad is not None else torch.zeros_like(mu)), total
