"""Duration-bucketed dynamic batches: each batch holds up to `max_tokens` frames, padding counted.

As VoiceCraft's release (after SpeechBrain's DynamicBatchSampler): utterances fall into `num_buckets`
length buckets whose upper bounds are quantiles of a log-normal stretched to the longest utterance; a
bucket with bound b makes batches of int(max_tokens / b) utterances, so (utterances x longest length)
<= max_tokens, and a batch holds similar lengths. Each epoch shuffles the utterances, fills the buckets
in that order, shuffles the batches and deals them round robin to the ranks.

Differences from the release, for exact epochs: a bucket's utterances are spread over ceil(n / size)
near-equal batches instead of full batches plus a dropped remainder, and when the batch count is not a
multiple of the rank count the largest batches are halved instead of dropping the rest, so every
utterance is read once per epoch and every rank gets the same number of batches. The order is a pure
function of (seed, epoch), so a run resumed mid-epoch skips exactly the micro-batches it had done.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from statistics import NormalDist

import torch

from percli.core.data.loader import mix_seed


def bucket_bounds(longest: int, num_buckets: int) -> list[float]:
    """Upper length bounds of the buckets: log-normal (sigma 1) quantiles at k / (num_buckets + 1), k = 1..n,
    scaled so the last bound is the longest length."""
    quantiles = [math.exp(NormalDist().inv_cdf(k / (num_buckets + 1))) for k in range(1, num_buckets + 1)]
    return [q * longest / quantiles[-1] for q in quantiles[:-1]] + [float(longest)]


class BucketBatchSampler:
    """Batch sampler of dataset keys (`epoch * n + i`, as `SeededSamples` reads them) for a DataLoader.

    Each batch of up to `max_tokens` frames is one optimizer step's data on this rank; it is cut into
    `micro_batches` strided micro-batches (items j, j + m, ...: similar lengths in each), the gradient
    accumulation steps, as the release splits its batches. `set_epoch(epoch, start)` skips the first
    `start` micro-batches of the epoch (resume).
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, *, num_buckets: int = 6, world_size: int = 1,
                 rank: int = 0, seed: int = 0, micro_batches: int = 1):
        if not lengths:
            raise ValueError("the dataset is empty")
        longest = max(lengths)
        if max_tokens < longest:
            raise ValueError(f"max_tokens={max_tokens} is below the longest item's {longest} frames")
        self.lengths, self.max_tokens, self.seed = list(lengths), max_tokens, seed
        self.world_size, self.rank, self.micro_batches = world_size, rank, micro_batches
        self.bounds = bucket_bounds(longest, num_buckets)
        self.capacity = [int(max_tokens / b) for b in self.bounds]  # utterances per batch of each bucket
        self.bucket = [bisect.bisect_left(self.bounds, n) for n in self.lengths]  # the first bound >= n
        counts = Counter(self.bucket)
        sizes = [counts[k] for k in range(num_buckets)]
        self.num_full = sum(math.ceil(n / c) for n, c in zip(sizes, self.capacity))  # batches before halving
        if len(self.lengths) < world_size:
            raise ValueError(f"{len(self.lengths)} items cannot give each of {world_size} processes a batch")
        self.batches_per_rank = math.ceil(self.num_full / world_size)
        self.epoch, self.start = 0, 0

    @property
    def num_batches(self) -> int:
        """Micro-batches per epoch on each rank."""
        return self.batches_per_rank * self.micro_batches

    @property
    def num_samples(self) -> float:
        """Items read per epoch on each rank (on average over the ranks)."""
        return len(self.lengths) / self.world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of `epoch` (item indices), in the order they are dealt out."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        members: list[list[int]] = [[] for _ in self.capacity]
        for i in torch.randperm(len(self.lengths), generator=g).tolist():
            members[self.bucket[i]].append(i)
        batches = []
        for items, capacity in zip(members, self.capacity):
            count = math.ceil(len(items) / capacity)
            batches += [items[j::count] for j in range(count)]  # near-equal sizes, all <= capacity
        batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
        for _ in range(-len(batches) % self.world_size):  # halve the largest (the first of equals) to deal evenly
            k = max(range(len(batches)), key=lambda j: (len(batches[j]), -j))
            if len(batches[k]) < 2:
                raise ValueError(f"{len(self.lengths)} items cannot give each of {self.world_size} processes "
                                 "the same number of batches")
            batches[k: k + 1] = [batches[k][0::2], batches[k][1::2]]
        return batches

    def micro(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches of `epoch` (item indices; one batch is `micro_batches` of them)."""
        mine = self.epoch_batches(epoch)[self.rank:: self.world_size]
        return [batch[j:: self.micro_batches] for batch in mine for j in range(self.micro_batches)]

    def __len__(self) -> int:
        return max(self.num_batches - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        offset = self.epoch * len(self.lengths)
        for batch in self.micro(self.epoch)[self.start:]:
            yield [offset + i for i in batch]
