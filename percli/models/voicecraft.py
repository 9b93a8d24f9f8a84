"""VoiceCraft (Peng et al., ACL 2024): a codec language model for speech editing and zero-shot TTS.

A decoder-only Transformer reads ``[phonemes ; rearranged codec tokens]``: phoneme embeddings plus a
sinusoidal position code, then the K Encodec codebooks of every step summed through K embeddings plus
their own position code; K heads predict the next step's tokens. The codes are rearranged by causal
masking and delayed stacking (see `percli.models.voicecraft_codebooks`).

Parameter names and shapes follow jasonppy/VoiceCraft@a702dfd (``models/voicecraft.py``), so the
released checkpoints load strictly; ``tests/test_golden.py`` checks the rearranged sequences, logits
and loss against the official code. Faithful details worth knowing:

* the phoneme prefix is causally masked too (upper-triangular mask over the text, as released);
* the attention is the pre-LN ``TransformerEncoderLayer`` of VALL-E (ReLU FFN of 4·d, dropout 0.1),
  with packed ``in_proj_weight`` and a final LayerNorm;
* the loss is ``sum_k CE_k * n_tokens * codebook_weight[k]`` over every rearranged target (context
  pieces, EOS and EOG included) and is not divided by the token count.
* decoding (`edit`, `generate`; the official entry points ``inference``, ``inference_tts`` and
  ``inference_tts_batch`` with their arguments and layouts) edits the logits in the official order and
  draws once per step over all B*K rows, so a seeded run gives the official codes token for token
  (golden case ``voicecraft_infer_tiny_cfg``, greedy and sampled).

Audio token ids: codes ``0..audio_vocab_size-1``, then ``empty_token = audio_vocab_size``,
``eog = +1``, ``audio_pad_token = +2`` and, for the released models, ``eos = +3`` (``n_special=4``).
"""

from __future__ import annotations

import ast
import inspect
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.common import LoadReport, check_fit, plain, read_state
from percli.models.voicecraft_codebooks import (
    Interval,
    delay_pattern,
    interleave_masks,
    rearrange,
    sample_mask_intervals,
    split_at_masks,
    undelay_logits,
    unmasked_intervals,
)
from percli.models.voicecraft_layers import (
    Decoder,
    KVCache,
    SinePositionalEmbedding,
    TokenEmbedding,
    sample_top_k_top_p,
)

# --------------------------------------------------------------------------- the model

# codebook-0 ids of silence for the released 4x2048 Encodec (encodec_4cb2048_giga.th) only
SILENCE_TOKENS = (1388, 1898, 131)
# what `VoiceCraft._decode` records per step when traced (the golden case's per-call outputs)
TRACE_KEYS = ("logits_raw", "logits_adjusted", "draws", "step_tokens", "y_input_len")


@dataclass
class AudioBatch:
    """The rearranged audio side of a training batch (lists are per sample, then per piece)."""

    mask_intervals: list[list[Interval]]
    targets: list[list[torch.Tensor]]  # rearranged pieces [K, T_i]: also the targets
    shifted: list[list[torch.Tensor]]  # delayed pieces [K, T_i + K]
    mask_positions: list[list[int]]  # steps holding a mask embedding
    mask_values: list[list[int]]  # which mask embedding at each of those steps
    tokens: torch.Tensor  # [K, S, B], padded with audio_pad_token
    lengths: torch.Tensor  # [B] steps per sample


@dataclass
class Decoded:
    """What `VoiceCraft._decode` sampled: the kept row's delayed spans and the race that chose it."""

    spans: list[torch.Tensor]  # one [K, G_i] per span, ending with the K end steps
    keep: int  # the batch row kept (the last whose codebook 0 ended first)
    race: torch.Tensor  # [B, K, g + 1]: every row's steps through the first end (codebook 0 = stop there)


class VoiceCraft(nn.Module):
    """The VoiceCraft token-infilling language model (official argument names)."""

    def __init__(
        self,
        d_model: int = 2048,
        audio_embedding_dim: int | None = None,
        nhead: int = 16,
        num_decoder_layers: int = 16,
        n_codebooks: int = 4,
        audio_vocab_size: int = 2048,
        n_special: int = 4,
        empty_token: int = 2048,
        eog: int = 2049,
        audio_pad_token: int = 2050,
        eos: int = 2051,
        reduced_eog: bool = True,
        text_vocab_size: int = 100,
        text_pad_token: int = 100,
        max_n_spans: int = 3,
        mask_len_min: int = 1,
        mask_len_max: int = 600,
        mask_sample_dist: str = "poisson1",
        min_gap: int = 5,
        shuffle_mask_embedding: bool = False,
        codebook_weight: Sequence[float] | None = (5.0, 1.0, 0.5, 0.1),
        text_embedding_dropout: float = 0.1,
        audio_embedding_dropout: float = 0.0,
        text_positional_embedding_dropout: float = 0.1,
        audio_positional_embedding_dropout: float = 0.1,
        trm_dropout: float = 0.1,
    ):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        audio_embedding_dim = audio_embedding_dim or d_model
        if audio_embedding_dim != d_model:
            raise ValueError(f"audio_embedding_dim ({audio_embedding_dim}) must equal d_model ({d_model})")
        expected = {"empty_token": audio_vocab_size, "eog": audio_vocab_size + 1,
                    "audio_pad_token": audio_vocab_size + 2, "text_pad_token": text_vocab_size}
        given = {"empty_token": empty_token, "eog": eog, "audio_pad_token": audio_pad_token,
                 "text_pad_token": text_pad_token}
        wrong = {k: (given[k], v) for k, v in expected.items() if given[k] != v}
        if wrong:
            raise ValueError(f"special token ids must follow the vocabularies; (given, expected): {wrong}")
        if eos > 0 and (eos in (empty_token, audio_pad_token) or not reduced_eog):
            raise ValueError(f"eos={eos} must differ from empty/pad tokens and needs reduced_eog=1")
        if codebook_weight is not None and len(codebook_weight) != n_codebooks:
            raise ValueError(f"codebook_weight needs {n_codebooks} values, got {list(codebook_weight)}")
        self.d_model, self.nhead, self.n_codebooks = d_model, nhead, n_codebooks
        self.audio_vocab_size, self.n_audio_tokens = audio_vocab_size, audio_vocab_size + n_special
        self.empty_token, self.eog_token, self.audio_pad_token = empty_token, eog, audio_pad_token
        self.eos_token, self.reduced_eog = eos, bool(reduced_eog)
        self.text_pad_token = text_pad_token
        self.max_n_spans, self.mask_len_min, self.mask_len_max = max_n_spans, mask_len_min, mask_len_max
        self.mask_sample_dist, self.min_gap = mask_sample_dist, min_gap
        self.shuffle_mask_embedding = bool(shuffle_mask_embedding)
        self.codebook_weight = [1.0] * n_codebooks if codebook_weight is None else [float(w) for w in codebook_weight]

        # frozen long "parameters": kept as such so official state dicts load strictly
        self.eog = nn.Parameter(torch.full((n_codebooks, 1), eog, dtype=torch.long), requires_grad=False)
        if eos > 0:
            self.eos = nn.Parameter(torch.full((n_codebooks, 1), eos, dtype=torch.long), requires_grad=False)
        self.text_embedding = TokenEmbedding(d_model, text_vocab_size + 1, text_embedding_dropout)
        self.audio_embedding = nn.ModuleList(
            [TokenEmbedding(d_model, self.n_audio_tokens, audio_embedding_dropout) for _ in range(n_codebooks)])
        self.mask_embedding = nn.Parameter(torch.randn(max_n_spans, d_model))
        self.text_positional_embedding = SinePositionalEmbedding(d_model, text_positional_embedding_dropout)
        self.audio_positional_embedding = SinePositionalEmbedding(d_model, audio_positional_embedding_dropout)
        self.decoder = Decoder(d_model, nhead, num_decoder_layers, trm_dropout)
        hidden = audio_vocab_size // 2
        self.predict_layer = nn.ModuleList(
            [nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, self.n_audio_tokens))
             for _ in range(n_codebooks)])

    def checkpoint_meta(self) -> dict:
        """Name and constructor arguments, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config)}

    # -- token rearrangement
    def sample_mask_intervals(self, y_lens: Sequence[int], rng: random.Random,
                              generator: torch.Generator | None = None) -> list[list[Interval]]:
        """Masked spans per utterance, drawn in batch order as the official ``prepare_mask_intervals``."""
        return [sample_mask_intervals(int(n), max_n_spans=self.max_n_spans, mask_len_min=self.mask_len_min,
                                      mask_len_max=self.mask_len_max, min_gap=self.min_gap,
                                      dist=self.mask_sample_dist, rng=rng, generator=generator)
                for n in y_lens]

    def prepare_audio(self, y: torch.Tensor, y_lens: torch.Tensor, mask_intervals: Sequence[Sequence[Interval]],
                      rng: random.Random | None = None) -> AudioBatch:
        """Rearrange, delay and join the codes ``y [B, K, T]`` given each sample's masked spans."""
        targets, shifted, positions, values, joined = [], [], [], [], []
        for i, spans in enumerate(mask_intervals):
            pieces = rearrange(y[i, :, : int(y_lens[i])], spans, eog=self.eog_token, eos=self.eos_token,
                               reduced_eog=self.reduced_eog)
            delayed = [delay_pattern(p, self.empty_token) for p in pieces]
            mask_ids = list(range(self.max_n_spans))
            if self.shuffle_mask_embedding:
                (rng or random.Random()).shuffle(mask_ids)
            seq, pos, val = interleave_masks(delayed, self.eog_token, mask_ids)
            targets.append(pieces)
            shifted.append(delayed)
            positions.append(pos)
            values.append(val)
            joined.append(seq.T)  # [S_i, K]
        tokens = nn.utils.rnn.pad_sequence(joined, padding_value=self.audio_pad_token)  # [S, B, K]
        lengths = torch.tensor([s.shape[0] for s in joined], device=y.device)
        return AudioBatch([list(s) for s in mask_intervals], targets, shifted, positions, values,
                          tokens.permute(2, 0, 1), lengths)

    # -- embeddings and masks
    def embed_text(self, x: torch.Tensor) -> torch.Tensor:
        """Phoneme ids ``[B, L]`` -> ``[B, L, D]`` (embedding + positional code)."""
        return self.text_positional_embedding(self.text_embedding(x))

    def embed_audio(self, tokens: torch.Tensor, mask_positions: Sequence[Sequence[int]] = (),
                    mask_values: Sequence[Sequence[int]] = ()) -> torch.Tensor:
        """``tokens [K, S, B]`` -> ``[B, S, D]``: the codebooks' embeddings summed, mask steps replaced."""
        emb = torch.stack([self.audio_embedding[k](tokens[k]) for k in range(self.n_codebooks)]).sum(0)
        emb = emb.transpose(0, 1)  # [S, B, D] -> [B, S, D]
        for i, (pos, val) in enumerate(zip(mask_positions, mask_values)):
            if pos:
                emb[i, pos] = self.mask_embedding[val]
        return emb

    @staticmethod
    def attention_blocked(x_padding: torch.Tensor, y_padding: torch.Tensor) -> torch.Tensor:
        """[B, L+S, L+S] bool, True = may not attend: causal over ``[text ; audio]``, plus key padding.

        Text does not see audio; audio sees all text; both are causal within themselves (the released
        model masks the phoneme prefix causally too).
        """
        L, S = x_padding.shape[1], y_padding.shape[1]
        blocked = torch.ones(L + S, L + S, dtype=torch.bool, device=x_padding.device).triu(1)
        blocked[:L, L:] = True
        padding = torch.cat([x_padding, y_padding], dim=1)  # [B, L+S]
        return blocked[None] | padding[:, None, :]

    def predict(self, h: torch.Tensor) -> torch.Tensor:
        """Decoder output ``[B, S, D]`` -> logits ``[B, K, S, n_audio_tokens]``."""
        return torch.stack([head(h) for head in self.predict_layer], dim=1)

    # -- training forward
    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: torch.Tensor,
        y_lens: torch.Tensor,
        *,
        mask_intervals: Sequence[Sequence[Interval]] | None = None,
        rng: random.Random | None = None,
        generator: torch.Generator | None = None,
        return_intermediates: bool = False,
    ) -> dict[str, torch.Tensor | list]:
        """Training forward: loss and top-10 accuracies as the official ``VoiceCraft.forward``.

        Args:
            x: phoneme ids [B, L], padded with ``text_pad_token``; x_lens: [B].
            y: codec codes [B, K, T]; y_lens: [B].
            mask_intervals: per sample, the masked spans ``[(start, end), ...]``; drawn when None.
            rng: python RNG for the span starts/lengths (default: seeded from torch's generator, so
                ``torch.manual_seed`` makes a run reproducible); generator: torch RNG for the span count.
            return_intermediates: also return every intermediate named as in the golden case.

        Returns:
            ``loss`` (sum_k CE_k * n_k * w_k), ``top10acc`` (sum_k acc_k * n_k), ``top10acc_by_codebook``
            (list), ``effective_ntoken``, ``logits`` [K, N, C] and ``targets`` [K, N] as the loss sees them.
        """
        x = x[:, : int(x_lens.max())]
        y = y[:, :, : int(y_lens.max())]
        if mask_intervals is None:
            if rng is None:
                rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
            mask_intervals = self.sample_mask_intervals(y_lens.tolist(), rng, generator)
        audio = self.prepare_audio(y, y_lens, mask_intervals, rng)
        inter: dict[str, object] = {"audio": audio}

        L = x.shape[1]
        x_input = self.embed_text(x)
        x_padding = torch.arange(L, device=x.device)[None] >= x_lens[:, None]
        embedded_y = self.embed_audio(audio.tokens, audio.mask_positions, audio.mask_values)
        y_input = self.audio_positional_embedding(embedded_y)
        y_padding = torch.arange(y_input.shape[1], device=y.device)[None] >= audio.lengths[:, None]
        blocked = self.attention_blocked(x_padding, y_padding)
        xy_input = torch.cat([x_input, y_input], dim=1)
        h, _ = self.decoder(xy_input, ~blocked[:, None])
        y_out = h[:, L:]
        logits = self.predict(y_out)  # [B, K, S, C]
        inter.update(x_input=x_input, x_padding_mask=x_padding, embedded_y=embedded_y, y_input=y_input,
                     y_padding_mask=y_padding, decoder_xy_input=xy_input, decoder_blocked=blocked,
                     decoder_out_y=y_out, logits_BKSC=logits)

        # per sample and piece: drop the mask steps, undo the delay; concatenate along time
        final, targets = [], []
        for i in range(len(logits)):
            pieces = split_at_masks(logits[i], audio.mask_positions[i], int(audio.lengths[i]))
            final += [undelay_logits(p) for p in pieces]
            targets += audio.targets[i]
        out = self.forward_loss(torch.cat(final, dim=1), torch.cat(targets, dim=1))
        if return_intermediates:
            out.update(inter)
        return out

    def forward_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor | list]:
        """Weighted per-codebook cross-entropy and top-10 accuracy of ``logits [K, N, C]`` vs ``targets [K, N]``."""
        n = targets.shape[1]
        ce = [F.cross_entropy(logits[k], targets[k]) for k in range(self.n_codebooks)]
        top = min(10, logits.shape[-1])
        with torch.no_grad():
            hit = (logits.topk(top, dim=-1).indices == targets[..., None]).any(-1).float()  # [K, N]
        by_codebook = [hit[k].mean() * n for k in range(self.n_codebooks)]
        return {
            "loss": sum(c * n * w for c, w in zip(ce, self.codebook_weight)),
            "ce_by_codebook": ce,
            "top10acc": sum(by_codebook),
            "top10acc_by_codebook": by_codebook,
            "effective_ntoken": torch.tensor(n * self.n_codebooks, device=logits.device),
            "logits": logits,
            "targets": targets,
        }

    # -- inference
    def _next_logits(self, x_input: torch.Tensor, y_emb: torch.Tensor, cache: list[KVCache] | None,
                     n_new: int) -> tuple[torch.Tensor, list[KVCache]]:
        """Logits ``[B, K, C]`` after the last audio step of B equally long sequences; with a cache only the
        ``n_new`` last steps are run (they see the cached steps and, causally, each other)."""
        if cache is None:
            xy = torch.cat([x_input, self.audio_positional_embedding(y_emb)], dim=1)  # [B, L+S, D]
            n = xy.shape[1]
            # unpadded sequences: text causal, audio sees text and earlier audio = plain causal mask
            h, cache = self.decoder(xy, torch.ones(n, n, dtype=torch.bool, device=xy.device).tril())
        else:
            start = y_emb.shape[1] - n_new
            steps = self.audio_positional_embedding(y_emb[:, start:], offset=start)  # [B, n_new, D]
            past = cache[0][0].shape[2]
            attend = torch.ones(n_new, past + n_new, dtype=torch.bool, device=y_emb.device).tril(past)
            h, cache = self.decoder(steps, attend, past=cache)
        return self.predict(h[:, -1:])[:, :, 0], cache

    def _decode(self, x_input: torch.Tensor, y_emb: torch.Tensor, next_masks: list[int], *, stop: int, forbid: int,
                min_steps: int, max_steps: int, top_k: int, top_p: float, temperature: float, stop_repetition: int,
                silence_tokens: Sequence[int], kv_cache: bool, generator: torch.Generator | None,
                trace: dict[str, list] | None = None) -> Decoded:
        """Sample delayed spans after the contexts ``y_emb [B, S, D]`` (B copies of one context).

        At step g of a span codebook k > g is forced empty; codebooks > 0 may not end or be empty before
        codebook 0 ends (sampled or argmax ``stop``, or the context passing ``max_steps``); codebook k
        then ends k steps later. ``forbid`` (EOG in TTS, EOS in editing) is never sampled; ``stop`` is
        not allowed on codebook 0 for the first ``min_steps + 1`` steps (``min_steps < 0``: no limit).
        The B rows are sampled independently (one forward and one draw of all B*K rows per step); when
        codebook 0 of any row ends, the last row ending at that step is kept and only its ending steps
        are forced; the other rows go on being sampled and are thrown away (the official
        ``inference_tts_batch``, whose random stream this keeps). After a span, if ``next_masks`` is not
        empty, its last step, the next mask embedding and an empty step are appended and the next span
        starts. `trace` (lists to fill), when given, collects every step as the golden case records it:
        ``logits_raw`` (before any edit), ``logits_adjusted`` (what the sampler gets), ``draws`` (the raw
        samples), ``step_tokens`` (fed back) and ``y_input_len`` (the audio context's length).
        """
        K, empty = self.n_codebooks, self.empty_token
        B = y_emb.shape[0]
        x_input = x_input.expand(B, -1, -1)
        empty_step = self.embed_audio(torch.full((K, 1, B), empty, device=y_emb.device))  # [B, 1, D]
        spans: list[torch.Tensor] = []
        steps: list[torch.Tensor] = []  # [B, K] each
        cache: list[KVCache] | None = None
        race, keep = None, 0
        n_new, n_done, prev, repeats = y_emb.shape[1], 0, [-1] * B, [0] * B
        while True:
            logits, new_cache = self._next_logits(x_input, y_emb, cache, n_new)  # [B, K, C]
            cache = new_cache if kv_cache else None
            if trace is not None:
                trace["logits_raw"].append(logits.clone())
                trace["y_input_len"].append(y_emb.shape[1])
            g = len(steps)
            if forbid >= 0:
                logits[:, :, forbid] = -10000.0
            # the codebooks after the next one to end may neither end nor be empty (codebook 0 may be empty)
            logits[:, n_done + 1:, stop] = -10000.0
            logits[:, n_done + 1:, empty] = -10000.0
            if n_done == 0:
                if g <= min_steps:
                    logits[:, 0, stop] = -10000.0
                for b in range(B):
                    if stop_repetition > 0 and prev[b] in silence_tokens and repeats[b] > stop_repetition:
                        factor = repeats[b] - (stop_repetition - 1)
                        v = logits[b, 0, prev[b]]
                        logits[b, 0, prev[b]] = v * factor if v < 0 else v / factor
            draws = sample_top_k_top_p(logits.reshape(B * K, -1), top_k, top_p, temperature,
                                       generator).reshape(B, K)
            tokens = draws.clone()
            if n_done == 0:
                tokens[:, g + 1:] = empty  # codebook k starts k steps late
                ended = (tokens[:, 0] == stop) | (logits[:, 0].argmax(-1) == stop)
                if y_emb.shape[1] > max_steps:
                    ended[:] = True
                tokens[ended, 0] = stop
                for b in range(B):
                    token0 = int(tokens[b, 0])
                    repeats[b] = repeats[b] + 1 if token0 in silence_tokens and token0 == prev[b] else 0
                    prev[b] = token0
                if ended.any():
                    n_done, keep = 1, int(ended.nonzero().max())  # of rows ending together, the last (official)
                    if race is None:
                        race = torch.stack([*steps, tokens], dim=2)  # [B, K, g + 1]
            else:  # the kept row ends codebook n_done now; the others' draws are fed back as they are
                tokens[keep, :n_done] = empty
                tokens[keep, n_done] = stop
                n_done += 1
            if trace is not None:
                trace["logits_adjusted"].append(logits.clone())
                trace["draws"].append(draws)
                trace["step_tokens"].append(tokens.clone())
            steps.append(tokens)
            new = [self.embed_audio(tokens.T[:, None, :])]  # [K, 1, B] -> [B, 1, D]
            if n_done == K:
                spans.append(torch.stack([s[keep] for s in steps], dim=1))  # [K, G]
                if not next_masks:
                    return Decoded(spans, keep, race)
                new += [self.mask_embedding[next_masks.pop(0)].expand(B, 1, -1), empty_step]
                steps, n_done, prev, repeats = [], 0, [-1] * B, [0] * B
            y_emb = torch.cat([y_emb, *new], dim=1)
            n_new = len(new)

    @staticmethod
    def _undelay(span: torch.Tensor) -> torch.Tensor:
        """A sampled delayed span ``[K, G]`` (ending with the K end steps) -> its frames ``[K, G - K]``."""
        K, G = span.shape
        return torch.stack([span[k, k: G - K + k] for k in range(K)])

    @torch.no_grad()
    def generate(
        self,
        x: torch.Tensor,
        prompt: torch.Tensor,
        *,
        top_k: int = 40,
        top_p: float = 1.0,
        temperature: float = 1.0,
        stop_repetition: int = 3,
        silence_tokens: Sequence[int] = SILENCE_TOKENS,
        kv_cache: bool = True,
        codec_rate: int = 50,
        batch_size: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """TTS continuation of ``prompt`` (the official ``inference_tts``): the new frames only, ``[K, G]``.

        Args:
            x: phoneme ids [L] or [1, L] of the prompt's transcript followed by the text to say.
            prompt: codec codes [K, T] of the prompt audio.
            top_k, top_p, temperature: sampling filters (``top_k <= 0`` / ``top_p = 1`` disable them).
            stop_repetition: when codebook 0 repeats a silence token more than this many times, its
                logit is pushed down in proportion to the run length; ``<= 0`` disables.
            silence_tokens: codebook-0 silence ids of the codec (the released Encodec's by default).
            kv_cache: reuse keys/values of earlier steps (same tokens as without, faster).
            codec_rate: codec frames per second; EOS is forbidden for the first ``codec_rate // 5``
                steps and generation stops past ``codec_rate // 5`` audio steps per phoneme.
            batch_size: B > 1 is the official ``inference_tts_batch``: B copies of the prompt are sampled
                together (one forward per step) and the first to end is returned, so the shortest of B;
                when several end at the same step, the last of them (official). 1 is ``inference_tts``.
            generator: torch RNG for the draws (seedable; None uses the global one, as official).

        The prompt is delayed and its last K-1 (partial) steps dropped; the new frames form a fresh
        delayed piece ending with EOS (EOG for models without EOS). The full utterance is
        ``torch.cat([prompt, result], dim=1)``.
        """
        return self._undelay(self._continue(x, prompt, top_k=top_k, top_p=top_p, temperature=temperature,
                                            stop_repetition=stop_repetition, silence_tokens=silence_tokens,
                                            kv_cache=kv_cache, codec_rate=codec_rate, batch_size=batch_size,
                                            generator=generator).spans[0])

    def _continue(self, x: torch.Tensor, prompt: torch.Tensor, *, codec_rate: int, batch_size: int,
                  max_steps: int | None = None, **sampling) -> Decoded:
        """`generate`'s sampling, returning the delayed span with the race of the batch rows.

        ``max_steps`` (default: ``codec_rate // 5`` per phoneme of ``x``) caps the audio context's length.
        """
        if self.eos_token <= 0 and not self.reduced_eog:
            raise ValueError("TTS continuation needs a model trained with reduced_eog (the released ones)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        x = x.reshape(1, -1)
        delayed = delay_pattern(prompt, self.empty_token)[:, : prompt.shape[1] + 1]  # [K, T + 1]
        stop = self.eos_token if self.eos_token > 0 else self.eog_token
        y_emb = self.embed_audio(delayed[:, :, None]).expand(batch_size, -1, -1)
        if max_steps is None:
            max_steps = x.shape[1] * (codec_rate // 5)
        return self._decode(self.embed_text(x), y_emb, [], stop=stop, forbid=self.eog_token if self.eos_token > 0
                            else -1, min_steps=codec_rate // 5, max_steps=max_steps, **sampling)

    @torch.no_grad()
    def edit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mask_intervals: Sequence[Interval],
        *,
        top_k: int = 40,
        top_p: float = 1.0,
        temperature: float = 1.0,
        stop_repetition: int = -1,
        silence_tokens: Sequence[int] = SILENCE_TOKENS,
        kv_cache: bool = True,
        codec_rate: int = 50,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Speech editing (the official ``inference``): regenerate the spans, return the codes ``[K, T']``.

        Args:
            x: phoneme ids [L] or [1, L] of the whole target transcript.
            y: codec codes [K, T] of the original recording.
            mask_intervals: sorted, disjoint frame spans ``[(start, end), ...]`` to regenerate (at most
                ``max_n_spans``); each new span ends at EOG and may be longer or shorter.
            other arguments: as `generate` (no minimum length here, as official).

        The context is ``U0 M0 U1 ... Un+EOS M0 <empty>``; span i is sampled until EOG, then
        ``M(i+1) <empty>`` starts the next. Unmasked frames are copied unchanged into the result.
        """
        x = x.reshape(1, -1)
        return self._edit(x, y, mask_intervals, max_steps=x.shape[1] * (codec_rate // 5), top_k=top_k, top_p=top_p,
                          temperature=temperature, stop_repetition=stop_repetition, silence_tokens=silence_tokens,
                          kv_cache=kv_cache, generator=generator)

    def _edit(self, x: torch.Tensor, y: torch.Tensor, mask_intervals: Sequence[Interval], *, max_steps: int,
              **sampling) -> torch.Tensor:
        """`edit` on phonemes ``x [1, L]``, stopping a span once the audio context passes ``max_steps``."""
        if not 0 < len(mask_intervals) <= self.max_n_spans:
            raise ValueError(f"need 1..{self.max_n_spans} spans to edit, got {len(mask_intervals)}")
        spans = [(int(a), int(b)) for a, b in mask_intervals]
        pieces = rearrange(y, spans, eog=self.eog_token, eos=self.eos_token, reduced_eog=self.reduced_eog)
        delayed = [delay_pattern(p, self.empty_token) for p in pieces]
        seq, positions, values = interleave_masks(delayed, self.eog_token, list(range(self.max_n_spans)))
        n = len(spans)
        context = seq[:, : positions[n] + 2]  # through the first span's mask and its leading empty step
        y_emb = self.embed_audio(context[:, :, None], [positions[: n + 1]], [values[: n + 1]])
        generated = self._decode(self.embed_text(x), y_emb, values[n + 1:], stop=self.eog_token,
                                 forbid=self.eos_token, min_steps=-1, max_steps=max_steps, **sampling).spans
        kept = [y[:, a:b] for a, b in unmasked_intervals(spans, y.shape[1])]
        out = [kept[0]]
        for span, piece in zip(generated, kept[1:]):
            out += [self._undelay(span), piece]
        return torch.cat(out, dim=1)

    # -- the official inference entry points (their arguments and layouts; `trace` for the golden replay)
    def _official_layout(self, x: torch.Tensor, x_lens: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Check ``x [1, L]``, ``x_lens [1]``, ``y [1, T, K]`` as the official entry points take them; y as [K, T]."""
        if x.dim() != 2 or x.shape[0] != 1 or x_lens.shape != (1,):
            raise ValueError(f"expected x [1, L] and x_lens [1] (one utterance), got {tuple(x.shape)} and "
                             f"{tuple(x_lens.shape)}")
        if y.dim() != 3 or y.shape[0] != 1 or y.shape[2] != self.n_codebooks:
            raise ValueError(f"expected codes y [1, T, {self.n_codebooks}] (the official layout: frames before "
                             f"codebooks), got {tuple(y.shape)}")
        return y[0].T  # [T, K] -> [K, T]

    @staticmethod
    def _finish_trace(trace: dict[str, list], batched: bool, **results: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {k: torch.stack(v) if k != "y_input_len" else torch.tensor(v) for k, v in trace.items()}
        if not batched:  # [S, 1, ...] -> [S, ...]
            out = {k: v[:, 0] if k != "y_input_len" else v for k, v in out.items()}
        return {**results, **out}

    @torch.no_grad()
    def inference(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: torch.Tensor,
        mask_interval: torch.Tensor,
        top_k: int = -100,
        top_p: float = 1.0,
        temperature: float = 1.0,
        stop_repetition: int = -1,
        kvcache: int = 1,
        silence_tokens: Sequence[int] = SILENCE_TOKENS,
        *,
        generator: torch.Generator | None = None,
        return_trace: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The official ``VoiceCraft.inference`` (speech editing): `edit` with the official arguments.

        Args:
            x: phoneme ids [1, L]; x_lens: [1] (a span stops once the audio context passes
                ``x_lens[0] * 10`` steps: the official editing limit, whatever the codec rate).
            y: codes [1, T, K] (frames first, as the official scripts pass them).
            mask_interval: [1, M, 2] frame spans ``(start, end)``, end exclusive, sorted.
            return_trace: also return every decoding step (see `_decode`) in a dict with ``res``.

        Returns:
            The edited codes ``res [1, K, T']``, or the trace dict.
        """
        codes = self._official_layout(x, x_lens, y)
        if mask_interval.dim() != 3 or mask_interval.shape[0] != 1 or mask_interval.shape[2] != 2:
            raise ValueError(f"expected mask_interval [1, M, 2], got {tuple(mask_interval.shape)}")
        trace = {k: [] for k in TRACE_KEYS} if return_trace else None
        res = self._edit(x, codes, mask_interval[0].tolist(), max_steps=int(x_lens[0]) * 10, top_k=top_k,
                         top_p=top_p, temperature=temperature, stop_repetition=stop_repetition,
                         silence_tokens=silence_tokens, kv_cache=bool(kvcache), generator=generator,
                         trace=trace)[None]
        return res if trace is None else self._finish_trace(trace, False, res=res)

    def _inference_tts(self, x: torch.Tensor, x_lens: torch.Tensor, y: torch.Tensor, batch_size: int | None,
                       return_trace: bool, codec_rate: int, kvcache: int, **sampling
                       ) -> tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]:
        """`inference_tts` (``batch_size`` None) or `inference_tts_batch`."""
        prompt = self._official_layout(x, x_lens, y)
        trace = {k: [] for k in TRACE_KEYS} if return_trace else None
        decoded = self._continue(x, prompt, codec_rate=codec_rate, batch_size=batch_size or 1,
                                 max_steps=int(x_lens[0]) * (codec_rate // 5), kv_cache=bool(kvcache), trace=trace,
                                 **sampling)
        gen = self._undelay(decoded.spans[0])[None]  # [1, K, G]
        res = torch.cat([prompt[None], gen], dim=2)  # [1, K, T + G]
        if trace is None:
            return res, gen
        return self._finish_trace(trace, batch_size is not None, res=res, gen=gen)

    @torch.no_grad()
    def inference_tts(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: torch.Tensor,
        top_k: int = -100,
        top_p: float = 1.0,
        temperature: float = 1.0,
        stop_repetition: int = 3,
        kvcache: int = 1,
        silence_tokens: Sequence[int] = SILENCE_TOKENS,
        *,
        codec_rate: int = 50,
        generator: torch.Generator | None = None,
        return_trace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]:
        """The official ``VoiceCraft.inference_tts``: `generate` with the official arguments and layouts.

        Args:
            x: phoneme ids [1, L]; x_lens: [1] (generation stops once the audio context passes
                ``x_lens[0] * codec_rate // 5`` steps; EOS is banned for the first ``codec_rate // 5``).
            y: prompt codes [1, T, K].
            return_trace: return a dict of ``res``, ``gen`` and every decoding step (see `_decode`).

        Returns:
            ``(res [1, K, T + G], gen [1, K, G])``: the prompt followed by the new frames, and those alone.
        """
        return self._inference_tts(x, x_lens, y, None, return_trace, codec_rate, kvcache, top_k=top_k, top_p=top_p,
                                   temperature=temperature, stop_repetition=stop_repetition,
                                   silence_tokens=silence_tokens, generator=generator)

    @torch.no_grad()
    def inference_tts_batch(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        y: torch.Tensor,
        top_k: int = -100,
        top_p: float = 1.0,
        temperature: float = 1.0,
        stop_repetition: int = 3,
        kvcache: int = 1,
        batch_size: int = 5,
        silence_tokens: Sequence[int] = SILENCE_TOKENS,
        *,
        codec_rate: int = 50,
        generator: torch.Generator | None = None,
        return_trace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]:
        """The official ``VoiceCraft.inference_tts_batch``: `inference_tts` sampling ``batch_size`` rows at once
        and returning the first to end (``generate(..., batch_size=B)``); a trace keeps the batch axis
        (``logits_raw [S, B, K, C]``, ``draws [S, B, K]``...)."""
        return self._inference_tts(x, x_lens, y, batch_size, return_trace, codec_rate, kvcache, top_k=top_k,
                                   top_p=top_p, temperature=temperature, stop_repetition=stop_repetition,
                                   silence_tokens=silence_tokens, generator=generator)

# --------------------------------------------------------------------------- official checkpoints

def kwargs_from_official_args(args: Mapping | object) -> dict:
    """Constructor arguments from an official ``args`` Namespace/dict (``.pth["config"]`` or config.json).

    Strings the official code ``eval``s (``audio_vocab_size``, ``codebook_weight``) are parsed as
    literals; arguments that do not shape the model are ignored.
    """
    args = dict(vars(args)) if not isinstance(args, Mapping) else dict(args)
    if int(args.get("special_first", 0) or 0):
        raise ValueError("special_first=1 checkpoints (special ids before the codes) are not supported")
    args.setdefault("eos", -1)
    if not args.get("n_special"):
        args["n_special"] = 3  # the official default when absent
    args.setdefault("reduced_eog", 0)
    for key in ("audio_vocab_size", "codebook_weight"):
        if isinstance(args.get(key), str):
            args[key] = ast.literal_eval(args[key])
    names = set(inspect.signature(VoiceCraft).parameters)
    return {k: v for k, v in args.items() if k in names}


def load_official_state(model: VoiceCraft, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """Load an official VoiceCraft state strictly (names, shapes, eog/eos ids).

    Accepts the release ``.pth`` (``{"config", "phn2num", "model"}``, read with ``weights_only=True``:
    its ``config`` is an ``argparse.Namespace``, the only non-tensor type allowed), the Hugging Face
    ``model.safetensors``, or a mapping. Raises, naming the keys, if anything does not fit.
    """
    state = read_state(state_or_path)
    check_fit(model, state, model.arch, hint="build the model from the checkpoint's config (kwargs_from_official_args)")
    own = model.state_dict()
    special = [k for k in ("eog", "eos") if k in state and not torch.equal(state[k].cpu(), own[k].cpu())]
    if special:
        raise RuntimeError(f"checkpoint special token ids {special} differ from the model's; build it from the "
                           "checkpoint's config")
    model.load_state_dict(state, strict=True)
    return LoadReport(source_format="official")


# --------------------------------------------------------------------------- registered variants

def _build(name: str, dim: int, depth: int, overrides: dict) -> VoiceCraft:
    # the released recipe (z_scripts/e830M.sh): EOS + reduced EOG, 4 specials, weights [5, 1, 0.5, 0.1]
    model = VoiceCraft(**{"d_model": dim, "nhead": 16, "num_decoder_layers": depth, **overrides})
    model.arch = name
    return model


@register_model
def voicecraft_830m(**kwargs) -> VoiceCraft:
    return _build("voicecraft_830m", 2048, 16, kwargs)


@register_model
def voicecraft_330m(**kwargs) -> VoiceCraft:
    return _build("voicecraft_330m", 1024, 24, kwargs)


register_loader(__name__)(load_official_state)
