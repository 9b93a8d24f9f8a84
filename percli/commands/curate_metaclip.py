"""`percli curate metaclip`: MetaCLIP 1 curation of JSONL pools."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from percli.commands.run import err, fail
from percli.core.rundir import default_run_dir

DEMO_T = 100.0  # the demo pool has 20k texts: t=100 makes ~130 of ~300 matched entries "head"
DEFAULT_T = 20000.0  # MetaCLIP-400M


def metaclip(
    inputs: list[Path] | None = typer.Argument(
        None, metavar="[INPUT.jsonl]...", help="JSONL files, one record per line (default: the embedded demo pool)."),
    metadata: Path | None = typer.Option(
        None, "--metadata", "-m", help="MetaCLIP metadata.json (a JSON list) or a text file, one entry per line "
                                       "(default with no inputs: the demo metadata)."),
    t: float | None = typer.Option(
        None, "--t", help=f"Balancing threshold: entries matched more than t times are down-sampled to ~t. "
                          f"Default {DEFAULT_T:g} (MetaCLIP-400M), {DEMO_T:g} for the demo pool."),
    seed: int = typer.Option(0, "--seed", help="Seed of the per-record keep decisions."),
    text_field: str = typer.Option("text", "--text-field", help="Record field holding the alt-text."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Output dir (default runs/curate-metaclip-<UTC time>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --output dir."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run in --output: shards already curated are skipped."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """MetaCLIP 1 curation: sub-string match texts to metadata, count entries, balance with threshold t.

    Writes curated/<input>.jsonl (kept records, each with "metaclip_entries"), entry_counts.json and
    summary.json. Example: [bold]percli curate metaclip pool.jsonl --metadata metadata.json --t 20000[/]
    (no inputs: a built-in synthetic demo pool). Under [bold]accelerate launch[/] or torchrun the input
    files are split over the processes; the output is the same as with one process.
    """
    from percli.curation import demo
    from percli.curation.metaclip import curate_jsonl, init_distributed, load_metadata

    inputs = list(inputs or [])
    use_demo = not inputs
    if use_demo and text_field != "text":
        fail("the demo pool stores its texts in 'text'; drop --text-field or pass input files")
    for path in inputs:
        if not path.is_file():
            fail(f"input {path} does not exist (pass JSONL files, or no inputs for the demo pool)")
    if t is None:
        t = DEFAULT_T if inputs else DEMO_T
    if not t > 0:
        fail(f"--t must be > 0 (got {t:g}); pass a large --t (or inf) to keep every matched text")
    if metadata is not None:
        try:
            entries = load_metadata(metadata)
        except (FileNotFoundError, ValueError) as e:
            fail(f"--metadata: {e}")
    elif inputs:
        fail("--metadata is required with input files (MetaCLIP's metadata.json, or one entry per line)")
    else:
        entries = demo.demo_metadata()

    if resume and overwrite:
        fail("--resume and --overwrite contradict each other; pass one of them")
    if resume and output is None:
        fail("--resume needs --output: the dir of the run to continue")
    rank, world = init_distributed()
    out_dir, problem = _prepare_output(output, overwrite, resume, rank, world)
    if problem:
        fail(problem)
    say = (lambda msg: err.print(msg, highlight=False)) if rank == 0 else (lambda _msg: None)
    say(f"output dir: {out_dir}" + (f" ({world} processes)" if world > 1 else ""))

    if use_demo:
        pool = out_dir / "demo_pool.jsonl"
        if rank == 0:
            write_text_atomic(pool, "".join(json.dumps(r) + "\n" for r in demo.demo_pool()))
        _barrier(world)  # the other processes read the pool rank 0 just wrote
        say(f"no inputs: curating the embedded demo pool ({pool}) with {len(entries)} demo entries, t={t:g}")
        inputs = [pool]
    try:
        summary = curate_jsonl(inputs, out_dir, entries, t=t, seed=seed, text_field=text_field, log=say,
                               resume=resume)
    except (OSError, ValueError) as e:
        fail(str(e))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()  # curate_jsonl ended on a barrier: nothing is in flight
    if rank != 0:
        return  # rank 0 reports for every process
    summary["demo"] = use_demo
    if json_out:
        print(json.dumps(summary, indent=1))
    else:
        report(summary)


def _prepare_output(output: Path | None, overwrite: bool, resume: bool, rank: int,
                    world: int) -> tuple[Path, str | None]:
    """Rank 0 picks, checks and (with --overwrite) empties the output dir; every process gets its choice.

    Only rank 0 touches the dir, so two processes never race on rmtree; the default name holds a
    timestamp, so the others must take rank 0's. Returns (dir, error message or None).
    """
    chosen: list = [None, None]
    if rank == 0:
        out_dir = output or default_run_dir("curate", "metaclip")
        problem = None
        if out_dir.exists() and not out_dir.is_dir():
            problem = f"--output {out_dir} is a file; choose a directory"
        elif out_dir.is_dir() and any(out_dir.iterdir()) and not resume:
            if overwrite:
                shutil.rmtree(out_dir)
            else:
                problem = (f"output dir {out_dir} is not empty; pass --overwrite to replace it, --resume to continue "
                           f"it, or --output to choose another")
        if problem is None:
            out_dir.mkdir(parents=True, exist_ok=True)
        chosen = [str(out_dir), problem]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0]), chosen[1]


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def report(summary: dict) -> None:
    """Human summary on stdout; scripts use --json or summary.json."""
    table = Table("", "value", title="MetaCLIP curation", title_justify="left")
    sd = summary["kept_sd"]
    rows = [
        ("texts read", f"{summary['texts_read']:,}"),
        ("matched (>= 1 entry)", f"{summary['matched']:,}"),
        ("kept", f"{summary['kept']:,} ({summary['kept_fraction_of_matched']:.1%} of matched)"),
        ("expected kept", f"{summary['expected_kept']:,.1f} +- {sd:.1f}" if math.isfinite(sd) else "-"),
        ("entries matched / all", f"{summary['entries_matched']:,} / {summary['num_entries']:,}"),
        ("head entries (count > t)", f"{summary['head_entries']:,}"),
        ("t, seed", f"{summary['t']:g}, {summary['seed']}"),
        ("bad records", f"{summary['bad_records']:,}"),
        ("output dir", summary["output_dir"]),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
