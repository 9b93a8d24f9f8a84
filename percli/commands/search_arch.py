"""`percli search-arch`: architecture search on the 8x8 digits proxy (random, regularised evolution, DARTS)."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from percli.commands.run import emit_summary, err, fail
from percli.core.rundir import RunDirError, claim_run_dir, default_run_dir, write_json_atomic, write_jsonl_atomic

if TYPE_CHECKING:
    from percli.nas.proxy import ProxyTask
    from percli.nas.space import SearchSpace


def search_arch(
    strategy: str = typer.Option("evolution", "--strategy", help="random | evolution (regularised, aging) | darts."),
    space: str | None = typer.Option(None, "--space", help="Search space of random/evolution: vit-tiny (default, "
                                                            "216 ViT configs) or vit-micro (32)."),
    budget: int = typer.Option(40, "--budget", help="Candidates to evaluate (random/evolution), repeats included."),
    proxy_steps: int = typer.Option(150, "--proxy-steps", help="Training steps (batch 64) of each candidate, and of "
                                                               "the architecture DARTS derives."),
    lr: float = typer.Option(3e-3, "--lr", help="AdamW learning rate of the proxy training (cosine to 0)."),
    population: int = typer.Option(10, "--population", help="Evolution: population size P (the P youngest)."),
    sample: int = typer.Option(3, "--sample", help="Evolution: members S sampled per cycle; the best is the parent."),
    epochs: int = typer.Option(10, "--epochs", help="DARTS: search epochs over the train split."),
    arch_lr: float = typer.Option(3e-3, "--arch-lr", help="DARTS: Adam learning rate of alpha."),
    seed: int = typer.Option(0, "--seed", help="Seed of the proposals, the initialisations and the batches."),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run dir (default runs/search-arch-<strategy>-<time>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the search in --run-dir: rows of history.jsonl "
                                                        "are kept, not evaluated again."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --run-dir."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Search an architecture on scikit-learn's 8x8 digits; writes history.jsonl, summary.json, search.png.

    Each candidate is trained --proxy-steps steps on 1000 digits and scored on 400 others (val; 397 more
    give the test accuracy, never used to choose). Examples:
    [bold]percli search-arch --strategy evolution --space vit-tiny --budget 40 --population 10 --sample 3[/],
    [bold]percli search-arch --strategy darts --epochs 10[/]
    """
    import torch

    from percli.nas.proxy import load_digits_task
    from percli.nas.space import SPACES

    if strategy == "darts" and space is not None:
        fail("--space is for random/evolution; darts searches its own cell (ops x edges): drop --space")
    space = space or "vit-tiny"
    _check_options(strategy, space, budget, proxy_steps, lr, population, sample, epochs, arch_lr, SPACES)
    # What the run depends on; a resumed run must repeat all of it but the budget, which may grow.
    settings = {"strategy": strategy, "proxy_steps": proxy_steps, "lr": lr, "seed": seed}
    if strategy == "darts":
        settings.update(space="darts-cell", epochs=epochs, arch_lr=arch_lr)
    else:
        settings.update(space=space, budget=budget)
    if strategy == "evolution":
        settings.update(population=population, sample=sample)
    if resume and run_dir is None:
        fail("--resume needs --run-dir: the dir of the search to continue")
    out_dir = run_dir or default_run_dir("search-arch", strategy)
    try:
        claim_run_dir(out_dir, resume=resume, overwrite=overwrite)
    except RunDirError as e:
        fail(str(e))
    if resume:
        _check_resumed_settings(out_dir / "search.json", settings)
    else:
        write_json_atomic(out_dir / "search.json", settings)
    torch.set_num_threads(1)  # models of 2k-200k parameters: intra-op threads cost more than they save
    err.print(f"run dir: {out_dir}", highlight=False)
    start = time.perf_counter()
    task = load_digits_task()
    if strategy == "darts":
        summary = _darts(task, settings, out_dir, resume)
    else:
        summary = _discrete(task, settings, SPACES[space], out_dir, resume)
    summary.update(settings=settings, wall_seconds=round(time.perf_counter() - start, 2), run_dir=str(out_dir))
    emit_summary(out_dir, summary, json_out, report)


def _check_options(strategy: str, space: str, budget: int, proxy_steps: int, lr: float, population: int,
                   sample: int, epochs: int, arch_lr: float, spaces: dict) -> None:
    from percli.nas.search import STRATEGIES

    if strategy not in STRATEGIES:
        fail(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if space not in spaces:
        fail(f"--space {space!r}: choose one of {', '.join(spaces)}")
    for name, value in (("--budget", budget), ("--proxy-steps", proxy_steps), ("--epochs", epochs)):
        if value < 1:
            fail(f"{name} must be >= 1 (got {value})")
    if not (lr > 0 and arch_lr > 0):
        fail(f"--lr and --arch-lr must be > 0 (got {lr:g}, {arch_lr:g})")
    if strategy == "evolution":
        if population < 2 or not 1 <= sample <= population:
            fail(f"evolution needs --population >= 2 and 1 <= --sample <= --population (got P={population}, "
                 f"S={sample}); e.g. --population 10 --sample 3")
        if budget <= population:
            fail(f"--budget {budget} <= --population {population}: evolution would only draw the random initial "
                 f"population; raise --budget (e.g. {4 * population}) or use --strategy random")


def _check_resumed_settings(path: Path, settings: dict[str, Any]) -> None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"--resume: cannot read {path} ({e}); is --run-dir a search-arch run dir?")
    changed = [f"--{key.replace('_', '-')} {saved.get(key)} (now {settings[key]})" for key in settings
               if key != "budget" and saved.get(key) != settings[key]]
    if changed:
        fail(f"--resume: the run was started with {', '.join(changed)}; pass the same values "
             "(only --budget may change) or start a new --run-dir")
    write_json_atomic(path, settings)  # the new budget


def _discrete(task: ProxyTask, settings: dict[str, Any], space: SearchSpace, out_dir: Path,
              resume: bool) -> dict[str, Any]:
    """Random search or regularised evolution; history.jsonl is rewritten atomically after every candidate."""
    from percli.nas.plot import draw_search, save_png
    from percli.nas.search import load_history, run_search, summarize

    history_path = out_dir / "history.jsonl"
    history, bad = load_history(history_path, space) if resume and history_path.is_file() else ([], 0)
    resumed = len(history)
    if resume:
        err.print(f"resumed {resumed} evaluated candidates" + (f" ({bad} malformed rows skipped)" if bad else ""))
    budget = settings["budget"]
    population, sample = settings.get("population", 0), settings.get("sample", 0)

    def on_record(row: dict, rows: list[dict]) -> None:
        write_jsonl_atomic(history_path, rows)
        best = max(r["accuracy"] for r in rows)
        err.print(f"[{len(rows)}/{budget}] val acc {row['accuracy']:.3f} (best {best:.3f})  {row['params']:,} params "
                  f"{row['seconds']:.1f}s{'  reused' if row['reused'] else ''}  {row['arch']}",
                  highlight=False, soft_wrap=True)

    history = run_search(space, task, strategy=settings["strategy"], budget=budget,
                         proxy_steps=settings["proxy_steps"], population=population,
                         sample=sample, seed=settings["seed"], lr=settings["lr"], history=history,
                         on_record=on_record)
    save_png(draw_search(history, settings["strategy"]), out_dir / "search.png")
    return {"method": f"search-arch-{settings['strategy']}", **summarize(history), "space_size": space.size,
            "resumed_candidates": resumed, "bad_records": bad}


def _darts(task: ProxyTask, settings: dict[str, Any], out_dir: Path, resume: bool) -> dict[str, Any]:
    """DARTS search, one history row and one checkpoint per epoch; then the derived cell trained by the proxy."""
    from percli.core.checkpoint import latest_checkpoint
    from percli.core.data.shards import BadRecords, read_records
    from percli.nas.darts import OPS, DartsConfig, DartsSearch, derived_network, discretise
    from percli.nas.plot import draw_alpha, save_png
    from percli.nas.proxy import train_proxy

    cfg = DartsConfig(epochs=settings["epochs"], arch_lr=settings["arch_lr"], seed=settings["seed"])
    search = DartsSearch(task, cfg)
    history_path, state_root = out_dir / "history.jsonl", out_dir / "darts_state"
    rows: list[dict] = []
    saved = latest_checkpoint(state_root) if resume else None
    if saved is not None:
        try:
            search.load(saved)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign state (safetensors raises its own type)
            fail(f"--resume: cannot load {saved} ({e}); delete {state_root} to restart the DARTS search from epoch 0")
        rows = [row for _, row, _ in read_records(history_path, "arch", BadRecords())][:search.epoch]
        err.print(f"resumed after epoch {search.epoch}")

    def on_epoch(row: dict) -> None:
        rows.append({**row, "arch": json.dumps(row["genotype"])})
        write_jsonl_atomic(history_path, rows)
        search.save(state_root)
        deviation = max(abs(w - 1 / len(OPS)) for edge in row["alpha_softmax"] for w in edge)
        err.print(f"epoch {row['epoch']}/{cfg.epochs}: loss {row['train_loss']:.3f} supernet val acc "
                  f"{row['supernet_accuracy']:.3f}  max|softmax(alpha) - 1/{len(OPS)}| {deviation:.3f}  "
                  f"{row['seconds']:.1f}s", highlight=False, soft_wrap=True)

    search.run(on_epoch)
    save_png(draw_alpha(rows, OPS), out_dir / "search.png")
    weights = search.alpha_softmax()
    genotype = discretise(weights, cfg.steps)
    err.print(f"training the derived cell {json.dumps(genotype)} for {settings['proxy_steps']} steps", soft_wrap=True)
    derived = train_proxy(partial(derived_network, genotype, cfg, task), task, settings["proxy_steps"], cfg.seed,
                          lr=settings["lr"])
    return {"method": "search-arch-darts", "best_config": {"genotype": genotype, "channels": cfg.channels,
                                                           "layers": cfg.layers, "steps": cfg.steps},
            "best_accuracy": derived.accuracy, "best_test_accuracy": derived.test_accuracy,
            "best_params": derived.params, "median_accuracy": statistics.median(r["supernet_accuracy"] for r in rows),
            "final_supernet_accuracy": rows[-1]["supernet_accuracy"], "ops": list(OPS),
            "alpha_softmax": [[round(w, 4) for w in edge] for edge in weights.tolist()],
            "max_alpha_deviation": round(float((weights - 1 / len(OPS)).abs().max()), 4), "genotype": genotype,
            "darts_config": asdict(cfg), "epochs_done": search.epoch}



def report(summary: dict) -> None:
    """Human summary on stdout; scripts use --json or summary.json."""
    table = Table("", "value", title=f"percli {summary['method']}", title_justify="left")
    rows = [("best val accuracy", summary["best_accuracy"], "{:.4f}"),
            ("its test accuracy", summary["best_test_accuracy"], "{:.4f}"),
            ("median val accuracy" + (" (supernet, per epoch)" if "genotype" in summary else ""),
             summary["median_accuracy"], "{:.4f}"),
            ("best config", summary["best_config"], "{}"), ("its parameters", summary["best_params"], "{:,}"),
            ("evaluations", summary.get("evaluations"), "{}"), ("unique configs", summary.get("unique_configs"), "{}"),
            ("max |softmax(alpha) - 1/|ops||", summary.get("max_alpha_deviation"), "{}"),
            ("wall time (s)", summary["wall_seconds"], "{:.1f}"), ("run dir", summary["run_dir"], "{}")]
    for name, value, fmt in rows:
        if value is not None:
            table.add_row(name, fmt.format(json.dumps(value) if isinstance(value, dict) else value))
    Console().print(table)
