"""VoiceCraft token rearrangement: causal masking + delayed stacking over K codec codebooks.

Training sequence of one utterance with codes ``Y [K, T]`` and masked spans ``S1..Sn``
(unmasked pieces ``U0..Un`` stay in place, the spans move to the end)::

    U0 M0 U1 M1 ... Un+EOS M0 S1+EOG M1 S2+EOG ...

Every piece is delay-stacked on its own (codebook k shifted right by k, one leading empty step, so a
piece of T frames takes T + K steps) and the mask tokens ``Mi`` sit between the shifted pieces. The
model predicts, at step s of a shifted piece, the tokens of step s + 1; `undelay_logits` maps the
logits back onto the piece's ``[K, T]`` grid, which is also the target.

Every random draw (number of spans, starts, lengths) comes from a passed ``random.Random`` and
``torch.Generator``; with ``random.Random(seed)`` and ``torch.Generator().manual_seed(seed)`` the draws
equal the official ones after ``random.seed(seed); torch.manual_seed(seed)``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

Interval = tuple[int, int]  # [start, end) in codec frames


def sample_n_spans(max_n_spans: int, dist: str, rng: random.Random, generator: torch.Generator | None) -> int:
    """Number of masked spans: ``uniform`` on 1..max_n_spans or ``poisson<lambda>`` clamped to it."""
    if dist == "uniform":
        return rng.choice(range(1, max_n_spans + 1))
    if not dist.lower().startswith("poisson"):
        raise ValueError(f"mask_sample_dist must be 'uniform' or 'poisson<lambda>' (e.g. poisson1), got {dist!r}")
    lam = float(dist[len("poisson"):])
    draw = torch.poisson(torch.tensor([lam]), generator=generator)
    return int(draw.clamp(1, max_n_spans).item())


def sample_mask_intervals(
    y_len: int,
    *,
    max_n_spans: int,
    mask_len_min: int,
    mask_len_max: int,
    min_gap: int,
    dist: str,
    rng: random.Random,
    generator: torch.Generator | None = None,
) -> list[Interval]:
    """Masked spans of one utterance of ``y_len`` frames, sorted and non-overlapping.

    Starts are drawn without replacement from ``[1, y_len - 1 - mask_len_min)``; a start closer than
    ``min_gap`` to the previous one is dropped; a length that would reach the next start is redrawn in
    ``[1, gap - 1]``.
    """
    n_spans = sample_n_spans(max_n_spans, dist, rng, generator)
    population = range(1, y_len - 1 - mask_len_min)
    if len(population) < n_spans:
        raise ValueError(f"an utterance of {y_len} frames is too short for {n_spans} masked span(s); "
                         f"drop utterances shorter than {n_spans + 2 + mask_len_min} frames")
    starts = sorted(rng.sample(population, n_spans))
    for j in range(len(starts) - 1, 0, -1):  # backwards, comparing with the (kept) previous start
        if starts[j] - starts[j - 1] < min_gap:
            del starts[j]
    intervals = []
    for start, next_start in zip(starts, starts[1:] + [y_len]):
        gap = next_start - start
        length = rng.randint(mask_len_min, mask_len_max)
        if length > gap - 1:
            length = rng.randint(1, gap - 1)
        intervals.append((start, start + length))
    return intervals


def unmasked_intervals(mask_intervals: Sequence[Interval], y_len: int) -> list[Interval]:
    """The pieces between masked spans: ``len(mask_intervals) + 1`` intervals covering the rest."""
    ends = [0] + [end for _, end in mask_intervals]
    starts = [start for start, _ in mask_intervals] + [y_len]
    return list(zip(ends, starts))


def rearrange(
    y: torch.Tensor,
    mask_intervals: Sequence[Interval],
    *,
    eog: int,
    eos: int = -1,
    reduced_eog: bool = True,
) -> list[torch.Tensor]:
    """Causal masking of one utterance ``y [K, T]``: unmasked pieces, then masked spans, each [K, T_i].

    Terminators (one frame of the token on every codebook): with ``eos > 0`` (released models) the
    last unmasked piece ends with EOS and every span with EOG; otherwise with ``reduced_eog`` the last
    unmasked piece and the spans end with EOG; otherwise every piece does.
    """
    if eos > 0 and not reduced_eog:
        raise ValueError("eos > 0 requires reduced_eog=1 (as in the released configs)")
    K = y.shape[0]

    def end_with(piece: torch.Tensor, token: int) -> torch.Tensor:
        return torch.cat([piece, piece.new_full((K, 1), token)], dim=1)

    kept = [y[:, a:b] for a, b in unmasked_intervals(mask_intervals, y.shape[1])]
    spans = [end_with(y[:, a:b], eog) for a, b in mask_intervals]
    if reduced_eog:
        kept[-1] = end_with(kept[-1], eos if eos > 0 else eog)
    else:
        kept = [end_with(piece, eog) for piece in kept]
    return kept + spans


def delay_pattern(codes: torch.Tensor, empty: int) -> torch.Tensor:
    """Delayed stacking: ``[K, T] -> [K, T + K]``, codebook k at steps ``1 + k .. k + T``, rest ``empty``."""
    K, T = codes.shape
    out = codes.new_full((K, T + K), empty)
    for k in range(K):
        out[k, 1 + k: 1 + k + T] = codes[k]
    return out


def undelay_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits of a delayed piece ``[K, T + K, C]`` -> ``[K, T, C]`` aligned with its codes.

    The output at step s predicts step s + 1, so frame t of codebook k is read at step ``t + k``.
    """
    K, S = logits.shape[:2]
    T = S - K
    return torch.stack([logits[k, k: k + T] for k in range(K)])


def interleave_masks(shifted: Sequence[torch.Tensor], placeholder: int,
                     mask_ids: Sequence[int] | None = None) -> tuple[torch.Tensor, list[int], list[int]]:
    """Join delayed pieces ``U0..Un, S1..Sn`` with a mask step after every piece but the last.

    Returns the joined tokens ``[K, S]`` (the mask steps hold ``placeholder``; the model embeds them with
    ``mask_embedding`` instead), the mask steps' positions, and which mask embedding each uses: span i
    uses ``mask_ids[i]`` (default ``i``) both at its hole and before its content.
    """
    n_spans = (len(shifted) - 1) // 2
    if len(shifted) != 2 * n_spans + 1:
        raise ValueError(f"expected 2n+1 pieces (n+1 unmasked, n spans), got {len(shifted)}")
    ids = list(range(n_spans)) if mask_ids is None else list(mask_ids)[:n_spans]
    pieces, positions, length = [], [], 0
    for piece in shifted[:-1]:
        pieces.append(piece)
        length += piece.shape[1]
        positions.append(length)
        pieces.append(piece.new_full((piece.shape[0], 1), placeholder))
        length += 1
    pieces.append(shifted[-1])
    return torch.cat(pieces, dim=1), positions, ids + ids


def split_at_masks(seq: torch.Tensor, positions: Sequence[int], length: int) -> list[torch.Tensor]:
    """Inverse of `interleave_masks` along dim 1 of ``seq [K, S, ...]``: the pieces without mask steps."""
    bounds = [-1, *positions, length]
    return [seq[:, a + 1: b] for a, b in zip(bounds, bounds[1:])]
