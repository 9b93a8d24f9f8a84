"""MoDE: balanced k-means, two-level clustering of planted topics, ensemble-weight formula, CLI."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from typer.testing import CliRunner

from percli.cli import app
from percli.curation.mode import (
    ModeClusters,
    assign,
    balanced_assignment,
    ensemble_weights,
    fit_mode,
    kmeans,
    l2_normalize,
    pairwise_distance,
)
from percli.curation.text_encoder import load_text_encoder

TOPICS = [
    "dog puppy leash bark fetch kennel collar tail paw bone".split(),
    "pizza pasta cheese tomato oven basil garlic sauce dough olive".split(),
    "rocket orbit planet galaxy comet nebula astronaut telescope lunar solar".split(),
    "violin piano cello melody chord rhythm tempo opera sonata flute".split(),
]


def planted_captions(per_topic: int = 60, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, topics = [], []
    for topic, words in enumerate(TOPICS):
        for _ in range(per_topic):
            texts.append(" ".join(rng.sample(words, rng.randrange(3, 7))))
            topics.append(topic)
    return texts, topics


@pytest.mark.parametrize("n,k", [(40, 4), (103, 7), (60, 1)])
def test_balanced_assignment_sizes_are_floor_or_ceil_and_cost_near_optimal(n, k):
    gen = torch.Generator().manual_seed(n)
    dist = torch.cdist(torch.randn(n, 5, generator=gen), torch.randn(k, 5, generator=gen)) ** 2
    labels, _ = balanced_assignment(dist, eps=1e-4)
    sizes = torch.bincount(labels, minlength=k)
    assert sizes.min() >= n // k and sizes.max() <= -(-n // k)
    if n % k == 0:  # exact optimum of the equal-size problem: each center repeated n/k times
        rows, cols = linear_sum_assignment(np.repeat(dist.numpy(), n // k, axis=1))
        best = dist.numpy()[rows, cols // (n // k)].sum()
        assert dist[torch.arange(n), labels].sum().item() <= best + (n + k) * 1e-4 + 1e-6


def imbalanced_blobs() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]])
    sizes = [500, 60, 30, 10]
    return torch.cat([means[i] + 0.5 * torch.randn(s, 2, generator=gen) for i, s in enumerate(sizes)])


def test_balanced_kmeans_equalises_sizes_that_plain_kmeans_leaves_unequal():
    x = imbalanced_blobs()
    balanced = torch.bincount(kmeans(x, 4, balanced=True, seed=0).labels, minlength=4)
    plain = torch.bincount(kmeans(x, 4, balanced=False, seed=0).labels, minlength=4)
    assert balanced.tolist() == [150] * 4
    assert plain.max() >= 400 and plain.min() <= 15  # plain k-means finds the blobs as they are


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_mode_separates_planted_topics_into_pure_experts(distance):
    texts, topics = planted_captions()
    features = load_text_encoder("hashing").encode(texts)
    clusters = fit_mode(features, fine=16, coarse=4, distance=distance, seed=0)
    result = assign(features, clusters)
    topics = np.array(topics)
    for expert in range(4):
        members = topics[result["coarse"] == expert]
        assert len(members) == 60 and len(set(members.tolist())) == 1  # one whole topic per expert
    # fine -> coarse consistency: the coarse id of a caption is its fine center's expert
    assert np.array_equal(result["coarse"], clusters.fine_to_coarse.numpy()[result["fine"]])
    assert torch.bincount(clusters.fine_to_coarse, minlength=4).tolist() == [4] * 4  # balanced coarse level
    nearest = pairwise_distance(l2_normalize(torch.from_numpy(features)), clusters.fine_centers, distance).argmin(1)
    assert np.array_equal(result["fine"], nearest.numpy())


def test_fit_is_deterministic_for_a_seed():
    texts, _ = planted_captions(per_topic=20)
    features = load_text_encoder("hashing").encode(texts)
    a, b = (fit_mode(features, fine=8, coarse=2, seed=3) for _ in range(2))
    assert torch.equal(a.fine_centers, b.fine_centers) and torch.equal(a.fine_to_coarse, b.fine_to_coarse)
    c = fit_mode(features, fine=8, coarse=2, seed=4, init="random")
    assert not torch.equal(a.fine_centers, c.fine_centers)


def hand_weights(class_rows: np.ndarray, centers: np.ndarray, fine_to_coarse: list[int], n_coarse: int) -> list[float]:
    """MoDE's formula, one class at a time in plain Python."""
    n = len(class_rows)
    s = 5.0 * math.log10(max(10, n - 200))
    a = math.exp(0.5 - math.sqrt(n)) if n < 10 else 0.0
    w = [0.0] * n_coarse
    for row in class_rows:
        row = row / np.linalg.norm(row)
        d = [float(np.linalg.norm(row - c)) for c in centers]
        j = int(np.argmin(d))
        w[fine_to_coarse[j]] += math.exp((a - d[j]) * s)
    z = [math.exp(v / 8.0) for v in w]
    return [v / sum(z) for v in z]


@pytest.mark.parametrize("n_class", [3, 250])
def test_ensemble_weights_match_the_formula_by_hand(n_class):
    rng = np.random.default_rng(n_class)
    centers = np.eye(4, dtype=np.float32) * 0.9
    clusters = ModeClusters(torch.from_numpy(centers), torch.zeros(2, 4), torch.tensor([0, 0, 1, 1]))
    rows = np.abs(rng.normal(size=(n_class, 4))).astype(np.float32) * np.array([3, 1, 1, 1], dtype=np.float32)
    got = ensemble_weights(rows, clusters)
    assert got["weights"] == pytest.approx(hand_weights(rows, centers, [0, 0, 1, 1], 2), rel=1e-5)
    assert sum(got["weights"]) == pytest.approx(1.0)
    assert got["shift"] == (pytest.approx(math.exp(0.5 - math.sqrt(3))) if n_class < 10 else 0.0)
    assert got["scale"] == pytest.approx(5.0 if n_class <= 210 else 5.0 * math.log10(50))


def test_cli_demo_json_and_centers_reuse_give_identical_assignment(tmp_path):
    runner = CliRunner()
    first = tmp_path / "first"
    result = runner.invoke(app, ["curate", "mode", "--encoder", "hashing", "--json", "-o", str(first)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["demo"] and summary["texts_read"] == 2000 and summary["fine"] == 32
    assert sum(summary["fine_sizes"]) == sum(summary["coarse_sizes"]) == 2000
    assert sum(summary["expert_weights"]) == pytest.approx(1.0)
    weights = json.loads((first / "ensemble_weights.json").read_text())
    assert len(weights["classes"]) == 8 and len(weights["expert_weights"]) == 4

    pool = first / "demo_pool.jsonl"
    again = tmp_path / "again"
    result = runner.invoke(app, ["curate", "mode", str(pool), "--encoder", "hashing", "--json", "-o", str(again),
                                 "--centers", str(first / "mode_centers.safetensors")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fitted_on"] is None
    assert (again / "assign" / "demo_pool.jsonl").read_text() == (first / "assign" / "demo_pool.jsonl").read_text()


def test_cli_rejects_centers_from_another_encoder_dimension(tmp_path):
    clusters = ModeClusters(torch.randn(4, 8), torch.randn(2, 8), torch.tensor([0, 0, 1, 1]), encoder="hashing")
    clusters.save(tmp_path / "c.safetensors")
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"text": "a dog"}\n')
    result = CliRunner().invoke(app, ["curate", "mode", str(pool), "--encoder", "hashing",
                                      "--centers", str(tmp_path / "c.safetensors"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "dimension 8" in result.output


def test_cli_counts_and_skips_malformed_records_and_samples_the_fit(tmp_path):
    texts, _ = planted_captions(per_topic=15)
    lines = [json.dumps({"id": f"r{i}", "caption": t}) for i, t in enumerate(texts)]
    lines[5:5] = ["{not json", json.dumps({"id": "x", "caption": 3})]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(lines) + "\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("dog\npizza\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["curate", "mode", str(pool), "--encoder", "hashing", "--text-field", "caption",
                                      "--fine", "8", "--coarse", "2", "--fit-fraction", "0.5", "--classes",
                                      str(classes), "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["bad_records"] == 2 and summary["texts_read"] == 60
    assert 15 < summary["fitted_on"] < 45  # about half of the pool, drawn per record id
    rows = [json.loads(line) for line in (out / "assign" / "pool.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == [f"r{i}" for i in range(60)]
    weights = json.loads((out / "ensemble_weights.json").read_text())
    assert [c["name"] for c in weights["classes"]] == ["dog", "pizza"]
