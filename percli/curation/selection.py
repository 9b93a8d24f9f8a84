"""Shard plumbing shared by the score-then-select curators (CiT, text quality).

Both read their inputs twice: a scoring pass that keeps one number per record, then a writing pass
that re-reads the shards and writes the selected records. Records are numbered in input order over
all shards, skipping malformed ones, so the two passes agree on every index.

Inputs are JSONL (`.jsonl`, `.jsonl.gz`) or Parquet shards (read by `percli.core.data.shards`);
kept records are written as JSONL, one `curated/<shard name>.jsonl` per input, with the curator's
fields added.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from percli.core.data.shards import BadRecords, Batch, expand_inputs, read_batches, shard_format
from percli.curation.metaclip import shard_names

SELECTABLE_FORMATS = ("jsonl", "parquet")


def resolve_inputs(patterns: Sequence[str | Path]) -> list[Path]:
    """Brace-expand and glob `patterns`; raise ValueError (or FileNotFoundError) for what cannot be read."""
    paths = expand_inputs(patterns)
    for path in paths:
        if shard_format(path) not in SELECTABLE_FORMATS:
            raise ValueError(f"input {path}: this curator reads JSONL and Parquet shards, not "
                             f"{shard_format(path)}; convert it or pass the text as JSONL")
    return paths


def iter_texts(inputs: Sequence[Path], text_field: str = "text", bad: BadRecords | None = None,
               limit: int | None = None) -> Iterator[str]:
    """The text of every usable record of `inputs`, in order (at most `limit` of them)."""
    bad = bad or BadRecords()
    seen = 0
    for path in inputs:
        for batch in read_batches(path, text_field, bad):
            for text in batch.texts:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield text


def _batch_records(batch: Batch, positions: np.ndarray) -> list[dict[str, Any]]:
    if isinstance(batch.items, list):  # JSONL: the records themselves
        return [dict(batch.items[p]) for p in positions.tolist()]
    import pyarrow as pa

    return batch.items.take(pa.array(positions, type=pa.int64())).to_pylist()  # Parquet: an Arrow table


def write_selected(inputs: Sequence[Path], curated_dir: Path, keep: np.ndarray, text_field: str,
                   annotate: Callable[[int, dict[str, Any]], None], bad: BadRecords | None = None) -> list[str]:
    """Write record i to curated/<shard name>.jsonl when keep[i]; `annotate(i, record)` adds fields first.

    Each output goes to a temp name and is renamed when complete. Returns the output paths.
    """
    bad = bad or BadRecords()
    curated_dir.mkdir(parents=True, exist_ok=True)
    start = 0
    outputs = []
    for path, name in zip(inputs, shard_names(inputs)):
        target = curated_dir / f"{name}.jsonl"
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        with tmp.open("w", encoding="utf-8") as out:
            for batch in read_batches(path, text_field, bad):
                if start + len(batch.texts) > len(keep):
                    raise ValueError(f"{path} changed while it was being curated (more records than when scored)")
                positions = np.flatnonzero(keep[start:start + len(batch.texts)])
                for pos, record in zip(positions.tolist(), _batch_records(batch, positions)):
                    annotate(start + pos, record)
                    out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                start += len(batch.texts)
        os.replace(tmp, target)
        outputs.append(str(target))
    if start != len(keep):
        raise ValueError("the inputs changed while they were being curated (fewer records than when scored)")
    return outputs
