"""Precision and compile: the launcher's --mixed_precision wins unless the config sets one (a conflict is named),
and `train.compile` trains a tiny preset through torch.compile."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import latest_checkpoint, read_weights
from percli.core.engine import mixed_precision
from percli.recipes import hiera_mae
from tests.conftest import TINY_CLS, TINY_MAE

runner = CliRunner()


def _linear_output_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtypes a Linear layer inside the model computes in, step by step (autocast shows there)."""
    seen: list[torch.dtype] = []
    real_step = hiera_mae.HieraMAETask.loss_step

    def loss_step(self, model, batch):
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        handle = linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        try:
            return real_step(self, model, batch)
        finally:
            handle.remove()

    monkeypatch.setattr(hiera_mae.HieraMAETask, "loss_step", loss_step)
    return seen


@pytest.mark.parametrize("configured, expected, warned", [
    ([], "bf16", False),  # train.mixed_precision=auto (the default): the launcher's
    (["train.mixed_precision=auto"], "bf16", False),
    (["train.mixed_precision=no"], "no", True),  # set in the config: the config's, and both are named
])
def test_launcher_mixed_precision_wins_unless_the_config_sets_one(configured, expected, warned, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    dtypes = _linear_output_dtypes(monkeypatch)
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(run), *TINY_MAE, "train.max_steps=2",
                                 "train.cpu=true", "recon_images=0", *configured])
    assert result.exit_code == 0, result.output
    assert AcceleratorState().mixed_precision == expected
    assert json.loads((run / "env.json").read_text())["mixed_precision"] == expected
    assert set(dtypes) == {torch.bfloat16 if expected == "bf16" else torch.float32}
    warning = " ".join(result.stderr.split())
    assert (("train.mixed_precision=no (config) overrides the launcher's mixed precision bf16" in warning)
            == warned), warning


@pytest.mark.parametrize("configured, launcher, chosen, warned", [
    ("auto", None, None, False),  # the Accelerator reads ACCELERATE_MIXED_PRECISION, else "no"
    ("auto", "fp16", None, False),
    ("bf16", None, "bf16", False),
    ("bf16", "BF16", "bf16", False),
    ("bf16", "no", "bf16", False),  # accelerate launch exports "no" whenever --mixed_precision is not given
    ("no", "bf16", "no", True),
    ("fp16", "bf16", "fp16", True),
])
def test_mixed_precision_choice(configured, launcher, chosen, warned, capsys):
    assert mixed_precision(configured, launcher) == chosen
    err = capsys.readouterr().err
    assert bool(err) == warned
    if warned:
        assert f"train.mixed_precision={configured}" in err and launcher in err


def _recorded_compile(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = torch.nn.Module.compile

    def compile(self, *args, **kwargs):
        calls.append({"model": type(self).__name__, **kwargs})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile)
    return calls


def test_compile_trains_a_tiny_preset(tmp_path, monkeypatch):
    """aot_eager: dynamo traces forward and backward (graph breaks included) without generating kernels,
    which keeps the test to seconds; the inductor variant below generates C++ kernels (about a minute)."""
    torch._dynamo.reset()
    calls = _recorded_compile(monkeypatch)
    run = tmp_path / "run"
    result = runner.invoke(app, ["finetune", "hiera", "--run-dir", str(run), "--json", *TINY_CLS,
                                 "train.max_steps=2", "train.compile=true", "train.compile_backend=aot_eager"])
    assert result.exit_code == 0, result.output
    assert calls == [{"model": "Hiera", "backend": "aot_eager"}]
    assert np.isfinite(json.loads(result.stdout)["metrics"]["loss"])
    state, _ = read_weights(latest_checkpoint(run / "checkpoints"))
    assert not any(k.startswith("_orig_mod") for k in state)  # compiled in place: checkpoints load anywhere


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile's inductor backend needs a C++ compiler for CPU kernels")
def test_compile_with_inductor_on_cpu(tmp_path):
    torch._dynamo.reset()
    result = runner.invoke(app, ["finetune", "hiera", "--run-dir", str(tmp_path / "run"), "--json", *TINY_CLS,
                                 "train.max_steps=2", "train.compile=true"])
    assert result.exit_code == 0, result.output
    assert np.isfinite(json.loads(result.stdout)["metrics"]["loss"])


def test_unknown_compile_backend_is_a_config_error():
    result = runner.invoke(app, ["finetune", "hiera", "--dry-run", "train.compile=true",
                                 "train.compile_backend=inductr"])
    assert result.exit_code == 2
    assert "train.compile_backend: got 'inductr'; allowed values:" in " ".join(result.output.split())
