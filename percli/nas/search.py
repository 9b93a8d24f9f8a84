"""Random search and regularised (aging) evolution over a `SearchSpace`, scored by `train_proxy`.

Candidate i draws its randomness from its own generator, seeded with (seed, i), so a search that
resumes from its history proposes exactly the candidates an uninterrupted one would have.

Regularised evolution (Real et al., 2019; survey section "regularized evolution"): the first P
candidates are random; then each cycle samples S members of the population, mutates one choice of
the best of them (the parent), trains and scores the child, appends it and removes the OLDEST
member. Because the population is always the P most recently evaluated candidates, it is the last P
rows of the history; nothing else needs to be stored to resume.

A config evaluated before is not trained again (training is deterministic per seed): its row is
written with the earlier result and "reused": true, and still counts against the budget.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

from percli.nas.proxy import ProxyTask, train_proxy
from percli.nas.space import SearchSpace, encode

Strategy = Literal["random", "evolution", "darts"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


def candidate_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}/{index}")


def propose(space: SearchSpace, strategy: str, history: list[dict], population: int, sample: int,
            seed: int) -> tuple[dict[str, Any], int | None]:
    """The next candidate's config and its parent's index (None for a random draw)."""
    index = len(history)
    rng = candidate_rng(seed, index)
    if strategy == "random" or index < population:
        return space.sample(rng), None
    members = history[index - population:]  # the aging population: the P youngest
    parent = max(rng.sample(members, sample), key=lambda row: row["accuracy"])  # the first of equal bests
    return space.mutate(parent["config"], rng), parent["index"]


def run_search(space: SearchSpace, task: ProxyTask, *, strategy: str, budget: int, proxy_steps: int,
               population: int, sample: int, seed: int, lr: float, history: list[dict],
               on_record: Callable[[dict, list[dict]], None]) -> list[dict]:
    """Evaluate candidates until `history` holds `budget` rows; `on_record` sees each new row."""
    seen = {row["arch"]: row for row in history}
    while len(history) < budget:
        config, parent = propose(space, strategy, history, population, sample, seed)
        arch = encode(config)
        earlier = seen.get(arch)
        if earlier is None:
            build = partial(space.build, config, task.in_chans, task.img_size, task.num_classes)
            result = train_proxy(build, task, proxy_steps, seed, lr=lr)
            scores = {"accuracy": result.accuracy, "test_accuracy": result.test_accuracy, "params": result.params,
                      "seconds": round(result.seconds, 3), "reused": False}
        else:
            scores = {key: earlier[key] for key in ("accuracy", "test_accuracy", "params")}
            scores.update(seconds=0.0, reused=True)
        row = {"index": len(history), "arch": arch, "config": config, "parent": parent, **scores}
        history.append(row)
        seen.setdefault(arch, row)
        on_record(row, history)
    return history


def load_history(path: Path, space: SearchSpace) -> tuple[list[dict], int]:
    """The rows of a history.jsonl written by `run_search`, and the count of malformed rows skipped."""
    from percli.core.data.shards import BadRecords, read_records

    bad = BadRecords()
    rows = []
    for line_no, row, arch in read_records(path, "arch", bad):
        problem = space.check(row.get("config"))
        if problem is None and encode(row["config"]) != arch:
            problem = "arch is not the config's JSON"
        if problem is None and not all(isinstance(row.get(k), int | float) for k in ("accuracy", "test_accuracy",
                                                                                      "params")):
            problem = "accuracy, test_accuracy or params missing or not a number"
        if problem:
            bad.add(path, line_no, f"config of another space? {problem}")
            continue
        rows.append({**row, "index": len(rows)})
    return rows, bad.count


def summarize(history: list[dict]) -> dict[str, Any]:
    """Best row (highest val accuracy, earliest on ties), the median accuracy and the search's cost."""
    best = max(history, key=lambda row: row["accuracy"])
    median = statistics.median(row["accuracy"] for row in history)
    return {"best_config": best["config"], "best_accuracy": best["accuracy"],
            "best_test_accuracy": best["test_accuracy"], "best_params": best["params"], "best_index": best["index"],
            "median_accuracy": median, "beats_median": best["accuracy"] > median, "evaluations": len(history),
            "unique_configs": len({row["arch"] for row in history}),
            "train_seconds": round(sum(row["seconds"] for row in history), 2)}
