"""The one function behind every run verb: resolve config, prepare the run dir, run, report."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import typer
import yaml
from accelerate.utils import broadcast_object_list
from rich.console import Console

from percli.core.config import ConfigError, to_dict, to_yaml
from percli.core.engine import RunStopped, make_accelerator
from percli.core.rundir import (
    RunDirError,
    default_run_dir,
    environment_report,
    prepare_run_dir,
    write_json_atomic,
)
from percli.recipes import Recipe

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def emit_summary(out_dir: Path, summary: dict, json_out: bool, report: Callable[[dict], None]) -> None:
    """Write `out_dir/summary.json` atomically, then print it: as JSON with --json, else as a table."""
    write_json_atomic(out_dir / "summary.json", summary)
    if json_out:
        print(json.dumps(summary, indent=1))
    else:
        report(summary)


def run_recipe(recipe: Recipe, *, overrides: list[str], config_file: str | None, preset: str | None,
               run_dir: Path | None, resume: bool, overwrite: bool, dry_run: bool, json_out: bool) -> None:
    """Resolve the config, then hand the run to the recipe; exit non-zero on any failure."""
    base = None
    if resume:
        if run_dir is None:
            fail("--resume needs --run-dir pointing at the run to continue")
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            fail(f"--resume: {saved} does not exist; is {run_dir} a percli run dir?")
        base = yaml.safe_load(saved.read_text())
    try:
        cfg = recipe.resolve_config(preset, config_file, overrides, base=base)
        validate = getattr(recipe.load(), "validate", None)
        if validate is not None:
            validate(cfg)
    except ConfigError as e:
        fail(f"bad config: {e}")
    if dry_run:
        if json_out:
            print(json.dumps(to_dict(cfg), indent=1))
        else:
            sys.stdout.write(to_yaml(cfg))
        err.print(f"[green]config valid[/] for {recipe.verb} {recipe.method} (dry run: nothing was run)")
        return

    accelerator = make_accelerator(cfg.train)
    # Every process must use the same run dir: rank 0 decides, the others receive it.
    chosen = [str(run_dir or default_run_dir(recipe.verb, recipe.method))]
    if accelerator.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    path = Path(chosen[0])
    if accelerator.is_main_process:
        try:
            prepare_run_dir(path, resume=resume, overwrite=overwrite)
        except RunDirError as e:
            fail(str(e))
        (path / "config.yaml").write_text(to_yaml(cfg))
        env = environment_report(accelerator.num_processes, str(accelerator.device), cfg.train.mixed_precision)
        (path / "env.json").write_text(json.dumps(env, indent=1))
        err.print(f"run dir: {path}")
    accelerator.wait_for_everyone()
    try:
        summary = recipe.load().run(cfg, path, accelerator, resume=resume)
    except RunStopped as stop:
        err.print(f"[bold red]{stop}[/]")
        if json_out and accelerator.is_main_process:
            print(json.dumps(stop.summary, indent=1))
        raise typer.Exit(stop.exit_code) from None
    except (ValueError, FileNotFoundError, KeyError) as e:
        fail(str(e).strip("'\""))
    if accelerator.is_main_process:
        if json_out:
            print(json.dumps(summary, indent=1))
        else:
            report(summary)
    # Leave together: a rank that exits while another still talks to the process group can abort
    # in the collective library's teardown ("terminate called without an active exception").
    accelerator.wait_for_everyone()
    accelerator.end_training()


def report(summary: dict) -> None:
    """Short human summary on stdout (scripts use --json or summary.json)."""
    out = Console()
    metrics = summary.get("metrics", {})
    shown = {k: v for k, v in metrics.items() if k not in ("step",)}
    out.print(f"[bold]{summary.get('status', 'done')}[/] at step {summary.get('step')} - run dir {summary['run_dir']}")
    for k, v in shown.items():
        out.print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    bad = summary.get("bad_inputs", {}).get("count", 0)
    if bad:
        out.print(f"  [yellow]skipped {bad} unreadable input(s)[/] (listed in summary.json)")
    for key in ("checkpoint", "reconstructions"):
        if summary.get(key):
            out.print(f"  {key}: {summary[key]}")
