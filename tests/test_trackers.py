"""Experiment trackers through Accelerate (`train.log_with`): the scalars of metrics.jsonl at the same steps,
the config as hyperparameters, the run's pictures; unknown or missing trackers refused at config time."""

from __future__ import annotations

import importlib.util
import json
import typing

import pytest
import yaml
from typer.testing import CliRunner

from percli.cli import app
from percli.core.config import TRACKERS
from percli.core.rundir import read_metrics
from tests.conftest import TINY_CLS, TINY_MAE

runner = CliRunner()


def test_tracker_names_are_accelerates():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    assert sorted(typing.get_args(TRACKERS)) == sorted(LOGGER_TYPE_TO_CLASS)


@pytest.mark.parametrize("verb, method, args", [
    ("pretrain", "hiera-mae", [*TINY_MAE, "train.max_steps=5"]),  # reconstructions.png at the end
    ("finetune", "hiera", [*TINY_CLS, "train.max_steps=4", "train.eval_every=2"]),  # eval/ metrics too
])
def test_tensorboard_event_files_hold_the_metrics_jsonl_scalars(verb, method, args, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = runner.invoke(app, [verb, method, "--run-dir", str(run), "--json", *args, "train.log_every=2",
                                 "train.log_with=[tensorboard]"])
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    logged: dict[str, dict[int, float]] = {}
    for record in read_metrics(run / "metrics.jsonl"):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                logged.setdefault(key, {})[record["step"]] = value
    assert set(events.Tags()["scalars"]) == set(logged)
    for tag, by_step in logged.items():
        seen = {e.step: e.value for e in events.Scalars(tag)}
        assert seen == pytest.approx(by_step, rel=1e-6), tag  # TensorBoard keeps float32
    if method == "hiera":
        assert {2, 4} <= set(logged["eval/top1"])
    summary = json.loads(result.stdout)
    pictures = [k for k, v in summary.items() if isinstance(v, str) and v.endswith(".png")]
    assert events.Tags()["images"] == pictures == (["reconstructions"] if method == "hiera-mae" else [])
    for name in pictures:
        (image,) = events.Images(name)
        assert image.step == summary["step"] and image.width > 0 and image.height > 0
    (hparams,) = (run / "tensorboard").glob("*/hparams.yml")
    assert yaml.safe_load(hparams.read_text())["train.log_with"] == "['tensorboard']"  # the resolved config


def test_wandb_offline_run_dir_is_written(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(run), *TINY_MAE, "train.max_steps=2",
                                 "train.log_every=1", "train.log_with=[wandb]"])
    assert result.exit_code == 0, result.output
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb"))


@pytest.mark.parametrize("value, message", [
    ("[tensorbord]", r"train.log_with[0]: got 'tensorbord'; allowed values: 'tensorboard', 'wandb'"),
    ("[tensorboard, tensorboard]", "train.log_with: 'tensorboard' is listed twice"),
])
def test_unknown_or_repeated_tracker_is_a_config_error(value, message):
    result = runner.invoke(app, ["pretrain", "hiera-mae", "--dry-run", f"train.log_with={value}"])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_tracker_without_its_package_is_refused_before_the_run(tmp_path):
    missing = next((n for n in typing.get_args(TRACKERS) if n != "tensorboard" and not importlib.util.find_spec(n)),
                   None)
    if missing is None:
        pytest.skip("every tracker package is installed")
    result = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(tmp_path / "run"),
                                 f"train.log_with=[{missing}]"])
    assert result.exit_code == 2
    assert f"pip install {missing}" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()
