import torch

from percli.core.data.loader import ResumableSampler


def test_shards_cover_the_epoch_once_and_resume_mid_epoch():
    ranks = [list(ResumableSampler(10, world_size=2, rank=r, seed=3)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(10)) and set(ranks[0]).isdisjoint(ranks[1])
    s = ResumableSampler(10, world_size=2, rank=1, seed=3)
    s.set_epoch(0, start=2)
    assert list(s) == ranks[1][2:]
    s.set_epoch(1)
    assert all(k >= 10 for k in s) and sorted(k - 10 for k in s) != ranks[1]  # new epoch, new order, encoded


def test_weighted_sampling_draws_distinct_items_by_weight():
    weights = torch.tensor([0.0, 1.0, 1.0, 0.0, 5.0, 1.0])
    s = ResumableSampler(6, seed=0, weights=weights, num_samples=3)
    first = list(s)
    assert len(first) == len(set(first)) == 3 and not {0, 3} & set(first)
    assert first == list(ResumableSampler(6, seed=0, weights=weights, num_samples=3))  # a function of the seed
    counts = torch.zeros(6)
    for epoch in range(200):
        s.set_epoch(epoch)
        for k in s:
            counts[k % 6] += 1
    assert counts[0] == counts[3] == 0  # weight 0: never drawn
    assert counts[4] > counts[1] and counts[4] > counts[2] and counts[4] > counts[5]  # weight 5 beats weight 1
