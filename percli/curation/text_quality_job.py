"""Text-quality pruning (Sharma et al. 2024): weighted line filters, token-weighted document score.

Each line filter is weighted by how much it lowers a reference LM's perplexity (or by --weights);
a document's score is the token-weighted mean of its line scores, and the lowest --prune fraction
is dropped. Writes curated/<input>.jsonl (kept records, each with "quality_score"), weights.json
(reusable with --weights) and summary.json in the output dir. With no inputs it scores the
built-in demo pool of alt-texts, one document each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from percli.core.config import ConfigError
from percli.core.context import RunContext


@dataclass
class Config:
    inputs: list[str] = field(default_factory=list)
    """JSONL or Parquet shards, one document per record (braces and globs expand); none: the demo pool."""
    prune: float = 0.3
    """Fraction of documents dropped, lowest scores first (the paper: 0.2-0.4)."""
    weights: str | None = None
    """Filter weights as JSON {filter: weight} (e.g. a run's weights.json); none: estimated from a
    reference LM's perplexity."""
    lm_docs: int = 100_000
    """Documents the reference LM and the weights are estimated on (the first ones)."""
    text_field: str = "text"
    """Record field holding the document."""


def validate(cfg: Config) -> None:
    from percli.curation import text_quality as tq
    from percli.curation.selection import resolve_inputs

    if not cfg.inputs and cfg.text_field != "text":
        raise ConfigError("text_field: the demo pool stores its texts in 'text'; drop --text-field or pass input files")
    if cfg.lm_docs < 1:
        raise ConfigError(f"lm_docs: must be >= 1 (got {cfg.lm_docs})")
    if not 0.0 <= cfg.prune < 1.0:
        raise ConfigError(f"prune: is the fraction of documents dropped, in [0, 1) (got {cfg.prune:g}); the paper "
                          "prunes 0.2-0.4")
    if cfg.inputs:
        try:
            resolve_inputs(cfg.inputs)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"inputs: {e}") from None
    if cfg.weights is not None:
        try:
            tq.load_weights(cfg.weights)
        except ValueError as e:
            raise ConfigError(f"weights: {e}") from None


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.core.rundir import write_json_atomic, write_jsonl_atomic
    from percli.curation import demo
    from percli.curation import text_quality as tq
    from percli.curation.selection import resolve_inputs

    inputs = resolve_inputs(cfg.inputs) if cfg.inputs else []
    if not inputs:
        pool = ctx.run_dir / "demo_pool.jsonl"
        write_jsonl_atomic(pool, demo.demo_pool())
        ctx.log(f"no inputs: scoring the embedded demo pool ({pool}), one alt-text per document")
        inputs = [pool]
    given = tq.load_weights(cfg.weights) if cfg.weights is not None else None
    summary = tq.curate_text_quality(inputs, ctx.run_dir, prune=cfg.prune, weights=given, lm_docs=cfg.lm_docs,
                                     text_field=cfg.text_field, log=ctx.log)
    write_json_atomic(ctx.run_dir / "weights.json", summary["weights"])
    return {"status": "completed", **summary, "demo": not cfg.inputs}
