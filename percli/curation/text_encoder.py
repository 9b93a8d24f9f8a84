"""Text encoders for the embedding-based curators (CiT, MoDE): texts -> L2-normalised vectors.

`load_text_encoder(spec)` returns an object with `.name`, `.dim` and
`.encode(texts, batch_size=256) -> np.ndarray` of shape (len(texts), dim), float32, unit rows.

Built in: "hashing" (signed feature hashing of lower-cased words and word bigrams; no weights,
deterministic, for tests and quick looks). Being extended (issue 4) with sentence-transformers folders.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEncoder:
    """Bag of words and word bigrams hashed into `dim` signed buckets, then L2-normalised."""

    name = "hashing"

    def __init__(self, dim: int = 1024):
        self.dim = dim

    def _bucket(self, feature: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
        return h % self.dim, (1.0 if (h >> 63) else -1.0)

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            for feature in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
                col, sign = self._bucket(feature)
                out[row, col] += sign
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def load_text_encoder(spec: str | None = None):
    """The encoder named by `spec` ("hashing", default)."""
    if spec in (None, "hashing"):
        return HashingEncoder()
    raise ValueError(f"unknown text encoder {spec!r}; use 'hashing'")
