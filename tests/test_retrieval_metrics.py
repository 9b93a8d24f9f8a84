"""Retrieval metrics: hand-computed ranks and mAP@10, several captions per item, pessimistic ties, and a
brute-force loop on random scores with ties."""

import math
import statistics

import pytest
import torch

from percli.core.retrieval_metrics import match_positions, retrieval_metrics, two_way_retrieval


def scores_placing(truth_rank: list[int], num_candidates: int) -> torch.Tensor:
    """[Q, C] distinct scores where query q's partner (candidate q) is ranked truth_rank[q] (1-based)."""
    rows = []
    for q, rank in enumerate(truth_rank):
        others = [c for c in range(num_candidates) if c != q]
        order = others[:rank - 1] + [q] + others[rank - 1:]  # candidates from best to worst
        row = torch.empty(num_candidates)
        row[torch.tensor(order)] = torch.arange(num_candidates, 0, -1, dtype=torch.float32)
        rows.append(row)
    return torch.stack(rows)


def test_identity_similarity_is_perfect():
    out = retrieval_metrics(torch.eye(6))
    assert out == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "median_rank": 1.0, "mean_rank": 1.0,
                   "mAP@10": 1.0, "queries": 6.0}


def test_known_ranks_give_known_recalls_ranks_and_map():
    ranks = [1, 2, 3, 4, 12, 7]
    out = retrieval_metrics(scores_placing(ranks, 14))
    assert out["R@1"] == pytest.approx(1 / 6)
    assert out["R@5"] == pytest.approx(4 / 6)
    assert out["R@10"] == pytest.approx(5 / 6)
    assert out["median_rank"] == 3.0  # floor of mean(3, 4)
    assert out["mean_rank"] == pytest.approx(29 / 6)
    assert out["mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4 + 0 + 1 / 7) / 6)
    assert out["queries"] == 6.0


def test_item_to_text_with_five_captions_uses_the_best_match_and_ap_over_all_five():
    caption_item = torch.tensor([0] * 5 + [1] * 5 + [2] * 5)
    # Item 0's captions at positions 1, 3, 6, 11 and 15 of its ranking.
    order = [0, 5, 1, 6, 7, 2, 8, 9, 10, 11, 3, 12, 13, 14, 4]
    row = torch.empty(15)
    row[torch.tensor(order)] = torch.arange(15, 0, -1, dtype=torch.float32)
    out = retrieval_metrics(row[None], query_ids=[0], candidate_ids=caption_item)
    assert out["R@1"] == 1.0 and out["median_rank"] == 1.0
    assert out["mAP@10"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 5)


def test_two_way_with_five_captions_per_item():
    caption_item = torch.arange(3).repeat_interleave(5)  # [15]
    similarity = (caption_item[None, :] == torch.arange(3)[:, None]).float()  # [3 items, 15 captions]
    similarity[1, 0] = 2.0  # item 1 prefers a caption of item 0; item 0 stays caption 0's best match
    out = two_way_retrieval(similarity, caption_item)
    assert out["t2a_queries"] == 15.0 and out["a2t_queries"] == 3.0
    assert out["t2a_R@1"] == pytest.approx(14 / 15)  # caption 0 ranks item 1 first, item 0 second
    assert out["a2t_R@1"] == pytest.approx(2 / 3)  # item 1's best own caption comes second
    assert out["a2t_mAP@10"] == pytest.approx((1 + (1 / 2 + 2 / 3 + 3 / 4 + 4 / 5 + 5 / 6) / 5 + 1) / 3)


def test_two_way_names_and_diagonal_default():
    out = two_way_retrieval(torch.eye(3), row_name="v", column_name="a")
    assert out["a2v_R@1"] == 1.0 and out["v2a_R@1"] == 1.0 and len(out) == 14


def test_ties_are_broken_pessimistically():
    assert retrieval_metrics(torch.zeros(3, 3))["R@1"] == 0.0  # every query ranks its match last
    assert retrieval_metrics(torch.zeros(3, 3))["mean_rank"] == 3.0
    tied = torch.tensor([[1.0, 1.0, 0.0]])
    assert retrieval_metrics(tied, query_ids=[0])["median_rank"] == 2.0  # tied non-match goes first
    # Matches tied with each other are not penalised: the best one is first.
    both_match = retrieval_metrics(tied, query_ids=[0], candidate_ids=[0, 0, 1])
    assert both_match["R@1"] == 1.0 and both_match["mAP@10"] == 1.0


def test_ties_do_not_depend_on_candidate_order():
    torch.manual_seed(1)
    similarity = torch.randint(0, 3, (8, 8)).float()
    perm = torch.randperm(8)
    assert retrieval_metrics(similarity) == retrieval_metrics(similarity[:, perm], candidate_ids=perm)


def brute_force(similarity: torch.Tensor, query_ids: list[int], candidate_ids: list[int]) -> dict[str, float]:
    ranks, aps = [], []
    for q, qid in enumerate(query_ids):
        # Highest score first; among equal scores non-matches first (pessimistic).
        order = sorted(range(len(candidate_ids)),
                       key=lambda c: (-float(similarity[q, c]), candidate_ids[c] == qid))
        hits = [candidate_ids[c] == qid for c in order]
        ranks.append(hits.index(True) + 1)
        found, ap = 0, 0.0
        for position, hit in enumerate(hits[:10], start=1):
            if hit:
                found += 1
                ap += found / position
        aps.append(ap / sum(hits))
    out = {f"R@{k}": sum(r <= k for r in ranks) / len(ranks) for k in (1, 5, 10)}
    out.update(median_rank=float(math.floor(statistics.median(ranks))), mean_rank=sum(ranks) / len(ranks),
               queries=float(len(ranks)))
    out["mAP@10"] = sum(aps) / len(aps)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_matches_a_brute_force_loop_on_random_scores_with_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    num_items, per_item = 9, 1 + seed % 3
    caption_item = torch.arange(num_items).repeat_interleave(per_item)
    similarity = torch.randint(0, 6, (num_items, len(caption_item)), generator=generator).float()  # many ties
    a2t = retrieval_metrics(similarity, candidate_ids=caption_item)
    t2a = retrieval_metrics(similarity.T, query_ids=caption_item)
    expected_a2t = brute_force(similarity, list(range(num_items)), caption_item.tolist())
    expected_t2a = brute_force(similarity.T, caption_item.tolist(), list(range(num_items)))
    for got, expected in ((a2t, expected_a2t), (t2a, expected_t2a)):
        assert got.keys() == expected.keys()
        for key in got:
            assert got[key] == pytest.approx(expected[key]), key


def test_large_query_sets_are_scored_in_chunks_alike():
    torch.manual_seed(0)
    similarity = torch.randn(2100, 30)
    ids = torch.randint(0, 30, (2100,))
    out = retrieval_metrics(similarity, query_ids=ids)
    assert out == pytest.approx(brute_force(similarity, ids.tolist(), list(range(30))))


def test_match_positions_marks_where_matches_land():
    hits = match_positions(torch.tensor([[0.1, 0.9, 0.5]]), query_ids=[2], candidate_ids=[2, 0, 2])
    assert hits.tolist() == [[False, True, True]]


@pytest.mark.parametrize("similarity, kwargs, message", [
    (torch.tensor([[float("nan"), 1.0]]), {}, "NaN"),
    (torch.ones(3), {}, "num_queries, num_candidates"),
    (torch.ones(0, 3), {}, "queries and candidates"),
    (torch.eye(2), {"query_ids": [0, 5]}, "query 1 \\(id 5\\) matches no candidate"),
    (torch.eye(2), {"query_ids": [0, 1, 1]}, "one id per query"),
    (torch.eye(2), {"candidate_ids": [0.0, 1.0]}, "integer ids"),
    (torch.eye(2), {"ks": (0,)}, "ks and map_cutoff"),
])
def test_bad_inputs_raise_clear_errors(similarity, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(similarity, **kwargs)
