"""RWR-GAE: edge split, GAE/VGAE loss, the coupled random-walk loss, clustering metrics and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from percli.cli import app
from percli.core.metrics import clustering_metrics, match_clusters
from percli.graph.data import Graph, adjacency_from_edges, split_edges
from percli.graph.gae import GraphAutoEncoder, forward_loss, normalize_adjacency, reconstruction_weights
from percli.graph.random_walk import SkipGramContext, WalkStarts, random_walks, skipgram_pairs, walk_gradient
from percli.graph.train import TrainConfig, train_one


def planted_communities(n_per: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Edges [E, 2] of two dense communities joined by a few edges, and the community of each node."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per
    labels = np.repeat([0, 1], n_per)
    u, v = np.triu_indices(n, k=1)
    p = np.where(labels[u] == labels[v], 0.4, 0.02)
    keep = rng.random(len(u)) < p
    return np.stack([u[keep], v[keep]], axis=1), labels


def test_split_sizes_and_no_leakage():
    edges, _ = planted_communities()
    adj = adjacency_from_edges(edges, 40)
    e = adj.nnz // 2
    split = split_edges(adj, np.random.default_rng(3))
    assert len(split.test_edges) == e // 10 == len(split.test_non_edges)
    assert len(split.val_edges) == e // 20 == len(split.val_non_edges)
    assert len(split.train_edges) == e - e // 10 - e // 20
    keys = {name: {tuple(p) for p in getattr(split, name).tolist()}
            for name in ("train_edges", "val_edges", "test_edges", "val_non_edges", "test_non_edges")}
    graph_edges = {tuple(p) for p in np.stack(adj.nonzero(), 1).tolist()}
    assert keys["train_edges"] | keys["val_edges"] | keys["test_edges"] == {(u, v) for u, v in graph_edges if u < v}
    assert not keys["train_edges"] & (keys["val_edges"] | keys["test_edges"])
    assert not keys["val_non_edges"] & keys["test_non_edges"]
    for name in ("val_non_edges", "test_non_edges"):
        assert len(keys[name]) == len(getattr(split, name))  # distinct
        assert all(u < v and (u, v) not in graph_edges for u, v in keys[name])
    # the training graph (what the encoder and the walks see) holds no held-out edge
    train_adj = split.train_adjacency(40)
    assert all(train_adj[u, v] == 0 for u, v in keys["test_edges"] | keys["val_edges"])
    again = split_edges(adj, np.random.default_rng(3))
    assert np.array_equal(again.test_edges, split.test_edges)


def test_gae_loss_matches_hand_computation():
    # path 0 - 1 - 2 plus an isolated node 3; A + I has 4 + 4 ones among 16 entries
    adj = adjacency_from_edges(np.array([[0, 1], [1, 2]]), 4)
    pos_weight, norm = reconstruction_weights(adj)
    assert pos_weight == pytest.approx((16 - 4) / 4) and norm == pytest.approx(16 / (2 * 12))
    z = torch.tensor([[0.5, -1.0], [1.0, 0.2], [-0.3, 0.4], [0.0, 2.0]])
    target = (torch.as_tensor(adj.toarray()) + torch.eye(4)).tolist()
    hand = 0.0
    for i in range(4):
        for j in range(4):
            x = float(z[i] @ z[j])
            p = 1 / (1 + math.exp(-x))
            hand -= pos_weight * math.log(p) if target[i][j] else math.log(1 - p)
    hand *= norm / 16
    positives = torch.nonzero(torch.tensor(target)).t()
    assert forward_loss(z @ z.t(), positives, z, None, pos_weight, norm).item() == pytest.approx(hand, rel=1e-5)
    logstd = torch.full_like(z, -0.5)
    kl = -0.5 / 4 * sum(sum(1 - 1.0 - float(m) ** 2 - math.exp(-1.0) for m in row) for row in z) / 4
    vgae = forward_loss(z @ z.t(), positives, z, logstd, pos_weight, norm).item()
    assert vgae == pytest.approx(hand + kl, rel=1e-5)


def test_walk_loss_changes_encoder_gradients_only_when_coupled():
    edges, _ = planted_communities(n_per=6)
    adj = adjacency_from_edges(edges, 12)
    torch.manual_seed(0)
    model = GraphAutoEncoder(12, hidden1=8, hidden2=4)
    skipgram = SkipGramContext(np.diff(adj.indptr), 4)
    starts = WalkStarts(adj, 4, np.random.default_rng(0))(0)
    pairs = torch.as_tensor(skipgram_pairs(random_walks(adj, starts, 5, np.random.default_rng(0)), 0))
    adj_norm, positives = normalize_adjacency(adj), torch.nonzero(torch.as_tensor(adj.toarray()) + torch.eye(12)).t()
    pos_weight, norm = reconstruction_weights(adj)

    def encoder_grad(walk_term) -> torch.Tensor:
        model.zero_grad()
        logits, mu, _ = model(torch.eye(12), adj_norm)
        (forward_loss(logits, positives, mu, None, pos_weight, norm) + walk_term(mu)).backward()
        return model.gc1.weight.grad.clone()

    plain = encoder_grad(lambda mu: 0.0)
    coupled = encoder_grad(lambda mu: skipgram(mu, pairs))
    context_only = encoder_grad(lambda mu: skipgram(mu.detach(), pairs))  # the repo HEAD's separate embeddings
    assert not torch.allclose(plain, coupled)
    assert torch.equal(plain, context_only)
    assert skipgram.context.weight.grad.abs().sum() > 0


def test_walk_weight_zero_trains_plain_gae_and_one_does_not():
    edges, labels = planted_communities(n_per=10)
    graph = Graph("planted", adjacency_from_edges(edges, 20), torch.eye(20), labels)
    cfg = TrainConfig(epochs=15)
    gae, _ = train_one(graph, "gae", cfg, seed=3)
    unweighted, _ = train_one(graph, "rwr-gae", TrainConfig(epochs=15, walk_weight=0.0), seed=3)
    regularised, _ = train_one(graph, "rwr-gae", cfg, seed=3)
    assert torch.equal(gae, unweighted)  # the walks are still drawn, but add nothing to the encoder's step
    assert not torch.allclose(gae, regularised, atol=1e-4)


def test_walk_gradient_sums_pairs_and_steps_context_per_pair():
    torch.manual_seed(0)
    skipgram = SkipGramContext(np.ones(6), 3)
    mu, pairs = torch.randn(6, 3), torch.tensor([[0, 1], [0, 2], [3, 4], [0, 5]])
    frozen = torch.optim.SGD(skipgram.parameters(), lr=0.0)  # c never moves: the gradient of the summed losses
    grad, total = walk_gradient(skipgram, frozen, mu, pairs)
    leaf = mu.clone().requires_grad_()
    summed = skipgram(leaf, pairs) * len(pairs)
    summed.backward()
    assert torch.allclose(grad, leaf.grad, atol=1e-6) and total == pytest.approx(summed.item(), rel=1e-5)
    before = skipgram.context.weight.detach().clone()
    moving, _ = walk_gradient(skipgram, torch.optim.Adam(skipgram.parameters(), lr=0.1), mu, pairs)
    assert not torch.allclose(moving, grad)  # the later pairs saw context vectors updated by the earlier ones
    assert not torch.equal(skipgram.context.weight, before)


def test_walks_follow_edges_and_full_softmax_is_exact():
    edges, _ = planted_communities(n_per=6)
    adj = adjacency_from_edges(edges, 12)
    schedule = WalkStarts(adj, 5, np.random.default_rng(1))
    blocks = [schedule(epoch) for epoch in range(schedule.blocks)]
    assert all(len(block) == 5 for block in blocks) and len(set(np.concatenate(blocks).tolist())) == 5 * len(blocks)
    assert np.array_equal(schedule(schedule.blocks), blocks[0])  # the starts cycle through one shuffled list
    walks = random_walks(adj, np.concatenate(blocks), 5, np.random.default_rng(1))
    assert walks.shape == (10, 5) and np.array_equal(walks[:, 0], np.concatenate(blocks))
    assert all(adj[a, b] for a, b in zip(walks[:, :-1].ravel(), walks[:, 1:].ravel()))
    starts = skipgram_pairs(walks, 0)  # the start node predicts each later node
    assert starts.tolist() == [[w[0], w[j]] for w in walks.tolist() for j in range(1, 5)]
    pairs = skipgram_pairs(walks, 3)
    assert len(pairs) == 18 * len(walks)  # window 3 in a walk of 5: 3 + 4 + 4 + 4 + 3 contexts
    assert pairs[:18].tolist().count([walks[0, 0], walks[0, 3]]) >= 1
    skipgram = SkipGramContext(np.diff(adj.indptr), 4)
    mu, pairs = torch.randn(12, 4), torch.as_tensor(pairs)
    reference = -F.log_softmax(skipgram.context.weight @ mu.t(), dim=1)[pairs[:, 0], pairs[:, 1]].mean()
    assert skipgram(mu, pairs).item() == pytest.approx(reference.item(), rel=1e-5)
    sampled = skipgram(mu, pairs, negative=5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(sampled) and sampled > 0


def test_clustering_metrics_permuted_and_hand_case():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    permuted = np.array([5, 5, 3, 3, 9, 9, 9])
    assert clustering_metrics(labels, permuted) == pytest.approx({"acc": 1.0, "nmi": 1.0, "f1": 1.0, "ari": 1.0})
    # clusters {0,1,2} -> class 0 (2 hits) and {3,4,5} -> class 1 (3 hits): 5 of 6 right
    labels, clusters = np.array([0, 0, 0, 1, 1, 1]), np.array([1, 1, 0, 0, 0, 0])
    assert match_clusters(labels, clusters).tolist() == [0, 0, 1, 1, 1, 1]
    scores = clustering_metrics(labels, clusters)
    assert scores["acc"] == pytest.approx(5 / 6)
    assert scores["f1"] == pytest.approx((0.8 + 6 / 7) / 2)  # class 0: P 1, R 2/3; class 1: P 3/4, R 1
    assert match_clusters([0, 0, 1], [0, 1, 2]).tolist().count(-1) == 1  # a cluster left without a class


def test_cli_planted_communities(tmp_path):
    edges, labels = planted_communities()
    lines = [f"{u} {v}" for u, v in edges] + ["# comment", "7 not-a-node", "3"]
    (tmp_path / "g.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "labels.txt").write_text("\n".join(map(str, labels)) + "\n")
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "pretrain", "rwr-gae", "--graph", str(tmp_path / "g.txt"), "--labels", str(tmp_path / "labels.txt"),
        "--model", "rwr-gae", "--seeds", "2", "--epochs", "40", "--run-dir", str(run_dir), "--save-embeddings",
        "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["graphs"]) == {"g"} and summary["status"] == "completed"
    assert set(summary["graphs"]["g"]["models"]) == {"rwr-gae"} and summary["graphs"]["g"]["nodes"] == 40
    scores = summary["graphs"]["g"]["models"]["rwr-gae"]
    assert set(scores) == {"auc", "ap", "acc", "nmi", "f1", "ari", "std", "seeds"} and scores["seeds"] == [42, 43]
    assert scores["acc"] > 0.9 and scores["auc"] > 0.7
    assert summary["metrics"]["g/rwr-gae/auc"] == scores["auc"]  # the headline figures, flattened
    assert "skipped 2 malformed" in result.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["graph"], r["model"], r["seed"]) for r in rows] == [("g", "rwr-gae", 42), ("g", "rwr-gae", 43)]
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert (run_dir / "embeddings" / "g" / "rwr-gae-seed43.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["--graph", "cora"], "cora/ind.cora.x exists"),
    (["--graph", "{tmp}/tiny.txt", "--graph", "{tmp}/tiny.txt"], "names a graph twice"),
    (["--graph", "{tmp}/tiny.txt", "--graph", "cora", "--labels", "{tmp}/tiny.txt"], "give a single --graph"),
    (["--graph", "{tmp}/tiny.txt", "loss.zeros_per_one=0"], "loss.zeros_per_one: got 0"),
    (["--graph", "cora", "--model", "gcn"], "model (--model): got 'gcn'"),
    (["--graph", "{tmp}/bad.npz"], "is not a readable .npz archive"),
    (["--graph", "{tmp}/tiny.txt"], "the split needs at least 20 edges"),
])
def test_cli_bad_input_exits_2(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("PERCLI_DATA_DIR", str(tmp_path))
    (tmp_path / "bad.npz").write_text("not a zip archive")
    (tmp_path / "tiny.txt").write_text("0 1\n1 2\n")
    args = [a.format(tmp=tmp_path) for a in args]
    result = CliRunner().invoke(app, ["pretrain", "rwr-gae", *args, "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert message in result.stderr.replace("\n", "")
    assert not (tmp_path / "run").exists()  # nothing is written for a run that cannot start
