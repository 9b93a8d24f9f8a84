"""YouTube-8M metrics (GAP@k pinned on hand-made cases and against a brute-force reference), models (MoE gating by
hand, shapes, parameter counts, segment pooling) and the embedded data's label statistics."""

import math

import numpy as np
import pytest
import torch

from percli.core.data.embedded_yt8m import YT8MSpec, videos
from percli.core.gap_metrics import (
    gap_from_top_k,
    global_average_precision,
    hits_at_one,
    precision_at_equal_recall,
    top_k_by_video,
)
from percli.models import create_model
from percli.models.yt8m import MoeHead, segment_means


def brute_force_gap(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The official steps one by one: each video's top k (class, score, label), pooled, sorted by score, precision
    x delta-recall over all positives of the ground truth."""
    pool = []
    for row, truth in zip(scores, labels):
        top = sorted(range(len(row)), key=lambda c: -row[c])[:k]
        pool += [(row[c], truth[c]) for c in top]
    pool.sort(key=lambda p: -p[0])
    positives, found, ap = float(labels.sum()), 0, 0.0
    for rank, (_, hit) in enumerate(pool, 1):
        if hit:
            found += 1
            ap += found / rank / positives
    return ap


def test_gap_counts_the_positives_outside_the_top_k():
    scores = np.array([[0.9, 0.8, 0.1, 0.05], [0.3, 0.7, 0.6, 0.2]])
    labels = np.array([[1, 0, 1, 0], [0, 1, 0, 1]])
    # top 2 pooled: 0.9 hit, 0.8 miss, 0.7 hit, 0.6 miss; 4 positives in all, two beyond the top 2
    assert global_average_precision(scores, labels, k=2) == pytest.approx((1 / 1 + 2 / 3) / 4)
    # all of them: hits at ranks 1, 3 (0.7), 6 (0.2), 7 (0.1)
    assert global_average_precision(scores, labels, k=4) == pytest.approx((1 + 2 / 3 + 3 / 6 + 4 / 7) / 4)
    # not the mean of per-video AP@2 (video 1: 1/2, video 2: 1/2)
    assert global_average_precision(scores, labels, k=2) != pytest.approx(0.5)


def test_gap_matches_a_brute_force_reference_with_positives_beyond_the_top_20():
    rng = np.random.default_rng(0)
    scores = rng.random((40, 60))
    labels = (rng.random((40, 60)) < 0.3).astype(np.float32)  # ~18 positives a video, many ranked below 20
    scores += labels * 0.3  # informative but imperfect
    assert (labels.sum(1) > 20).any()
    want = brute_force_gap(scores, labels, 20)
    assert global_average_precision(scores, labels, 20) == pytest.approx(want, abs=1e-12)
    top = top_k_by_video(torch.from_numpy(scores), torch.from_numpy(labels), 20)
    halves = [{k: v[s] for k, v in top.items()} for s in (slice(0, 17), slice(17, None))]
    pooled = {k: torch.cat([h[k] for h in halves]) for k in top}  # as engine.evaluate concatenates batches
    assert gap_from_top_k(pooled["top_k_scores"], pooled["top_k_hits"], pooled["positives"]) == pytest.approx(want)


def test_gap_edge_cases():
    assert global_average_precision(np.ones((2, 3)), np.zeros((2, 3))) == 0.0  # no positives
    assert global_average_precision(np.array([[0.2, 0.9]]), np.array([[1, 1]]), k=50) == pytest.approx(1.0)
    # equal scores: negatives ranked first, so a constant predictor gets no credit for luck
    assert global_average_precision(np.ones((1, 4)), np.array([[0, 0, 0, 1]])) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="positive"):
        global_average_precision(np.ones((1, 2)), np.ones((1, 2)), k=0)


def test_hit_at_one_and_perr():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.5, 0.4, 0.0]])
    labels = torch.tensor([[1.0, 0, 1], [1, 1, 0], [0, 0, 0]])
    assert hits_at_one(scores, labels).tolist() == [1, 0, 0]
    # video 1: 2 labels, top 2 = {0, 1} -> 1/2; video 2: top 2 = {2, 1} -> 1/2; no labels -> 0
    assert precision_at_equal_recall(scores, labels).tolist() == [0.5, 0.5, 0.0]


def test_moe_gating_matches_a_hand_computation():
    head = MoeHead(in_dim=2, num_classes=2, num_mixtures=2)
    with torch.no_grad():
        head.gates.weight.copy_(torch.arange(12, dtype=torch.float32).reshape(6, 2) / 10 - 0.5)
        head.experts.weight.copy_(torch.arange(8, dtype=torch.float32).reshape(4, 2) / 5 - 0.7)
        head.experts.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    x = np.array([1.0, -2.0])
    weights = {k: v.detach().double().numpy() for k, v in head.state_dict().items()}
    gate_logits = weights["gates.weight"] @ x  # class-major: class c's gates at 3c .. 3c+2
    expert_logits = weights["experts.weight"] @ x + weights["experts.bias"]
    want = []
    for c in range(2):
        g = np.exp(gate_logits[3 * c:3 * c + 3]) / np.exp(gate_logits[3 * c:3 * c + 3]).sum()
        e = 1 / (1 + np.exp(-expert_logits[2 * c:2 * c + 2]))
        want.append((g[:2] * e).sum())  # the third gate is the dummy expert's, which predicts 0
    assert head(torch.from_numpy(x[None]).float())[0].tolist() == pytest.approx(want, rel=1e-6)
    assert head.gates.bias is None and head.experts.bias is not None  # the official gates have no bias


@pytest.mark.parametrize("name, inputs, params", [
    ("yt8m_logistic", lambda: (torch.randn(3, 12),), 12 * 5 + 5),
    ("yt8m_moe", lambda: (torch.randn(3, 12),), 12 * 5 * 3 + 12 * 5 * 2 + 5 * 2),
    ("yt8m_hypercolumn_moe", lambda: (torch.randn(3, 12),), None),
    ("yt8m_concepts", lambda: (torch.rand(3, 5), torch.randn(3, 12)), None),
    ("yt8m_segments", lambda: (torch.randn(3, 7, 12), torch.tensor([7, 2, 0])), None),
])
def test_models_give_probabilities_of_every_class(name, inputs, params):
    kwargs = {"num_classes": 5, "feature_dim": 12}
    if name != "yt8m_logistic" and name != "yt8m_moe":
        kwargs.update(hidden=16, depth=2)
    model = create_model(name, **kwargs).eval()
    out = model(*inputs())
    assert out.shape == (3, 5) and ((out >= 0) & (out <= 1)).all()
    count = sum(p.numel() for p in model.parameters())
    if params is not None:
        assert count == params
    if name == "yt8m_hypercolumn_moe":  # 2*12 norm, 12x16 stem, 2 blocks, MoE on 12 + 3*16 = 60 wide
        assert count == 24 + (12 * 16 + 16) + 2 * (16 * 16 + 16 + 32) + 60 * 5 * 3 + 60 * 5 * 2 + 10


def test_official_sizes_on_the_meta_device():
    with torch.device("meta"):
        moe = create_model("yt8m_moe", num_classes=4716)
    assert sum(p.numel() for p in moe.parameters()) == 1152 * 4716 * 3 + 1152 * 4716 * 2 + 4716 * 2


def test_segment_means_split_the_valid_frames_evenly():
    frames = torch.arange(6, dtype=torch.float32)[None, :, None].repeat(3, 1, 1)  # [3, 6, 1], frame t = t
    means = segment_means(frames, torch.tensor([6, 2, 0]), num_segments=3)[..., 0]
    assert means[0].tolist() == [0.5, 2.5, 4.5]
    assert means[1].tolist() == [0.0, 0.0, 1.0]  # 2 frames, 3 segments: each segment keeps a frame
    assert means[2].tolist() == [0.0, 0.0, 0.0]


def test_concept_model_reads_the_first_stage_scores_as_logits():
    model = create_model("yt8m_concepts", num_classes=4, hidden=8, depth=1).eval()
    saturated = model(torch.tensor([[0.0, 1.0, 0.5, 0.2]]))
    assert torch.isfinite(saturated).all()
    with pytest.raises(ValueError, match="features too"):
        create_model("yt8m_concepts", num_classes=4, feature_dim=3, hidden=8, depth=1)(torch.rand(1, 4))


def test_embedded_labels_are_correlated_and_deterministic():
    spec = YT8MSpec(rgb_dim=16, audio_dim=4)
    first = list(videos("train", 600, seed=3, spec=spec))
    again = list(videos("train", 3, seed=3, spec=spec, start=0))
    assert [v[0] for v in again] == [v[0] for v in first[:3]] and np.array_equal(again[2][2], first[2][2])
    assert [v[1] for v in list(videos("test", 3, seed=3, spec=spec))] != [v[1] for v in first[:3]]
    counts = [len(v[1]) for v in first]
    assert 3.0 < np.mean(counts) < 3.8 and min(counts) >= 1
    assert all(10 <= len(v[2]) <= 30 and v[2].shape[1] == 20 for v in first)
    hot = np.zeros((600, spec.num_classes))
    for i, (_, labels, _) in enumerate(first):
        hot[i, labels] = 1
    corr = np.corrcoef(hot[:, hot.std(0) > 0].T)  # classes in no topic appear only as strays, if at all
    off = corr[~np.eye(len(corr), dtype=bool)]
    assert off.max() > 0.3 > math.fabs(off.mean())  # topic mates co-occur; most pairs do not
