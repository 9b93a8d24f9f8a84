"""Cross-modal retrieval metrics: R@K, median/mean rank and mAP@10, for one or both directions.

Ground truth is given by ids: query ``q`` and candidate ``c`` match when ``query_ids[q] ==
candidate_ids[c]``. With ``caption_item`` (caption -> index of its item) that covers every layout:

- text -> item (AudioCaps / Clotho / MSR-VTT captions as queries): ``query_ids=caption_item``, the
  candidates are the items (``candidate_ids=None`` = ``0..num_items-1``); each query has one match;
- item -> text: ``query_ids=None``, ``candidate_ids=caption_item``; item ``i`` matches its k captions;
- one-to-one pairs (audio <-> video, one caption per item): both None, matches on the diagonal.

Per query, candidates are ordered by similarity, highest first. Ties are broken pessimistically: among
equal scores every non-matching candidate is ranked ahead of every matching one, so a constant
similarity scores as badly as possible (R@1 0 unless everything matches) instead of by luck of index
order. The rank of a query is the 1-based position of its best-placed match. Reported:

- ``R@K``: the fraction of queries whose rank is <= K;
- ``median_rank``: floor of the median of the ranks (even counts average the middle two first), the
  vsepp / WavCaps "MdR" convention, so figures compare with published tables; ``mean_rank``: their mean;
- ``mAP@10`` (a fraction): the DCASE 2022 task 6b / Clotho definition: per query, with its R matches at
  positions p_1 < p_2 < ... in the order above, AP@10 = (1 / R) * sum over p_j <= 10 of j / p_j, then
  the mean over queries. One match at rank r gives 1 / r when r <= 10, else 0. Dividing by R (not by
  min(R, 10)) is WavCaps' item -> text code (five captions per audio);
- ``queries``: the number of queries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

RECALL_KS = (1, 5, 10)
MAP_CUTOFF = 10
_QUERY_CHUNK = 1024  # rows sorted at a time: bounds the [chunk, candidates] work tensors


def _ids(ids: torch.Tensor | Sequence[int] | None, count: int, what: str, device: torch.device) -> torch.Tensor:
    if ids is None:
        return torch.arange(count, device=device)
    ids = torch.as_tensor(ids, device=device)
    if ids.dim() != 1 or ids.shape[0] != count:
        raise ValueError(f"{what} must hold one id per {what.split('_')[0]} ({count}), got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{what} must be integer ids, got {ids.dtype}")
    return ids


def match_positions(similarity: torch.Tensor, query_ids: torch.Tensor | Sequence[int] | None = None,
                    candidate_ids: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
    """Where each query's matches land in its ranking (see the module docstring for ids and ties).

    Args:
        similarity: [num_queries, num_candidates] scores, higher = more similar (any float dtype/device).
        query_ids: [num_queries] integer ids; None = ``0..num_queries-1``.
        candidate_ids: [num_candidates] integer ids; None = ``0..num_candidates-1``.

    Returns:
        Bool [num_queries, num_candidates] on the CPU: entry (q, p) is True when position p (0-based)
        of query q's ranking holds one of its matches.

    Raises:
        ValueError: on an empty, non-2-D or NaN-holding similarity, ids of the wrong length or type, or a
            query without any matching candidate (e.g. an item whose captions were all dropped).
    """
    if similarity.dim() != 2:
        raise ValueError(f"similarity must be [num_queries, num_candidates], got shape {tuple(similarity.shape)}")
    num_queries, num_candidates = similarity.shape
    if num_queries == 0 or num_candidates == 0:
        raise ValueError(f"retrieval needs queries and candidates, got a {num_queries} x {num_candidates} similarity")
    if torch.isnan(similarity).any():
        raise ValueError("similarity holds NaN: check the embeddings (a zero vector normalised to NaN?)")
    device = similarity.device
    query_ids = _ids(query_ids, num_queries, "query_ids", device)
    candidate_ids = _ids(candidate_ids, num_candidates, "candidate_ids", device)
    chunks = []
    for start in range(0, num_queries, _QUERY_CHUNK):
        scores = similarity[start:start + _QUERY_CHUNK]  # [q, C]
        relevant = query_ids[start:start + _QUERY_CHUNK, None] == candidate_ids[None, :]  # [q, C]
        lonely = (~relevant.any(dim=1)).nonzero()
        if len(lonely):
            q = start + int(lonely[0])
            raise ValueError(f"query {q} (id {int(query_ids[q])}) matches no candidate: every query needs at "
                             "least one; drop queries without a match before scoring")
        # Two stable sorts: matches after non-matches, then by score; equal scores keep that order.
        matches_last = torch.argsort(relevant.to(torch.int8), dim=1, stable=True)
        by_score = torch.argsort(scores.gather(1, matches_last), dim=1, descending=True, stable=True)
        chunks.append(relevant.gather(1, matches_last.gather(1, by_score)).cpu())
    return torch.cat(chunks)


def retrieval_metrics(similarity: torch.Tensor, query_ids: torch.Tensor | Sequence[int] | None = None,
                      candidate_ids: torch.Tensor | Sequence[int] | None = None,
                      ks: Sequence[int] = RECALL_KS, map_cutoff: int = MAP_CUTOFF) -> dict[str, float]:
    """R@K, median/mean rank, mAP@cutoff and the query count of one retrieval direction.

    Args:
        similarity: [num_queries, num_candidates] scores, higher = more similar.
        query_ids, candidate_ids: Integer ids; a query matches the candidates with its id (module docstring).
        ks: The K of each ``R@K``.
        map_cutoff: Positions counted by ``mAP@<cutoff>`` (10 in DCASE / Clotho).

    Returns:
        ``{"R@1", "R@5", "R@10", "mAP@10"}`` as fractions, ``median_rank`` and ``mean_rank`` (1-based),
        ``queries``.
    """
    if any(k < 1 for k in ks) or map_cutoff < 1:
        raise ValueError(f"ks and map_cutoff must be >= 1, got ks={list(ks)}, map_cutoff={map_cutoff}")
    hits = match_positions(similarity, query_ids, candidate_ids)  # [Q, C] bool, ranking order
    ranks = hits.to(torch.int8).argmax(dim=1).double() + 1  # [Q] first True = best-placed match
    top = hits[:, :map_cutoff].double()  # [Q, min(cutoff, C)]
    precision = top.cumsum(dim=1) / torch.arange(1, top.shape[1] + 1, dtype=torch.float64)  # at each position
    average_precision = (precision * top).sum(dim=1) / hits.sum(dim=1)  # [Q]
    out = {f"R@{k}": float((ranks <= k).double().mean()) for k in ks}
    out["median_rank"] = float(math.floor(float(ranks.quantile(0.5))))  # even counts: mean of the middle two
    out["mean_rank"] = float(ranks.mean())
    out[f"mAP@{map_cutoff}"] = float(average_precision.mean())
    out["queries"] = float(len(ranks))
    return out


def two_way_retrieval(similarity: torch.Tensor, column_item: torch.Tensor | Sequence[int] | None = None,
                      row_name: str = "a", column_name: str = "t", ks: Sequence[int] = RECALL_KS,
                      map_cutoff: int = MAP_CUTOFF) -> dict[str, float]:
    """Both directions of a [num_items, num_columns] similarity, keys prefixed ``t2a_`` / ``a2t_``.

    Args:
        similarity: [num_items, num_columns]: rows are the items (audio, video), columns the other side
            (captions, or the other modality's items).
        column_item: [num_columns] index of each column's item (``caption_item`` of a caption manifest);
            None = one column per item, on the diagonal.
        row_name, column_name: Prefix letters: ``"{column}2{row}_"`` for columns as queries (text ->
            audio with the defaults) and ``"{row}2{column}_"`` for rows as queries.
        ks, map_cutoff: As in :func:`retrieval_metrics`.

    Returns:
        The metrics of :func:`retrieval_metrics` for both directions, e.g. ``t2a_R@1`` and ``a2t_R@1``.
    """
    if similarity.dim() != 2:
        raise ValueError(f"similarity must be [num_items, num_columns], got shape {tuple(similarity.shape)}")
    to_rows = retrieval_metrics(similarity.T, query_ids=column_item, ks=ks, map_cutoff=map_cutoff)
    to_columns = retrieval_metrics(similarity, candidate_ids=column_item, ks=ks, map_cutoff=map_cutoff)
    return {**{f"{column_name}2{row_name}_{k}": v for k, v in to_rows.items()},
            **{f"{row_name}2{column_name}_{k}": v for k, v in to_columns.items()}}
