"""Autoregressive decoding over a KV cache: greedy, temperature + nucleus (top-p) sampling, beam search.

A model hands in ``step(new_ids, state) -> logits [N, V]``: with ``new_ids=None`` it reads the
context and fills ``state`` (its KV cache and whatever else it needs, tensors with the sequence
in dim 0); afterwards it feeds ``new_ids`` [N, 1]. Beam search reorders every tensor of ``state``
along dim 0 when beams are chosen, so the step function never knows about beams.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

DecodeCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [N, heads, S, C/heads]
StepFn = Callable[[torch.Tensor | None, dict[str, Any]], torch.Tensor]


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al., 2020): keep the most likely tokens until their mass reaches
    ``top_p`` (the most likely one always stays), set the others to -inf. logits [N, V]."""
    ordered, order = logits.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    outside = probs.cumsum(dim=-1) - probs >= top_p  # mass before this token already reaches top_p
    outside[:, 0] = False
    return torch.full_like(logits, float("-inf")).scatter(-1, order, ordered.masked_fill(outside, float("-inf")))


def _finish(rows: list[list[int]], eos: int) -> list[list[int]]:
    """Each row up to (without) its first EOS."""
    return [row[:row.index(eos)] if eos in row else row for row in rows]


def sample_or_greedy(step: StepFn, batch: int, eos: int, max_new_tokens: int, *, greedy: bool,
                     temperature: float = 1.0, top_p: float = 1.0,
                     generator: torch.Generator | None = None) -> list[list[int]]:
    """Token ids of each row (without EOS): argmax, or a draw from softmax(logits / T) after top-p."""
    if not greedy and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
    state: dict[str, Any] = {}
    logits = step(None, state)
    done = torch.zeros(batch, dtype=torch.bool, device=logits.device)
    out = []
    for _ in range(max_new_tokens):
        if greedy:
            chosen = logits.argmax(dim=-1)
        else:
            probs = top_p_filter(logits / temperature, top_p).softmax(dim=-1)
            chosen = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)
        chosen = chosen.masked_fill(done, eos)
        out.append(chosen)
        done |= chosen == eos
        if bool(done.all()):
            break
        logits = step(chosen[:, None], state)
    return _finish(torch.stack(out, dim=1).tolist(), eos)


def reorder_state(state: dict[str, Any], index: torch.Tensor) -> None:
    """Pick rows ``index`` of every tensor in ``state`` (and of every (keys, values) of a cache)."""
    for key, value in state.items():
        if torch.is_tensor(value):
            state[key] = value.index_select(0, index.to(value.device))
        elif isinstance(value, list):
            state[key] = [tuple(t.index_select(0, index.to(t.device)) for t in kv) for kv in value]


def beam_search(step: StepFn, batch: int, num_beams: int, eos: int, max_new_tokens: int,
                length_penalty: float = 1.0) -> list[list[int]]:
    """Best hypothesis per row by sum of log-probabilities / length ** length_penalty.

    At each step the 2K best continuations are ranked; those ending in EOS within the top K
    become finished hypotheses, the best K others stay live (as Hugging Face's beam search). A
    row stops once it has K finished hypotheses (early stopping); rows still open at
    ``max_new_tokens`` compete with their live beams.
    """
    k = num_beams
    if k < 1:
        raise ValueError(f"num_beams must be >= 1 (got {k})")
    state: dict[str, Any] = {}
    logits = step(None, state)
    device = logits.device
    reorder_state(state, torch.arange(batch, device=device).repeat_interleave(k))
    logp = logits.log_softmax(dim=-1).repeat_interleave(k, dim=0)  # [B*K, V]
    scores = torch.zeros(batch, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: only the first may expand
    tokens = torch.zeros(batch * k, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for t in range(max_new_tokens):
        vocab = logp.shape[-1]
        top_scores, top_index = (scores.view(-1, 1) + logp).view(batch, k * vocab).topk(min(2 * k, k * vocab), dim=1)
        new_scores = torch.full((batch, k), float("-inf"), device=device)
        sources = torch.arange(k, device=device).repeat(batch, 1)
        new_tokens = torch.full((batch, k), eos, dtype=torch.long, device=device)
        for b in range(batch):
            if done[b]:
                continue
            slot = 0
            for rank, (score, index) in enumerate(zip(top_scores[b].tolist(), top_index[b].tolist())):
                if score == float("-inf") or slot == k:
                    break
                source, token = divmod(index, vocab)
                if token == eos:
                    if rank < k:
                        finished[b].append((score / (t + 1) ** length_penalty, tokens[b * k + source].tolist()))
                else:
                    new_scores[b, slot], sources[b, slot], new_tokens[b, slot] = score, source, token
                    slot += 1
            done[b] = len(finished[b]) >= k or slot == 0
        if all(done):
            break
        flat = (torch.arange(batch, device=device)[:, None] * k + sources).view(-1)
        tokens = torch.cat([tokens[flat], new_tokens.view(-1, 1)], dim=1)
        scores = new_scores
        reorder_state(state, flat)
        logp = step(new_tokens.view(-1, 1), state).log_softmax(dim=-1)
    else:
        length = max(tokens.shape[1], 1) ** length_penalty
        for b in range(batch):
            if not done[b]:
                finished[b] += [(float(scores[b, j]) / length, tokens[b * k + j].tolist()) for j in range(k)
                                if scores[b, j] > float("-inf")]
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]
