"""BERT (Devlin et al., 2019) as Hugging Face transformers 3.x ``BertModel`` names its parameters.

The post-LayerNorm encoder VideoCLIP and VLM (fairseq ``examples/MMPT``) build on, written for percli from the
architecture's description: ``embeddings.{word,position,token_type}_embeddings`` + ``embeddings.LayerNorm``,
``encoder.layer.N.attention.self.{query,key,value}``, ``attention.output.{dense,LayerNorm}``,
``intermediate.dense``, ``output.{dense,LayerNorm}``, ``pooler.dense``. The numerics follow transformers 3.4:
exact (erf) GELU, LayerNorm eps 1e-12, an additive attention mask ``(1 - mask) * -10000`` (not -inf, so a row
that may attend nothing still averages its values instead of giving NaN), and the persistent
``embeddings.position_ids`` buffer the 3.x checkpoints (and MMPT's) hold.

An attention mask may be [B, N] (keys), [B, N, N] (query x key) or [B, L, N, N] (one [N, N] mask per layer,
MMPT's isolated-modality attention); `additive_attention_mask` turns any of them into what the layers add.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class BertConfig:
    """The BertConfig fields the encoder reads (defaults: ``bert-base-uncased``)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_act != "gelu":
            raise ValueError(f"bert_config.hidden_act={self.hidden_act!r}: only 'gelu' (exact erf, as "
                             "bert-base-uncased) is implemented")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"bert_config.hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")

    @classmethod
    def make(cls, config: BertConfig | Mapping[str, Any] | None = None, **overrides: Any) -> BertConfig:
        """A config from None (bert-base-uncased), a config or a mapping of its fields, plus `overrides`.

        An unknown key is a ValueError naming it (a typo must not silently fall back to a default).
        """
        values = asdict(config) if isinstance(config, BertConfig) else dict(config or {})
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"bert_config: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any]) -> BertConfig:
        """The fields of a Hugging Face ``config.json`` (its other keys are not about the encoder's shape)."""
        if hf_config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type={hf_config['position_embedding_type']!r}: only absolute "
                             "position embeddings are implemented")
        return cls(**{f.name: hf_config[f.name] for f in fields(cls) if f.name in hf_config})


def additive_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(1 - mask) * -10000`` shaped to add to [B, heads, N, N] scores (a per-layer mask keeps its layer axis).

    [B, N] -> [B, 1, 1, N]; [B, N, N] -> [B, 1, N, N]; [B, L, N, N] -> [B, L, 1, N, N].
    """
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    elif mask.dim() == 3:
        mask = mask[:, None, :, :]
    elif mask.dim() == 4:
        mask = mask[:, :, None, :, :]
    else:
        raise ValueError(f"attention mask of shape {list(mask.shape)}: expected [B, N], [B, N, N] or [B, L, N, N]")
    return (1.0 - mask.to(dtype)) * -10000.0


def init_bert_weights(model: nn.Module, std: float) -> None:
    """transformers' BERT init on every submodule: N(0, std) weights, zero biases, unit LayerNorm."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class BertEmbeddings(nn.Module):
    """Word + absolute position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        # persistent, as in transformers 3.x checkpoints: [1, max_position_embeddings]
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings).expand((1, -1)))

    def combine(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """LayerNorm(inputs + positions + token types), dropped out: the step every embedding variant shares."""
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        x = inputs_embeds + self.position_embeddings(position_ids)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if position_ids is None:
            position_ids = self.position_ids[:, :input_ids.shape[1]]
        return self.combine(self.word_embeddings(input_ids), position_ids, token_type_ids)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        B, N, C = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, heads, N, C/heads]
            return t.view(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

        q = heads(self.query(x))
        if attention_mask is not None:  # under autocast q is half precision; the mask follows it
            attention_mask = attention_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, heads(self.key(x)), heads(self.value(x)), attn_mask=attention_mask,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(B, N, C)  # [B, heads, N, C/heads] -> [B, N, C]


class BertSelfOutput(nn.Module):
    """Projection, dropout, residual, then LayerNorm (post-LN)."""

    def __init__(self, cfg: BertConfig, width_in: int):
        super().__init__()
        self.dense = nn.Linear(width_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg, cfg.hidden_size)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, attention_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact erf GELU


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg, cfg.intermediate_size)  # transformers' BertOutput: same structure

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attention(x, attention_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """`attention_mask`: additive, [B, 1, 1|N, N] for every layer or [B, L, 1, N, N] (layer i takes [:, i])."""
        states = [x]
        for i, layer in enumerate(self.layer):
            layer_mask = attention_mask[:, i] if attention_mask is not None and attention_mask.dim() == 5 \
                else attention_mask
            x = layer(x, layer_mask)
            states.append(x)
        return x, (tuple(states) if output_hidden_states else None)


class BertPooler(nn.Module):
    """tanh(dense([CLS])); MMPT's towers hold it but pool by masked means instead."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(sequence_output[:, 0]))


class BertEncoding(NamedTuple):
    last_hidden_state: torch.Tensor  # [B, N, C]
    hidden_states: tuple[torch.Tensor, ...] | None  # embeddings output, then every layer's output (L + 1)


class BertModel(nn.Module):
    """transformers 3.x ``BertModel``: ``embeddings``, ``encoder``, ``pooler`` (not run by `forward`)."""

    def __init__(self, bert_config: BertConfig | Mapping[str, Any] | None = None,
                 embeddings: BertEmbeddings | None = None):
        super().__init__()
        self.config = cfg = BertConfig.make(bert_config)
        self.embeddings = embeddings if embeddings is not None else BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg)
        init_bert_weights(self, cfg.initializer_range)

    def encode(self, embedding_output: torch.Tensor, attention_mask: torch.Tensor | None,
               output_hidden_states: bool = False, split: int | None = None) -> BertEncoding:
        """Run the encoder on embeddings; `attention_mask` as `forward` takes it (1 = attend).

        `split`: encode positions ``[:split]`` and ``[split:]`` as two separate sequences (each sees only
        itself) and concatenate them, layer by layer (MMPT's ``separate_forward_split``).
        """
        B, N, _ = embedding_output.shape
        if attention_mask is None:
            attention_mask = torch.ones(B, N, dtype=torch.bool, device=embedding_output.device)
        additive = additive_attention_mask(attention_mask, embedding_output.dtype)
        if split is None:
            return BertEncoding(*self.encoder(embedding_output, additive, output_hidden_states))
        parts = [self.encoder(embedding_output[:, s], additive[..., s, s], output_hidden_states)
                 for s in (slice(None, split), slice(split, None))]
        last = torch.cat([p[0] for p in parts], dim=1)
        states = tuple(torch.cat(pair, dim=1) for pair in zip(parts[0][1], parts[1][1])) \
            if output_hidden_states else None
        return BertEncoding(last, states)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> BertEncoding:
        """Encode token ids [B, N]; `attention_mask` [B, N] (or [B, N, N]), 1/True = attend."""
        return self.encode(self.embeddings(input_ids, token_type_ids, position_ids), attention_mask,
                           output_hidden_states)

