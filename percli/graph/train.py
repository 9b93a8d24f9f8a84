"""Training and evaluation of GAE, VGAE, RWR-GAE and RWR-VGAE, one seed at a time.

One seed fixes the edge split, the initial weights, the walks and k-means. Link prediction
scores a pair by mu_u · mu_v (the sigmoid does not change AUC/AP); clustering runs k-means with
k = number of classes on mu. The models are evaluated after the last epoch (no early stopping),
as the RWR-GAE and GAE scripts do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from percli.core.metrics import average_precision, clustering_metrics, roc_auc
from percli.graph.data import EdgeSplit, Graph, split_edges
from percli.graph.gae import GraphAutoEncoder, forward_loss, normalize_adjacency, reconstruction_weights
from percli.graph.random_walk import SkipGramContext, WalkStarts, random_walks, skipgram_pairs, walk_gradient
from percli.graph.sparse_loss import ZeroEntrySampler, forward_loss_sparse

MODELS = ("gae", "vgae", "rwr-gae", "rwr-vgae")
METRICS = ("auc", "ap", "acc", "nmi", "f1", "ari")


@dataclass
class TrainConfig:
    """Defaults of the RWR-GAE README command (GAE's 32-16 GCN, Adam 0.01, 200 epochs)."""

    epochs: int = 200
    lr: float = 0.01
    hidden1: int = 32
    hidden2: int = 16
    walk_length: int = 5
    window_size: int = 0  # 0: the start with every later node (the early script ignores the README's 3 by default)
    number_walks: int = 5  # walks per epoch
    lr_dw: float = 0.01
    negative: int = 0  # 0: full softmax over the nodes; K > 0: K sampled negatives per pair
    walk_weight: float = 1.0  # scales the summed walk gradient (1: the paper's plain sum; 0: GAE's gradients)


@dataclass
class LossConfig:
    """GAE's reconstruction loss over all N² entries (dense, the official code) or a sampled estimate of it."""

    reconstruction: Literal["dense", "sparse"] = "dense"
    """dense: every entry of Z Zᵀ (O(N²) memory); sparse: the ones of A + I and sampled zeros, the same
    pos_weight/norm weighting (an unbiased estimate; Pubmed-size graphs in a few GB)."""
    zeros_per_one: float = 1.0
    """sparse: zero entries drawn per one of A + I at each step."""


def train_one(graph: Graph, model_name: str, cfg: TrainConfig, seed: int, loss_cfg: LossConfig | None = None,
              log: Callable[[str], None] = lambda _msg: None) -> tuple[torch.Tensor, dict[str, float]]:
    """Split, train and evaluate one model with one seed; returns mu [N, hidden2] and its metrics."""
    loss_cfg = loss_cfg or LossConfig()
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    split = split_edges(graph.adjacency, rng)
    n = graph.num_nodes
    train_adj = split.train_adjacency(n)
    adj_norm = normalize_adjacency(train_adj)
    ones = sp.coo_matrix(train_adj + sp.eye(n, dtype=np.float32))
    positives = torch.as_tensor(np.stack([ones.row, ones.col]), dtype=torch.int64)  # the ones of A + I, [2, P]
    pos_weight, norm = reconstruction_weights(train_adj)
    if loss_cfg.reconstruction == "sparse":
        zero_entries = ZeroEntrySampler(positives, n)
        zeros_per_step = max(1, round(loss_cfg.zeros_per_one * positives.shape[1]))

    model = GraphAutoEncoder(graph.features.shape[1], cfg.hidden1, cfg.hidden2, variational=model_name.endswith("vgae"))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if model_name.startswith("rwr"):  # the context vectors have their own optimiser, stepped once per pair
        skipgram = SkipGramContext(np.diff(train_adj.indptr), cfg.hidden2)
        skipgram_optimizer = torch.optim.Adam(skipgram.parameters(), lr=cfg.lr_dw)
        walk_starts = WalkStarts(train_adj, cfg.number_walks, rng)

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if loss_cfg.reconstruction == "sparse":
            z, mu, logstd = model.forward_latent(graph.features, adj_norm)
            loss = forward_loss_sparse(z, positives, zero_entries(zeros_per_step, generator), zero_entries.num_zeros,
                                       mu, logstd, pos_weight, norm)
        else:
            logits, mu, logstd = model(graph.features, adj_norm)
            loss = forward_loss(logits, positives, mu, logstd, pos_weight, norm)
        optimizer.zero_grad()
        if model_name.startswith("rwr"):  # the summed walk gradient joins the GAE loss's before the encoder's step
            walks = random_walks(train_adj, walk_starts(epoch - 1), cfg.walk_length, rng)
            pairs = torch.as_tensor(skipgram_pairs(walks, cfg.window_size))
            mu_grad, walk_loss = walk_gradient(skipgram, skipgram_optimizer, mu, pairs, cfg.negative, generator)
            torch.autograd.backward([loss, mu], [None, cfg.walk_weight * mu_grad])
        else:
            loss.backward()
        optimizer.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{model_name} seed {seed}: the loss became {loss.item()} at epoch {epoch}")
        if epoch % 50 == 0 or epoch == cfg.epochs:
            log(f"{model_name} seed {seed} epoch {epoch}: loss {loss.item():.4f}"
                + (f" walk loss {walk_loss:.4f}" if model_name.startswith("rwr") else ""))

    model.eval()
    with torch.no_grad():
        mu = model.forward_encoder(graph.features, adj_norm)[0]
    return mu, evaluate(mu, split, graph.labels, seed)


def link_scores(mu: torch.Tensor, pairs: np.ndarray) -> torch.Tensor:
    """mu_u · mu_v of pairs [E, 2] -> [E]."""
    pairs = torch.as_tensor(pairs)
    return (mu[pairs[:, 0]] * mu[pairs[:, 1]]).sum(1)


def link_prediction(mu: torch.Tensor, edges: np.ndarray, non_edges: np.ndarray) -> tuple[float, float]:
    """ROC-AUC and AP of edges against non-edges."""
    scores = torch.cat([link_scores(mu, edges), link_scores(mu, non_edges)]).unsqueeze(1)  # [E + E', 1]
    targets = torch.cat([torch.ones(len(edges)), torch.zeros(len(non_edges))]).unsqueeze(1)
    return float(roc_auc(scores, targets)[0]), float(average_precision(scores, targets)[0])


def evaluate(mu: torch.Tensor, split: EdgeSplit, labels: np.ndarray | None, seed: int) -> dict[str, float]:
    """Test (and validation) link prediction; k-means clustering metrics when the graph has labels."""
    from sklearn.cluster import KMeans

    auc, ap = link_prediction(mu, split.test_edges, split.test_non_edges)
    val_auc, val_ap = link_prediction(mu, split.val_edges, split.val_non_edges)
    metrics = {"auc": auc, "ap": ap, "val_auc": val_auc, "val_ap": val_ap}
    if labels is None:
        return metrics | {name: float("nan") for name in ("acc", "nmi", "f1", "ari")}
    known = labels >= 0  # nodes without a class (-1) are clustered but not scored
    k = len(np.unique(labels[known]))
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(mu.double().numpy())
    return metrics | clustering_metrics(labels[known], clusters[known])


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per model: the mean of each metric over seeds, their (population) std and the seeds."""
    summary: dict[str, dict] = {}
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == model]
        values = {name: np.array([row[name] for row in mine], dtype=np.float64) for name in METRICS}
        summary[model] = {name: _finite(v.mean()) for name, v in values.items()}
        summary[model]["std"] = {name: _finite(v.std()) for name, v in values.items()}
        summary[model]["seeds"] = [row["seed"] for row in mine]
    return summary


def _finite(value: float) -> float | None:
    """JSON has no NaN: metrics that do not apply (no labels) become null."""
    return float(value) if math.isfinite(value) else None
