"""`percli`: the command line. Verbs are thin: parse, resolve the config, call the engine."""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

import percli
from percli.commands.run import fail, run_job
from percli.core.config import to_dict, to_yaml
from percli.jobs import JOBS, VERB_HELP, Arg, Job, find_method

app = typer.Typer(
    name="percli", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals of a training loop are tensors and models: unreadable
    help="Perception research methods from one command line.\n\n"
         "Example: [bold]percli pretrain hiera-mae train.max_steps=50[/]",
)


def _version(value: bool) -> None:
    if value:
        print(f"percli {percli.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Perception research methods from one command line."""


_OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*=")


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[last] = value


def _given(job: Job, values: list[str], options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split the free arguments into the job's positionals and KEY=VALUE overrides; map everything the
    user gave onto config keys (a nested mapping)."""
    overrides = [v for v in values if _OVERRIDE.match(v)]
    free = [v for v in values if not _OVERRIDE.match(v)]
    given: dict[str, Any] = {}
    for arg in (a for a in job.args if a.positional):
        if not free:
            break
        taken, free = (free, []) if arg.many else (free[0], free[1:])
        _set(given, arg.key, taken)
    if free:
        fail(f"unexpected argument(s) {' '.join(free)!r} for percli {job.name}; overrides look like "
             "section.key=value (see percli show-config)")
    for arg, value in zip((a for a in job.args if not a.positional), options.values()):
        if value not in (None, [], False) or (value is False and _toggle(arg)):  # --no-x of --x/--no-x
            _set(given, arg.key, value)
    return given, overrides


def _toggle(arg: Arg) -> bool:
    """A switch with an off form (`--balanced/--no-balanced`): given either way, else the config's value."""
    return arg.switch and "/" in arg.flags[0]


class DefaultToRun(TyperGroup):
    """A group holding a `run` job: arguments that name no subcommand go to `run` (the one-shot form)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _command(job: Job) -> Callable[..., None]:
    """A Typer command for `job`: its own arguments (from the registry) plus the options every job has."""
    P = inspect.Parameter
    positionals = " ".join(f"[{a.metavar or a.key.rsplit('.', 1)[-1].upper()}]" + ("..." if a.many else "")
                           for a in job.args if a.positional)
    params = [P("values", P.KEYWORD_ONLY, annotation=list[str] | None, default=typer.Argument(
        None, metavar=f"{positionals} [KEY=VALUE]...".strip(), show_default=False,
        help="".join(f"{a.metavar or a.key}: {a.help} " for a in job.args if a.positional)
             + "Dotted config overrides, e.g. train.max_steps=20."))]
    for i, arg in enumerate(a for a in job.args if not a.positional):
        annotation = (bool | None if _toggle(arg) else bool) if arg.switch else (list[str] | None if arg.many else
                                                                                 str | None)
        default = False if arg.switch and not _toggle(arg) else None  # a toggle is None unless given
        params.append(P(f"opt_{i}", P.KEYWORD_ONLY, annotation=annotation,
                        default=typer.Option(default, *arg.flags, help=arg.help, metavar=arg.metavar,
                                             show_default=False)))
    presets = ", ".join(job.presets()) or "none"
    dir_flags = ("--output", "-o", "--run-dir") if job.output_flag else ("--run-dir", "--output", "-o")
    claimed = {flag for a in job.args for flag in a.flags}  # a job's own --output/-o (a file it writes) wins
    dir_flags = tuple(flag for flag in dir_flags if flag not in claimed)
    common = [
        ("config", Path | None, typer.Option(None, "--config", "-c", help="YAML config file (see examples/configs).")),
        ("preset", str | None, typer.Option(None, "--preset", help=f"Named preset: {presets} ('none' = the paper's "
                                            f"defaults). Default without --config: {job.default_preset}.")),
        ("run_dir", Path | None, typer.Option(None, *dir_flags, help="Run directory (default runs/<verb>-<method>-<UTC "
                                              "time>).")),
        ("overwrite", bool, typer.Option(False, "--overwrite", help="Replace a non-empty run dir (and an existing "
                                         "output file of a job that writes one).")),
        ("dry_run", bool, typer.Option(False, "--dry-run", help="Resolve and validate the config, print it, exit.")),
        ("json_out", bool, typer.Option(False, "--json", help="Print the final summary as JSON on stdout.")),
    ]
    if job.resumable:
        common.append(("resume", bool, typer.Option(False, "--resume", help="Continue the run in the run dir.")))
    params += [P(name, P.KEYWORD_ONLY, annotation=tp, default=default) for name, tp, default in common]

    def command(**kw: Any) -> None:
        options = {k: kw.pop(k) for k in list(kw) if k.startswith("opt_")}
        given, overrides = _given(job, kw.pop("values") or [], options)
        run_job(job, given=given, overrides=overrides, config_file=str(kw["config"]) if kw["config"] else None,
                preset=kw["preset"], run_dir=kw["run_dir"], resume=kw.get("resume", False),
                overwrite=kw["overwrite"], dry_run=kw["dry_run"], json_out=kw["json_out"])

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return command


def _help(job: Job) -> str:
    doc = re.sub(r"(?<!\n)\n(?!\n)", " ", job.doc())  # one paragraph per blank-line-separated block
    examples = "\n\n".join(f"Example: [bold]{e}[/]" for e in job.examples)
    return "\n\n".join(part for part in (f"{job.summary}.", doc, examples) if part)


GROUPS: dict[str, typer.Typer] = {}  # "curate", "curate metaclip", ...: the generated command groups
for job in JOBS:
    *parents, leaf = [job.verb, *job.method.split()]  # method "" = a top-level command (percli convert)
    parent, path = app, ""
    for name in parents:
        path = f"{path} {name}".strip()
        if path not in GROUPS:
            has_run = any(j.name == f"{path} run" for j in JOBS)  # `percli curate metaclip INPUTS...` = `... run`
            GROUPS[path] = typer.Typer(help=VERB_HELP.get(path, ""), no_args_is_help=not has_run,
                                       cls=DefaultToRun if has_run else None)
            parent.add_typer(GROUPS[path], name=name)
        parent = GROUPS[path]
    parent.command(leaf, help=_help(job), no_args_is_help=False)(_command(job))


@app.command("ls")
def ls(
    what: str = typer.Argument("recipes", help="models | recipes"),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list."),
) -> None:
    """List registered models or recipes. Example: [bold]percli ls models[/]"""
    if what == "models":
        from percli.models import list_models

        names = list_models()
        if json_out:
            print(json.dumps(names))
        else:
            print("\n".join(names))
    elif what == "recipes":
        rows = [{"command": f"percli {job.name}", "presets": job.presets(), "summary": job.summary} for job in JOBS]
        if json_out:
            print(json.dumps(rows, indent=1))
            return
        table = Table("command", "presets", "what it does")
        for row in rows:
            table.add_row(row["command"], ", ".join(row["presets"]) or "-", row["summary"])
        Console().print(table)
    else:
        fail(f"percli ls {what}: choose 'models' or 'recipes'")


@app.command("show-config")
def show_config(
    method: str = typer.Argument(..., help="Method name, e.g. hiera-mae."),
    preset: str | None = typer.Option(None, "--preset", help="Show this preset's values (default: the method's "
                                                              "default preset; 'none' = paper defaults)."),
    verb: str | None = typer.Option(None, "--verb", help="pretrain | finetune | eval, when the method has several."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
) -> None:
    """Print a method's resolved config. Example: [bold]percli show-config hiera-mae --preset in1k[/]"""
    try:
        recipe = find_method(method, verb)
        cfg = recipe.resolve_config(preset)
    except (KeyError, ValueError) as e:
        fail(str(e).strip("'\""))
    if json_out:
        print(json.dumps(to_dict(cfg), indent=1))
    else:
        sys.stdout.write(to_yaml(cfg))


@app.command("audio-stats")
def audio_stats(
    source: str = typer.Argument(..., help="Audio folder, .jsonl manifest or AST-style .json (or 'embedded')."),
    label_csv: Path | None = typer.Option(None, "--label-csv", help="Label CSV for AST-style JSON data."),
    sample_rate: int = typer.Option(16000, help="Resample to this rate before the fbank."),
    num_mel_bins: int = typer.Option(128, help="Mel bands of the fbank."),
    max_items: int | None = typer.Option(None, help="Use only the first N clips (faster estimate)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON object."),
) -> None:
    """Fbank mean/std of your audio, for data.mean / data.std of the Audio-MAE recipes.

    Example: [bold]percli audio-stats /data/esc50/audio --max-items 500[/]
    """
    from percli.core.data import build_dataset, compute_fbank_stats

    try:
        extra = {"label_csv": str(label_csv)} if label_csv else {}
        dataset = build_dataset(source, kind="audio", sample_rate=sample_rate, num_mel_bins=num_mel_bins, **extra)
        mean, std = compute_fbank_stats(dataset, max_items=max_items)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    if json_out:
        print(json.dumps({"mean": mean, "std": std}))
    else:
        print(f"data.mean={mean:.7g} data.std={std:.7g}")


BUG_HINT = ("this is a bug in percli, not a problem with your input: please report it with the command line, "
            "the traceback above and the run dir's env.json")


def main() -> None:
    """Entry point: anticipated failures exit 2 (or 3, 128+N) with one line before they get here; anything
    else is a bug and exits 1 with its traceback and where to report it."""
    try:
        app()
    except Exception as e:  # noqa: BLE001 - the last resort: show the bug, never hide it
        sys.excepthook(type(e), e, e.__traceback__)
        Console(stderr=True).print(f"[bold red]percli:[/] {BUG_HINT}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
