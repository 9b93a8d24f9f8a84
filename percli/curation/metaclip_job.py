"""What `percli curate metaclip` runs when no stage is named: the three stages in one output dir.

Writes matches/ (per-shard match lists), entry_counts.json, curated/<shard> (kept records in the
input's format, each with its "metaclip_entries"), summary.json and entry_counts.png in the output
dir. With no inputs it curates a built-in synthetic demo pool (20,000 alt-texts, 401 entries, t=100).

Under `accelerate launch` or torchrun the shards are split over the processes (rank r takes every
r-th shard, counts are summed over processes); the output is the same as with one process.
`--resume -o DIR` continues an interrupted run: finished shards are skipped, the rest redone whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from percli.core import dist
from percli.core.config import ConfigError
from percli.core.context import RunContext

DEMO_T = 100.0  # the demo pool has 20k texts: t=100 makes ~130 of ~300 matched entries "head"
DEFAULT_T = 20000.0  # MetaCLIP-400M
SHARD_KINDS = "pass .jsonl, .jsonl.gz, .parquet or .tar shards"


@dataclass
class StageConfig:
    """What every MetaCLIP stage reads: shards, metadata and the text field."""

    inputs: list[str] = field(default_factory=list)
    """Shards or patterns: .jsonl, .jsonl.gz, .parquet, WebDataset .tar; braces and globs expand
    ('pool-{000..099}.tar', 'data/*.parquet')."""
    metadata: str | None = None
    """MetaCLIP's metadata.json (a JSON list), a text file with one entry per line, or the run dir of
    `curate metaclip build-metadata`."""
    text_field: str = "text"
    """Record field (JSONL, Parquet column) holding the alt-text; for tar shards the member extension
    (txt) or the field of the sample's .json."""


@dataclass
class Config(StageConfig):
    t: float | None = None
    """Balancing threshold: entries matched more than t times are down-sampled to ~t. None: 20,000
    (MetaCLIP-400M), 100 for the demo pool; inf keeps every matched text."""
    seed: int = 0
    """Seed of the per-record keep decisions."""
    output_format: Literal["same", "index"] = "same"
    """same: kept records in the input's format; index: per shard a JSONL of {index, key, entries}
    of the kept records, without copies."""


def check_t(t: float) -> None:
    if not t > 0:  # also rejects NaN
        raise ConfigError(f"t: must be > 0 (got {t:g}); pass a large --t (or inf) to keep every matched text")


def check_inputs(patterns: list[str], key: str = "inputs", demo: bool = False) -> list[Path]:
    """The expanded shard list; ConfigError naming `key` when a pattern matches nothing readable."""
    from percli.core.data.shards import expand_inputs

    try:
        return expand_inputs(patterns)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{key}: {e} ({SHARD_KINDS}{', or no inputs for the demo pool' if demo else ''})") from None


def check_metadata(path: str | None, required: bool = True) -> None:
    """Metadata is required unless the demo pool is curated; a given file must load."""
    from percli.curation.metaclip import load_metadata

    if path is None:
        if required:
            raise ConfigError("metadata: not set (required with input files); pass --metadata metadata.json "
                              "(MetaCLIP's list) or a text file with one entry per line")
        return
    try:
        load_metadata(path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"metadata: {e}") from None


def check_stage(cfg: StageConfig, what: str) -> None:
    """A stage (match, balance) needs inputs and metadata."""
    if not cfg.inputs:
        raise ConfigError(f"inputs: not set; give the shards to {what}, e.g. 'pool-{{000..099}}.tar' ({SHARD_KINDS})")
    check_inputs(cfg.inputs)
    check_metadata(cfg.metadata)


def validate(cfg: Config) -> None:
    if cfg.t is not None:
        check_t(cfg.t)
    if not cfg.inputs and cfg.text_field != "text":
        raise ConfigError("text_field: the demo pool stores its texts in 'text'; drop --text-field or pass input files")
    if cfg.inputs:
        check_inputs(cfg.inputs, demo=True)
    check_metadata(cfg.metadata, required=bool(cfg.inputs))


def start(cfg: StageConfig, ctx: RunContext, demo: bool = False) -> tuple[list[Path], list[str]]:
    """The run's shards and metadata entries; with `demo` and no inputs, rank 0 writes the demo pool
    into the run dir (the other processes wait for it)."""
    from percli.core.data.shards import expand_inputs
    from percli.core.rundir import write_jsonl_atomic
    from percli.curation import demo as demo_pool
    from percli.curation.metaclip import load_metadata

    inputs = expand_inputs(cfg.inputs) if cfg.inputs else []
    entries = load_metadata(cfg.metadata) if cfg.metadata is not None else demo_pool.demo_metadata()
    if ctx.world > 1:
        ctx.log(f"{ctx.world} processes: rank r takes shards r, r + {ctx.world}, ...")
    if demo and not inputs:
        pool = ctx.run_dir / "demo_pool.jsonl"
        if ctx.is_main:
            write_jsonl_atomic(pool, demo_pool.demo_pool())
        dist.barrier(ctx.world)  # the other processes read the pool rank 0 just wrote
        ctx.log(f"no inputs: curating the embedded demo pool ({pool}) with {len(entries)} demo entries")
        inputs = [pool]
    return inputs, entries


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.curation.metaclip import curate_shards

    inputs, entries = start(cfg, ctx, demo=True)
    t = cfg.t if cfg.t is not None else (DEFAULT_T if cfg.inputs else DEMO_T)
    summary = curate_shards(inputs, ctx.run_dir, entries, t=t, seed=cfg.seed, text_field=cfg.text_field,
                            output_format=cfg.output_format, log=ctx.log, resume=ctx.resume, rank=ctx.rank,
                            world=ctx.world, progress=ctx.progress)
    return {"status": "completed", **summary, "demo": not cfg.inputs}
