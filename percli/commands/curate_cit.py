"""`percli curate cit`: CiT's embedding-similarity selection of JSONL pools."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from percli.commands.run import emit_summary, err, fail
from percli.curation.cit import MIN_RATIO_YFCC15M, THRESHOLD_YFCC15M
from percli.curation.text_encoder import DEFAULT_TEXT_ENCODER

DEMO_POOL_SIZE = 2000  # the first 2,000 demo alt-texts: MiniLM embeds them in ~15 s on two CPU cores


def cit(
    inputs: list[Path] | None = typer.Argument(
        None, metavar="[INPUT]...", help="JSONL or Parquet shards (braces and globs expand; default: the embedded "
                                   "demo pool)."),
    metadata: Path | None = typer.Option(
        None, "--metadata", "-m", help="The task's class names: a text file, one per line, or a JSON list "
                                       "(default with no inputs: a few animal names found in the demo pool)."),
    encoder: str = typer.Option(
        DEFAULT_TEXT_ENCODER, "--encoder", "-e", help="Text encoder: minilm (all-MiniLM-L6-v2, offline), hashing, "
                                                      "a sentence-transformers folder, or module:factory."),
    threshold: float = typer.Option(
        THRESHOLD_YFCC15M, "--threshold", help="Keep captions whose max cosine similarity to a class name is above "
                                               "this (CiT: 0.55 YFCC15M, 0.7 YFCC100M)."),
    min_ratio: float = typer.Option(
        MIN_RATIO_YFCC15M, "--min-ratio", help="Per batch: if fewer than this fraction pass, keep the top "
                                               "min_ratio*batch instead (CiT: 0.003 YFCC15M, 0.01 YFCC100M)."),
    batch_size: int = typer.Option(2048, "--batch-size", help="Captions per batch (encoding and the min-ratio rule)."),
    top_ratio: float | None = typer.Option(
        None, "--top-ratio", help="Instead of the threshold: keep exactly this fraction of the pool, most similar "
                                  "first."),
    text_field: str = typer.Option("text", "--text-field", help="Record field holding the caption."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output dir (default runs/curate-cit-<UTC time>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --output dir."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """CiT selection: keep captions close to the task's class names in a text encoder's space.

    Writes curated/<input>.jsonl (kept records, each with "cit_similarity" and "cit_label") and
    summary.json. Example: [bold]percli curate cit pool.jsonl --metadata imagenet_classes.txt
    --threshold 0.55[/] (no inputs: the first 2,000 texts of the built-in demo pool and a few animal names).
    """
    from percli.core.rundir import prepare_output_dir, write_jsonl_atomic
    from percli.curation import cit as cit_lib
    from percli.curation import demo
    from percli.curation.selection import resolve_inputs
    from percli.curation.text_encoder import load_text_encoder

    use_demo = not inputs
    if use_demo and text_field != "text":
        fail("the demo pool stores its texts in 'text'; drop --text-field or pass input files")
    try:
        inputs = resolve_inputs(inputs) if inputs else []
        cit_lib.check_params(threshold, min_ratio, batch_size, top_ratio)
        if metadata is not None:
            class_names = cit_lib.load_class_names(metadata)
        elif inputs:
            raise ValueError("--metadata is required with input files: the task's class names, one per line")
        else:
            class_names = cit_lib.DEMO_CLASSES
        text_encoder = load_text_encoder(encoder)
        out_dir, problem = prepare_output_dir(output, "curate", "cit", overwrite=overwrite)
        if problem:
            raise ValueError(problem)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    err.print(f"output dir: {out_dir}; encoder {text_encoder.name} ({text_encoder.dim}-d)", highlight=False)
    if use_demo:
        pool = out_dir / "demo_pool.jsonl"
        write_jsonl_atomic(pool, demo.demo_pool()[:DEMO_POOL_SIZE])
        err.print(f"no inputs: curating the embedded demo pool ({pool}) for {len(class_names)} animal classes",
                  highlight=False)
        inputs = [pool]
    try:
        summary = cit_lib.curate_cit(inputs, out_dir, class_names, text_encoder, threshold=threshold,
                                     min_ratio=min_ratio, batch_size=batch_size, top_ratio=top_ratio,
                                     text_field=text_field, log=lambda msg: err.print(msg, highlight=False))
    except (OSError, ValueError) as e:
        fail(str(e))
    summary["demo"] = use_demo
    emit_summary(out_dir, summary, json_out, report)


def report(summary: dict) -> None:
    """Human summary on stdout; scripts use --json or summary.json."""
    table = Table("", "value", title="CiT curation", title_justify="left")
    rule = (f"threshold {summary['threshold']:g}, min ratio {summary['min_ratio']:g}" if summary["rule"] == "threshold"
            else f"top ratio {summary['top_ratio']:g}")
    top_classes = ", ".join(f"{name} {count}" for name, count in list(summary["kept_per_class"].items())[:5])
    rows = [
        ("texts read", f"{summary['texts_read']:,}"),
        ("kept", f"{summary['kept']:,} ({summary['kept_ratio']:.1%})"),
        ("rule", rule),
        ("batches (min-ratio fallback)", f"{summary['batches']:,} ({summary['fallback_batches']:,})"),
        ("encoder, classes", f"{summary['encoder']}, {summary['num_classes']:,}"),
        ("most kept classes", top_classes or "-"),
        ("bad records", f"{summary['bad_records']:,}"),
        ("output dir", summary["output_dir"]),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
