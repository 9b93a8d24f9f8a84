"""UMMT: the multimodal translation model of unsupervised multimodal MT with pseudo visual pivoting (Huang, Hu,
Chang, Hauptmann, ACL 2020).

A Transformer encoder-decoder with one subword vocabulary and one embedding table for every language (tied with
the output layer, as XLM / UNMT share them). A sequence starts with its language's tag (``<en>``, ``<de>``; the
decoder's first input names the language to write, as mBART's). The encoder reads the source tokens followed by
the image's regions (a linear map of the region features plus a learned "region" type embedding) when an image
is given, so one model translates with or without an image, and captions when it gets only the image (no source
text): the visually-pivoted captioner of the paper is this model with an empty source.

No code is public and the paper's text could not be read here: the sizes, the tags and the region input are
percli's choices (each a constructor argument); the paper initialises from XLM, percli from scratch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.common import LoadReport, load_percli_state, plain


class UMMT(nn.Module):
    """Encoder-decoder of the module docstring.

    Calling conventions:
        ``model(src, src_mask, tgt_in, regions=None, region_mask=None)``: logits [B, T, V] of the next token
        after each position of ``tgt_in`` (teacher forcing; ``src`` may be None: caption from the image).
        ``model.generate(src, src_mask, tgt_lang_id, ...)``: greedy or beam decoding, ids [B, <= max_len].
    """

    def __init__(self, vocab_size: int = 16000, d_model: int = 512, heads: int = 8, encoder_layers: int = 6,
                 decoder_layers: int = 6, ff_dim: int = 2048, dropout: float = 0.1, region_dim: int = 2048,
                 max_len: int = 128, pad_id: int = 0, eos_id: int = 3):
        args = dict(locals())
        super().__init__()
        self.config = {k: plain(v) for k, v in args.items() if k not in ("self", "__class__")}
        self.arch = type(self).__name__
        self.pad_id, self.eos_id, self.max_len = pad_id, eos_id, max_len
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.pos = nn.Embedding(max_len, d_model)
        self.region_proj = nn.Linear(region_dim, d_model)
        self.region_type = nn.Parameter(torch.zeros(1, 1, d_model))
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, heads, ff_dim, dropout, batch_first=True, norm_first=True),
            encoder_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d_model, heads, ff_dim, dropout, batch_first=True, norm_first=True),
            decoder_layers, norm=nn.LayerNorm(d_model))
        self.scale = d_model ** 0.5
        # training steps taken (read by the recipe's schedule of its losses; saved, so --resume is exact)
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
        nn.init.normal_(self.pos.weight, std=0.02)
        nn.init.normal_(self.region_type, std=0.02)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()

    def checkpoint_meta(self) -> dict:
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config)}

    def _tokens(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.max_len:
            raise ValueError(f"a sequence of {ids.shape[1]} tokens is longer than the model's max_len={self.max_len}")
        return self.embed(ids) * self.scale + self.pos(torch.arange(ids.shape[1], device=ids.device))

    def encode(self, src: torch.Tensor | None, src_mask: torch.Tensor | None, regions: torch.Tensor | None = None,
               region_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory [B, S + R, d] and its mask (True = real) of the source tokens and / or the image's regions."""
        parts, masks = [], []
        if src is not None:
            parts.append(self._tokens(src))
            masks.append(src_mask)
        if regions is not None:
            parts.append(self.region_proj(regions) + self.region_type)
            masks.append(region_mask if region_mask is not None else
                         torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device))
        if not parts:
            raise ValueError("encode needs a source text, an image, or both")
        mask = torch.cat(masks, dim=1)
        return self.encoder(torch.cat(parts, dim=1), src_key_padding_mask=~mask), mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of the token after each position of `tgt_in` (causal)."""
        t = tgt_in.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).triu(1)  # True = may not attend
        h = self.decoder(self._tokens(tgt_in), memory, tgt_mask=causal, tgt_is_causal=True,
                         tgt_key_padding_mask=tgt_in == self.pad_id, memory_key_padding_mask=~memory_mask)
        return h @ self.embed.weight.T  # tied output layer

    def forward(self, src: torch.Tensor | None, src_mask: torch.Tensor | None, tgt_in: torch.Tensor,
                regions: torch.Tensor | None = None, region_mask: torch.Tensor | None = None) -> torch.Tensor:
        memory, mask = self.encode(src, src_mask, regions, region_mask)
        return self.decode(tgt_in, memory, mask)

    @torch.no_grad()
    def generate(self, src: torch.Tensor | None, src_mask: torch.Tensor | None, tgt_lang_id: int,
                 regions: torch.Tensor | None = None, region_mask: torch.Tensor | None = None,
                 max_len: int = 48, beam: int = 1) -> torch.Tensor:
        """Decode from the language tag ``tgt_lang_id``: greedy (``beam`` 1) or beam search with length-normalised
        scores. Returns ids [B, L] (tag dropped, ``</s>`` and padding after it as ``pad_id``)."""
        memory, mask = self.encode(src, src_mask, regions, region_mask)
        if beam > 1:
            return self._beam(memory, mask, tgt_lang_id, max_len, beam)
        b = memory.shape[0]
        out = torch.full((b, 1), tgt_lang_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(b, dtype=torch.bool, device=memory.device)
        for _ in range(min(max_len, self.max_len - 1)):
            step = self.decode(out, memory, mask)[:, -1].argmax(dim=-1)
            step = step.masked_fill(done, self.pad_id)
            out = torch.cat([out, step[:, None]], dim=1)
            done |= step == self.eos_id
            if bool(done.all()):
                break
        return _strip(out[:, 1:], self.eos_id, self.pad_id)

    def _beam(self, memory: torch.Tensor, mask: torch.Tensor, tgt_lang_id: int, max_len: int,
              beam: int) -> torch.Tensor:
        b, device = memory.shape[0], memory.device
        memory, mask = memory.repeat_interleave(beam, 0), mask.repeat_interleave(beam, 0)
        seqs = torch.full((b * beam, 1), tgt_lang_id, dtype=torch.long, device=device)
        scores = torch.zeros(b, beam, device=device)
        scores[:, 1:] = float("-inf")  # the first step expands one hypothesis
        done = torch.zeros(b * beam, dtype=torch.bool, device=device)
        for _ in range(min(max_len, self.max_len - 1)):
            logp = F.log_softmax(self.decode(seqs, memory, mask)[:, -1].float(), dim=-1)  # [B*beam, V]
            logp[done] = float("-inf")
            logp[done, self.pad_id] = 0.0  # a finished hypothesis only extends with padding, at no cost
            total = (scores.view(-1, 1) + logp).view(b, -1)  # [B, beam*V]
            scores, flat = total.topk(beam, dim=1)
            origin = flat // logp.shape[1] + torch.arange(b, device=device)[:, None] * beam
            token = flat % logp.shape[1]
            seqs = torch.cat([seqs[origin.flatten()], token.view(-1, 1)], dim=1)
            done = done[origin.flatten()] | (token.view(-1) == self.eos_id) | (token.view(-1) == self.pad_id)
            if bool(done.all()):
                break
        lengths = ((seqs[:, 1:] != self.pad_id).sum(dim=1)).clamp_min(1).view(b, beam).float()
        best = (scores / lengths).argmax(dim=1) + torch.arange(b, device=device) * beam
        return _strip(seqs[best, 1:], self.eos_id, self.pad_id)


def _strip(ids: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """Everything from the first ``</s>`` on becomes padding."""
    after = (ids == eos_id).cumsum(dim=1) > 0
    return ids.masked_fill(after, pad_id)


def load_state(model: UMMT, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A percli UMMT state dict, strictly (no official weights were released)."""
    return load_percli_state(model, state_or_path, "ummt")


register_loader(__name__)(load_state)


def _build(name: str, defaults: Mapping[str, object], kwargs: Mapping[str, object]) -> UMMT:
    model = UMMT(**{**defaults, **kwargs})
    model.arch = name
    return model


@register_model
def ummt_base(**kwargs) -> UMMT:
    """Transformer-base sizes (XLM's en-de UNMT model is 6 + 6 layers of 1024; percli's default is base)."""
    return _build("ummt_base", {}, kwargs)


@register_model
def ummt_tiny(**kwargs) -> UMMT:
    """A CPU-sized UMMT: 128-d, 4 heads, 2 + 2 layers."""
    return _build("ummt_tiny", dict(d_model=128, heads=4, encoder_layers=2, decoder_layers=2, ff_dim=256,
                                    dropout=0.1, region_dim=256, max_len=64), kwargs)

