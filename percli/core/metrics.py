"""Classification metrics computed on whole evaluation sets (mAP, AUC, d-prime, accuracy).

AudioSet-style multi-label evaluation reports the mean over classes of average precision and
the d-prime derived from the mean ROC AUC (d' = sqrt(2) * Phi^-1(AUC)), as AST/Audio-MAE do.
Classes without a positive (or without a negative, for AUC) are left out of the means.
"""

from __future__ import annotations

import math

import torch


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class AP; `scores` [N, C], `targets` [N, C] in {0, 1}; NaN where a class has no positive.

    Ties are broken by sample order after a stable sort, which matches scikit-learn only when scores
    are distinct; real model outputs almost never tie.
    """
    order = torch.argsort(scores.double(), dim=0, descending=True, stable=True)
    hits = torch.gather(targets.double() > 0.5, 0, order).double()  # [N, C] positives in rank order
    cum_hits = hits.cumsum(0)
    ranks = torch.arange(1, scores.shape[0] + 1, dtype=torch.float64).unsqueeze(1)
    positives = hits.sum(0)
    ap = (cum_hits / ranks * hits).sum(0) / positives
    return torch.where(positives > 0, ap, torch.full_like(ap, float("nan")))


def roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-class ROC AUC by the rank-sum statistic (ties get average ranks); NaN if undefined."""
    scores, pos = scores.double(), targets.double() > 0.5
    n = scores.shape[0]
    order = torch.argsort(scores, dim=0, stable=True)
    ranks = torch.empty_like(scores)
    ranks.scatter_(0, order, torch.arange(1, n + 1, dtype=torch.float64).unsqueeze(1).expand_as(scores).clone())
    # average ranks over tied scores, column by column (ties are rare; keep it exact anyway)
    for c in range(scores.shape[1]):
        col = scores[:, c]
        values, inverse, counts = torch.unique(col, return_inverse=True, return_counts=True)
        if len(values) < n:
            sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks[:, c])
            ranks[:, c] = (sums / counts)[inverse]
    n_pos = pos.sum(0).double()
    n_neg = n - n_pos
    rank_sum = (ranks * pos).sum(0)
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, float("nan")))


def d_prime(auc: float) -> float:
    """Sensitivity index from an AUC: sqrt(2) * inverse normal CDF of the AUC."""
    auc = min(max(auc, 1e-12), 1 - 1e-12)
    return math.sqrt(2.0) * float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(auc, dtype=torch.float64)))


def multilabel_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """mAP, mean AUC and d-prime of multi-label predictions (scores: logits or probabilities)."""
    ap = average_precision(scores, targets)
    auc = roc_auc(scores, targets)
    mean_auc = float(torch.nanmean(auc))
    return {"mAP": 100.0 * float(torch.nanmean(ap)), "mAUC": mean_auc, "d_prime": d_prime(mean_auc),
            "count": float(scores.shape[0])}
