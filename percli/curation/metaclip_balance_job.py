"""Stage 3 of MetaCLIP curation: keep each text with probability 1 - prod(1 - min(1, t/c_e)).

Needs the entry counts of the whole pool (entry_counts.json of `curate metaclip count`, or the
official entry_counts_400m.json). Writes curated/<shard> (kept records in the input's format, or an
index), summary.json and entry_counts.png. `--matches DIR` reuses the matches of a match (or count)
run over these inputs instead of matching again. Shard-parallel under `accelerate launch` or
torchrun; `--resume` skips the shards an interrupted run finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.curation.metaclip_job import DEFAULT_T, StageConfig, check_stage, check_t, start


@dataclass
class Config(StageConfig):
    counts: str | None = None
    """entry_counts.json of the whole pool ({entry: count}): from `count`, or the official one."""
    t: float = DEFAULT_T
    """Balancing threshold (MetaCLIP-400M: 20,000); inf keeps every matched text."""
    seed: int = 0
    """Seed of the per-record keep decisions."""
    matches: str | None = None
    """Output dir of a match (or count) run over these inputs, to reuse its matches."""
    output_format: Literal["same", "index"] = "same"
    """same: kept records in the input's format; index: per shard a JSONL of {index, key, entries}."""


def validate(cfg: Config) -> None:
    from percli.curation.metaclip import load_entry_counts, load_metadata

    check_t(cfg.t)
    check_stage(cfg, "balance")
    if cfg.counts is None:
        raise ConfigError("counts: not set; pass --counts entry_counts.json (from `curate metaclip count`, or "
                          "the official entry_counts_400m.json)")
    try:
        load_entry_counts(cfg.counts, load_metadata(cfg.metadata))
    except (OSError, ValueError) as e:
        raise ConfigError(f"counts: {e}") from None


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.curation.metaclip import balance_shards, load_entry_counts

    inputs, entries = start(cfg, ctx)
    summary = balance_shards(inputs, ctx.run_dir, entries, load_entry_counts(cfg.counts, entries), cfg.t, cfg.seed,
                             cfg.text_field, cfg.output_format, match_dir=cfg.matches, resume=ctx.resume,
                             log=ctx.log, counts_from=str(cfg.counts), rank=ctx.rank, world=ctx.world,
                             progress=ctx.progress)
    return {"status": "completed", **summary}
