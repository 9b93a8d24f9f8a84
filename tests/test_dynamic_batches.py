"""Duration-bucketed dynamic batches (`percli.core.data.dynamic_batches`): the token budget with padding,
one bucket per batch, every item once per epoch, disjoint equal shards over ranks, exact mid-epoch start."""

import random

import pytest

from percli.core.data.dynamic_batches import BucketBatchSampler, bucket_bounds

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(20, 400) for _ in range(301)]


def test_batches_fit_the_budget_hold_one_bucket_and_cover_the_epoch():
    sampler = BucketBatchSampler(LENGTHS, 2000, num_buckets=6, seed=3)
    bounds = [0.0, *sampler.bounds]
    assert sampler.bounds[-1] == max(LENGTHS) and sampler.bounds == sorted(sampler.bounds)
    for epoch in (0, 1):
        batches = sampler.epoch_batches(epoch)
        for batch in batches:
            longest = max(LENGTHS[i] for i in batch)
            assert len(batch) * longest <= 2000  # padded to the longest: the release's count
            buckets = {next(k for k in range(6) if LENGTHS[i] <= bounds[k + 1]) for i in batch}
            assert len(buckets) == 1 and all(LENGTHS[i] > bounds[min(buckets)] for i in batch)
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    # spread evenly: a batch holds over half of its bucket's capacity (or the whole bucket)
    members = [sampler.bucket.count(k) for k in range(6)]
    assert all(len(b) > min(sampler.capacity[k] / 2, members[k] - 1) for b in batches for k in [sampler.bucket[b[0]]])
    assert sampler.capacity[0] > 3 * sampler.capacity[-1]  # short utterances: many more per batch
    assert sampler.epoch_batches(0) == BucketBatchSampler(LENGTHS, 2000, seed=3).epoch_batches(0)
    assert sampler.epoch_batches(0) != sampler.epoch_batches(1)


def test_two_ranks_get_disjoint_equal_shards_covering_the_data():
    ranks = [BucketBatchSampler(LENGTHS, 2000, world_size=2, rank=r, seed=1, micro_batches=2) for r in (0, 1)]
    assert ranks[0].num_full % 2 == 1  # an odd count: one batch is halved so both ranks get the same number
    micro = [s.micro(4) for s in ranks]
    assert len(micro[0]) == len(micro[1]) == ranks[0].num_batches == ranks[1].num_batches
    items = [[i for b in m for i in b] for m in micro]
    assert not set(items[0]) & set(items[1]) and sorted(items[0] + items[1]) == list(range(len(LENGTHS)))
    # a step's two micro-batches are one batch cut by stride
    whole = ranks[0].epoch_batches(4)[0::2]
    assert [sorted(micro[0][2 * k] + micro[0][2 * k + 1]) for k in range(len(whole))] == [sorted(b) for b in whole]


def test_a_mid_epoch_start_yields_the_rest_of_the_epoch_as_keys():
    sampler = BucketBatchSampler(LENGTHS, 2000, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    assert all(k // len(LENGTHS) == 2 for b in full for k in b)  # SeededSamples' keys: epoch * n + i
    sampler.set_epoch(2, start=3)
    assert list(sampler) == full[3:] and len(sampler) == len(full) - 3


def test_bounds_and_a_budget_below_the_longest_item():
    assert bucket_bounds(100, 1) == [100.0]
    bounds = bucket_bounds(1000, 6)
    # symmetric log-normal quantiles: the first bound is exp(2 * probit(1/7)) of the last
    assert bounds[-1] == 1000 and bounds[0] == pytest.approx(118.23, rel=1e-3)
    with pytest.raises(ValueError, match="longest"):
        BucketBatchSampler([10, 50], 40)
