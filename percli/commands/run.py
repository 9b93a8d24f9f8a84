"""The one function behind every run verb: resolve config, prepare the run dir, run, report."""

from __future__ import annotations

import errno
import json
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

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


class PercliError(Exception):
    """An anticipated failure of a run (`percli.train` raises it; the CLI prints it and exits).

    Attributes:
        message: the one line naming what was wrong and how to fix it.
        exit_code: what the CLI exits with: 2 bad config / run dir / data, 3 diverged, 128+N stopped by
            signal N.
        summary: the run's summary when it had started and then stopped (diverged, interrupted), else None.
    """

    def __init__(self, message: str, exit_code: int = 2, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.message, self.exit_code, self.summary = message, exit_code, summary


def fail(message: str, code: int = 2) -> NoReturn:
    """The CLI's one-line error and exit (commands outside the run path)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def refuse(message: str, code: int = 2) -> NoReturn:
    """An anticipated failure inside the run path: raised, so the API and the CLI each report it their way."""
    raise PercliError(message, code)


def _saved_config(run_dir: Path | None, flag: str) -> dict:
    """The config a --resume continues: run_dir/config.yaml, refused when missing, empty or invalid."""
    if run_dir is None:
        refuse(f"--resume needs {flag} pointing at the run to continue")
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        refuse(f"--resume: {saved} does not exist; is {run_dir} a percli run dir?")
    try:
        data = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        refuse(f"--resume: {saved} is not valid YAML ({str(e).splitlines()[0]}); restore the run's config.yaml "
             "(a copy of its settings) or start a new run")
    if not isinstance(data, dict) or not data:
        refuse(f"--resume: {saved} is {'empty' if not data else 'not a mapping'}; restore the run's config.yaml "
             "or start a new run (the run's settings cannot be guessed)")
    return data


def run_job(job: Job, *, given: dict[str, Any] | None = None, overrides: list[str], config_file: str | None,
            preset: str | None, run_dir: Path | None, resume: bool, overwrite: bool, dry_run: bool,
            json_out: bool) -> None:
    """The CLI's run: `execute` with the summary printed (a table, or JSON with --json) and every
    anticipated failure turned into one line on stderr and its exit code.

    Exit codes: 0 done, 2 anything the user can fix (config, data, files, run dir), 3 diverged,
    128+N stopped by signal N; a traceback (exit 1) only for a bug.
    """
    try:
        if dry_run:
            flag = "--output" if job.output_flag else "--run-dir"
            cfg = resolve(job, given, overrides, config_file, preset, run_dir, resume, overwrite, flag)
            sys.stdout.write(json.dumps(to_dict(cfg), indent=1) + "\n" if json_out else to_yaml(cfg))
            err.print(f"[green]config valid[/] for {job.name} (dry run: nothing was run)")
            return
        # a job module's `show_result(summary)` is its own human output (`percli chat` prints the answer alone)
        own = None if json_out else getattr(job.load(), "show_result", None)
        show = (lambda summary: print(json.dumps(summary, indent=1))) if json_out else (
            own or (lambda summary: report(summary, job.name)))
        execute(job, given=given, overrides=overrides, config_file=config_file, preset=preset, run_dir=run_dir,
                resume=resume, overwrite=overwrite, show=show)
    except PercliError as e:
        if e.summary is None:
            fail(e.message, e.exit_code)
        err.print(f"[bold red]{e.message}[/]", highlight=False, soft_wrap=True)  # a run that stopped
        if json_out:
            print(json.dumps(e.summary, indent=1))
        raise typer.Exit(e.exit_code) from None


def execute(job: Job, *, given: Mapping[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = (),
            config_file: str | None = None, preset: str | None = None, run_dir: Path | None = None,
            resume: bool = False, overwrite: bool = False,
            show: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Resolve and check the config and the run dir, hand the run to the job, and return its summary in
    the common schema (`normalise`); `show(summary)` runs on rank 0 before a temporary run dir goes.

    Nothing is created before the config is known to be valid, and a fresh run dir is removed again when the
    run fails on its inputs before its first checkpoint. Without a run dir, a job that keeps none
    (`Job.scratch_run_dir`) writes into a temporary one, removed at the end: its figures are in the summary.

    Raises:
        PercliError: anything anticipated (its message and exit code, as the CLI reports them).
    """
    flag = "--output" if job.output_flag else "--run-dir"
    temporary = run_dir is None and job.scratch_run_dir
    chosen = run_dir or (_scratch_dir(job) if temporary else default_run_dir(job.verb, job.method))
    cfg = resolve(job, dict(given or {}), list(overrides), config_file, preset, run_dir, resume, overwrite, flag,
                  check_dir=chosen)
    ctx = _processes(job, cfg, chosen)
    fresh = not resume and not ctx.run_dir.exists()
    saved = (ctx.run_dir / "config.yaml").read_text(encoding="utf-8") if resume and ctx.is_main else None
    try:
        _start(job, cfg, ctx, resume, overwrite, flag, temporary)
        summary = normalise(_run(job, cfg, ctx, fresh, saved), None if temporary else ctx.run_dir)
        if ctx.is_main:
            if not temporary:
                write_json_atomic(ctx.run_dir / "summary.json", summary)
            if show is not None:
                show(summary)
        # Leave together: a rank that exits while another still talks to the process group can abort
        # in the collective library's teardown ("terminate called without an active exception").
        _wait(ctx)
        if ctx.accelerator is not None:
            ctx.accelerator.end_training()
    finally:
        unlock_run_dir(ctx.run_dir)
        if temporary and ctx.is_main:
            shutil.rmtree(ctx.run_dir, ignore_errors=True)
    return summary


def _scratch_dir(job: Job) -> Path:
    """Where an eval job (or one keeping no run dir) without --run-dir runs: a fresh name under the system's
    temporary folder."""
    name = "-".join(part for part in ("percli", job.verb, job.method, uuid.uuid4().hex[:12]) if part).replace(" ", "-")
    return Path(tempfile.gettempdir()) / name


def resolve(job: Job, given: dict[str, Any] | None, overrides: list[str], config_file: str | None,
            preset: str | None, run_dir: Path | None, resume: bool, overwrite: bool, flag: str,
            check_dir: Path | None = None) -> Any:
    """The job's checked config (a resumed run's config.yaml under the command line), and the run dir
    checked without creating anything (`check_dir`, else `run_dir`, the one the user named, else
    runs/<verb>-<method>-<time>); `PercliError` naming the key or path otherwise."""
    base = _saved_config(run_dir, flag) if resume else None
    try:
        if base is not None:
            job.resolve_config("none", base=base)  # errors of the saved file are named as such
    except ConfigError as e:
        refuse(f"--resume: {run_dir / 'config.yaml'}: {e}")
    try:
        cfg = job.resolve_config(preset, config_file, overrides, base=base, given=given)
        validate = getattr(job.load(), "validate", None)
        if validate is not None:
            validate(cfg)
        check_run_dir(check_dir or run_dir or default_run_dir(job.verb, job.method), resume=resume, overwrite=overwrite,
                      can_resume=job.resumable, flag=flag)
    except ConfigError as e:
        refuse(f"bad config: {_with_flag(job, str(e))}")
    except (RunDirError, ValueError, FileNotFoundError) as e:
        refuse(str(e))
    return cfg


def _start(job: Job, cfg: Any, ctx: RunContext, resume: bool, overwrite: bool, flag: str,
           temporary: bool = False) -> None:
    """Rank 0 claims (creates, locks) the run dir and writes config.yaml and env.json; all wait for it."""
    if ctx.is_main:
        try:
            claim_run_dir(ctx.run_dir, resume=resume, overwrite=overwrite, can_resume=job.resumable, flag=flag)
        except RunDirError as e:
            refuse(str(e))
        write_text_atomic(ctx.run_dir / "config.yaml", to_yaml(cfg))
        acc = ctx.accelerator
        env = environment_report(ctx.world, str(acc.device) if acc else "cpu", acc.mixed_precision if acc else "no")
        write_json_atomic(ctx.run_dir / "env.json", env)
        ctx.log(f"run dir: {ctx.run_dir}" + (" (temporary, removed at the end; --run-dir keeps one)" if temporary
                                              else ""))
    ctx.resume, ctx.overwrite = resume, overwrite
    _wait(ctx)


def _with_flag(job: Job, message: str) -> str:
    """`key: ...` -> `key (--flag): ...` when the job has a flag for that key."""
    key = message.split(":", 1)[0]
    flags = next((a.flags[0] for a in job.args if a.key == key and a.flags), None)
    return message.replace(f"{key}:", f"{key} ({flags}):", 1) if flags else message


def _processes(job: Job, cfg: Any, run_dir: Path) -> RunContext:
    """The run's processes (an Accelerator for engine jobs, a gloo group for data jobs launched on
    several) and the run dir every one of them uses: rank 0 decides, the others receive it."""
    chosen = str(run_dir)
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


def _run(job: Job, cfg: Any, ctx: RunContext, fresh: bool, saved: str | None) -> dict:
    """The job's run, with every anticipated failure turned into a `PercliError` (one line, its exit code).
    A fresh run dir without checkpoints is removed; a refused --resume gets its previous config.yaml back
    (`saved`)."""
    from percli.core.engine import RunStopped

    try:
        return job.load().run(cfg, ctx)
    except RunStopped as stop:
        raise PercliError(str(stop), stop.exit_code, normalise(stop.summary, ctx.run_dir) if ctx.is_main else None) \
            from None
    except (ValueError, FileNotFoundError, KeyError, RunDirError) as e:
        if fresh and ctx.is_main and not (ctx.run_dir / "checkpoints").exists():
            shutil.rmtree(ctx.run_dir, ignore_errors=True)  # nothing of value: leave no run dir behind
        elif saved is not None:
            write_text_atomic(ctx.run_dir / "config.yaml", saved)
        refuse(str(e).strip("'\""))
    except OSError as e:
        if e.errno in USER_FIXABLE_ERRNOS:
            refuse(f"{e.strerror}: {e.filename or ctx.run_dir}; {USER_FIXABLE_ERRNOS[e.errno]}")
        raise


USER_FIXABLE_ERRNOS = {
    errno.ENOSPC: "free disk space (or choose another --run-dir), then continue with --resume",
    errno.EDQUOT: "free quota (or choose another --run-dir), then continue with --resume",
    errno.EACCES: "make it readable/writable or choose another path",
    errno.EROFS: "the file system is read-only; choose another --run-dir",
}


# ------------------------------------------------------------------------------ the summary every job returns

# Keys that are bookkeeping, not headline figures (floats) or counts (integers).
_NOT_METRICS = frozenset({"elapsed_s", "wall_seconds", "peak_lr"})
_NOT_COUNTS = frozenset({"step", "max_steps", "world_size", "effective_batch_size", "seed", "epochs", "budget", "t",
                         "num_samples", "chunk_size", "batch_size"})
FRACTION = re.compile(r"(?:^|[/_ .])(?:top\d+(?:acc)?|acc|accuracy|mAP|map|R@\d+|eer|cer|wer|bleu4)$")
"""Names of metrics that are fractions in [0, 1] (JSON); human tables show them as percent, labelled."""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _flat(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Numbers of a (nested) mapping under "outer/inner" names."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}/"))
        elif _number(value) or value is None:
            out[f"{prefix}{key}"] = value
    return out


def normalise(summary: Mapping[str, Any], run_dir: Path | None) -> dict[str, Any]:
    """A job's summary in the schema every job shares, its own keys kept: `status`, `run_dir` (None for a
    temporary eval run dir), `metrics` (a flat mapping of the headline figures: the job's `metrics`,
    nested ones joined with "/", else its top-level floats) and `counts` (a flat mapping of counts: the
    job's top-level integers and the `count` of its bad-input/bad-record records). Metrics are fractions
    where they are shares (top-k, accuracy, mAP, R@k); human tables show those as percent."""
    out = dict(summary)
    out.setdefault("status", "completed")
    out["run_dir"] = None if run_dir is None else out.get("run_dir") or str(run_dir)
    metrics = summary.get("metrics")
    if isinstance(metrics, Mapping):
        out["metrics"] = _flat(metrics)
    else:
        out["metrics"] = {k: v for k, v in summary.items() if isinstance(v, float) and k not in _NOT_METRICS}
    counts = {k: v for k, v in summary.items()
              if isinstance(v, int) and not isinstance(v, bool) and k not in _NOT_COUNTS}
    for key, value in summary.items():  # {"bad_inputs": {"count": N, "files": [...]}} -> bad_inputs: N
        if isinstance(value, Mapping) and _number(value.get("count")) and key != "metrics":
            counts[key] = int(value["count"])
    out["counts"] = {**counts, **(summary.get("counts") if isinstance(summary.get("counts"), Mapping) else {})}
    return out


def _rows(summary: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Scalar fields (nested mappings flattened one level deep; long lists summarised) as table rows;
    fractions (`FRACTION`) as percent, labelled "(%)"."""
    rows = []
    for key, value in summary.items():
        if key in ("status", "run_dir", "elapsed_s", "counts") and not prefix:
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
        elif isinstance(value, float) and FRACTION.search(name):
            name, value = f"{name} (%)", f"{100 * value:.2f}"
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
    where = summary.get("run_dir")
    table.add_row("run dir", str(where) if where else "not kept (temporary; pass --run-dir to keep it)")
    Console().print(table)
