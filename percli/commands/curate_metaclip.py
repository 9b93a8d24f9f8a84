"""`percli curate metaclip [run|match|count|balance|build-metadata]`: MetaCLIP 1 curation of shard pools.

`percli curate metaclip INPUTS...` (no subcommand name) is the one-shot `run`; with no arguments
at all it curates the embedded demo pool.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from percli.commands import curate_metadata
from percli.commands.run import err, fail
from percli.core.rundir import prepare_output_dir, write_jsonl_atomic

DEMO_T = 100.0  # the demo pool has 20k texts: t=100 makes ~130 of ~300 matched entries "head"
DEFAULT_T = 20000.0  # MetaCLIP-400M


class DefaultToRun(TyperGroup):
    """A group whose first argument, when it names no subcommand, goes to `run` (the one-shot form)."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["run", *args]
        return super().parse_args(ctx, args)


metaclip_app = typer.Typer(
    cls=DefaultToRun, no_args_is_help=False,
    help="MetaCLIP 1 curation: match texts to metadata, count entries, balance with threshold t. "
         "[bold]percli curate metaclip INPUTS... -m metadata.json[/] runs all three (no inputs: the demo pool); "
         "the subcommands run one stage each.")
metaclip_app.command("build-metadata")(curate_metadata.build_metadata)

# Options shared by the subcommands.
INPUTS_HELP = ("Shards or patterns: .jsonl, .jsonl.gz, .parquet, WebDataset .tar; braces and globs expand "
               "(quote them): 'pool-{000..099}.tar', 'data/*.parquet'.")
METADATA = typer.Option(
    None, "--metadata", "-m", help="MetaCLIP metadata.json (a JSON list) or a text file, one entry per line.")
T_OPTION = typer.Option(None, "--t", help=f"Balancing threshold: entries matched more than t times are down-sampled "
                                          f"to ~t. Default {DEFAULT_T:g} (MetaCLIP-400M), {DEMO_T:g} for the demo.")
SEED = typer.Option(0, "--seed", help="Seed of the per-record keep decisions.")
TEXT_FIELD = typer.Option(
    "text", "--text-field", help="Record field (JSONL, Parquet column) holding the alt-text; for tar shards the "
                                 "member extension (txt) or the field of the sample's .json.")
OUTPUT_FORMAT = typer.Option(
    "same", "--output-format", help="same: kept records in the input's format; index: per shard a JSONL of "
                                    "{index, key, entries} of the kept records, without copies.")
OUTPUT = typer.Option(None, "--output", "-o", help="Output dir (default runs/curate-metaclip[-stage]-<UTC time>).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace a non-empty --output dir.")
RESUME = typer.Option(False, "--resume", help="Continue an interrupted run in --output: finished shards are skipped.")
JSON_OUT = typer.Option(False, "--json", help="Print the summary as JSON on stdout.")


@dataclass
class Session:
    """What every stage starts from: inputs, metadata, output dir and this process's place."""

    inputs: list[Path]
    entries: list[str]
    out_dir: Path
    rank: int
    world: int
    say: Callable[[str], None]


def _start(patterns: list[str] | None, metadata: Path | None, output: Path | None, overwrite: bool, resume: bool,
           stage: str, demo: bool = False) -> Session:
    """Expand inputs, load metadata, prepare the output dir (rank 0) and join the process group."""
    from percli.core.data.shards import expand_inputs
    from percli.curation import demo as demo_pool
    from percli.curation.metaclip import init_distributed, load_metadata

    try:
        inputs = expand_inputs(patterns or [])
    except (FileNotFoundError, ValueError) as e:
        fail(f"{e} (pass .jsonl, .jsonl.gz, .parquet or .tar shards" + (", or no inputs for the demo pool)"
                                                                         if demo else ")"))
    if metadata is not None:
        try:
            entries = load_metadata(metadata)
        except (FileNotFoundError, ValueError) as e:
            fail(f"--metadata: {e}")
    elif inputs or not demo:
        fail("--metadata is required with input files (MetaCLIP's metadata.json, or one entry per line)")
    else:
        entries = demo_pool.demo_metadata()
    if resume and overwrite:
        fail("--resume and --overwrite contradict each other; pass one of them")
    if resume and output is None:
        fail("--resume needs --output: the dir of the run to continue")
    rank, world = init_distributed()
    out_dir, problem = prepare_output_dir(output, "curate", stage, overwrite=overwrite, resume=resume,
                                          can_resume=True, rank=rank, world=world)
    if problem:
        fail(problem)
    say = (lambda msg: err.print(msg, highlight=False)) if rank == 0 else (lambda _msg: None)
    say(f"output dir: {out_dir}" + (f" ({world} processes)" if world > 1 else ""))
    if demo and not inputs:
        pool = out_dir / "demo_pool.jsonl"
        if rank == 0:
            write_jsonl_atomic(pool, demo_pool.demo_pool())
        _barrier(world)  # the other processes read the pool rank 0 just wrote
        say(f"no inputs: curating the embedded demo pool ({pool}) with {len(entries)} demo entries")
        inputs = [pool]
    return Session(inputs, entries, out_dir, rank, world, say)


def _finish(session: Session, summary: dict, json_out: bool, title: str) -> None:
    """Leave the process group; rank 0 prints the summary for every process."""
    if session.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()  # every stage ended on a barrier or a collective: nothing is in flight
    if session.rank != 0:
        return
    if json_out:
        print(json.dumps(summary, indent=1))
    else:
        report(summary, title)


def _check_t(t: float | None, default: float) -> float:
    t = default if t is None else t
    if not t > 0:
        fail(f"--t must be > 0 (got {t:g}); pass a large --t (or inf) to keep every matched text")
    return t


def _check_format(output_format: str) -> None:
    from percli.core.data.shards import OUTPUT_FORMATS

    if output_format not in OUTPUT_FORMATS:
        fail(f"--output-format {output_format!r}: choose one of {', '.join(OUTPUT_FORMATS)}")


@metaclip_app.command("run")
def run(
    inputs: list[str] | None = typer.Argument(
        None, metavar="[INPUT]...", help=INPUTS_HELP + " Default: the embedded demo pool."),
    metadata: Path | None = METADATA,
    t: float | None = T_OPTION,
    seed: int = SEED,
    text_field: str = TEXT_FIELD,
    output_format: str = OUTPUT_FORMAT,
    output: Path | None = OUTPUT,
    overwrite: bool = OVERWRITE,
    resume: bool = RESUME,
    json_out: bool = JSON_OUT,
) -> None:
    """Match, count and balance in one go (the default when no subcommand is named).

    Writes matches/ (per-shard match lists), entry_counts.json, curated/<shard> (kept records in the
    input's format, each with its "metaclip_entries"), summary.json and entry_counts.png.
    Example: [bold]percli curate metaclip 'pool-{000..099}.parquet' -m metadata.json --t 20000[/]
    (no inputs: a built-in synthetic demo pool). Under [bold]accelerate launch[/] or torchrun the shards
    are split over the processes; the output is the same as with one process.
    """
    from percli.curation.metaclip import curate_shards

    if not inputs and text_field != "text":
        fail("the demo pool stores its texts in 'text'; drop --text-field or pass input files")
    t = _check_t(t, DEFAULT_T if inputs else DEMO_T)
    _check_format(output_format)
    session = _start(inputs, metadata, output, overwrite, resume, "metaclip", demo=True)
    try:
        summary = curate_shards(session.inputs, session.out_dir, session.entries, t=t, seed=seed,
                                text_field=text_field, output_format=output_format, log=session.say, resume=resume)
    except (OSError, ValueError) as e:
        fail(str(e))
    summary["demo"] = not inputs
    _finish(session, summary, json_out, "MetaCLIP curation")


@metaclip_app.command("match")
def match(
    inputs: list[str] = typer.Argument(..., metavar="INPUT...", help=INPUTS_HELP),
    metadata: Path | None = METADATA,
    text_field: str = TEXT_FIELD,
    output: Path | None = OUTPUT,
    overwrite: bool = OVERWRITE,
    resume: bool = RESUME,
    json_out: bool = JSON_OUT,
) -> None:
    """Stage 1: match every text to the metadata; writes matches/<shard>.npz (CSR entry ids per record).

    Example: [bold]percli curate metaclip match 'pool-{000..099}.tar' -m metadata.json -o work/match[/]
    """
    from percli.curation.metaclip import match_shards

    session = _start(inputs, metadata, output, overwrite, resume, "metaclip-match")
    try:
        summary = match_shards(session.inputs, session.out_dir, session.entries, text_field, resume, session.say)
    except (OSError, ValueError) as e:
        fail(str(e))
    summary.update(method="metaclip-match", output_dir=str(session.out_dir))
    _finish(session, summary, json_out, "MetaCLIP match")


@metaclip_app.command("count")
def count(
    sources: list[str] = typer.Argument(
        ..., metavar="MATCH_DIR | INPUT...", help="The output dir of a match run, or shards to match first."),
    metadata: Path | None = METADATA,
    text_field: str = TEXT_FIELD,
    output: Path | None = OUTPUT,
    overwrite: bool = OVERWRITE,
    resume: bool = RESUME,
    json_out: bool = JSON_OUT,
) -> None:
    """Stage 2: global per-entry counts (summed over shards and processes); writes entry_counts.json.

    Example: [bold]percli curate metaclip count work/match -m metadata.json -o work/count[/]
    """
    from percli.curation.metaclip import count_matches, match_shards, match_totals, save_counts

    match_dir = Path(sources[0]) if len(sources) == 1 and Path(sources[0]).is_dir() else None
    session = _start(None if match_dir else sources, metadata, output, overwrite, resume, "metaclip-count")
    try:
        if match_dir is None:  # match into this run's dir first (resumable like `match`)
            match_shards(session.inputs, session.out_dir, session.entries, text_field, resume, session.say)
        counts, manifest = count_matches(match_dir or session.out_dir, session.entries)
        save_counts(counts, session.entries, session.out_dir)
    except (OSError, ValueError) as e:
        fail(str(e))
    summary = match_totals(manifest["shards"])
    summary.update(method="metaclip-count", entries_matched=int((counts > 0).sum()), num_entries=len(counts),
                   counts_from=str(match_dir or session.out_dir), output_dir=str(session.out_dir),
                   world_size=session.world)
    _finish(session, summary, json_out, "MetaCLIP count")


@metaclip_app.command("balance")
def balance(
    inputs: list[str] = typer.Argument(..., metavar="INPUT...", help=INPUTS_HELP),
    metadata: Path | None = METADATA,
    counts: Path = typer.Option(..., "--counts", help="entry_counts.json of the whole pool (from `count`, or the "
                                                      "official entry_counts_400m.json)."),
    t: float | None = T_OPTION,
    seed: int = SEED,
    text_field: str = TEXT_FIELD,
    matches: Path | None = typer.Option(
        None, "--matches", help="Output dir of a match (or count) run over these inputs: reuse its matches "
                                "instead of matching again."),
    output_format: str = OUTPUT_FORMAT,
    output: Path | None = OUTPUT,
    overwrite: bool = OVERWRITE,
    resume: bool = RESUME,
    json_out: bool = JSON_OUT,
) -> None:
    """Stage 3: keep each text with probability 1 - prod(1 - min(1, t/c_e)); writes curated/ and summary.json.

    Example: [bold]percli curate metaclip balance 'pool-{000..099}.tar' -m metadata.json
    --counts work/count/entry_counts.json --matches work/match --t 20000 -o work/curated[/]
    """
    from percli.curation.metaclip import balance_shards, load_entry_counts

    t = _check_t(t, DEFAULT_T)
    _check_format(output_format)
    session = _start(inputs, metadata, output, overwrite, resume, "metaclip-balance")
    try:
        entry_counts = load_entry_counts(counts, session.entries)
    except (OSError, ValueError) as e:
        fail(f"--counts: {e}")
    try:
        summary = balance_shards(session.inputs, session.out_dir, session.entries, entry_counts, t, seed, text_field,
                                 output_format, match_dir=matches, resume=resume, log=session.say,
                                 counts_from=str(counts))
    except (OSError, ValueError) as e:
        fail(str(e))
    _finish(session, summary, json_out, "MetaCLIP balance")


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def report(summary: dict, title: str) -> None:
    """Human summary on stdout (the rows a stage's summary has); scripts use --json or summary.json."""
    table = Table("", "value", title=title, title_justify="left")
    rows = [("texts read", "texts_read", "{:,}"), ("matched (>= 1 entry)", "matched", "{:,}"),
            ("kept", "kept", "{:,}"), ("expected kept", "expected_kept", "{:,.1f}"),
            ("head entries (count > t)", "head_entries", "{:,}"), ("t", "t", "{:g}"), ("seed", "seed", "{}"),
            ("bad records", "bad_records", "{:,}"), ("duplicate tar keys (skipped)", "duplicate_keys", "{:,}"),
            ("entries matched", "entries_matched", "{:,}"),
            ("shards resumed", "resumed_shards", "{:,}"), ("output dir", "output_dir", "{}")]
    for name, key, fmt in rows:
        if key in summary:
            value = fmt.format(summary[key])
            if key == "kept":
                value += f" ({summary['kept_fraction_of_matched']:.1%} of matched)"
            elif key == "expected_kept" and math.isfinite(summary["kept_sd"]):
                value += f" +- {summary['kept_sd']:.1f}"
            table.add_row(name, value)
    Console().print(table)
