"""Neural architecture search on a small offline proxy task, the classic strategies side by side.

Each candidate is trained --proxy-steps steps on 1000 digits and scored on 400 others (val; 397 more
give the test accuracy, never used to choose). Random search and regularised (aging) evolution
(population P, sample S, mutate the best, drop the oldest) search real percli ViTs (--space vit-tiny,
216 configs, or vit-micro, 32); --strategy darts runs first-order DARTS on a conv cell, keeps the
top-2 incoming edges per node and trains the derived cell. Writes history.jsonl, search.json (the
settings the history depends on), search.png and summary.json (best config, its val/test accuracy,
the median; softmax(alpha) and the genotype for DARTS). --resume continues a search in its run dir
without evaluating again (DARTS from its per-epoch state under darts_state/); only --budget may change.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.rundir import write_json_atomic, write_jsonl_atomic
from percli.nas.darts import DartsConfig
from percli.nas.search import Strategy
from percli.nas.space import SpaceName

if TYPE_CHECKING:
    from percli.nas.proxy import ProxyTask
    from percli.nas.space import SearchSpace


@dataclass
class Config:
    strategy: Strategy = "evolution"
    """random | evolution (regularised, aging) | darts."""
    space: SpaceName | None = None
    """Search space of random/evolution: vit-tiny (the default, 216 ViT configs) or vit-micro (32); darts
    searches its own cell (ops x edges)."""
    budget: int = 40
    """Candidates to evaluate (random/evolution), repeats included; may grow on --resume."""
    proxy_steps: int = 150
    """Training steps (batch 64) of each candidate, and of the architecture DARTS derives."""
    lr: float = 3e-3
    """AdamW learning rate of the proxy training (cosine to 0)."""
    population: int = 10
    """Evolution: population size P (the P youngest)."""
    sample: int = 3
    """Evolution: members S sampled per cycle; the best is the parent."""
    seed: int = 0
    """Seed of the proposals, the initialisations and the batches."""
    darts: DartsConfig = field(default_factory=DartsConfig)
    """DARTS: the supernet and its optimisers (--epochs, --arch-lr)."""


def validate(cfg: Config) -> None:
    if cfg.strategy == "darts" and cfg.space is not None:
        raise ConfigError("space: --space is for random/evolution; darts searches its own cell (ops x edges): "
                          "drop --space")
    for key, value in (("budget", cfg.budget), ("proxy_steps", cfg.proxy_steps), ("darts.epochs", cfg.darts.epochs),
                       ("darts.channels", cfg.darts.channels), ("darts.layers", cfg.darts.layers),
                       ("darts.steps", cfg.darts.steps), ("darts.batch_size", cfg.darts.batch_size)):
        if value < 1:
            raise ConfigError(f"{key}: got {value}; expected an integer >= 1")
    for key, value in (("lr", cfg.lr), ("darts.arch_lr", cfg.darts.arch_lr), ("darts.w_lr", cfg.darts.w_lr)):
        if not value > 0:
            raise ConfigError(f"{key}: got {value:g}; expected a learning rate > 0")
    if cfg.strategy == "evolution":
        if cfg.population < 2 or not 1 <= cfg.sample <= cfg.population:
            raise ConfigError(f"population: evolution needs --population >= 2 and 1 <= --sample <= --population "
                              f"(got P={cfg.population}, S={cfg.sample}); e.g. --population 10 --sample 3")
        if cfg.budget <= cfg.population:
            raise ConfigError(f"budget: --budget {cfg.budget} <= --population {cfg.population}: evolution would only "
                              f"draw the random initial population; raise --budget (e.g. {4 * cfg.population}) or "
                              "use --strategy random")


def settings(cfg: Config) -> dict[str, Any]:
    """What the search's history depends on; a resumed run must repeat all of it but the budget."""
    out: dict[str, Any] = {"strategy": cfg.strategy, "proxy_steps": cfg.proxy_steps, "lr": cfg.lr, "seed": cfg.seed}
    if cfg.strategy == "darts":
        out.update(space="darts-cell", **{f"darts.{k}": v for k, v in asdict(cfg.darts).items()})
    else:
        out.update(space=cfg.space or "vit-tiny", budget=cfg.budget)
    if cfg.strategy == "evolution":
        out.update(population=cfg.population, sample=cfg.sample)
    return json.loads(json.dumps(out))  # tuples as lists, as they read back from search.json


def run(cfg: Config, ctx: RunContext) -> dict:
    import torch

    from percli.nas.proxy import load_digits_task
    from percli.nas.space import SPACES

    chosen = settings(cfg)
    if ctx.resume:
        _check_resumed_settings(ctx.run_dir / "search.json", chosen)
    else:
        write_json_atomic(ctx.run_dir / "search.json", chosen)
    torch.set_num_threads(1)  # models of 2k-200k parameters: intra-op threads cost more than they save
    start = time.perf_counter()
    task = load_digits_task()
    if cfg.strategy == "darts":
        summary = _darts(task, cfg, ctx)
    else:
        summary = _discrete(task, cfg, SPACES[chosen["space"]], ctx)
    return {"status": "completed", **summary, "settings": chosen,
            "wall_seconds": round(time.perf_counter() - start, 2)}


def _check_resumed_settings(path: Path, chosen: dict[str, Any]) -> None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume: cannot read {path} ({e}); is --run-dir a search-arch run dir?") from None
    changed = [f"{key if '.' in key else '--' + key.replace('_', '-')} {saved.get(key)} (now {value})"
               for key, value in chosen.items() if key != "budget" and saved.get(key) != value]
    if changed:
        raise ValueError(f"--resume: the run was started with {', '.join(changed)}; pass the same values "
                         "(only --budget may change) or start a new --run-dir")
    write_json_atomic(path, chosen)  # the new budget


def _discrete(task: ProxyTask, cfg: Config, space: SearchSpace, ctx: RunContext) -> dict[str, Any]:
    """Random search or regularised evolution; history.jsonl is rewritten atomically after every candidate."""
    from percli.nas.plot import draw_search, save_png
    from percli.nas.search import load_history, run_search, summarize

    history_path = ctx.run_dir / "history.jsonl"
    history, bad = load_history(history_path, space) if ctx.resume and history_path.is_file() else ([], 0)
    resumed = len(history)
    if ctx.resume:
        ctx.log(f"resumed {resumed} evaluated candidates" + (f" ({bad} malformed rows skipped)" if bad else ""))
    evolution = cfg.strategy == "evolution"

    def on_record(row: dict, rows: list[dict]) -> None:
        write_jsonl_atomic(history_path, rows)
        best = max(r["accuracy"] for r in rows)
        ctx.log(f"[{len(rows)}/{cfg.budget}] val acc {row['accuracy']:.3f} (best {best:.3f})  {row['params']:,} "
                f"params {row['seconds']:.1f}s{'  reused' if row['reused'] else ''}  {row['arch']}")

    history = run_search(space, task, strategy=cfg.strategy, budget=cfg.budget, proxy_steps=cfg.proxy_steps,
                         population=cfg.population if evolution else 0, sample=cfg.sample if evolution else 0,
                         seed=cfg.seed, lr=cfg.lr, history=history, on_record=on_record)
    save_png(draw_search(history, cfg.strategy), ctx.run_dir / "search.png")
    return {"method": f"search-arch-{cfg.strategy}", **summarize(history), "space_size": space.size,
            "resumed_candidates": resumed, "bad_records": bad}


def _darts(task: ProxyTask, cfg: Config, ctx: RunContext) -> dict[str, Any]:
    """DARTS search, one history row and one checkpoint per epoch; then the derived cell trained by the proxy."""
    from percli.core.checkpoint import latest_checkpoint
    from percli.core.data.shards import BadRecords, read_records
    from percli.nas.darts import OPS, DartsSearch, derived_network, discretise
    from percli.nas.plot import draw_alpha, save_png
    from percli.nas.proxy import train_proxy

    search = DartsSearch(task, cfg.darts, cfg.seed)
    history_path, state_root = ctx.run_dir / "history.jsonl", ctx.run_dir / "darts_state"
    rows: list[dict] = []
    saved = latest_checkpoint(state_root) if ctx.resume else None
    if saved is not None:
        try:
            search.load(saved)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign state (safetensors raises its own type)
            raise ValueError(f"--resume: cannot load {saved} ({e}); delete {state_root} to restart the DARTS search "
                             "from epoch 0") from None
        rows = [row for _, row, _ in read_records(history_path, "arch", BadRecords())][:search.epoch]
        ctx.log(f"resumed after epoch {search.epoch}")

    def on_epoch(row: dict) -> None:
        rows.append({**row, "arch": json.dumps(row["genotype"])})
        write_jsonl_atomic(history_path, rows)
        search.save(state_root)
        deviation = max(abs(w - 1 / len(OPS)) for edge in row["alpha_softmax"] for w in edge)
        ctx.log(f"epoch {row['epoch']}/{cfg.darts.epochs}: loss {row['train_loss']:.3f} supernet val acc "
                f"{row['supernet_accuracy']:.3f}  max|softmax(alpha) - 1/{len(OPS)}| {deviation:.3f}  "
                f"{row['seconds']:.1f}s")

    search.run(on_epoch)
    save_png(draw_alpha(rows, OPS), ctx.run_dir / "search.png")
    weights = search.alpha_softmax()
    genotype = discretise(weights, cfg.darts.steps)
    ctx.log(f"training the derived cell {json.dumps(genotype)} for {cfg.proxy_steps} steps")
    derived = train_proxy(partial(derived_network, genotype, cfg.darts, task), task, cfg.proxy_steps, cfg.seed,
                          lr=cfg.lr)
    return {"method": "search-arch-darts", "best_config": {"genotype": genotype, "channels": cfg.darts.channels,
                                                           "layers": cfg.darts.layers, "steps": cfg.darts.steps},
            "best_accuracy": derived.accuracy, "best_test_accuracy": derived.test_accuracy,
            "best_params": derived.params, "median_accuracy": statistics.median(r["supernet_accuracy"] for r in rows),
            "final_supernet_accuracy": rows[-1]["supernet_accuracy"], "ops": list(OPS),
            "alpha_softmax": [[round(w, 4) for w in edge] for edge in weights.tolist()],
            "max_alpha_deviation": round(float((weights - 1 / len(OPS)).abs().max()), 4), "genotype": genotype,
            "darts_config": asdict(cfg.darts), "epochs_done": search.epoch}
