"""Weighted k-nearest-neighbour classification of frozen features (DINO / DINOv2 k-NN eval).

Features are L2-normalised, so the dot product is the cosine similarity. Each test sample looks up
its k most similar training samples; neighbour j votes for its label with weight exp(sim_j / T).
The class with the largest summed vote is the prediction (Wu et al. 2018; Caron et al. 2021).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, k: int = 20, temperature: float = 0.07,
                 chunk_size: int = 256) -> dict[str, float]:
    """Top-1 / top-5 accuracy (fractions) of temperature-weighted k-NN voting.

    Args:
        train_features: [N, D] features of the labelled bank.
        train_labels: [N] class indices in [0, num_classes).
        test_features: [M, D] features to classify.
        test_labels: [M] true classes of the test rows.
        num_classes: number of classes C.
        k: neighbours per test sample (clipped to N).
        temperature: T in exp(sim / T).
        chunk_size: test rows per similarity block, bounding memory to chunk_size x N.
    """
    if train_features.shape[0] != train_labels.shape[0] or test_features.shape[0] != test_labels.shape[0]:
        raise ValueError("features and labels must have the same number of rows")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    train_labels = train_labels.long()
    k = min(k, train.shape[0])
    top5_k = min(5, num_classes)
    correct1 = correct5 = 0
    for start in range(0, test.shape[0], chunk_size):
        sims = test[start:start + chunk_size] @ train.T  # [m, N] cosine similarities
        top_sims, top_idx = sims.topk(k, dim=1)  # [m, k]
        weights = (top_sims / temperature).exp()
        votes = torch.zeros(sims.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[top_idx], weights)  # [m, C] summed weight per class
        ranked = votes.topk(top5_k, dim=1).indices  # [m, top5_k]
        truth = test_labels[start:start + chunk_size].long().unsqueeze(1)
        correct1 += (ranked[:, :1] == truth).sum().item()
        correct5 += (ranked == truth).any(dim=1).sum().item()
    n = max(test.shape[0], 1)
    return {"top1": correct1 / n, "top5": correct5 / n}
