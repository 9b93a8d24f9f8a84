"""MoDE (Ma et al., CVPR 2024): two-level clustering of caption embeddings and expert ensemble weights.

MoDE trains one CLIP "data expert" per coarse cluster of captions. This module holds the data side:

- `balanced_kmeans` — k-means whose assignment step is size-constrained, after the
  `kernelmachine/balanced-kmeans` package MoDE uses: there, each step solves a balanced linear
  assignment (points to centers, equal counts per center) with an auction algorithm instead of
  taking every point's nearest center. Ours solves the same problem with Bertsekas' forward
  auction (`balanced_assignment`), with cluster sizes exactly floor(N/k) or ceil(N/k).
- `fit_mode` — fine clusters of the L2-normalised features (m = 1024, 50 iterations), then coarse
  clusters of the fine centers (n = 4, 100 iterations); fine center i belongs to expert
  `fine_to_coarse[i]`.
- `assign` — each caption goes to its nearest fine center, hence to that center's coarse expert
  (plain nearest center, as MoDE's inference: no balancing at assignment time).
- `ensemble_weights` — MoDE's weights of the experts for a task, from its class names' distances
  to the fine centers.

Written from the paper and the research notes (../shared/research/curation.md §4); no official code.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DISTANCES = ("euclidean", "cosine")
INITS = ("k-means++", "random")
FINE_ITER_LIMIT = 50  # MoDE's fine clustering
COARSE_ITER_LIMIT = 100  # MoDE's coarse clustering of the fine centers
TOO_MANY_CLASSES = 200  # MoDE's ensembling: past this many classes the weights sharpen
SMOOTH_SCALE = 5.0  # s = 5 log10(max(10, n_class - 200))
SMOOTH_TEMPERATURE = 8.0  # final weights = softmax(w / 8)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pairwise_distance(x: torch.Tensor, centers: torch.Tensor, distance: str) -> torch.Tensor:
    """[N, d] x [K, d] -> [N, K]: squared euclidean (what k-means minimises) or cosine distance 1 - cos."""
    if distance == "euclidean":
        sq = (x * x).sum(1, keepdim=True) - 2 * x @ centers.T + (centers * centers).sum(1)[None, :]
        return sq.clamp_min(0)
    if distance == "cosine":
        return 1 - l2_normalize(x) @ l2_normalize(centers).T
    raise ValueError(f"unknown distance {distance!r}; use one of {', '.join(DISTANCES)}")


# ---------------------------------------------------------------------------------------------
# Balanced assignment: an auction for "N points into K clusters of (almost) equal size"


def _auction(scores: np.ndarray, capacity: np.ndarray, eps: float, price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward auction (Jacobi) of persons for groups of identical slots; returns (each person's group, prices).

    `scores` [P, G] is what person p gains in group g (-inf: not allowed); group g holds `capacity[g]`
    persons and the capacities add up to P. Every round, each unplaced person bids on its best group
    (value = score - price) by the margin over its second best plus eps; a group keeps its highest
    bids up to its capacity, and once full its price is its lowest kept bid. This ends with every
    person placed and a total score within P * eps of the optimum. Numpy, not torch: the rounds are
    many small operations, and torch's thread pool costs more than they do on a busy CPU.
    """
    num_persons, num_groups = scores.shape
    owner = np.full(num_persons, -1)  # person -> group
    bid = np.zeros(num_persons)
    rows = np.arange(num_persons)
    while True:
        free = np.flatnonzero(owner < 0)
        if free.size == 0:
            return owner, price
        values = scores[free] - price  # [F, G]
        choice = values.argmax(1)
        best = values[rows[:free.size], choice]
        values[rows[:free.size], choice] = -np.inf
        offer = price[choice] + (best - values.max(1)) + eps
        # Only the groups bid on this round change: their holders compete with the new bids.
        contested = np.zeros(num_groups, dtype=bool)
        contested[choice] = True
        held = np.flatnonzero((owner >= 0) & contested[owner])
        who = np.concatenate([held, free])
        group = np.concatenate([owner[held], choice])
        amount = np.concatenate([bid[held], offer])
        order = np.lexsort((-amount, group))  # by group, highest bid first
        who, group, amount = who[order], group[order], amount[order]
        counts = np.bincount(group, minlength=num_groups)
        rank = np.arange(who.size) - (np.cumsum(counts) - counts)[group]
        stay = rank < capacity[group]
        owner[who] = -1
        owner[who[stay]] = group[stay]
        bid[who[stay]] = amount[stay]
        kept = np.bincount(group[stay], minlength=num_groups)  # every holder of a contested group is in `group`
        lowest = np.full(num_groups, np.inf)
        np.minimum.at(lowest, group[stay], amount[stay])
        full = contested & (kept >= capacity)
        price[full] = lowest[full]


def balanced_assignment(distances: torch.Tensor, eps: float | None = None,
                        prices: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Assign N points to K clusters, minimising the total distance, with every size floor(N/K) or ceil(N/K).

    Args:
        distances: [N, K] point-to-center distances, N >= K.
        eps: auction precision; the total distance is within (N + K) * eps of the best balanced
            assignment. Default: 1/50 of the spread of the distances, balanced-kmeans' choice (a
            finer eps costs many more auction rounds and hardly moves k-means' centers).
        prices: the prices an earlier call returned for a similar problem (k-means' previous
            iteration): the auction starts from them at the final eps, which saves most rounds.

    Returns:
        [N] cluster ids, and the final slot prices (to warm-start the next call).

    With N = qK + r, every cluster gets q "normal" slots and, when r > 0, one "extra" slot; K - r
    dummy points that can only take extra slots (at no cost) leave exactly r extras to real points,
    so no cluster ends up with fewer than q or more than q + 1 points. The auction runs with
    eps-scaling (coarse eps first, its prices kept as the start of the next, finer one), which
    is much faster than a single fine-eps auction and ends at the same precision.
    """
    n, k = distances.shape
    if n < k:
        raise ValueError(f"cannot balance {n} points over {k} clusters; need at least as many points as clusters")
    if k == 1:
        return torch.zeros(n, dtype=torch.long, device=distances.device), np.zeros(1)
    scores = -distances.double().cpu().numpy()
    spread = max(float(scores.max() - scores.min()), 1e-12)
    final_eps = spread / 50 if eps is None else eps
    q, r = divmod(n, k)
    capacity = np.full(k, q)
    if r:
        dummies = np.full((k - r, 2 * k), -np.inf)
        dummies[:, k:] = 0.0
        scores = np.concatenate([np.concatenate([scores, scores], 1), dummies])  # [N + K - r, 2K]: normal | extra
        capacity = np.concatenate([capacity, np.ones(k, dtype=capacity.dtype)])
    warm = prices is not None and prices.shape == capacity.shape
    price = prices.copy() if warm else np.zeros(capacity.size)
    step = final_eps if warm else spread / 10
    while True:
        step = max(step, final_eps)
        owner, price = _auction(scores, capacity, step, price)
        if step <= final_eps:
            return torch.from_numpy(owner[:n] % k).to(distances.device), price
        step /= 8


# ---------------------------------------------------------------------------------------------
# k-means


def init_centers(x: torch.Tensor, k: int, init: str, distance: str, generator: torch.Generator) -> torch.Tensor:
    """k distinct rows of x: uniformly at random, or by k-means++ (each next row drawn with probability
    proportional to its distance to the nearest row chosen so far)."""
    if init == "random":
        return x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    if init != "k-means++":
        raise ValueError(f"unknown init {init!r}; use one of {', '.join(INITS)}")
    chosen = [int(torch.randint(x.shape[0], (1,), generator=generator))]
    nearest = pairwise_distance(x, x[chosen], distance)[:, 0].double().clamp_min(0)
    for _ in range(1, k):
        if nearest.sum() <= 0:  # fewer distinct rows than k: take any row not chosen yet
            weights = torch.ones_like(nearest)
            weights[chosen] = 0
        else:
            weights = nearest
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        nearest = torch.minimum(nearest, pairwise_distance(x, x[chosen[-1:]], distance)[:, 0].double().clamp_min(0))
    return x[chosen].clone()


@dataclass
class KMeansResult:
    centers: torch.Tensor  # [K, d]
    labels: torch.Tensor  # [N] the last assignment
    iterations: int


def kmeans(x: torch.Tensor, k: int, *, distance: str = "euclidean", balanced: bool = True, iter_limit: int = 50,
           init: str = "k-means++", seed: int = 0, tol: float = 1e-3) -> KMeansResult:
    """Lloyd's k-means, with the assignment step size-constrained when `balanced`.

    Centers are the means of their points (not re-normalised, as in balanced-kmeans; the cosine
    distance ignores their norm anyway). Stops when the assignment no longer changes, when the
    squared sum of the centers' shifts falls below `tol` (kmeans_pytorch's rule and default), or
    after `iter_limit` iterations. A cluster left empty (plain k-means only) restarts at a random point.
    Deterministic for a given seed.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; use one of {', '.join(DISTANCES)}")
    n = x.shape[0]
    if n < k:
        raise ValueError(f"{n} points cannot make {k} clusters; need at least as many points as clusters")
    generator = torch.Generator().manual_seed(seed)
    x = x.float()
    centers = init_centers(x, k, init, distance, generator)
    labels = prices = None
    for iteration in range(1, iter_limit + 1):
        dist = pairwise_distance(x, centers, distance)
        if balanced:
            new, prices = balanced_assignment(dist, prices=prices)
        else:
            new = dist.argmin(1)
        if labels is not None and torch.equal(new, labels):
            return KMeansResult(centers, labels, iteration)
        labels = new
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        previous, centers = centers, sums / counts.clamp_min(1)[:, None].float()
        for empty in (counts == 0).nonzero().flatten().tolist():
            centers[empty] = x[int(torch.randint(n, (1,), generator=generator))]
        if (centers - previous).norm(dim=1).sum() ** 2 < tol:
            return KMeansResult(centers, labels, iteration)
    return KMeansResult(centers, labels, iter_limit)


# ---------------------------------------------------------------------------------------------
# MoDE's two levels, assignment and ensemble weights


@dataclass
class ModeClusters:
    """Fine centers [m, d], coarse centers [n, d] and each fine center's coarse expert [m]."""

    fine_centers: torch.Tensor
    coarse_centers: torch.Tensor
    fine_to_coarse: torch.Tensor
    distance: str = "euclidean"
    encoder: str = ""

    def save(self, path: str | Path) -> None:
        """Safetensors file, with the distance and the encoder name in its metadata (written atomically)."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tensors = {"fine_centers": self.fine_centers.float().contiguous(),
                   "coarse_centers": self.coarse_centers.float().contiguous(),
                   "fine_to_coarse": self.fine_to_coarse.long().contiguous()}
        save_file(tensors, str(tmp), metadata={"distance": self.distance, "encoder": self.encoder, "method": "mode"})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> ModeClusters:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"centers file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path} is not a safetensors file ({e})") from None
        missing = {"fine_centers", "coarse_centers", "fine_to_coarse"} - set(tensors)
        if missing:
            raise ValueError(f"{path} lacks {', '.join(sorted(missing))}; pass a mode_centers.safetensors "
                             f"written by `percli curate mode`")
        return cls(tensors["fine_centers"], tensors["coarse_centers"], tensors["fine_to_coarse"],
                   meta.get("distance", "euclidean"), meta.get("encoder", ""))

    @property
    def fine(self) -> int:
        return self.fine_centers.shape[0]

    @property
    def coarse(self) -> int:
        return self.coarse_centers.shape[0]


def fit_mode(features: np.ndarray | torch.Tensor, fine: int = 1024, coarse: int = 4, *, distance: str = "euclidean",
             balanced: bool = True, init: str = "k-means++", seed: int = 0, encoder: str = "") -> ModeClusters:
    """MoDE's two-level clustering: fine k-means of the L2-normalised features, then coarse k-means of the
    fine centers; fine center i belongs to expert `fine_to_coarse[i]`."""
    if coarse > fine:
        raise ValueError(f"{coarse} coarse clusters cannot group {fine} fine centers; use coarse <= fine")
    x = l2_normalize(torch.as_tensor(features).float())
    fine_fit = kmeans(x, fine, distance=distance, balanced=balanced, iter_limit=FINE_ITER_LIMIT, init=init, seed=seed)
    coarse_fit = kmeans(fine_fit.centers, coarse, distance=distance, balanced=balanced, iter_limit=COARSE_ITER_LIMIT,
                        init=init, seed=seed)
    return ModeClusters(fine_fit.centers, coarse_fit.centers, coarse_fit.labels, distance, encoder)


def nearest_fine(features: np.ndarray | torch.Tensor, clusters: ModeClusters) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nearest fine center and its distance to it (euclidean, or 1 - cos)."""
    x = l2_normalize(torch.as_tensor(features).float())
    dist = pairwise_distance(x, clusters.fine_centers.float(), clusters.distance)
    best, fine = dist.min(1)
    return fine, (best.sqrt() if clusters.distance == "euclidean" else best)


def assign(features: np.ndarray | torch.Tensor, clusters: ModeClusters) -> dict[str, np.ndarray]:
    """Nearest fine center of each caption, its coarse expert and the distance: {"fine", "coarse", "distance"}."""
    fine, dist = nearest_fine(features, clusters)
    return {"fine": fine.numpy(), "coarse": clusters.fine_to_coarse[fine].numpy(), "distance": dist.numpy()}


def ensemble_weights(class_features: np.ndarray | torch.Tensor, clusters: ModeClusters) -> dict:
    """MoDE's expert weights for a task from its class embeddings (one row per class).

    Class j's nearest fine center (distance d_j) names its expert k_j;
    w_k = sum over j with k_j = k of exp((a - d_j) * s), s = 5 log10(max(10, n_class - 200)),
    a = exp(0.5 - sqrt(n_class)) if n_class < 10 else 0; weights = softmax(w / 8).
    """
    n_class = len(class_features)
    if n_class == 0:
        raise ValueError("no classes: ensemble weights need at least one class name")
    fine, dist = nearest_fine(class_features, clusters)
    coarse = clusters.fine_to_coarse[fine]
    scale = SMOOTH_SCALE * math.log10(max(10, n_class - TOO_MANY_CLASSES))
    shift = math.exp(0.5 - math.sqrt(n_class)) if n_class < 10 else 0.0
    raw = torch.zeros(clusters.coarse, dtype=torch.float64)
    raw.index_add_(0, coarse, torch.exp((shift - dist.double()) * scale))
    weights = torch.softmax(raw / SMOOTH_TEMPERATURE, 0)
    return {"weights": weights.tolist(), "raw": raw.tolist(), "scale": scale, "shift": shift,
            "fine": fine.tolist(), "coarse": coarse.tolist(), "distance": dist.tolist()}


def mode_class_embeddings(enc, class_names: list[str], prompts: list[str], batch_size: int) -> np.ndarray:
    """MoDE's class embedding: the mean of its templated prompts' embeddings, L2-normalised."""
    flat = enc.encode([p.replace("{}", c) for c in class_names for p in prompts], batch_size)
    mean = flat.reshape(len(class_names), len(prompts), -1).mean(1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
