"""CiT selection: keep the captions close to the task's class names in a text encoder's space.

A caption is kept when its max cosine similarity to a class name is above --threshold; a batch
where fewer than --min-ratio pass keeps its top int(min_ratio * batch) instead (the official rule).
--top-ratio replaces both by one global cut. Writes curated/<input>.jsonl (kept records, each with
"cit_similarity" and "cit_label") and summary.json in the output dir. With no inputs it curates the
first 2,000 texts of the built-in demo pool for a few animal names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.curation.cit import MIN_RATIO_YFCC15M, THRESHOLD_YFCC15M
from percli.curation.text_encoder import DEFAULT_TEXT_ENCODER

DEMO_POOL_SIZE = 2000  # the first 2,000 demo alt-texts: MiniLM embeds them in ~15 s on two CPU cores


@dataclass
class Config:
    inputs: list[str] = field(default_factory=list)
    """JSONL or Parquet shards (braces and globs expand); none: the embedded demo pool."""
    metadata: str | None = None
    """The task's class names: a text file, one per line, or a JSON list (none with no inputs: a few
    animal names found in the demo pool)."""
    encoder: str = DEFAULT_TEXT_ENCODER
    """minilm (all-MiniLM-L6-v2, offline), hashing, a sentence-transformers folder, or module:factory."""
    threshold: float = THRESHOLD_YFCC15M
    """Keep captions whose max cosine similarity to a class name is above this (CiT: 0.55 YFCC15M, 0.7 YFCC100M)."""
    min_ratio: float = MIN_RATIO_YFCC15M
    """Per batch: if fewer than this fraction pass, keep the top min_ratio*batch instead (CiT: 0.003, 0.01)."""
    batch_size: int = 2048
    """Captions per batch (encoding and the min-ratio rule)."""
    top_ratio: float | None = None
    """Instead of the threshold: keep exactly this fraction of the pool, most similar first."""
    text_field: str = "text"
    """Record field holding the caption."""


def validate(cfg: Config) -> None:
    from percli.curation import cit
    from percli.curation.selection import resolve_inputs

    if not cfg.inputs and cfg.text_field != "text":
        raise ConfigError("text_field: the demo pool stores its texts in 'text'; drop --text-field or pass input files")
    cit.check_params(cfg.threshold, cfg.min_ratio, cfg.batch_size, cfg.top_ratio)
    if cfg.inputs:
        try:
            resolve_inputs(cfg.inputs)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"inputs: {e}") from None
        if cfg.metadata is None:
            raise ConfigError("metadata: not set (required with input files): the task's class names, one per line")
    if cfg.metadata is not None:
        try:
            cit.load_class_names(cfg.metadata)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"metadata: {e}") from None


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.core.rundir import write_jsonl_atomic
    from percli.curation import cit, demo
    from percli.curation.selection import resolve_inputs
    from percli.curation.text_encoder import load_text_encoder

    class_names = cit.load_class_names(cfg.metadata) if cfg.metadata is not None else cit.DEMO_CLASSES
    encoder = load_text_encoder(cfg.encoder)
    ctx.log(f"encoder {encoder.name} ({encoder.dim}-d)")
    inputs = resolve_inputs(cfg.inputs) if cfg.inputs else []
    if not inputs:
        pool = ctx.run_dir / "demo_pool.jsonl"
        write_jsonl_atomic(pool, demo.demo_pool()[:DEMO_POOL_SIZE])
        ctx.log(f"no inputs: curating the embedded demo pool ({pool}) for {len(class_names)} animal classes")
        inputs = [pool]
    summary = cit.curate_cit(inputs, ctx.run_dir, class_names, encoder, threshold=cfg.threshold,
                             min_ratio=cfg.min_ratio, batch_size=cfg.batch_size, top_ratio=cfg.top_ratio,
                             text_field=cfg.text_field, log=ctx.log)
    return {"status": "completed", **summary, "demo": not cfg.inputs}
