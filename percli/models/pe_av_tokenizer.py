"""Text -> ModernBERT ids for PE-AV / PE-A-Frame: ``[CLS] tokens [SEP]``, right-padded, with an attention mask.

Two vocabularies:

* ``hf``: a Hugging Face ``tokenizer.json`` (the ModernBERT tokenizer a ``facebook/pe-av-*`` release folder
  ships; ``[CLS]``, ``[SEP]`` and ``[PAD]`` are read from it), for released weights;
* ``clip_bpe``: percli's offline CLIP BPE shifted by three (0 = pad, 1 = cls, 2 = sep; vocabulary 49,411),
  for text towers trained from scratch with ``percli pretrain pe-av``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

CLIP_SPECIALS = 3  # pad, cls, sep before the CLIP BPE ids


class PETextTokenizer:
    """Batches of captions -> (input_ids [B, L], attention_mask [B, L]), L <= ``context_length``."""

    def __init__(self, kind: str = "clip_bpe", path: str | None = None, context_length: int = 64):
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 ([CLS], a token, [SEP]), got {context_length}")
        self.kind, self.path, self.context_length = kind, path, int(context_length)
        if kind == "clip_bpe":
            from percli.models.clip_tokenizer import CLIPTokenizer

            self._clip = CLIPTokenizer()
            self.pad_id, self.cls_id, self.sep_id = 0, 1, 2
            self.vocab_size = self._clip.vocab_size + CLIP_SPECIALS
        elif kind == "hf":
            from tokenizers import Tokenizer

            file = Path(path or "") / "tokenizer.json" if not str(path or "").endswith(".json") else Path(path)
            if not file.is_file():
                raise FileNotFoundError(f"text tokenizer: no tokenizer.json at {file}; give the folder of a PE-AV "
                                        "release (it ships ModernBERT's tokenizer.json) or use kind clip_bpe")
            self._hf = Tokenizer.from_file(str(file))
            ids = {name: self._hf.token_to_id(name) for name in ("[CLS]", "[SEP]", "[PAD]")}
            absent = [name for name, i in ids.items() if i is None]
            if absent:
                raise ValueError(f"{file}: not a ModernBERT-style tokenizer (no {absent} token)")
            self.cls_id, self.sep_id, self.pad_id = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"]
            self.vocab_size = self._hf.get_vocab_size()
        else:
            raise ValueError(f"text tokenizer kind {kind!r}: use 'clip_bpe' or 'hf'")

    def _ids(self, text: str) -> list[int]:
        if self.kind == "clip_bpe":
            return [i + CLIP_SPECIALS for i in self._clip.encode(text)]
        return self._hf.encode(text, add_special_tokens=False).ids

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[self.cls_id, *self._ids(t)[: self.context_length - 2], self.sep_id] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "context_length": self.context_length}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> PETextTokenizer:
        return cls(meta.get("kind", "clip_bpe"), meta.get("path"), meta.get("context_length", 64))
