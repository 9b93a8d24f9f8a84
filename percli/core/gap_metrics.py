"""YouTube-8M metrics: GAP@k, hit@1 and PERR, as the official ``eval_util`` computes them.

GAP@k (global average precision, ``eval_util.calculate_gap``): keep each video's top ``k`` predictions
(class score and whether the class is a true label), pool them over all videos, sort the pool by score and
sum precision x delta-recall down the list, where the recall denominator is the number of *all* positive
labels in the ground truth, including those that fell outside a video's top k (which can never be
recalled). It is not the mean of per-video AP@k. Ties: the official code orders equal scores at random (a
seeded shuffle); here they are ordered pessimistically (negatives first), which is deterministic and gives
a constant predictor no credit.

hit@1 (``calculate_hit_at_one``): the share of videos whose top class is a true label. PERR
(``calculate_precision_at_equal_recall_rate``): per video with n labels, the share of true labels among its
n top classes (counting only positive scores), averaged over videos; a video without labels counts 0.

Evaluation at scale keeps only what GAP needs of each video (`top_k_by_video`): its top k scores and hits and
its number of positives, so the full [videos, classes] score matrix never has to be held at once.
"""

from __future__ import annotations

import numpy as np
import torch


def top_k_by_video(scores: torch.Tensor, labels: torch.Tensor, k: int = 20) -> dict[str, torch.Tensor]:
    """Per video: ``top_k_scores`` [N, k'] and ``top_k_hits`` [N, k'] (0/1; k' = min(k, classes)), sorted by
    score, and ``positives`` [N], its number of true labels."""
    if k <= 0:
        raise ValueError(f"k must be a positive integer, got {k}")
    values, indices = scores.topk(min(k, scores.shape[1]), dim=1)
    return {"top_k_scores": values, "top_k_hits": (labels.gather(1, indices) > 0).float(),
            "positives": (labels > 0).sum(1).float()}


def gap_from_top_k(top_k_scores: torch.Tensor | np.ndarray, top_k_hits: torch.Tensor | np.ndarray,
                   positives: torch.Tensor | np.ndarray) -> float:
    """GAP of pooled top-k predictions (`top_k_by_video`'s arrays, of any number of videos)."""
    scores = np.asarray(top_k_scores, dtype=np.float64).reshape(-1)
    hits = np.asarray(top_k_hits, dtype=np.float64).reshape(-1) > 0
    total = float(np.asarray(positives, dtype=np.float64).sum())
    if total <= 0 or scores.size == 0:
        return 0.0
    order = np.lexsort((hits, -scores))  # by score, highest first; among equal scores negatives first
    hits = hits[order]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(precision[hits].sum() / total)


def global_average_precision(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                             k: int = 20) -> float:
    """GAP@k of [N, C] scores against [N, C] 0/1 labels."""
    top = top_k_by_video(torch.as_tensor(np.asarray(scores)), torch.as_tensor(np.asarray(labels)), k)
    return gap_from_top_k(top["top_k_scores"], top["top_k_hits"], top["positives"])


def hits_at_one(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N] 1 where the video's top class is a true label."""
    return (labels.gather(1, scores.argmax(1, keepdim=True))[:, 0] > 0).float()


def precision_at_equal_recall(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N] PERR of each video (module docstring)."""
    order = scores.argsort(dim=1, descending=True)
    n = (labels > 0).sum(1, keepdim=True)  # [N, 1]
    rank = torch.arange(scores.shape[1], device=scores.device)[None, :]
    kept = (rank < n) & (scores.gather(1, order) > 0)
    hits = ((labels.gather(1, order) > 0) & kept).sum(1).float()
    return hits / n[:, 0].clamp(min=1).float()
