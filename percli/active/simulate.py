"""The classic pool-based active-learning loop, simulated on a labelled dataset.

Protocol (Ren et al. 2021, section 2): a random initial labelled set, then `rounds` rounds of
train -> score the unlabelled pool -> query `budget` points -> reveal their labels. The model is
retrained from scratch every round and scored on a fixed held-out test split; learning curves
(test accuracy vs number of labels) are averaged over seeds. For a seed, every strategy starts
from the same initial set and the same test split, so the curves differ by the queries only.

Dataset: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes; no download), standardised
with the pool's mean and std. Model: a one-hidden-layer MLP with dropout, so BALD can sample it
(MC dropout), and whose hidden activations are the embeddings of core-set and BADGE.

Writes metrics.jsonl (test accuracy per strategy, seed and round), curves.json (mean/std per
labelled-set size), curve.png and summary.json; about 3 s of CPU per strategy and seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from percli.active.plot import save_learning_curves_png
from percli.active.strategies import STRATEGIES, select
from percli.core.config import ConfigError, to_dict
from percli.core.context import RunContext
from percli.core.rundir import write_json_atomic, write_jsonl_atomic

DATASETS = ("digits",)


@dataclass
class Config:
    dataset: Literal["digits"] = "digits"
    """digits: scikit-learn's bundled 8x8 digits (offline)."""
    strategies: list[str] | str = field(default_factory=lambda: ["random", "entropy", "margin"])
    """Strategies to compare (a list, or comma-separated), from random, least-confidence, margin, entropy,
    bald, coreset, badge."""
    seeds: int = 3
    """Repeats (initial set, model init, draws); curves are averaged."""
    initial: int = 20
    """Random labelled points before the first query."""
    budget: int = 20
    """Points queried per round."""
    rounds: int = 10
    """Query rounds (the model is trained rounds + 1 times)."""
    test_fraction: float = 0.3
    """Held out once (split seed 0), the same for every seed and strategy."""
    hidden: int = 128
    dropout: float = 0.3
    steps: int = 200
    """Full-batch Adam steps per training (fewer: faster, noisier)."""
    lr: float = 3e-3
    weight_decay: float = 1e-4
    mc_samples: int = 20
    """Dropout forward passes T for BALD."""


def strategy_names(value: list[str] | str) -> list[str]:
    """A list of names, or one comma-separated string of them, as a list."""
    return [s.strip() for s in (value.split(",") if isinstance(value, str) else value) if s.strip()]


def validate(cfg: Config) -> None:
    names = strategy_names(cfg.strategies)
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise ConfigError(f"strategies: {', '.join(unknown) or '(none)'}: choose from {', '.join(STRATEGIES)}")
    for name in ("seeds", "initial", "budget", "steps", "mc_samples", "hidden"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}: got {getattr(cfg, name)}; expected an integer >= 1")
    if cfg.rounds < 0:
        raise ConfigError(f"rounds: got {cfg.rounds}; expected an integer >= 0")
    if not 0 < cfg.test_fraction < 1:
        raise ConfigError(f"test_fraction: got {cfg.test_fraction}; expected a number in (0, 1)")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"dropout: got {cfg.dropout}; expected a number in [0, 1)")
    if not cfg.lr > 0:
        raise ConfigError(f"lr: got {cfg.lr}; expected a learning rate > 0")
    if not cfg.weight_decay >= 0:
        raise ConfigError(f"weight_decay: got {cfg.weight_decay}; expected a number >= 0")


def load_dataset(name: str, test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pool x, pool y, test x, test y), standardised with the pool's statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if name != "digits":
        raise ValueError(f"dataset {name!r}: choose one of {', '.join(DATASETS)}")
    x, y = load_digits(return_X_y=True)
    x_pool, x_test, y_pool, y_test = train_test_split(x, y, test_size=test_fraction, random_state=0,
                                                      stratify=y)
    mean, std = x_pool.mean(0), x_pool.std(0) + 1e-6  # a few border pixels are always 0
    return ((x_pool - mean) / std).astype(np.float32), y_pool, ((x_test - mean) / std).astype(np.float32), y_test


class DropoutMLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, classes: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N, C], embeddings h [N, hidden])."""
        h = self.body(x)
        return self.head(self.dropout(h)), h


def train_model(x: torch.Tensor, y: torch.Tensor, classes: int, cfg: Config, seed: int) -> DropoutMLP:
    torch.manual_seed(seed)
    model = DropoutMLP(x.shape[1], cfg.hidden, classes, cfg.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    for _ in range(cfg.steps):
        loss = nn.functional.cross_entropy(model(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@torch.no_grad()
def model_outputs(model: DropoutMLP, x: torch.Tensor, needs: tuple[str, ...], mc_samples: int) -> dict:
    """probs [N, C] and embeddings [N, hidden] in eval mode; mc_probs [T, N, C] with dropout on."""
    model.eval()
    logits, h = model(x)
    out = {"probs": logits.softmax(-1).numpy(), "embeddings": h.numpy()}
    if "mc_probs" in needs:
        model.train()
        out["mc_probs"] = torch.stack([model(x)[0].softmax(-1) for _ in range(mc_samples)]).numpy()
        model.eval()
    return out


def run_curve(strategy: str, seed: int, data: tuple, cfg: Config) -> list[tuple[int, float]]:
    """[(labels, test accuracy)] after each of the rounds + 1 trainings of one strategy and seed."""
    x_pool, y_pool, x_test, y_test = (torch.from_numpy(np.asarray(a)) for a in data)
    classes = int(y_pool.max()) + 1
    labelled = np.zeros(len(y_pool), dtype=bool)
    labelled[np.random.default_rng(seed).choice(len(y_pool), cfg.initial, replace=False)] = True
    rng = np.random.default_rng([seed, 1])  # the strategy's own draws, apart from the initial set's
    curve = []
    for round_ in range(cfg.rounds + 1):
        index = torch.from_numpy(np.flatnonzero(labelled))
        model = train_model(x_pool[index], y_pool[index], classes, cfg, seed=seed * 1000 + round_)
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test)[0].argmax(-1) == y_test).double().mean().item()
        curve.append((int(labelled.sum()), accuracy))
        if round_ < cfg.rounds:
            outputs = model_outputs(model, x_pool, STRATEGIES[strategy].needs, cfg.mc_samples)
            picked, _ = select(strategy, cfg.budget, labelled, rng, **outputs)
            labelled[picked] = True
    return curve


def run(cfg: Config, ctx: RunContext) -> dict:
    """Run every strategy x seed; write metrics.jsonl, curves.json and curve.png; return the summary."""
    torch.set_num_threads(1)  # a 64-128-10 MLP: more threads only add sync overhead (10x slower on a busy CPU)
    cfg = dataclasses.replace(cfg, strategies=strategy_names(cfg.strategies))
    data = load_dataset(cfg.dataset, cfg.test_fraction)
    needed = cfg.initial + cfg.budget * cfg.rounds
    if needed > len(data[1]):
        raise ValueError(f"initial + budget x rounds = {needed} labels exceed the pool of {len(data[1])}; "
                         "lower --initial, --budget or --rounds")
    records, curves = [], {}
    for strategy in cfg.strategies:
        per_seed = []
        for seed in range(cfg.seeds):
            curve = run_curve(strategy, seed, data, cfg)
            records += [{"strategy": strategy, "seed": seed, "round": r, "labels": n, "accuracy": acc}
                        for r, (n, acc) in enumerate(curve)]
            per_seed.append([acc for _, acc in curve])
            ctx.log(f"{strategy} seed {seed}: accuracy {curve[0][1]:.3f} -> {curve[-1][1]:.3f} "
                    f"({curve[0][0]} -> {curve[-1][0]} labels)")
        acc = np.asarray(per_seed)  # [seeds, rounds + 1]
        curves[strategy] = {"labels": [n for n, _ in curve], "mean": acc.mean(0).tolist(),
                            "std": acc.std(0).tolist(), "per_seed": per_seed}
    out_dir = ctx.run_dir
    write_jsonl_atomic(out_dir / "metrics.jsonl", records)
    write_json_atomic(out_dir / "curves.json", curves)
    save_learning_curves_png(curves, out_dir / "curve.png", title=f"active learning on {cfg.dataset}, "
                                                                   f"mean over {cfg.seeds} seeds")
    ctx.log(f"curves: {out_dir}/curve.png")
    return {"status": "completed", "method": "select-simulate", "config": to_dict(cfg), "pool_size": len(data[1]),
            "test_size": len(data[3]), "final_accuracy": {s: c["mean"][-1] for s, c in curves.items()},
            "mean_accuracy": {s: float(np.mean(c["mean"])) for s, c in curves.items()},
            "curves": {s: {k: c[k] for k in ("labels", "mean", "std")} for s, c in curves.items()},
            "output_dir": str(out_dir)}
