"""Stage 1 of MetaCLIP curation: match every text to the metadata.

Writes matches/<shard>.npz (the CSR entry ids of each usable record) and matches/manifest.json,
which `curate metaclip count` and `curate metaclip balance --matches` read. Shard-parallel under
`accelerate launch` or torchrun; `--resume` skips the shards an interrupted run finished.
"""

from __future__ import annotations

from dataclasses import dataclass

from percli.core.context import RunContext
from percli.curation.metaclip_job import StageConfig, check_stage, start


@dataclass
class Config(StageConfig):
    pass


def validate(cfg: Config) -> None:
    check_stage(cfg, "match")


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.curation.metaclip import match_shards

    inputs, entries = start(cfg, ctx)
    summary = match_shards(inputs, ctx.run_dir, entries, cfg.text_field, ctx.resume, ctx.log, rank=ctx.rank,
                           world=ctx.world, progress=ctx.progress)
    return {"status": "completed", **summary, "method": "metaclip-match", "output_dir": str(ctx.run_dir)}
