"""`percli finetune stmt`: the embedded figures and a manifest of the official preprocessed tensors, with
unreadable and ill-shaped sequences counted and skipped."""

import json

import numpy as np
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.embedded_mocap import EmbeddedMocap

runner = CliRunner()
TINY = ["data.frames=2", "data.points=96", "train.batch_size=4", "optim.ref_batch_size=4", "train.max_steps=2",
        "train.num_workers=0", "train.eval_every=2"]


def test_finetune_stmt_on_the_embedded_figures(tmp_path):
    result = runner.invoke(app, ["finetune", "stmt", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
                                 "data.embedded_size=16"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["step"] == 2 and summary["metrics"]["eval/count"] == 4


def test_a_manifest_of_official_tensors_with_bad_files_counted(tmp_path):
    data = EmbeddedMocap(num_sequences=8, frames=3, points=128)
    lines = []
    for i in range(8):
        seq = data[i]
        np.save(tmp_path / f"s{i}.npy", seq["points"].double().numpy())  # the official float64 [T, 2048, 3] layout
        np.savez(tmp_path / f"s{i}_geodist.npz", seq["geodist"].double().numpy())  # arr_0
        lines.append({"points": f"s{i}.npy", "geodist": f"s{i}_geodist.npz", "label": seq["label"]})
    (tmp_path / "s0.npy").write_bytes(b"\x93NUMPY truncated")
    np.save(tmp_path / "s1.npy", np.zeros((3, 10, 3)))  # too few points
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = runner.invoke(app, ["finetune", "stmt", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
                                 f"data.source={manifest}", f"data.val_source={manifest}"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["bad_inputs"]["count"] >= 2
    reasons = " ".join(f["reason"] for f in summary["bad_inputs"]["files"])
    assert "unreadable" in reasons and "need [>= 2, >= 96, 3]" in reasons


def test_pretrain_stmt_then_finetune_from_it(tmp_path):
    result = runner.invoke(app, ["pretrain", "stmt", "--run-dir", str(tmp_path / "pre"), "--json", *TINY,
                                 "data.embedded_size=8", "data.embedded_val_size=4"])
    assert result.exit_code == 0, result.output[-3000:]
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["eval/mvm"] > 0 and metrics["eval/ffp"] > 0
    result = runner.invoke(app, ["finetune", "stmt", "--run-dir", str(tmp_path / "ft"), "--json", *TINY,
                                 "data.embedded_size=8", f"model.checkpoint={tmp_path / 'pre'}"])
    assert result.exit_code == 0, result.output[-3000:]
    assert "mvm_head" in result.stderr and "left at init (mlp_head)" in result.stderr  # heads dropped, new classifier
    result = runner.invoke(app, ["pretrain", "stmt", "--run-dir", str(tmp_path / "bad"), *TINY,
                                 "pretext.mvm_weight=0", "pretext.ffp_weight=0"])
    assert result.exit_code != 0 and "pretext.mvm_weight" in result.output


def test_pretraining_reads_a_manifest_without_labels(tmp_path):
    data = EmbeddedMocap(num_sequences=4, frames=2, points=96)
    lines = []
    for i in range(4):
        np.save(tmp_path / f"s{i}.npy", data[i]["points"].numpy())
        np.savez(tmp_path / f"s{i}_geodist.npz", data[i]["geodist"].numpy())
        lines.append({"points": f"s{i}.npy", "geodist": f"s{i}_geodist.npz"})
    manifest = tmp_path / "all.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = runner.invoke(app, ["pretrain", "stmt", "--run-dir", str(tmp_path / "pre"), "--json", *TINY,
                                 f"data.source={manifest}"])
    assert result.exit_code == 0, result.output[-3000:]
    assert json.loads(result.stdout)["step"] == 2
    result = runner.invoke(app, ["finetune", "stmt", "--run-dir", str(tmp_path / "ft"), *TINY,
                                 f"data.source={manifest}"])
    assert result.exit_code != 0 and "label" in result.output


def test_two_processes_pretrain_with_the_dead_official_layers_frozen(tmp_path):
    """DDP without find_unused_parameters: every trainable parameter of the pretrainer gets a gradient."""
    import subprocess

    from tests.conftest import PYTHON, free_port, subprocess_env

    env = {**subprocess_env(), "ACCELERATE_USE_CPU": "true"}
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "pretrain", "stmt", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
           "data.embedded_size=8", "data.embedded_val_size=4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["step"] == 2
    assert summary["metrics"]["eval/count"] == 4  # the held-out sequences once, over both processes
