"""CiT's data selection (Xu et al., ICCV 2023, "CiT: Curation in Training", arXiv 2301.02241).

CiT keeps a pool caption when it is close to the task's metadata (its class names) in a text
encoder's embedding space:

1. Embed every class name with the template "{}" (the name itself) and L2-normalise.
2. Stream the pool in batches; embed and normalise the captions; a caption's score is its max
   cosine similarity over the class names, and its label the argmax.
3. Keep a caption whose score is > `threshold` (0.55 for YFCC15M, 0.7 for YFCC100M in the paper).
4. If fewer than `min_ratio` of a batch pass (0.003 for YFCC15M, 0.01 for YFCC100M), keep instead
   the top int(min_ratio * batch) captions of that batch by score (the official code floors, so a
   batch smaller than 1 / min_ratio keeps nothing through this fallback).

`top_ratio` replaces 3-4 by one global cut: keep exactly round(top_ratio * n) captions with the
highest scores over the whole pool (ties go to the earlier record).

Not reproduced: CiT runs this inside training, re-embedding with the text tower being trained every
100 steps and stopping once 100 x batch ids are collected. Here the encoder is fixed and the whole
pool is curated once (the offline form of the same rule).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from percli.core.config import ConfigError
from percli.core.data.shards import BadRecords
from percli.curation.metaclip import load_metadata
from percli.curation.selection import iter_texts, write_selected

THRESHOLD_YFCC15M = 0.55
MIN_RATIO_YFCC15M = 0.003
LOG_EVERY_S = 10.0

# Task metadata for the demo: animal class names that occur in part of the embedded demo pool
# (percli/curation/demo.py composes its alt-texts from a vocabulary holding these words among ~250 others).
DEMO_CLASSES = ["dog", "cat", "bird", "horse", "cow", "sheep", "fish", "golden retriever", "sea turtle",
                "polar bear", "teddy bear"]


def load_class_names(path: str | Path) -> list[str]:
    """Class names from a JSON list or a text file (one per line); stripped, blanks and repeats dropped."""
    names = list(dict.fromkeys(name.strip() for name in load_metadata(path)))
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"class-name file {path} holds no class names")
    return names


def max_similarity(text_emb: np.ndarray, label_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max cosine similarity, argmax label index) of each caption; both inputs have unit rows."""
    logits = text_emb @ label_emb.T  # [n, dim] @ [dim, classes] -> [n, classes]
    return logits.max(axis=1), logits.argmax(axis=1)


def select_batch(scores: np.ndarray, threshold: float, min_ratio: float) -> tuple[np.ndarray, bool]:
    """CiT's per-batch rule: scores > threshold, else the top int(min_ratio * batch). Returns (mask, fell back)."""
    mask = scores > threshold
    if mask.sum() >= min_ratio * len(scores):
        return mask, False
    mask = np.zeros(len(scores), dtype=bool)
    mask[top_indices(scores, int(min_ratio * len(scores)))] = True
    return mask, True


def select_top_ratio(scores: np.ndarray, top_ratio: float) -> np.ndarray:
    """Global rule: exactly round(top_ratio * n) highest scores."""
    mask = np.zeros(len(scores), dtype=bool)
    mask[top_indices(scores, round(top_ratio * len(scores)))] = True
    return mask


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores; among equal scores the earlier index wins."""
    return np.argsort(-scores, kind="stable")[:k]


def _batches(texts: Iterable[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_pool(texts: Iterable[str], encoder, label_emb: np.ndarray, batch_size: int, threshold: float,
               min_ratio: float, log: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Embed the pool batch by batch. Returns scores, labels, the per-batch CiT mask and fallback count."""
    scores, labels, masks = [], [], []
    fallbacks = done = 0
    start = last_log = time.monotonic()
    for batch in _batches(texts, batch_size):
        batch_scores, batch_labels = max_similarity(encoder.encode(batch, batch_size), label_emb)
        mask, fell_back = select_batch(batch_scores, threshold, min_ratio)
        fallbacks += fell_back
        scores.append(batch_scores)
        labels.append(batch_labels.astype(np.int32))
        masks.append(mask)
        done += len(batch)
        if time.monotonic() - last_log > LOG_EVERY_S or len(batch) < batch_size:
            last_log = time.monotonic()
            log(f"embedded {done:,} texts ({done / max(last_log - start, 1e-9):,.0f}/s)")
    if not scores:
        return {"scores": np.zeros(0, np.float32), "labels": np.zeros(0, np.int32), "mask": np.zeros(0, bool),
                "batches": 0, "fallback_batches": 0}
    return {"scores": np.concatenate(scores), "labels": np.concatenate(labels), "mask": np.concatenate(masks),
            "batches": len(scores), "fallback_batches": fallbacks}


def check_params(threshold: float, min_ratio: float, batch_size: int, top_ratio: float | None) -> None:
    """Raise ConfigError (a ValueError) naming the setting that is out of range."""
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold: is a cosine similarity in [-1, 1] (got {threshold:g}); CiT uses 0.55 for "
                          f"YFCC15M")
    if not 0.0 <= min_ratio <= 1.0:
        raise ConfigError(f"min_ratio: must be in [0, 1] (got {min_ratio:g}); CiT uses 0.003 for YFCC15M")
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1 (got {batch_size})")
    if top_ratio is not None and not 0.0 < top_ratio <= 1.0:
        raise ConfigError(f"top_ratio: must be in (0, 1] (got {top_ratio:g})")


def curate_cit(inputs: Sequence[Path], output_dir: Path, class_names: Sequence[str], encoder,
               threshold: float = THRESHOLD_YFCC15M, min_ratio: float = MIN_RATIO_YFCC15M, batch_size: int = 2048,
               top_ratio: float | None = None, text_field: str = "text",
               log: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Select the records of JSONL/Parquet `inputs` by CiT's rule; write curated/<input>.jsonl and return the summary.

    Kept records gain "cit_similarity" (max cosine similarity) and "cit_label" (the nearest class name).
    """
    check_params(threshold, min_ratio, batch_size, top_ratio)
    label_emb = encoder.encode(list(class_names), batch_size)
    scored = score_pool(iter_texts(inputs, text_field), encoder, label_emb, batch_size, threshold, min_ratio, log)
    scores, labels = scored["scores"], scored["labels"]
    keep = scored["mask"] if top_ratio is None else select_top_ratio(scores, top_ratio)

    def annotate(i: int, record: dict[str, Any]) -> None:
        record["cit_similarity"] = round(float(scores[i]), 6)
        record["cit_label"] = class_names[labels[i]]

    bad = BadRecords()
    outputs = write_selected(inputs, output_dir / "curated", keep, text_field, annotate, bad)
    read, kept = len(scores), int(keep.sum())
    return {
        "method": "cit",
        "texts_read": read,
        "kept": kept,
        "kept_ratio": kept / read if read else 0.0,
        "passed_threshold": int((scores > threshold).sum()),
        "rule": "threshold" if top_ratio is None else "top_ratio",
        "threshold": threshold,
        "min_ratio": min_ratio,
        "top_ratio": top_ratio,
        "batch_size": batch_size,
        "batches": scored["batches"],
        "fallback_batches": scored["fallback_batches"] if top_ratio is None else 0,
        "min_kept_similarity": float(scores[keep].min()) if kept else None,
        "encoder": encoder.name,
        "num_classes": len(class_names),
        "kept_per_class": dict(Counter(class_names[i] for i in labels[keep]).most_common()),
        "bad_records": bad.count,
        "bad_examples": bad.examples,
        "outputs": outputs,
        "output_dir": str(output_dir),
    }
