"""Hugging Face text encoders from a local folder, offline: what the models with a pretrained text tower share
(FLAP's RoBERTa, MMP's mBERT / XLM-R).

* `check_hf_folder`: a folder with config.json and tokenizer files, or a `ConfigError` naming the config key;
* `HFTokenizer`: ``AutoTokenizer`` of the folder; texts -> ``{"text": ids, "text_mask": attention mask}``;
* `hf_encoder`: ``AutoModel`` of the folder (its weights, or its config.json alone), BERT's unused pooler removed.

Nothing is downloaded: the hub is switched offline before `transformers` is imported.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from percli.core.config import ConfigError

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


def check_hf_folder(folder: str | Path, key: str, fix: str) -> Path:
    """The resolved folder, or a `ConfigError` naming `key` and `fix` when it lacks config.json or a tokenizer."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{key}: {folder} is not a folder; {fix}")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{key}: {folder} has no config.json; {fix}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"{key}: {folder} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); {fix}")
    return path.resolve()


def offline_transformers():
    """`transformers`, imported with the hub switched offline first (it reads these once): nothing is downloaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    return transformers


class HFTokenizer:
    """``AutoTokenizer`` of a local folder: texts -> ``{"text": input_ids, "text_mask": attention_mask}``, each
    [N, context_length] int64, padded (the tokenizer's pad id, mask 0) or truncated to `context_length`. It holds no
    model, so data-loader workers can carry it."""

    def __init__(self, folder: str | Path, context_length: int, key: str):
        try:
            self.tokenizer = offline_transformers().AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{key}: {folder}: no tokenizer loads from it ({e}); give a folder with the model's "
                              "tokenizer files (tokenizer.json, vocab.txt, or vocab.json + merges.txt for RoBERTa)") \
                from None
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return {"text": out["input_ids"].long(), "text_mask": out["attention_mask"].long()}


def hf_encoder(folder: str | Path, pretrained: bool, key: str, context_length: int, context_key: str) -> nn.Module:
    """``AutoModel`` of `folder`: its weights when `pretrained`, else built from its config.json (random init, for
    weights that come next from a percli checkpoint). The tanh pooler of BERT / RoBERTa is removed (unused: DDP
    wants every parameter used); `context_length` (the config key `context_key`) must fit the model's positions."""
    transformers = offline_transformers()
    try:
        if pretrained:
            model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        else:
            model = transformers.AutoModel.from_config(
                transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True))
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{key}: {folder}: no model loads from it ({type(e).__name__}: {e}); give a folder with a "
                          "transformers config.json (and its weights for pretrained training)") from None
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is not None and context_length > positions:
        raise ConfigError(f"{context_key}={context_length} exceeds the {positions} positions of {folder}; lower it")
    return model
