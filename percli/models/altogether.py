"""Altogether captioner (Xu et al., EMNLP 2024): image + alt-text -> re-aligned caption, ClipCap-style.

A frozen CLIP/PE image tower gives one L2-normalised embedding per image; ``TransformerMapper``
turns it into ``prefix_len`` soft tokens in the decoder's embedding space; a decoder-only OPT
language model reads

    [prefix_len image tokens] [alt-text prompt, left-padded to max_prompt_len] [BOS target EOS]

and is trained with cross-entropy on the target tokens (and EOS) only. The BOS that opens the
target marks where the prompt ends, so generation starts from ``prefix + prompt + BOS``.

The decoder keeps Hugging Face ``OPTForCausalLM``'s parameter names (``model.decoder.embed_tokens``,
``embed_positions`` with its offset of 2, ``layers.N.self_attn.{q,k,v,out}_proj``,
``self_attn_layer_norm``, ``fc1``, ``fc2``, ``final_layer_norm``, ``model.decoder.final_layer_norm``,
a ``lm_head`` tied to the token embedding) and computes positions from the attention mask as OPT
does (``cumsum(mask) * mask - 1``), so OPT checkpoints load and left padding behaves the same;
``tests/test_altogether_model.py`` checks the logits against ``transformers``. Only the pre-norm
OPT variants whose word-embedding width equals the hidden width are supported (125m, 1.3b and up;
not opt-350m).

Tokenizer: the CLIP BPE shipped with percli (default) or a Hugging Face ``tokenizer.json`` folder
(OPT's GPT-2 BPE). ``keep_ids`` restricts the decoder vocabulary to the ids seen in the training
texts (plus pad/bos/eos/unk), which makes the output layer ~100x smaller for small corpora.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models.clip import Transformer
from percli.models.text_decoding import DecodeCache, beam_search, sample_or_greedy

POSITION_OFFSET = 2  # OPT's learned position table starts 2 rows in (fairseq's padding_idx + 1 legacy)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,:;!?])")


# --------------------------------------------------------------------------- tokenizer


class CaptionTokenizer:
    """Text <-> decoder ids, with the special ids the layout needs (pad, bos, eos, unk).

    Args:
        kind: ``clip_bpe`` (percli's offline CLIP BPE) or ``hf`` (a folder with ``tokenizer.json``, or
            GPT-2's ``vocab.json`` + ``merges.txt`` as the facebook/opt-* snapshots ship).
        path: the Hugging Face tokenizer folder for ``kind='hf'``.
        keep_ids: base-tokenizer ids the decoder knows; when set, decoder id 0..3 are pad/bos/eos/unk
            and id 4 + i is ``keep_ids[i]`` (texts' other ids become unk).
    """

    def __init__(self, kind: str = "clip_bpe", path: str | None = None, keep_ids: Sequence[int] | None = None):
        self.kind, self.path = kind, path
        if kind == "clip_bpe":
            from percli.models.clip_tokenizer import CLIPTokenizer

            self._clip = CLIPTokenizer()
            base_size, bos, eos, pad = self._clip.vocab_size, self._clip.sot_token_id, self._clip.eot_token_id, None
        elif kind == "hf":
            from tokenizers import ByteLevelBPETokenizer, Tokenizer

            folder = Path(path or "")
            file, vocab, merges = folder / "tokenizer.json", folder / "vocab.json", folder / "merges.txt"
            if file.is_file():
                self._hf = Tokenizer.from_file(str(file))
            elif vocab.is_file() and merges.is_file():  # facebook/opt-* ship GPT-2's vocab.json + merges.txt only
                self._hf = ByteLevelBPETokenizer(str(vocab), str(merges))
            else:
                raise FileNotFoundError(f"tokenizer: no tokenizer.json nor vocab.json + merges.txt in {folder}; pass "
                                        "a Hugging Face tokenizer folder (e.g. facebook/opt-1.3b) or use clip_bpe")
            base_size = self._hf.get_vocab_size()
            bos, eos = self._hf.token_to_id("</s>"), self._hf.token_to_id("</s>")  # OPT: </s> opens and ends
            pad = self._hf.token_to_id("<pad>")
            if bos is None:
                raise ValueError(f"{folder}: no '</s>' token; only OPT-style (GPT-2 BPE) tokenizers are supported")
        else:
            raise ValueError(f"tokenizer kind {kind!r}: use 'clip_bpe' or 'hf'")
        self.keep_ids = list(keep_ids) if keep_ids is not None else None
        if self.keep_ids is None:
            self.vocab_size, self.bos_id, self.eos_id = base_size, bos, eos
            self.pad_id = eos if pad is None else pad  # never attended to nor scored: any id works
            self.unk_id = None
        else:
            self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
            self._to_compact = {base: 4 + i for i, base in enumerate(self.keep_ids)}
            self.vocab_size = 4 + len(self.keep_ids)

    def base_encode(self, text: str) -> list[int]:
        if self.kind == "clip_bpe":
            return self._clip.encode(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode(self, text: str) -> list[int]:
        """Decoder ids of ``text``, without special tokens."""
        ids = self.base_encode(text)
        if self.keep_ids is None:
            return ids
        return [self._to_compact.get(i, self.unk_id) for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of decoder ids; special ids are dropped."""
        specials = {self.pad_id, self.bos_id, self.eos_id, self.unk_id}
        ids = [int(i) for i in ids if int(i) not in specials]
        if self.keep_ids is not None:
            ids = [self.keep_ids[i - 4] for i in ids]
        text = self._clip.decode(ids) if self.kind == "clip_bpe" else self._hf.decode(ids)
        return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "keep_ids": self.keep_ids}


def vocabulary_of(tokenizer: CaptionTokenizer, texts: Iterable[str]) -> list[int]:
    """Sorted base ids occurring in ``texts`` (for ``CaptionTokenizer(keep_ids=...)``)."""
    seen: set[int] = set()
    for text in texts:
        seen.update(tokenizer.base_encode(text))
    return sorted(seen)


# --------------------------------------------------------------------------- OPT decoder


@dataclass
class OPTConfig:
    """The Hugging Face ``OPTConfig`` fields percli's decoder uses (defaults: facebook/opt-1.3b)."""

    vocab_size: int = 50272
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    ffn_dim: int = 8192
    num_attention_heads: int = 32
    max_position_embeddings: int = 2048
    dropout: float = 0.1
    pad_token_id: int = 1

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> OPTConfig:
        """From an OPT ``config.json``; rejects the variants this decoder does not implement."""
        if not config.get("do_layer_norm_before", True):
            raise ValueError("post-norm OPT (opt-350m) is not supported; use opt-125m, opt-1.3b or larger")
        if config.get("word_embed_proj_dim", config["hidden_size"]) != config["hidden_size"]:
            raise ValueError("OPT with word_embed_proj_dim != hidden_size (opt-350m) is not supported")
        if config.get("activation_function", "relu") != "relu":
            raise ValueError(f"OPT activation {config['activation_function']!r}: only relu is supported")
        return cls(**{k: config[k] for k in asdict(cls()) if k in config})


class OPTAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections and an optional KV cache."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden_size {dim} is not a multiple of num_attention_heads {heads}")
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, T, C], additive mask [B, 1, T, S] (S = cached + T) -> out [B, T, C], (keys, values) [B, h, S, C/h]."""
        b, t, c = x.shape

        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.heads, c // self.heads).transpose(1, 2)  # [B, T, C] -> [B, h, T, C/h]

        q, k, v = heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c)), (k, v)  # [B, h, T, C/h] -> [B, T, C]


class OPTDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + fc2(relu(fc1(ln(x)))), dropout on both branches."""

    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.self_attn = OPTAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.hidden_size)
        self.fc1, self.fc2 = nn.Linear(cfg.hidden_size, cfg.ffn_dim), nn.Linear(cfg.ffn_dim, cfg.hidden_size)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, kv = self.self_attn(self.self_attn_layer_norm(x), mask, past)
        x = x + self.dropout(attended)
        return x + self.dropout(self.fc2(F.relu(self.fc1(self.final_layer_norm(x))))), kv


class OPTDecoder(nn.Module):
    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings + POSITION_OFFSET, cfg.hidden_size)
        self.layers = nn.ModuleList([OPTDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                past: DecodeCache | None = None) -> tuple[torch.Tensor, DecodeCache]:
        """Embeddings [B, T, C] of the new tokens, mask [B, cached + T] (1 = real token) -> hidden [B, T, C], cache."""
        t = inputs_embeds.shape[1]
        cached = past[0][0].shape[2] if past else 0
        mask = attention_mask.long()
        positions = (mask.cumsum(dim=1) * mask - 1)[:, cached:] + POSITION_OFFSET  # left pads all get row 1
        x = inputs_embeds + self.embed_positions(positions)
        # Additive mask [B, 1, T, S]: causal and no padded keys; finfo.min (not -inf) keeps all-pad rows finite.
        s = cached + t
        causal = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(diagonal=cached)
        allowed = causal[None, None] & mask[:, None, None, :].bool()
        additive = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~allowed, torch.finfo(x.dtype).min)
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, additive, past[i] if past else None)
            new_cache.append(kv)
        return self.final_layer_norm(x), new_cache


class OPTModel(nn.Module):
    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.decoder = OPTDecoder(cfg)


class OPTForCausalLM(nn.Module):
    """OPT decoder + tied output layer, Hugging Face parameter names."""

    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.config = cfg
        self.model = OPTModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.model.decoder.embed_tokens.weight
        for module in self.modules():  # OPT's init: normal(0, 0.02), zero biases
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.decoder.embed_tokens(ids)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] of token ids [B, T] (as ``OPTForCausalLM(...).logits``)."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        hidden, _ = self.model.decoder(self.embed(input_ids), mask)
        return self.lm_head(hidden)


def load_opt_state(model: OPTForCausalLM, state: dict[str, torch.Tensor]) -> None:
    """Load a Hugging Face OPT state dict (``OPTForCausalLM`` or bare ``OPTModel`` keys), strictly."""
    if any(k.startswith("decoder.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    state = dict(state)
    state.setdefault("lm_head.weight", state.get("model.decoder.embed_tokens.weight"))
    unexpected = sorted(set(state) - set(model.state_dict()))
    missing = sorted(set(model.state_dict()) - set(state))
    if unexpected or missing:
        raise RuntimeError(f"OPT checkpoint does not fit the decoder: missing {missing[:6]}, unexpected "
                           f"{unexpected[:6]}; is it an OPT model with do_layer_norm_before=true?")
    model.load_state_dict(state)


# --------------------------------------------------------------------------- mapper and captioner


class TransformerMapper(nn.Module):
    """ClipCap's mapper: image embedding -> ``prefix_len`` soft tokens of width ``dim``.

    ``linear`` lifts the embedding to prefix_len tokens, ``prefix_const`` (prefix_len learned
    vectors) is appended, a transformer mixes the 2 x prefix_len tokens and the last prefix_len
    are kept.
    """

    def __init__(self, image_dim: int, dim: int, prefix_len: int = 40, layers: int = 8, heads: int = 8):
        super().__init__()
        self.prefix_len = prefix_len
        self.linear = nn.Linear(image_dim, prefix_len * dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_len, dim))
        self.transformer = Transformer(dim, layers, heads, mlp_ratio=2.0, act_layer=nn.GELU)

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        b = image_embedding.shape[0]
        x = self.linear(image_embedding).view(b, self.prefix_len, -1)  # [B, D] -> [B, P, C]
        x = torch.cat([x, self.prefix_const.expand(b, -1, -1)], dim=1)  # [B, 2P, C]
        return self.transformer(x)[:, self.prefix_len:]  # [B, P, C]


class AltogetherCaptioner(nn.Module):
    """Image tower + ``TransformerMapper`` + ``OPTForCausalLM``; see the module docstring for the layout."""

    def __init__(self, image_encoder: nn.Module, image_dim: int, decoder: OPTForCausalLM,
                 tokenizer: CaptionTokenizer, prefix_len: int = 40, mapper_layers: int = 8, mapper_heads: int = 8,
                 max_prompt_len: int = 128, max_target_len: int = 192, freeze_image_encoder: bool = True):
        super().__init__()
        if decoder.config.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"decoder vocab_size {decoder.config.vocab_size} < tokenizer's {tokenizer.vocab_size}")
        self.image_encoder, self.decoder, self.tokenizer = image_encoder, decoder, tokenizer
        self.mapper = TransformerMapper(image_dim, decoder.config.hidden_size, prefix_len, mapper_layers, mapper_heads)
        self.max_prompt_len, self.max_target_len = max_prompt_len, max_target_len
        self.freeze_image_encoder = freeze_image_encoder
        if freeze_image_encoder:
            self.image_encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> AltogetherCaptioner:
        super().train(mode)
        if self.freeze_image_encoder:
            self.image_encoder.eval()  # frozen: no dropout, as under the official no_grad
        return self

    def encode_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, H, W] -> soft tokens [B, P, C]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_image_encoder):
            embedding = F.normalize(self.image_encoder(images).float(), dim=-1)  # [B, D]
        return self.mapper(embedding.to(self.mapper.linear.weight.dtype))

    def tokenize_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Alt-texts -> ids and mask [B, max_prompt_len], left-padded (an empty prompt is all padding)."""
        tok, n = self.tokenizer, self.max_prompt_len
        ids = torch.full((len(prompts), n), tok.pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), n, dtype=torch.long)
        for row, text in enumerate(prompts):
            tokens = tok.encode(text)[:n]
            if tokens:
                ids[row, n - len(tokens):], mask[row, n - len(tokens):] = torch.tensor(tokens), 1
        return ids, mask

    def tokenize_targets(self, targets: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets -> ``BOS text EOS`` ids and mask [B, L], right-padded, L <= max_target_len."""
        tok = self.tokenizer
        rows = [[tok.bos_id, *tok.encode(t)[:self.max_target_len - 2], tok.eos_id] for t in targets]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), tok.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        return ids, mask

    def forward(self, images: torch.Tensor, prompts: Sequence[str], targets: Sequence[str]) -> torch.Tensor:
        """Mean cross-entropy of the target tokens and EOS (prefix, prompt and BOS are not scored)."""
        device = images.device
        prompt_ids, prompt_mask = (t.to(device) for t in self.tokenize_prompts(prompts))
        target_ids, target_mask = (t.to(device) for t in self.tokenize_targets(targets))
        prefix = self.encode_prefix(images)  # [B, P, C]
        tokens = torch.cat([prompt_ids, target_ids], dim=1)  # [B, Lp + Lt]
        embeds = torch.cat([prefix, self.decoder.embed(tokens)], dim=1)  # [B, P + Lp + Lt, C]
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long, device=device), prompt_mask, target_mask], 1)
        hidden, _ = self.decoder.model.decoder(embeds, mask)
        start = prefix.shape[1] + prompt_ids.shape[1]  # sequence index of BOS
        # Position start + j predicts target token j + 1: the hidden states from BOS to the last but one.
        predicting = hidden[:, start:start + target_ids.shape[1] - 1]  # [B, Lt - 1, C]
        scored = target_mask[:, 1:].bool()
        logits = self.decoder.lm_head(predicting[scored])  # [N scored, V]
        return F.cross_entropy(logits.float(), target_ids[:, 1:][scored])

    @torch.no_grad()
    def generate(self, images: torch.Tensor, prompts: Sequence[str], *, strategy: str = "sample",
                 temperature: float = 0.2, top_p: float = 0.7, num_beams: int = 4, max_new_tokens: int = 192,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> list[str]:
        """Captions of ``images`` given their alt-texts (official inference: sampling, T 0.2, top-p 0.7).

        ``strategy``: ``sample`` (temperature + nucleus), ``greedy`` or ``beam`` (``num_beams``,
        scores length-normalised). ``use_cache=False`` recomputes the whole sequence at every step
        (for tests: it must give the same tokens).
        """
        device = images.device
        prompt_ids, prompt_mask = (t.to(device) for t in self.tokenize_prompts(prompts))
        bos = torch.full((len(prompts), 1), self.tokenizer.bos_id, dtype=torch.long, device=device)
        prefix = self.encode_prefix(images)
        embeds = torch.cat([prefix, self.decoder.embed(torch.cat([prompt_ids, bos], dim=1))], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long, device=device), prompt_mask,
                          torch.ones_like(bos)], dim=1)
        decoder = self.decoder.model.decoder

        def step(new_ids: torch.Tensor | None, state: dict[str, Any]) -> torch.Tensor:
            """Logits [N, V] after feeding ``new_ids`` [N, 1] (None: the context itself)."""
            if new_ids is None:
                hidden, cache = decoder(embeds, mask)
                state["mask"] = mask
                if use_cache:
                    state["cache"] = cache
                else:
                    state["embeds"] = embeds
            else:
                new = self.decoder.embed(new_ids)
                state["mask"] = torch.cat([state["mask"], torch.ones_like(new_ids)], dim=1)
                if use_cache:
                    hidden, state["cache"] = decoder(new, state["mask"], state["cache"])
                else:
                    state["embeds"] = torch.cat([state["embeds"], new], dim=1)
                    hidden, _ = decoder(state["embeds"], state["mask"])
            return self.decoder.lm_head(hidden[:, -1]).float()

        eos = self.tokenizer.eos_id
        if strategy == "beam":
            ids = beam_search(step, len(prompts), num_beams, eos, max_new_tokens)
        elif strategy in ("sample", "greedy"):
            ids = sample_or_greedy(step, len(prompts), eos, max_new_tokens, greedy=strategy == "greedy",
                                   temperature=temperature, top_p=top_p, generator=generator)
        else:
            raise ValueError(f"strategy {strategy!r}: use sample, greedy or beam")
        return [self.tokenizer.decode(row) for row in ids]

    def config_meta(self) -> dict[str, Any]:
        return {"decoder": asdict(self.decoder.config), "tokenizer": self.tokenizer.meta(),
                "prefix_len": self.mapper.prefix_len, "mapper_layers": len(self.mapper.transformer.resblocks),
                "mapper_heads": self.mapper.transformer.resblocks[0].attn.num_heads,
                "max_prompt_len": self.max_prompt_len, "max_target_len": self.max_target_len,
                "freeze_image_encoder": self.freeze_image_encoder}


def image_tower(name: str, kwargs: dict[str, Any], checkpoint: str | None = None) -> tuple[nn.Module, int, dict]:
    """The ``visual`` tower of a registered CLIP/PE model, its embedding width and its preprocessing."""
    from percli.models import create_model, load_initial_weights

    model = create_model(name, **kwargs)
    if not hasattr(model, "visual") or not hasattr(model, "encode_image"):
        raise ValueError(f"image encoder {name!r} is not a CLIP/PE model; use a clip_* or pe_core_* name")
    if checkpoint:
        load_initial_weights(model, checkpoint)
    preprocess = dict(model.preprocess)
    with torch.no_grad():
        size = preprocess["image_size"]
        height, width = (size, size) if isinstance(size, int) else size
        dim = model.visual(torch.zeros(1, 3, height, width)).shape[-1]
    return model.visual, dim, preprocess


def build_captioner(meta: dict[str, Any], tensors: Mapping[str, torch.Tensor] | None = None,
                    source: str | Path = "the checkpoint") -> AltogetherCaptioner:
    """Rebuild a captioner from its checkpoint metadata (``image_encoder`` {name, kwargs} + ``config_meta()``).

    Given the checkpoint's `tensors` (its state or `percli.core.checkpoint.read_header`'s stand-ins),
    the sizes the metadata claims are checked against them on the meta device first, so a file whose
    metadata and tensors disagree raises `CheckpointError` (naming `source`) before any allocation.
    """
    tok = meta["tokenizer"]
    tokenizer = CaptionTokenizer(tok["kind"], tok.get("path"), tok.get("keep_ids"))

    def build() -> AltogetherCaptioner:
        encoder, dim, _ = image_tower(meta["image_encoder"]["name"], meta["image_encoder"]["kwargs"])
        return AltogetherCaptioner(
            encoder, dim, OPTForCausalLM(OPTConfig(**meta["decoder"])), tokenizer, prefix_len=meta["prefix_len"],
            mapper_layers=meta["mapper_layers"], mapper_heads=meta["mapper_heads"],
            max_prompt_len=meta["max_prompt_len"], max_target_len=meta["max_target_len"],
            freeze_image_encoder=meta["freeze_image_encoder"])

    if tensors is None:
        return build()
    from percli.models import build_for_checkpoint

    return build_for_checkpoint(build, source, tensors)
