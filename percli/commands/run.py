"""The one function behind every run verb: resolve config, prepare the run dir, run, report."""

from __future__ import annotations

import errno
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from percli.core import dist
from percli.core.config import ConfigError, to_dict, to_yaml
from percli.core.context import RunContext
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
from percli.jobs import Job

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _saved_config(run_dir: Path | None, flag: str) -> dict:
    """The config a --resume continues: run_dir/config.yaml, refused when missing, empty or invalid."""
    if run_dir is None:
        fail(f"--resume needs {flag} pointing at the run to continue")
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


def run_job(job: Job, *, given: dict[str, Any] | None = None, overrides: list[str], config_file: str | None,
            preset: str | None, run_dir: Path | None, resume: bool, overwrite: bool, dry_run: bool,
            json_out: bool) -> None:
    """Resolve and check the config and the run dir, then hand the run to the job.

    Exit codes: 0 done, 2 anything the user can fix (config, data, files, run dir), 3 diverged,
    128+N stopped by signal N; a traceback (exit 1) only for a bug. Nothing is created before the
    config is known to be valid, and a fresh run dir is removed again when the run fails on its
    inputs before its first checkpoint.
    """
    flag = "--output" if job.output_flag else "--run-dir"
    cfg = resolve(job, given, overrides, config_file, preset, run_dir, resume, overwrite, flag)
    if dry_run:
        sys.stdout.write(json.dumps(to_dict(cfg), indent=1) + "\n" if json_out else to_yaml(cfg))
        err.print(f"[green]config valid[/] for {job.name} (dry run: nothing was run)")
        return
    ctx = _processes(job, cfg, run_dir)
    fresh = not resume and not ctx.run_dir.exists()
    saved = (ctx.run_dir / "config.yaml").read_text(encoding="utf-8") if resume and ctx.is_main else None
    try:
        _start(job, cfg, ctx, resume, overwrite, flag)
        summary = _run(job, cfg, ctx, json_out, fresh, saved)
        if ctx.is_main:
            summary.setdefault("run_dir", str(ctx.run_dir))
            write_json_atomic(ctx.run_dir / "summary.json", summary)
            if json_out:
                print(json.dumps(summary, indent=1))
            else:
                report(summary, job.name)
        # Leave together: a rank that exits while another still talks to the process group can abort
        # in the collective library's teardown ("terminate called without an active exception").
        _wait(ctx)
        if ctx.accelerator is not None:
            ctx.accelerator.end_training()
    finally:
        unlock_run_dir(ctx.run_dir)


def resolve(job: Job, given: dict[str, Any] | None, overrides: list[str], config_file: str | None,
            preset: str | None, run_dir: Path | None, resume: bool, overwrite: bool, flag: str) -> Any:
    """The job's checked config (a resumed run's config.yaml under the command line), and the run dir
    checked without creating anything; exit 2 naming the key or path otherwise."""
    base = _saved_config(run_dir, flag) if resume else None
    try:
        if base is not None:
            job.resolve_config("none", base=base)  # errors of the saved file are named as such
    except ConfigError as e:
        fail(f"--resume: {run_dir / 'config.yaml'}: {e}")
    try:
        cfg = job.resolve_config(preset, config_file, overrides, base=base, given=given)
        validate = getattr(job.load(), "validate", None)
        if validate is not None:
            validate(cfg)
        check_run_dir(run_dir or default_run_dir(job.verb, job.method), resume=resume, overwrite=overwrite,
                      can_resume=job.resumable, flag=flag)
    except ConfigError as e:
        fail(f"bad config: {_with_flag(job, str(e))}")
    except (RunDirError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    return cfg


def _start(job: Job, cfg: Any, ctx: RunContext, resume: bool, overwrite: bool, flag: str) -> None:
    """Rank 0 claims (creates, locks) the run dir and writes config.yaml and env.json; all wait for it."""
    if ctx.is_main:
        try:
            claim_run_dir(ctx.run_dir, resume=resume, overwrite=overwrite, can_resume=job.resumable, flag=flag)
        except RunDirError as e:
            fail(str(e))
        write_text_atomic(ctx.run_dir / "config.yaml", to_yaml(cfg))
        acc = ctx.accelerator
        env = environment_report(ctx.world, str(acc.device) if acc else "cpu", acc.mixed_precision if acc else "no")
        write_json_atomic(ctx.run_dir / "env.json", env)
        ctx.log(f"run dir: {ctx.run_dir}")
    ctx.resume, ctx.overwrite = resume, overwrite
    _wait(ctx)


def _with_flag(job: Job, message: str) -> str:
    """`key: ...` -> `key (--flag): ...` when the job has a flag for that key."""
    key = message.split(":", 1)[0]
    flags = next((a.flags[0] for a in job.args if a.key == key and a.flags), None)
    return message.replace(f"{key}:", f"{key} ({flags}):", 1) if flags else message


def _processes(job: Job, cfg: Any, run_dir: Path | None) -> RunContext:
    """The run's processes (an Accelerator for engine jobs, a gloo group for data jobs launched on
    several) and the run dir every one of them uses: rank 0 decides, the others receive it."""
    chosen = str(run_dir or default_run_dir(job.verb, job.method))
    if job.engine:
        from accelerate.utils import broadcast_object_list

        from percli.core.engine import make_accelerator

        accelerator = make_accelerator(cfg.train)
        box = [chosen]
        if accelerator.num_processes > 1:
            broadcast_object_list(box, from_process=0)
        return RunContext(Path(box[0]), rank=accelerator.process_index, world=accelerator.num_processes,
                          accelerator=accelerator)
    rank, world = dist.init()
    return RunContext(Path(dist.broadcast(chosen, world)), rank=rank, world=world)


def _wait(ctx: RunContext) -> None:
    if ctx.accelerator is not None:
        ctx.accelerator.wait_for_everyone()
    else:
        dist.barrier(ctx.world)


def _run(job: Job, cfg: Any, ctx: RunContext, json_out: bool, fresh: bool, saved: str | None) -> dict:
    """The job's run, with every anticipated failure turned into one line and its exit code. A fresh run
    dir without checkpoints is removed; a refused --resume gets its previous config.yaml back (`saved`)."""
    from percli.core.engine import RunStopped

    try:
        return job.load().run(cfg, ctx)
    except RunStopped as stop:
        err.print(f"[bold red]{stop}[/]", highlight=False, soft_wrap=True)
        if json_out and ctx.is_main:
            print(json.dumps(stop.summary, indent=1))
        raise typer.Exit(stop.exit_code) from None
    except (ValueError, FileNotFoundError, KeyError, RunDirError) as e:
        if fresh and ctx.is_main and not (ctx.run_dir / "checkpoints").exists():
            shutil.rmtree(ctx.run_dir, ignore_errors=True)  # nothing of value: leave no run dir behind
        elif saved is not None:
            write_text_atomic(ctx.run_dir / "config.yaml", saved)
        fail(str(e).strip("'\""))
    except OSError as e:
        if e.errno in USER_FIXABLE_ERRNOS:
            fail(f"{e.strerror}: {e.filename or ctx.run_dir}; {USER_FIXABLE_ERRNOS[e.errno]}")
        raise


USER_FIXABLE_ERRNOS = {
    errno.ENOSPC: "free disk space (or choose another --run-dir), then continue with --resume",
    errno.EDQUOT: "free quota (or choose another --run-dir), then continue with --resume",
    errno.EACCES: "make it readable/writable or choose another path",
    errno.EROFS: "the file system is read-only; choose another --run-dir",
}


def _rows(summary: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Scalar fields (nested mappings flattened one level deep; long lists summarised) as table rows."""
    rows = []
    for key, value in summary.items():
        if key in ("status", "run_dir", "elapsed_s") and not prefix:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if key == "bad_inputs":
                rows.append(("unreadable inputs (skipped)", f"{value.get('count', 0):,}"))
            elif not prefix:
                rows.extend(_rows(value, "" if key == "metrics" else f"{key}."))
            continue
        if isinstance(value, list):
            if len(value) > 8 or any(isinstance(v, (dict, list)) for v in value):
                continue
            value = ", ".join(map(str, value))
        elif isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        rows.append((name, str(value)))
    return rows


def report(summary: dict, title: str = "") -> None:
    """The one human summary of every job on stdout (scripts use --json or summary.json)."""
    table = Table("", "value", title=f"{title}: {summary.get('status', 'done')}".strip(": "), title_justify="left")
    for name, value in _rows(summary):
        table.add_row(name, value)
    table.add_row("run dir", str(summary.get("run_dir", "")))
    Console().print(table)
