"""Pool-based active-learning query strategies (Ren et al., "A Survey of Deep Active Learning", 2021).

Notation: a pool of N points, a boolean mask `labelled` [N] (the labelled set L; the rest is the
unlabelled pool U), a per-round budget b, model probabilities p(c|x) [N, C], MC-dropout
probabilities p_t(c|x) [T, N, C] and penultimate features h(x) [N, D].

Every strategy is a pure function of its inputs, the budget, the labelled mask and a numpy
Generator, and returns `(indices, scores)`: b distinct unlabelled indices in pick order and the
score each had when it was picked (NaN for random). Uncertainty strategies rank U by a per-point
score (ties go to the lower index); core-set and BADGE pick greedily, so their score is the
distance that won each step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Selection = tuple[np.ndarray, np.ndarray]  # (indices [b] int64, scores [b] float64)
EPS = 1e-12  # 0 log 0 = 0


def _numpy(x) -> np.ndarray:
    """A float64 numpy copy of an array or a (CPU/GPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _unlabelled(labelled: np.ndarray, budget: int) -> np.ndarray:
    """Indices of U; ValueError unless 1 <= budget <= |U|."""
    pool = np.flatnonzero(~np.asarray(labelled, dtype=bool))
    if budget < 1:
        raise ValueError(f"budget must be >= 1 (got {budget})")
    if budget > pool.size:
        raise ValueError(f"budget {budget} exceeds the {pool.size} unlabelled points; lower the budget")
    return pool


def _top(scores: np.ndarray, budget: int, labelled: np.ndarray, largest: bool = True) -> Selection:
    """The b unlabelled points with the largest (or smallest) score; a stable sort breaks ties by index."""
    pool = _unlabelled(labelled, budget)
    key = -scores[pool] if largest else scores[pool]
    picked = pool[np.argsort(key, kind="stable")[:budget]]
    return picked.astype(np.int64), scores[picked]


def entropy_of(probs: np.ndarray) -> np.ndarray:
    """H[p] = -sum_c p_c log p_c over the last axis."""
    return -(probs * np.log(probs + EPS)).sum(axis=-1)


def random_sampling(budget: int, labelled: np.ndarray, rng: np.random.Generator) -> Selection:
    """b points drawn uniformly without replacement from U (the baseline)."""
    pool = _unlabelled(labelled, budget)
    return rng.choice(pool, size=budget, replace=False).astype(np.int64), np.full(budget, np.nan)


def least_confidence(probs, budget: int, labelled: np.ndarray, rng: np.random.Generator | None = None) -> Selection:
    """argmax_x 1 - max_c p(c|x)."""
    return _top(1.0 - _numpy(probs).max(axis=1), budget, labelled)


def margin(probs, budget: int, labelled: np.ndarray, rng: np.random.Generator | None = None) -> Selection:
    """argmin_x p(c1|x) - p(c2|x), c1 and c2 the two most probable classes."""
    top2 = np.sort(_numpy(probs), axis=1)[:, -2:]  # [N, 2] ascending
    return _top(top2[:, 1] - top2[:, 0], budget, labelled, largest=False)


def entropy(probs, budget: int, labelled: np.ndarray, rng: np.random.Generator | None = None) -> Selection:
    """argmax_x -sum_c p(c|x) log p(c|x)."""
    return _top(entropy_of(_numpy(probs)), budget, labelled)


def bald(mc_probs, budget: int, labelled: np.ndarray, rng: np.random.Generator | None = None) -> Selection:
    """BALD with MC dropout (Gal et al. 2017): argmax_x H[(1/T) sum_t p_t] - (1/T) sum_t H[p_t].

    The mutual information between the label and the weights: high where the T dropout samples are
    each confident but disagree, zero where they all predict the same (even uniform) distribution.
    """
    mc = _numpy(mc_probs)  # [T, N, C]
    return _top(entropy_of(mc.mean(axis=0)) - entropy_of(mc).mean(axis=0), budget, labelled)


def coreset(embeddings, budget: int, labelled: np.ndarray, rng: np.random.Generator) -> Selection:
    """k-Center greedy (Sener & Savarese 2018): b times, u = argmax_{i in U} min_{j in L + S} ||h_i - h_j||.

    The labelled set is the initial set of centres; with no labelled point the first centre is drawn
    at random from U.
    """
    h = _numpy(embeddings)  # [N, D]
    pool = _unlabelled(labelled, budget)
    centres = np.flatnonzero(labelled)
    nearest = np.full(h.shape[0], np.inf)
    for start in range(0, centres.size, 1024):  # [N, 1024] distance blocks keep memory at O(N)
        block = centres[start:start + 1024]
        nearest = np.minimum(nearest, _sq_dist(h, h[block]).min(axis=1))
    picked, scores = [], []
    if centres.size == 0:
        picked.append(int(rng.choice(pool)))
        scores.append(np.inf)
        nearest = _sq_dist(h, h[picked[-1:]])[:, 0]
    nearest[labelled] = -np.inf  # -inf: never picked (a duplicate of a centre has distance 0 but stays eligible)
    nearest[picked] = -np.inf
    while len(picked) < budget:
        u = int(np.argmax(nearest))  # ties go to the lower index
        picked.append(u)
        scores.append(np.sqrt(nearest[u]))
        nearest = np.minimum(nearest, _sq_dist(h, h[u:u + 1])[:, 0])
        nearest[u] = -np.inf
    return np.asarray(picked, dtype=np.int64), np.asarray(scores)


def _sq_dist(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """||x_i - c_j||^2 [N, K], clamped at 0 against rounding."""
    d = (x * x).sum(1)[:, None] + (centres * centres).sum(1)[None, :] - 2.0 * x @ centres.T
    return np.maximum(d, 0.0)


def badge(probs, embeddings, budget: int, labelled: np.ndarray, rng: np.random.Generator) -> Selection:
    """BADGE (Ash et al. 2020): k-means++ seeding on the gradient embeddings g_x = (p(.|x) - onehot(y^)) (x) h(x).

    g_x is the gradient of the cross-entropy at the hypothetical label y^ = argmax_c p(c|x) with respect
    to the last layer's weights [C, D]. The first pick is the largest ||g_x|| (as in the authors'
    seeding), every next one is drawn with probability proportional to its squared distance to the
    nearest pick so far (D^2 sampling). The outer products are never built: for g = a (x) h,
    <g_i, g_j> = <a_i, a_j> <h_i, h_j>, so a distance costs O(C + D) instead of O(C D).
    """
    p, h = _numpy(probs), _numpy(embeddings)  # [N, C], [N, D]
    if p.shape[0] != h.shape[0]:
        raise ValueError(f"probs have {p.shape[0]} rows but embeddings {h.shape[0]}; pass the same pool to both")
    pool = _unlabelled(labelled, budget)
    a = p.copy()
    a[np.arange(p.shape[0]), p.argmax(axis=1)] -= 1.0  # p - onehot(y^)
    norm2 = (a * a).sum(1) * (h * h).sum(1)  # ||g_x||^2

    def sq_dist_to(j: int) -> np.ndarray:
        return np.maximum(norm2 + norm2[j] - 2.0 * (a @ a[j]) * (h @ h[j]), 0.0)

    candidate = np.zeros(p.shape[0], dtype=bool)
    candidate[pool] = True
    first = int(pool[np.argmax(norm2[pool])])
    picked, scores = [first], [norm2[first]]
    candidate[first] = False
    nearest = sq_dist_to(first)
    while len(picked) < budget:
        weights = np.where(candidate, nearest, 0.0)
        if weights.sum() <= 0:  # every candidate left coincides with a pick: draw uniformly among them
            weights = candidate.astype(np.float64)
        u = int(rng.choice(p.shape[0], p=weights / weights.sum()))
        picked.append(u)
        scores.append(nearest[u])
        candidate[u] = False
        nearest = np.minimum(nearest, sq_dist_to(u))
    return np.asarray(picked, dtype=np.int64), np.asarray(scores)


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its function and the model outputs it reads (in its argument order)."""

    name: str
    needs: tuple[str, ...]  # of "probs", "mc_probs", "embeddings"
    fn: Callable[..., Selection]
    summary: str


STRATEGIES = {s.name: s for s in [
    Strategy("random", (), random_sampling, "uniform from the pool (baseline)"),
    Strategy("least-confidence", ("probs",), least_confidence, "largest 1 - max p"),
    Strategy("margin", ("probs",), margin, "smallest top-2 probability gap"),
    Strategy("entropy", ("probs",), entropy, "largest predictive entropy"),
    Strategy("bald", ("mc_probs",), bald, "largest MC-dropout mutual information"),
    Strategy("coreset", ("embeddings",), coreset, "k-center greedy on embeddings"),
    Strategy("badge", ("probs", "embeddings"), badge, "k-means++ seeding on gradient embeddings"),
]}


def select(strategy: str, budget: int, labelled: np.ndarray, rng: np.random.Generator, **inputs) -> Selection:
    """Run the named strategy on `inputs` (probs=, mc_probs=, embeddings=); ValueError names what is missing."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    spec = STRATEGIES[strategy]
    missing = [name for name in spec.needs if inputs.get(name) is None]
    if missing:
        raise ValueError(f"strategy {strategy} needs {' and '.join(missing)}")
    return spec.fn(*(inputs[name] for name in spec.needs), budget, np.asarray(labelled, dtype=bool), rng)
