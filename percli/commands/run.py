"""The one function behind every run verb: resolve config, prepare the run dir, run, report."""

from __future__ import annotations

import errno
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import yaml
from accelerate.utils import broadcast_object_list
from rich.console import Console

from percli.core.config import ConfigError, to_dict, to_yaml
from percli.core.engine import RunStopped, make_accelerator
from percli.core.rundir import (
    RunDirError,
    check_run_dir,
    claim_run_dir,
    default_run_dir,
    environment_report,
    unlock_run_dir,
    write_json_atomic,
    write_text_atomic,
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


def _saved_config(run_dir: Path | None) -> dict:
    """The config a --resume continues: run_dir/config.yaml, refused when missing, empty or invalid."""
    if run_dir is None:
        fail("--resume needs --run-dir pointing at the run to continue")
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        fail(f"--resume: {saved} does not exist; is {run_dir} a percli run dir?")
    try:
        data = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        fail(f"--resume: {saved} is not valid YAML ({str(e).splitlines()[0]}); restore the run's config.yaml "
             "(a copy of its settings) or start a new run")
    if not isinstance(data, dict) or not data:
        fail(f"--resume: {saved} is {'empty' if not data else 'not a mapping'}; restore the run's config.yaml "
             "or start a new run (the run's settings cannot be guessed)")
    return data


def run_recipe(recipe: Recipe, *, overrides: list[str], config_file: str | None, preset: str | None,
               run_dir: Path | None, resume: bool, overwrite: bool, dry_run: bool, json_out: bool) -> None:
    """Resolve and check the config and the run dir, then hand the run to the recipe.

    Exit codes: 0 done, 2 anything the user can fix (config, data, files, run dir), 3 diverged,
    128+N stopped by signal N; a traceback (exit 1) only for a bug. Nothing is created before the
    config is known to be valid, and a fresh run dir is removed again when the run fails on its
    inputs before its first checkpoint.
    """
    base = _saved_config(run_dir) if resume else None
    try:
        if base is not None:
            recipe.resolve_config("none", base=base)  # errors of the saved file are named as such
    except ConfigError as e:
        fail(f"--resume: {run_dir / 'config.yaml'}: {e}")
    try:
        cfg = recipe.resolve_config(preset, config_file, overrides, base=base)
        validate = getattr(recipe.load(), "validate", None)
        if validate is not None:
            validate(cfg)
        check_run_dir(run_dir or default_run_dir(recipe.verb, recipe.method), resume=resume, overwrite=overwrite)
    except ConfigError as e:
        fail(f"bad config: {e}")
    except RunDirError as e:
        fail(str(e))
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
    fresh = not resume and not path.exists()
    try:
        if accelerator.is_main_process:
            try:
                claim_run_dir(path, resume=resume, overwrite=overwrite)
            except RunDirError as e:
                fail(str(e))
            write_text_atomic(path / "config.yaml", to_yaml(cfg))
            env = environment_report(accelerator.num_processes, str(accelerator.device), cfg.train.mixed_precision)
            write_json_atomic(path / "env.json", env)
            err.print(f"run dir: {path}")
        accelerator.wait_for_everyone()
        summary = _run(recipe, cfg, path, accelerator, resume, json_out, fresh)
        if accelerator.is_main_process:
            if json_out:
                print(json.dumps(summary, indent=1))
            else:
                report(summary)
        # Leave together: a rank that exits while another still talks to the process group can abort
        # in the collective library's teardown ("terminate called without an active exception").
        accelerator.wait_for_everyone()
        accelerator.end_training()
    finally:
        unlock_run_dir(path)


def _run(recipe: Recipe, cfg: Any, path: Path, accelerator: Any, resume: bool, json_out: bool, fresh: bool) -> dict:
    """The recipe's run, with every anticipated failure turned into one line and its exit code."""
    try:
        return recipe.load().run(cfg, path, accelerator, resume=resume)
    except RunStopped as stop:
        err.print(f"[bold red]{stop}[/]", highlight=False, soft_wrap=True)
        if json_out and accelerator.is_main_process:
            print(json.dumps(stop.summary, indent=1))
        raise typer.Exit(stop.exit_code) from None
    except (ValueError, FileNotFoundError, KeyError, RunDirError) as e:
        if fresh and accelerator.is_main_process and not (path / "checkpoints").exists():
            shutil.rmtree(path, ignore_errors=True)  # nothing of value: leave no run dir behind
        fail(str(e).strip("'\""))
    except OSError as e:
        if e.errno in USER_FIXABLE_ERRNOS:
            fail(f"{e.strerror}: {e.filename or path}; {USER_FIXABLE_ERRNOS[e.errno]}")
        raise


USER_FIXABLE_ERRNOS = {
    errno.ENOSPC: "free disk space (or choose another --run-dir), then continue with --resume",
    errno.EDQUOT: "free quota (or choose another --run-dir), then continue with --resume",
    errno.EACCES: "make it readable/writable or choose another path",
    errno.EROFS: "the file system is read-only; choose another --run-dir",
}


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
