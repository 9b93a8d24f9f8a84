import math

import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from percli.core.metrics import average_precision, d_prime, multilabel_metrics, roc_auc


def _data(seed=0, n=200, c=6):
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, c, generator=g) < 0.3).float()
    scores = targets * 0.8 + torch.randn(n, c, generator=g)
    return scores, targets


def test_average_precision_and_auc_match_scikit_learn():
    scores, targets = _data()
    ap = average_precision(scores, targets)
    auc = roc_auc(scores, targets)
    for c in range(scores.shape[1]):
        assert ap[c].item() == pytest.approx(average_precision_score(targets[:, c], scores[:, c]), abs=1e-9)
        assert auc[c].item() == pytest.approx(roc_auc_score(targets[:, c], scores[:, c]), abs=1e-9)


def test_auc_with_ties_matches_scikit_learn():
    scores = torch.tensor([[0.5], [0.5], [0.2], [0.9], [0.5]])
    targets = torch.tensor([[1.0], [0.0], [0.0], [1.0], [0.0]])
    assert roc_auc(scores, targets)[0].item() == pytest.approx(roc_auc_score(targets[:, 0], scores[:, 0]))


def test_classes_without_positives_are_skipped_and_d_prime():
    scores, targets = _data()
    targets[:, 0] = 0
    m = multilabel_metrics(scores, targets)
    expected = sum(average_precision_score(targets[:, c], scores[:, c]) for c in range(1, 6)) / 5
    assert m["mAP"] == pytest.approx(expected, abs=1e-9)  # a fraction, like every metric in JSON
    assert d_prime(0.5) == pytest.approx(0.0, abs=1e-9)
    assert d_prime(0.9) == pytest.approx(math.sqrt(2) * 1.2815515655, abs=1e-6)
