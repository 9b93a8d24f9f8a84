"""One unit and one summary schema: shares are fractions in JSON (summary.json, --json, metrics.jsonl) and
percent, labelled "(%)", only in the human table; every job's summary has status / run_dir / metrics / counts
(the runner's `normalise`); an eval job without --run-dir leaves no run dir behind."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from percli.cli import app
from percli.commands.run import FRACTION, _rows, normalise
from tests.conftest import TINY_CLS
from tests.summary_schema import assert_common_schema

runner = CliRunner()


def test_normalise_guarantees_the_four_keys_and_keeps_the_jobs_own():
    engine = {"status": "completed", "step": 4, "max_steps": 4, "world_size": 1, "peak_lr": 1e-3,
              "metrics": {"eval/top1": 0.5, "eval/loss": 2.0}, "bad_inputs": {"count": 2, "files": []},
              "bad_records": {"count": 1, "examples": []}, "elapsed_s": 3.2, "classes": ["a", "b"]}
    out = normalise(engine, None)
    assert_common_schema(out)
    assert out["metrics"] == {"eval/top1": 0.5, "eval/loss": 2.0} and out["run_dir"] is None
    assert out["counts"] == {"bad_inputs": 2, "bad_records": 1}  # step / world size are not counts
    assert out["classes"] == ["a", "b"] and out["peak_lr"] == 1e-3  # the job's own keys stay

    data_job = {"texts_read": 100, "kept": 40, "threshold": 0.55, "demo": True, "output_dir": "o"}
    out = normalise(data_job, "runs/x")
    assert out["status"] == "completed" and out["run_dir"] == "runs/x"
    assert out["metrics"] == {"threshold": 0.55} and out["counts"] == {"texts_read": 100, "kept": 40}

    nested = {"metrics": {"altogether": {"bleu4": 0.3, "cider": 1.2}, "alt_text": {"bleu4": 0.1}}}
    assert normalise(nested, "r")["metrics"] == {"altogether/bleu4": 0.3, "altogether/cider": 1.2,
                                                 "alt_text/bleu4": 0.1}


@pytest.mark.parametrize(("name", "share"), [
    ("top1", True), ("eval/top5", True), ("k20/top1", True), ("zero_shot_top1", True), ("image_to_text_R@5", True),
    ("eval/mAP", True), ("ks/audio accuracy", True), ("lrs3/fusion wer", True), ("best_accuracy", True),
    ("eval/top10acc", True), ("eval/loss", False), ("eval/d_prime", False), ("cider", False), ("count", False),
    ("eval/mAUC", False)])
def test_which_metrics_are_shares(name, share):
    assert bool(FRACTION.search(name)) is share


def test_table_shows_shares_as_labelled_percent():
    rows = dict(_rows(normalise({"metrics": {"top1": 0.625, "loss": 1.5}, "texts_read": 3}, "r")))
    assert rows["top1 (%)"] == "62.50" and rows["loss"] == "1.5" and rows["texts_read"] == "3"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    run = tmp_path_factory.mktemp("units") / "ft"
    result = runner.invoke(app, ["finetune", "hiera", "--run-dir", str(run), "--json", *TINY_CLS,
                                 "train.max_steps=2", "train.eval_every=2"])
    assert result.exit_code == 0, result.output
    return run, json.loads(result.stdout)


def test_training_figures_are_fractions_in_summary_and_metrics_jsonl(classifier):
    run, summary = classifier
    assert_common_schema(summary)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in logged if "eval/top1" in r]
    assert evals and all(0.0 <= r["eval/top1"] <= 1.0 and 0.0 <= r["eval/top5"] <= 1.0 for r in evals)
    assert summary["metrics"]["eval/top1"] == pytest.approx(evals[-1]["eval/top1"])


def test_eval_without_run_dir_prints_percent_and_keeps_nothing(classifier, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run, _ = classifier
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    args = ["eval", "classify", f"checkpoint={ckpt}", "data.embedded_size=64", "train.num_workers=0"]
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    summary = json.loads(as_json.stdout)
    assert_common_schema(summary)
    assert summary["run_dir"] is None and 0.0 <= summary["metrics"]["top1"] <= 1.0
    assert "step" not in summary  # an eval has no training step
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "top1 (%)" in table.stdout and f"{100 * summary['metrics']['top1']:.2f}" in table.stdout
    assert "not kept" in table.stdout
    assert not (tmp_path / "runs").exists()
