"""Resumable, reproducible data loading with bad-file accounting.

Reproducibility does not depend on worker count, process count or interruptions because:
- the sampler's order is a pure function of (seed, epoch, rank) and can start mid-epoch;
- each sample's augmentation RNG is reseeded from (seed, epoch, index) before it is read;
- a file that raises `BadSample` becomes a marker that `collate_skip_bad` drops and reports, so
  the remaining samples keep their positions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from percli.core.data.images import BadSample


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 finaliser; stable across runs and platforms)."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class SeededSamples(Dataset):
    """Wraps a dataset; item `epoch * len + i` is sample i drawn with the RNG of (seed, epoch, i)."""

    def __init__(self, base: Dataset, seed: int):
        self.base = base
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = divmod(int(key), len(self.base))
        seed_everything(mix_seed(self.seed, epoch, index))
        try:
            return self.base[index]
        except BadSample as bad:
            return {"_bad": {"path": str(bad.path), "reason": str(bad.reason)}}


class ResumableSampler(Sampler[int]):
    """Distributed sampler whose order depends only on (seed, epoch) and that can start mid-epoch.

    Yields `epoch * n + i` so that `SeededSamples` knows the epoch inside worker processes.
    Shards are padded by wrapping (as DistributedSampler does) so every rank gets equally many.
    With `weights`, each epoch draws `num_samples` distinct items with probability proportional to
    their weight (class-balanced sampling as in AST/Audio-MAE's weighted sampler). With `set_subset`,
    an epoch is a shuffle of the given item indices (duplicates kept), e.g. the ids a curation round
    picked; `num_samples` (which may then exceed n) is the epoch length it is cut or cycled to.
    """

    def __init__(self, n: int, *, world_size: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True,
                 pad: bool = True, weights: torch.Tensor | None = None, num_samples: int | None = None,
                 subsets: bool = False):
        if n == 0:
            raise ValueError("the dataset is empty")
        if weights is not None and len(weights) != n:
            raise ValueError(f"{len(weights)} sample weights for {n} samples")
        self.n, self.world_size, self.rank, self.seed = n, world_size, rank, seed
        self.shuffle, self.pad, self.weights = shuffle, pad, weights
        self.num_samples = (num_samples or n) if subsets else min(num_samples or n, n)
        self.subset: list[int] | None = None
        self.epoch = 0
        self.start = 0

    def per_rank(self) -> int:
        if self.pad:
            return math.ceil(self.num_samples / self.world_size)
        return len(range(self.rank, self.num_samples, self.world_size))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip its first `start` samples of this rank (resume)."""
        self.epoch, self.start = epoch, start

    def set_subset(self, indices: list[int]) -> None:
        """The items the following epochs draw from (each epoch: a shuffle of them, cut or cycled to
        `num_samples`)."""
        if not indices or min(indices) < 0 or max(indices) >= self.n:
            raise ValueError(f"a subset of {len(indices)} indices, not all in [0, {self.n})")
        self.subset = list(indices)

    def __len__(self) -> int:
        return max(self.per_rank() - self.start, 0)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        if self.subset is not None:
            picks = torch.randperm(len(self.subset), generator=g).tolist() if self.shuffle else range(len(self.subset))
            order = [self.subset[j] for j in picks]
            order = (order * math.ceil(self.num_samples / len(order)))[: self.num_samples]
        elif self.weights is not None:
            order = torch.multinomial(self.weights.double(), self.num_samples, replacement=False, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()[: self.num_samples]
        else:
            order = list(range(self.num_samples))
        if self.pad:
            total = self.per_rank() * self.world_size
            order = (order * math.ceil(total / len(order)))[:total]
        shard = order[self.rank :: self.world_size]
        for i in shard[self.start :]:
            yield self.epoch * self.n + i


def collate_skip_bad(items: list[dict[str, Any]], collate: Any = default_collate) -> dict[str, Any]:
    """Collate the good samples (with `collate`); return the bad ones' paths/reasons and the number of
    good ones beside them."""
    bad = [it["_bad"] for it in items if "_bad" in it]
    good = [it for it in items if "_bad" not in it]
    return {"batch": collate(good) if good else None, "bad": bad, "good": len(good)}
