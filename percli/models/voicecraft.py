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
* decoding (`edit`, `generate` and the official entry points ``inference``, ``inference_tts``,
  ``inference_tts_batch``) is `percli.models.voicecraft_decoding`, mixed into the model; seeded, it gives
  the official codes token for token (golden case ``voicecraft_infer_tiny_cfg``).

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
)
from percli.models.voicecraft_decoding import VoiceCraftDecoding
from percli.models.voicecraft_layers import (
    Decoder,
    SinePositionalEmbedding,
    TokenEmbedding,
)

# --------------------------------------------------------------------------- the model

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


class VoiceCraft(VoiceCraftDecoding, nn.Module):
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
