"""Stage 2 of MetaCLIP curation: the global count of every metadata entry.

Reads the matches of a `curate metaclip match` run (one folder), or matches the given shards into
this run's dir first. The counts are summed over shards and processes and written as
entry_counts.json in the official {entry: count} layout (the input of `balance --counts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.curation.metaclip_job import StageConfig, check_inputs, check_metadata, start


@dataclass
class Config:
    sources: list[str] = field(default_factory=list)
    """The output dir of a match run, or shards (patterns) to match first."""
    metadata: str | None = None
    """The metadata the matches were made with (MetaCLIP's metadata.json or one entry per line)."""
    text_field: str = "text"
    """Record field holding the alt-text, when shards are matched here."""


def match_dir(cfg: Config) -> Path | None:
    """The match run to count, when the sources are one folder."""
    return Path(cfg.sources[0]) if len(cfg.sources) == 1 and Path(cfg.sources[0]).is_dir() else None


def validate(cfg: Config) -> None:
    if not cfg.sources:
        raise ConfigError("sources: not set; give the output dir of a `curate metaclip match` run, or the shards "
                          "to count")
    if match_dir(cfg) is None:
        check_inputs(cfg.sources, key="sources")
    check_metadata(cfg.metadata)


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.curation.metaclip import count_matches, match_shards, match_totals, save_counts

    counted = match_dir(cfg)
    inputs, entries = start(StageConfig([] if counted else cfg.sources, cfg.metadata, cfg.text_field), ctx)
    if counted is None:  # match into this run's dir first (resumable like `match`)
        match_shards(inputs, ctx.run_dir, entries, cfg.text_field, ctx.resume, ctx.log, rank=ctx.rank,
                     world=ctx.world, progress=ctx.progress)
    counts, manifest = count_matches(counted or ctx.run_dir, entries, rank=ctx.rank, world=ctx.world)
    save_counts(counts, entries, ctx.run_dir, rank=ctx.rank)
    ctx.log(f"count: {int((counts > 0).sum())} of {len(counts)} entries matched")
    return {"status": "completed", **match_totals(manifest["shards"]), "method": "metaclip-count",
            "entries_matched": int((counts > 0).sum()), "num_entries": len(counts),
            "counts_from": str(counted or ctx.run_dir), "output_dir": str(ctx.run_dir), "world_size": ctx.world}
