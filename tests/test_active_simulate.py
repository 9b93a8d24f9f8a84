"""The simulated active-learning loop on digits: uncertainty beats random, run-dir outputs, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from percli.active.plot import learning_curves_figure
from percli.active.simulate import Config, load_dataset, run_curve
from percli.cli import app

runner = CliRunner()


def test_margin_sampling_beats_random_at_equal_labels_on_digits():
    # 20 random labels, then two queries of 60: both strategies start from the same set and model seed.
    cfg = Config(initial=20, budget=60, rounds=2, steps=100)
    data = load_dataset("digits", cfg.test_fraction)
    random_curve = run_curve("random", 0, data, cfg)
    margin_curve = run_curve("margin", 0, data, cfg)
    assert [n for n, _ in margin_curve] == [n for n, _ in random_curve] == [20, 80, 140]
    assert margin_curve[0] == random_curve[0]  # same initial set, same model: the same first accuracy
    assert margin_curve[-1][1] > random_curve[-1][1] + 0.02


def test_digits_split_is_fixed_stratified_and_standardised_on_the_pool():
    x_pool, y_pool, x_test, y_test = load_dataset("digits", 0.3)
    assert len(y_pool) + len(y_test) == 1797 and len(y_test) == 540
    assert np.bincount(y_test).min() >= 50  # stratified: every digit in the test split
    assert np.abs(x_pool.mean(0)).max() < 1e-4 and x_pool.shape[1] == x_test.shape[1] == 64
    assert np.array_equal(load_dataset("digits", 0.3)[3], y_test)


def test_simulate_command_writes_curves_metrics_summary_and_png(tmp_path):
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["select", "simulate", "--strategies", "random,bald,coreset,badge", "--seeds", "1",
                                 "--initial", "10", "--budget", "10", "--rounds", "1", "--steps", "30",
                                 "--run-dir", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads((run_dir / "summary.json").read_text())
    curves = json.loads((run_dir / "curves.json").read_text())
    assert list(curves) == ["random", "bald", "coreset", "badge"]
    assert all(c["labels"] == [10, 20] and len(c["per_seed"]) == 1 for c in curves.values())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 4 * 1 * 2 and all(0.0 <= m["accuracy"] <= 1.0 for m in metrics)
    assert summary["final_accuracy"]["bald"] == curves["bald"]["mean"][-1]
    assert Image.open(run_dir / "curve.png").size == (800, 500)
    # the table form, and a non-empty run dir is refused without --overwrite
    result = runner.invoke(app, ["select", "simulate", "--strategies", "random", "--seeds", "1", "--initial", "10",
                                 "--rounds", "0", "--steps", "5", "--run-dir", str(run_dir)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(app, ["select", "simulate", "--strategies", "random", "--seeds", "1", "--initial", "10",
                                 "--rounds", "0", "--steps", "5", "--run-dir", str(run_dir), "--overwrite"])
    # the generic summary table: the final accuracy per strategy
    assert result.exit_code == 0 and "select simulate: completed" in result.stdout
    assert "final_accuracy.random" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--strategies", "random,best"], "strategies (--strategies): best: choose from random"),
    (["--dataset", "mnist"], "dataset (--dataset): got 'mnist'; allowed values: 'digits'"),
    (["--initial", "1000", "--budget", "100", "--rounds", "5"], "exceed the pool of 1257"),
    (["--seeds", "0"], "seeds (--seeds): got 0; expected an integer >= 1"),
])
def test_simulate_command_rejects_bad_options(tmp_path, args, message):
    result = runner.invoke(app, ["select", "simulate", *args, "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_learning_curve_png_draws_each_strategy_in_its_colour():
    curves = {"random": {"labels": [10, 20, 30], "mean": [0.5, 0.6, 0.7], "std": [0.0, 0.01, 0.0]},
              "margin": {"labels": [10, 20, 30], "mean": [0.5, 0.7, 0.9], "std": [0.0, 0.02, 0.01]}}
    from matplotlib.colors import to_hex

    (ax,) = learning_curves_figure(curves, "test").axes
    colours = {bar.get_label(): to_hex(bar.lines[0].get_color()) for bar in ax.containers}
    assert colours == {"random": "#1f77b4", "margin": "#ff7f0e"}  # tab:blue, then tab:orange
