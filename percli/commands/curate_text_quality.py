"""`percli curate text-quality`: score documents with weighted line filters and prune the lowest."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from percli.commands.run import emit_summary, err, fail
from percli.core.rundir import write_json_atomic


def text_quality(
    inputs: list[Path] | None = typer.Argument(
        None, metavar="[INPUT]...", help="JSONL or Parquet shards, one document per record (braces and globs "
                                         "expand; default: the embedded demo pool)."),
    prune: float = typer.Option(0.3, "--prune", help="Fraction of documents dropped, lowest scores first (the "
                                                     "paper: 0.2-0.4)."),
    weights: Path | None = typer.Option(
        None, "--weights", "-w", help="Filter weights as JSON {filter: weight} (e.g. a run's weights.json); "
                                      "default: estimated from a reference LM's perplexity."),
    lm_docs: int = typer.Option(100_000, "--lm-docs", help="Documents the reference LM and the weights are "
                                                           "estimated on (the first ones)."),
    text_field: str = typer.Option("text", "--text-field", help="Record field holding the document."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Output dir (default runs/curate-text-quality-<UTC time>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --output dir."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Text-quality pruning (Sharma et al. 2024): weighted line filters, token-weighted document score.

    Writes curated/<input>.jsonl (kept records, each with "quality_score"), weights.json (reusable
    with --weights) and summary.json. Example: [bold]percli curate text-quality corpus.jsonl --prune
    0.3[/] (no inputs: the built-in demo pool of alt-texts, one document each).
    """
    from percli.core.rundir import prepare_output_dir, write_jsonl_atomic
    from percli.curation import demo
    from percli.curation import text_quality as tq
    from percli.curation.selection import resolve_inputs

    use_demo = not inputs
    if use_demo and text_field != "text":
        fail("the demo pool stores its texts in 'text'; drop --text-field or pass input files")
    if lm_docs < 1:
        fail(f"--lm-docs must be >= 1 (got {lm_docs})")
    try:
        inputs = resolve_inputs(inputs) if inputs else []
        given = tq.load_weights(weights) if weights is not None else None
        if not 0.0 <= prune < 1.0:
            raise ValueError(f"--prune is the fraction of documents dropped, in [0, 1) (got {prune:g})")
        out_dir, problem = prepare_output_dir(output, "curate", "text-quality", overwrite=overwrite)
        if problem:
            raise ValueError(problem)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    def say(msg: str) -> None:
        err.print(msg, highlight=False)

    say(f"output dir: {out_dir}")
    if use_demo:
        pool = out_dir / "demo_pool.jsonl"
        write_jsonl_atomic(pool, demo.demo_pool())
        say(f"no inputs: scoring the embedded demo pool ({pool}), one alt-text per document")
        inputs = [pool]
    try:
        summary = tq.curate_text_quality(inputs, out_dir, prune=prune, weights=given, lm_docs=lm_docs,
                                         text_field=text_field, log=say)
    except (OSError, ValueError) as e:
        fail(str(e))
    summary["demo"] = use_demo
    write_json_atomic(out_dir / "weights.json", summary["weights"])
    emit_summary(out_dir, summary, json_out, report)


def report(summary: dict) -> None:
    """Human summary on stdout; scripts use --json or summary.json."""
    table = Table("", "value", title="Text-quality pruning", title_justify="left")
    cutoff = summary["score_cutoff"]
    rows = [
        ("documents read", f"{summary['documents_read']:,}"),
        ("kept / pruned", f"{summary['kept']:,} / {summary['pruned']:,} (prune {summary['prune']:g})"),
        ("score cutoff", "-" if cutoff is None else f"{cutoff:.4f}"),
        ("weights", summary["weights_source"]),
        *((f"  {name}", f"{w:.3f}") for name, w in summary["weights"].items()),
        ("bad records", f"{summary['bad_records']:,}"),
        ("output dir", summary["output_dir"]),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
