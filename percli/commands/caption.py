"""`percli caption altogether`: re-align the alt-texts of image shards with a trained Altogether captioner."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from percli.commands.run import emit_summary, err, fail
from percli.core.rundir import prepare_output_dir

caption_app = typer.Typer(no_args_is_help=True, help="Write captions for image shards with a trained captioner.")
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@caption_app.command("altogether")
def altogether(
    images: list[str] = typer.Option(
        ..., "--images", help="A folder with records.jsonl, or .jsonl/.parquet/.tar shards (braces and globs expand; "
                              "quote them). Repeat for several."),
    alt_text: str = typer.Option("alt_text", "--alt-text", help="Record field / tar member extension of the alt-text."),
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", help="A `percli finetune altogether` run dir, one of its checkpoints, or a .safetensors."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Output dir for captions.jsonl and summary.json (default "
                                     "runs/caption-altogether-<UTC time>)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images captioned at a time."),
    chunk_size: int = typer.Option(512, "--chunk-size", help="Records per part file: the unit a resume skips."),
    strategy: str = typer.Option("sample", "--strategy", help="sample (official: T 0.2, top-p 0.7) | greedy | beam."),
    temperature: float = typer.Option(0.2, "--temperature"),
    top_p: float = typer.Option(0.7, "--top-p"),
    num_beams: int = typer.Option(4, "--num-beams"),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", help="Default: the checkpoint's max_target_len."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 (GPU only) | bf16."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling (per chunk, so a resume is reproducible)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --output dir."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --output: written chunks are "
                                                        "kept, the rest captioned."),
    write_shards: bool = typer.Option(
        False, "--write-shards", help="Also write each input shard with its captions into <output>/shards/ (JSONL "
                                      "field / Parquet column `altogether`, tar member <key>.altogether.txt)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Caption every image of the inputs from the image and its alt-text.

    Writes captions.jsonl ({key, alt_text, altogether} per image, input order), parts/ (one file
    per chunk) and summary.json; with --write-shards also shards/ (every input record plus its caption, in
    the input's format). Images that do not decode are counted and listed, not fatal.
    Example: [bold]percli caption altogether --images runs/finetune-altogether-X/heldout
    --checkpoint runs/finetune-altogether-X -o runs/captions[/]
    """
    import torch

    from percli.captioning.batch_caption import GenerationOptions, caption_shards, load_captioner, resolve_inputs
    from percli.recipes.altogether import image_transform

    if precision not in PRECISIONS:
        fail(f"--precision {precision!r}: choose fp32, fp16 or bf16")
    if strategy not in ("sample", "greedy", "beam"):
        fail(f"--strategy {strategy!r}: choose sample, greedy or beam")
    if batch_size < 1 or chunk_size < 1:
        fail("--batch-size and --chunk-size must be >= 1")
    if resume and output is None:
        fail("--resume needs --output: the dir of the run to continue")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if precision == "fp16" and device.type == "cpu":
        fail("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    try:
        inputs = resolve_inputs(images)
        model, meta = load_captioner(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    out_dir, problem = prepare_output_dir(output, "caption", "altogether", overwrite=overwrite, resume=resume,
                                          can_resume=True)
    if problem:
        fail(problem)
    err.print(f"output dir: {out_dir}", highlight=False)
    dtype = getattr(torch, PRECISIONS[precision])
    model = model.to(device, dtype)
    pre = meta["preprocess"]
    options = GenerationOptions(strategy, temperature, top_p, num_beams, max_new_tokens or model.max_target_len, seed)
    started = time.time()
    try:
        summary = caption_shards(
            model, image_transform(pre["image_size"], pre["mean"], pre["std"]), inputs, out_dir, alt_text, batch_size,
            chunk_size, options, resume, device, dtype, log=lambda msg: err.print(msg, highlight=False),
            run_meta={"checkpoint": str(checkpoint), "precision": precision}, shards=write_shards)
    except (OSError, ValueError) as e:
        fail(str(e))
    summary["elapsed_s"] = round(time.time() - started, 2)
    emit_summary(out_dir, summary, json_out, report)


def report(summary: dict) -> None:
    table = Table("", "value", title="Altogether captioning", title_justify="left")
    table.add_row("captioned", f"{summary['captioned']:,}")
    table.add_row("of them without alt-text", f"{summary['without_alt_text']:,}")
    table.add_row("bad images", f"{summary['bad_images']['count']:,}")
    table.add_row("bad records", f"{summary['bad_records']['count']:,}")
    table.add_row("invalid alt-texts (captioned without)", f"{summary['invalid_alt_text']['count']:,}")
    table.add_row("duplicate tar keys (skipped)", f"{summary['duplicate_keys']:,}")
    table.add_row("chunks (resumed)", f"{summary['chunks']:,} ({summary['chunks_resumed']:,})")
    table.add_row("strategy", json.dumps(summary["generation"]))
    table.add_row("captions", summary["captions"])
    if summary["shards"]:
        table.add_row("shards (resumed)", f"{len(summary['shards']):,} ({summary['shards_resumed']:,})")
    table.add_row("seconds", f"{summary['elapsed_s']:.1f}")
    Console().print(table)
