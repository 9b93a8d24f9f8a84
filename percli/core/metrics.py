"""Metrics computed on whole evaluation sets (mAP, AUC, d-prime, accuracy, EER, CER/WER).

AudioSet-style multi-label evaluation reports the mean over classes of average precision and
the d-prime derived from the mean ROC AUC (d' = sqrt(2) * Phi^-1(AUC)), as AST/Audio-MAE do.
Classes without a positive (or without a negative, for AUC) are left out of the means.
Accuracy, EER and error rates are fractions in [0, 1] (callers scale them for tables).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    return {"mAP": float(torch.nanmean(ap)), "mAUC": mean_auc, "d_prime": d_prime(mean_auc),
            "count": float(scores.shape[0])}


def accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of `scores` [N, C] (or predicted indices [N]) against class indices [N]."""
    predictions = scores.argmax(dim=-1) if scores.dim() == 2 else scores
    if predictions.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((predictions.cpu() == targets.cpu()).double().mean())


def equal_error_rate(scores: torch.Tensor | Sequence[float], labels: torch.Tensor | Sequence[int]) -> float:
    """Equal error rate of verification `scores` (higher = same) against `labels` (1 = same, 0 = different).

    The ROC curve (one point per distinct score, ties move both rates at once) is linear between its
    points; the EER is where it crosses false-accept rate = false-reject rate, as the AV-SUPERB/s3prl
    ``EER`` finds by interpolating scikit-learn's ``roc_curve``.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    positive = torch.as_tensor(labels).flatten() > 0
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"EER needs both same and different trials, got {n_pos} same and {n_neg} different")
    order = torch.argsort(scores, descending=True, stable=True)
    scores, positive = scores[order], positive[order].double()
    last_of_tie = torch.ones_like(scores, dtype=torch.bool)
    last_of_tie[:-1] = scores[1:] != scores[:-1]  # thresholds sit between distinct scores
    zero = torch.zeros(1, dtype=torch.float64)
    tpr = torch.cat([zero, positive.cumsum(0)[last_of_tie] / n_pos])  # accepting scores >= threshold
    fpr = torch.cat([zero, (1 - positive).cumsum(0)[last_of_tie] / n_neg])
    gap = (1 - tpr) - fpr  # FRR - FAR: from 1 down to -1 along the curve
    i = int(torch.nonzero(gap <= 0)[0])  # first point at or past the crossing (i >= 1)
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operations turning a reference sequence into a hypothesis, and the reference length."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_length: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float | None:
        """errors / reference length; None for an empty reference."""
        return self.errors / self.reference_length if self.reference_length else None

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(self.substitutions + other.substitutions, self.deletions + other.deletions,
                           self.insertions + other.insertions, self.reference_length + other.reference_length)

    def as_dict(self) -> dict:
        return {"substitutions": self.substitutions, "deletions": self.deletions, "insertions": self.insertions,
                "reference_length": self.reference_length, "rate": self.rate}


def edit_operations(reference: Sequence, hypothesis: Sequence) -> ErrorCounts:
    """Levenshtein alignment with unit costs; among the alignments of least cost, the counts of one found by
    backtracking (substitution preferred, then deletion, then insertion)."""
    n, m = len(reference), len(hypothesis)
    cost = [list(range(m + 1))] + [[i] + [0] * m for i in range(1, n + 1)]  # [n + 1][m + 1]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]), cost[i - 1][j] + 1,
                             cost[i][j - 1] + 1)
    subs = dels = ins = 0
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i][j] == cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            subs += int(reference[i - 1] != hypothesis[j - 1])
            i, j = i - 1, j - 1
        elif i > 0 and cost[i][j] == cost[i - 1][j] + 1:
            dels, i = dels + 1, i - 1
        else:
            ins, j = ins + 1, j - 1
    return ErrorCounts(subs, dels, ins, n)


def edit_distance(hypothesis: Sequence, reference: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions) between two sequences."""
    return edit_operations(reference, hypothesis).errors


def _error_rate(pairs: list[tuple[Sequence, Sequence]]) -> float:
    total = sum(len(ref) for _, ref in pairs)
    if total == 0:
        raise ValueError("error rate over empty references is undefined")
    return sum(edit_distance(hyp, ref) for hyp, ref in pairs) / total


def char_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Character error rate: edits over characters (spaces included) summed over the set / reference characters."""
    return _error_rate(list(zip(hypotheses, references, strict=True)))


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Word error rate: word-level edits summed over the set / reference words (whitespace-split)."""
    return _error_rate([(h.split(), r.split()) for h, r in zip(hypotheses, references, strict=True)])


def match_clusters(labels: Sequence[int], clusters: Sequence[int]) -> Sequence[int]:
    """Relabel `clusters` with the classes of a one-to-one matching that maximises agreement (Hungarian).

    Returns a numpy array [N]; clusters left without a class (more clusters than classes) get the label -1.
    """
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    labels, clusters = np.asarray(labels), np.asarray(clusters)
    classes, label_ids = np.unique(labels, return_inverse=True)
    cluster_ids, cluster_index = np.unique(clusters, return_inverse=True)
    overlap = np.zeros((len(cluster_ids), len(classes)), dtype=np.int64)  # [clusters, classes]
    np.add.at(overlap, (cluster_index, label_ids), 1)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    mapping = np.full(len(cluster_ids), -1, dtype=labels.dtype)
    mapping[rows] = classes[cols]
    return mapping[cluster_index]


def clustering_metrics(labels: Sequence[int], clusters: Sequence[int]) -> dict[str, float]:
    """acc (after Hungarian matching), nmi, macro-f1 (after matching) and ari of a clustering against classes."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score

    matched = match_clusters(labels, clusters)
    return {"acc": float((matched == np.asarray(labels)).mean()),
            "nmi": float(normalized_mutual_info_score(labels, clusters)),
            "f1": float(f1_score(labels, matched, labels=sorted(set(labels)), average="macro", zero_division=0)),
            "ari": float(adjusted_rand_score(labels, clusters))}
