"""The sampled (sparse) GAE reconstruction loss: the dense loss's weighting, unbiased sampling, training."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from percli.graph.data import Graph, adjacency_from_edges
from percli.graph.gae import forward_decoder, forward_loss, reconstruction_weights
from percli.graph.sparse_loss import ZeroEntrySampler, forward_loss_sparse
from percli.graph.train import LossConfig, TrainConfig, train_one
from tests.test_rwr_gae import planted_communities


def _ones_of(adj: sp.csr_matrix) -> torch.Tensor:
    ones = sp.coo_matrix(adj + sp.eye(adj.shape[0], dtype=np.float32))
    return torch.as_tensor(np.stack([ones.row, ones.col]), dtype=torch.int64)


def test_sparse_loss_over_every_zero_equals_the_dense_loss():
    edges, _ = planted_communities(n_per=6)
    adj = adjacency_from_edges(edges, 12)
    positives, (pos_weight, norm) = _ones_of(adj), reconstruction_weights(adj)
    every_zero = torch.nonzero(torch.as_tensor(adj.toarray()) + torch.eye(12) == 0).t()  # [2, N² - P]
    z, logstd = torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), torch.full((12, 4), -0.3)
    for std in (None, logstd):  # GAE, and VGAE with its KL term
        dense = forward_loss(forward_decoder(z), positives, z, std, pos_weight, norm)
        sparse = forward_loss_sparse(z, positives, every_zero, every_zero.shape[1], z, std, pos_weight, norm)
        assert sparse.item() == pytest.approx(dense.item(), rel=1e-5)


def test_sampler_draws_zeros_uniformly_and_the_estimate_is_unbiased():
    edges, _ = planted_communities(n_per=6)
    adj = adjacency_from_edges(edges, 12)
    positives, (pos_weight, norm) = _ones_of(adj), reconstruction_weights(adj)
    sampler = ZeroEntrySampler(positives, 12)
    assert sampler.num_zeros == 144 - positives.shape[1]
    generator = torch.Generator().manual_seed(0)
    draws = sampler(200_000, generator)
    assert draws.shape == (2, 200_000)
    dense_target = torch.as_tensor(adj.toarray()) + torch.eye(12)
    assert not dense_target[draws[0], draws[1]].any()  # never a one of A + I (the diagonal included)
    counts = torch.bincount(draws[0] * 12 + draws[1], minlength=144)[dense_target.flatten() == 0].double()
    assert counts.min() > 0 and counts.std() / counts.mean() < 0.1  # every zero, about equally often
    z = torch.randn(12, 4, generator=generator)
    dense = forward_loss(forward_decoder(z), positives, z, None, pos_weight, norm).item()
    estimates = [forward_loss_sparse(z, positives, sampler(positives.shape[1], generator), sampler.num_zeros, z, None,
                                     pos_weight, norm).item() for _ in range(400)]
    assert np.mean(estimates) == pytest.approx(dense, rel=0.02)


@pytest.mark.parametrize("model", ["gae", "vgae"])
def test_sparse_training_learns_the_communities_like_dense(model):
    edges, labels = planted_communities(n_per=20)
    graph = Graph("planted", adjacency_from_edges(edges, 40), torch.eye(40), labels)
    cfg = TrainConfig(epochs=60)
    _, dense = train_one(graph, model, cfg, seed=5)
    _, sparse = train_one(graph, model, cfg, seed=5, loss_cfg=LossConfig("sparse", zeros_per_one=2.0))
    assert sparse["auc"] > 0.8 and abs(sparse["auc"] - dense["auc"]) < 0.1
    assert sparse["acc"] > 0.9
