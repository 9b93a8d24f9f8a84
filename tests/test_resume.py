"""A run stopped by SIGTERM at step k and resumed logs exactly the uninterrupted run's losses."""

import json
import os
import signal

import pytest
from typer.testing import CliRunner

from percli.cli import app
from percli.core.rundir import read_metrics
from tests.conftest import TINY_MAE, sigterm_after_step

runner = CliRunner()
ARGS = [*TINY_MAE, "train.max_steps=12", "train.log_every=1", "train.ckpt_every=5", "recon_images=0",
        "data.embedded_size=44"]  # 5 full batches of 8 per epoch (+4 dropped): the stop falls mid-epoch 2
AUDIO_ARGS = ["model.kwargs={embed_dim: 16, depth: 2, num_heads: 2, decoder_embed_dim: 16, decoder_mode: 1, "
              "local_decoder_depth: 2, local_decoder_heads: 2, norm_pix_loss: true}", "data.target_length=128",
              "data.num_mel_bins=64", "data.embedded_size=44", "train.batch_size=8", "train.num_workers=0",
              "train.max_steps=12", "train.log_every=1", "train.ckpt_every=5", "recon_clips=0"]


@pytest.mark.parametrize("method,args", [("hiera-mae", ARGS), ("audio-mae", AUDIO_ARGS)])
def test_sigterm_checkpoints_and_resume_reproduces_uninterrupted_loss(tmp_path, monkeypatch, method, args):
    full = runner.invoke(app, ["pretrain", method, "--run-dir", str(tmp_path / "full"), *args])
    assert full.exit_code == 0, full.output

    stop_at = 7
    undo = sigterm_after_step(monkeypatch, stop_at)
    part = tmp_path / "part"
    stopped = runner.invoke(app, ["pretrain", method, "--run-dir", str(part), *args])
    assert stopped.exit_code == 128 + signal.SIGTERM, stopped.output
    summary = json.loads((part / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] == stop_at
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["step_0000005", "step_0000007"]
    undo()

    resumed = runner.invoke(app, ["pretrain", method, "--run-dir", str(part), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    expected = read_metrics(tmp_path / "full" / "metrics.jsonl")
    got = read_metrics(part / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 13))
    assert [r["loss"] for r in got] == [r["loss"] for r in expected]
    assert [r["lr"] for r in got] == [r["lr"] for r in expected]


def test_resume_after_kill_drops_metrics_past_the_checkpoint(tmp_path):
    """SIGKILL after step 7 loses steps 6-7 (last checkpoint: 5); resume redoes them, once each."""
    run = tmp_path / "run"
    first = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(run), *ARGS, "train.max_steps=7"])
    assert first.exit_code == 0
    # Simulate the kill: remove the final checkpoint (written at the end) as if the process died before it.
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_0000007")
    resumed = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(run), "--resume", "train.max_steps=9"])
    assert resumed.exit_code == 0, resumed.output
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 10))


def test_resume_needs_a_run(tmp_path):
    result = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(tmp_path / "nothing"), "--resume"])
    assert result.exit_code == 2 and "config.yaml" in result.output


def test_sigterm_to_the_process_group_with_loader_workers(tmp_path):
    """As SLURM preemption does: every process of the job (main + loader workers) gets SIGTERM."""
    import subprocess
    import time

    from tests.conftest import PYTHON, subprocess_env

    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "percli.cli", "pretrain", "hiera-mae", "--run-dir", str(run), *TINY_MAE,
           "train.num_workers=2", "train.max_steps=100000", "train.log_every=1", "train.ckpt_every=100000"]
    proc = subprocess.Popen(cmd, env=subprocess_env(), start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 3):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:  # never leave a 100000-step run behind when an assertion fails
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    step = summary["step"]
    assert summary["status"] == "interrupted" and step >= 3
    assert (run / "checkpoints" / f"step_{step:07d}" / "model.safetensors").is_file()
    resumed = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(run), "--resume",
                                  f"train.max_steps={step + 2}", "train.num_workers=0"])
    assert resumed.exit_code == 0, resumed.output
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, step + 3))
