"""`percli search-arch` and percli.nas: search spaces, proxy, random/evolution search, DARTS."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.nas.darts import OPS, DartsConfig, DartsSearch, derived_network, discretise
from percli.nas.proxy import ProxyTask, load_digits_task
from percli.nas.search import run_search, summarize
from percli.nas.space import SPACES, encode

runner = CliRunner()
MICRO = SPACES["vit-micro"]


@pytest.fixture(scope="module")
def digits() -> ProxyTask:
    return load_digits_task()


@pytest.fixture(scope="module")
def tiny_digits(digits) -> ProxyTask:
    """96 images per split: a DARTS epoch in a couple of steps."""
    return replace(digits, x_train=digits.x_train[:96], y_train=digits.y_train[:96], x_val=digits.x_val[:96],
                   y_val=digits.y_val[:96], x_test=digits.x_test[:96], y_test=digits.y_test[:96])


def test_digits_splits_are_disjoint_and_standardised(digits):
    assert (len(digits.y_train), len(digits.y_val), len(digits.y_test)) == (1000, 400, 397)
    assert abs(float(digits.x_train.mean())) < 1e-4 and abs(float(digits.x_train.std()) - 1) < 1e-3
    train_rows = {tuple(x.flatten().tolist()) for x in digits.x_train}
    assert sum(tuple(x.flatten().tolist()) in train_rows for x in digits.x_test) < 10  # digits has a few duplicates


def test_mutate_changes_exactly_one_choice_within_the_space():
    space = SPACES["vit-tiny"]
    rng = random.Random(0)
    for _ in range(50):
        parent = space.sample(rng)
        child = space.mutate(parent, rng)
        assert space.check(child) is None
        assert sum(child[k] != parent[k] for k in parent) == 1
    assert encode({"b": 1, "a": 2}) == encode({"a": 2, "b": 1})
    assert "outside" in space.check({**parent, "depth": 99})
    model = space.build(parent, in_chans=1, img_size=8, num_classes=10)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def _search(digits, strategy, budget, history=None):
    return run_search(MICRO, digits, strategy=strategy, budget=budget, proxy_steps=25, population=4, sample=2,
                      seed=0, lr=3e-3, history=history if history is not None else [], on_record=lambda *_: None)


def test_evolution_beats_the_median_and_mutates_young_parents(digits):
    history = _search(digits, "evolution", 8)
    summary = summarize(history)
    assert summary["best_accuracy"] > summary["median_accuracy"]
    assert summary["best_accuracy"] > 0.3  # chance is 0.1
    for row in history[4:]:  # after the random initial population: a child of one of the 4 youngest
        assert row["index"] - 4 <= row["parent"] < row["index"]
        parent = history[row["parent"]]["config"]
        assert sum(row["config"][k] != parent[k] for k in parent) == 1
    resumed = _search(digits, "evolution", 8, history=[dict(r) for r in history[:5]])
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed] == strip  # same proposals and scores


def test_cli_random_search_writes_outputs_and_resumes_without_reevaluating(tmp_path):
    run = tmp_path / "run"
    args = ["search-arch", "--strategy", "random", "--space", "vit-micro", "--proxy-steps", "15", "--run-dir",
            str(run)]
    result = runner.invoke(app, [*args, "--budget", "3", "--json"])
    assert result.exit_code == 0, result.output
    first = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(first) == 3 and (run / "search.png").read_bytes()[:4] == b"\x89PNG"
    with open(run / "history.jsonl", "a") as f:
        f.write("{not json\n")  # a torn line: counted and skipped
    result = runner.invoke(app, [*args, "--budget", "5", "--resume", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert rows[:3] == first and len(rows) == 5
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_candidates"] == 3 and summary["bad_records"] == 1 and summary["evaluations"] == 5
    assert summary["best_accuracy"] == max(r["accuracy"] for r in rows)


@pytest.mark.parametrize(("extra", "message"), [
    (["--strategy", "bogus"], "allowed values: 'random', 'evolution', 'darts'"),
    (["--space", "vit-huge"], "got 'vit-huge'; expected 'vit-tiny' | 'vit-micro'"),
    (["--strategy", "evolution", "--budget", "5", "--population", "5"], "raise --budget"),
    (["--strategy", "evolution", "--population", "4", "--sample", "6"], "--sample <= --population"),
    (["--resume"], "--resume needs --run-dir"),
    (["--strategy", "darts", "--space", "vit-micro"], "drop --space"),
])
def test_cli_rejects_bad_options(extra, message):
    result = runner.invoke(app, ["search-arch", *extra])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_cli_resume_keeps_the_saved_settings_and_refuses_changed_ones(tmp_path):
    run = tmp_path / "run"
    args = ["search-arch", "--run-dir", str(run), "--resume"]
    first = runner.invoke(app, [*args[:-1], "--strategy", "random", "--space", "vit-micro", "--seed", "1",
                                "--budget", "1", "--proxy-steps", "2"])
    assert first.exit_code == 0, first.output
    result = runner.invoke(app, [*args, "--seed", "0"])
    assert result.exit_code == 2 and "--seed 1 (now 0)" in " ".join(result.output.split())
    result = runner.invoke(app, [*args, "--seed", "1", "--budget", "2", "--json"])  # the rest from config.yaml
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["settings"]["space"] == "vit-micro" and summary["evaluations"] == 2
    assert summary["resumed_candidates"] == 1


def test_darts_alpha_moves_away_from_uniform(tiny_digits):
    cfg = DartsConfig(channels=4, layers=1, steps=2, epochs=2, batch_size=32, arch_lr=0.1)
    search = DartsSearch(tiny_digits, cfg)
    assert float((search.alpha_softmax() - 1 / len(OPS)).abs().max()) < 1e-3  # the paper's near-uniform start
    rows = []
    search.run(rows.append)
    deviation = float((search.alpha_softmax() - 1 / len(OPS)).abs().max())
    assert deviation > 0.02
    assert len(rows) == 2 and len(rows[-1]["alpha_softmax"]) == 2 + 3  # node 0: 2 edges, node 1: 3


def test_darts_resume_reproduces_the_uninterrupted_search(tiny_digits, tmp_path):
    cfg = DartsConfig(channels=4, layers=1, steps=2, epochs=2, batch_size=32, arch_lr=0.1)
    uninterrupted = DartsSearch(tiny_digits, cfg)
    uninterrupted.run(lambda row: None)
    first = DartsSearch(tiny_digits, cfg)
    first.train_epoch()
    saved = first.save(tmp_path / "state")
    assert sorted(p.name for p in saved.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                         "trainer_state.json"]  # nothing pickled
    resumed = DartsSearch(tiny_digits, cfg)
    resumed.load(saved)
    resumed.run(lambda row: None)
    assert torch.allclose(resumed.model.alpha, uninterrupted.model.alpha)


def test_discretise_keeps_the_top2_edges_per_node_on_hand_set_alpha():
    weights = torch.full((9, len(OPS)), 1 / len(OPS))  # steps=3: nodes with 2, 3 and 4 incoming edges
    strong = {  # (edge row, op) -> weight; node 2 = rows 5..8 from states 0, 1, 2, 3
        (0, "conv_3x3"): 0.3, (1, "skip_connect"): 0.2,
        (2, "max_pool_3x3"): 0.5, (3, "none"): 0.9, (4, "sep_conv_3x3"): 0.4,  # "none" never counts
        (5, "conv_5x5"): 0.2, (6, "avg_pool_3x3"): 0.6, (7, "none"): 0.95, (8, "sep_conv_3x3"): 0.7,
    }
    for (row, op), w in strong.items():
        weights[row, OPS.index(op)] = w
    genotype = discretise(weights, steps=3)
    assert genotype == [[("conv_3x3", 0), ("skip_connect", 1)],
                        [("max_pool_3x3", 0), ("sep_conv_3x3", 2)],
                        [("avg_pool_3x3", 1), ("sep_conv_3x3", 3)]]
    net = derived_network(genotype, DartsConfig(channels=4, layers=1, steps=3), load_digits_task())
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10) and net.alpha is None


def test_cli_darts_writes_alpha_and_genotype(tmp_path, tiny_digits, monkeypatch):
    monkeypatch.setattr("percli.nas.proxy.load_digits_task", lambda: tiny_digits)
    run = tmp_path / "darts"
    result = runner.invoke(app, ["search-arch", "--strategy", "darts", "--epochs", "1", "--proxy-steps", "3",
                                 "--arch-lr", "0.05", "--run-dir", str(run), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["genotype"]) == 3 and all(len(node) == 2 for node in summary["genotype"])
    assert len(summary["alpha_softmax"]) == 9 and summary["max_alpha_deviation"] > 0
    assert (run / "darts_state" / "step_0000001" / "model.safetensors").is_file() and (run / "search.png").is_file()
    result = runner.invoke(app, ["search-arch", "--strategy", "darts", "--epochs", "1", "--proxy-steps", "3",
                                 "--arch-lr", "0.05", "--run-dir", str(run), "--resume", "--json"])
    assert result.exit_code == 0, result.output
    assert "resumed after epoch 1" in result.output
    assert json.loads((run / "summary.json").read_text())["genotype"] == summary["genotype"]
    (run / "darts_state" / "step_0000001" / "model.safetensors").write_bytes(b"damaged")
    result = runner.invoke(app, ["search-arch", "--strategy", "darts", "--epochs", "1", "--proxy-steps", "3",
                                 "--arch-lr", "0.05", "--run-dir", str(run), "--resume"])
    assert result.exit_code == 2 and "cannot load" in result.output and "restart the DARTS search" in result.output
