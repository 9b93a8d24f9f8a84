"""`percli`: the command line. Verbs are thin: parse, resolve the config, call the engine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import percli
from percli.commands.caption import caption_app
from percli.commands.convert import convert
from percli.commands.curate import curate_app
from percli.commands.eval_av_superb import av_superb
from percli.commands.eval_caption import eval_caption
from percli.commands.run import fail, run_recipe
from percli.commands.rwr_gae import rwr_gae
from percli.commands.search_arch import search_arch
from percli.commands.select import select_app
from percli.commands.tts import tts_app
from percli.core.config import to_dict, to_yaml
from percli.recipes import RECIPES, Recipe, find_method

app = typer.Typer(
    name="percli", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals of a training loop are tensors and models: unreadable
    help="Perception research methods from one command line.\n\n"
         "Example: [bold]percli pretrain hiera-mae train.max_steps=50[/]",
)
VERB_HELP = {
    "pretrain": "Self-supervised pretraining (MAE, ...).",
    "finetune": "Supervised finetuning of pretrained encoders.",
    "eval": "Evaluate checkpoints.",
}


def _version(value: bool) -> None:
    if value:
        print(f"percli {percli.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Perception research methods from one command line."""


def _add_run_command(group: typer.Typer, recipe: Recipe) -> None:
    presets = ", ".join(recipe.presets()) or "none"

    def command(
        overrides: list[str] | None = typer.Argument(
            None, metavar="[KEY=VALUE]...", help="Dotted config overrides, e.g. train.max_steps=20."),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file (see examples/configs)."),
        preset: str | None = typer.Option(
            None, "--preset", help=f"Named preset: {presets} ('none' = the paper's defaults). "
                                   f"Default without --config: {recipe.default_preset}."),
        run_dir: Path | None = typer.Option(
            None, "--run-dir", help="Run directory (default runs/<verb>-<method>-<time>)."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue the run in --run-dir from its latest checkpoint."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --run-dir."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Resolve and validate the config, print it, exit."),
        json_out: bool = typer.Option(False, "--json", help="Print the final summary as JSON on stdout."),
    ) -> None:
        run_recipe(recipe, overrides=overrides or [], config_file=str(config) if config else None, preset=preset,
                   run_dir=run_dir, resume=resume, overwrite=overwrite, dry_run=dry_run, json_out=json_out)

    module_doc = (recipe.load().__doc__ or "").strip()
    group.command(recipe.method, help=f"{recipe.summary}.\n\n{module_doc}", no_args_is_help=False)(command)


app.add_typer(curate_app, name="curate")
app.add_typer(caption_app, name="caption")
app.add_typer(tts_app, name="tts")
app.add_typer(select_app, name="select")
app.command("convert")(convert)
app.command("search-arch")(search_arch)

for verb, verb_help in VERB_HELP.items():
    group = typer.Typer(help=verb_help, no_args_is_help=True)
    for recipe in RECIPES:
        if recipe.verb == verb:
            _add_run_command(group, recipe)
    if verb == "pretrain":
        group.command("rwr-gae")(rwr_gae)
    if verb == "eval":
        group.command("av-superb")(av_superb)
        group.command("caption")(eval_caption)
    app.add_typer(group, name=verb)


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
        rows = [{"command": f"percli {r.verb} {r.method}", "presets": r.presets(), "summary": r.summary}
                for r in RECIPES]
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
