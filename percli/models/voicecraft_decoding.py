"""VoiceCraft's decoding: speech editing (`edit`), continuation TTS (`generate`) and the official entry points
(``inference``, ``inference_tts``, ``inference_tts_batch``), as a mixin of `percli.models.voicecraft.VoiceCraft`.

Decoding edits the logits in the official order and draws once per step over all B*K rows, so a seeded run gives
the official codes token for token (golden case ``voicecraft_infer_tiny_cfg``, greedy and sampled). The methods
use the model's embeddings, decoder and heads (``embed_text``, ``embed_audio``, ``decoder``, ``predict``...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from percli.models.voicecraft_codebooks import (
    Interval,
    delay_pattern,
    interleave_masks,
    rearrange,
    unmasked_intervals,
)
from percli.models.voicecraft_layers import KVCache, sample_top_k_top_p

# codebook-0 ids of silence for the released 4x2048 Encodec (encodec_4cb2048_giga.th) only
SILENCE_TOKENS = (1388, 1898, 131)
# what `VoiceCraftDecoding._decode` records per step when traced (the golden case's per-call outputs)
TRACE_KEYS = ("logits_raw", "logits_adjusted", "draws", "step_tokens", "y_input_len")


@dataclass
class Decoded:
    """What `VoiceCraft._decode` sampled: the kept row's delayed spans and the race that chose it."""

    spans: list[torch.Tensor]  # one [K, G_i] per span, ending with the K end steps
    keep: int  # the batch row kept (the last whose codebook 0 ended first)
    race: torch.Tensor  # [B, K, g + 1]: every row's steps through the first end (codebook 0 = stop there)


class VoiceCraftDecoding:
    """Sampling from a VoiceCraft model (mixed into `VoiceCraft`)."""

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

