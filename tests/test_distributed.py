"""`accelerate launch` with two CPU processes (gloo) runs one data-parallel job."""

import json
import subprocess

from tests.conftest import PYTHON, TINY_MAE, free_port, subprocess_env


def test_accelerate_launch_two_cpu_processes(tmp_path):
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "true"
    # `--cpu --num_processes 2` would start ONE process; --multi_gpu with USE_CPU starts two on gloo.
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "pretrain", "hiera-mae", "--json", *TINY_MAE,
           "train.batch_size=4", "train.max_steps=4", "train.log_every=2", "recon_images=2"]
    # No --run-dir: rank 0 names the default run dir and both processes must agree on it.
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["effective_batch_size"] == 8
    assert summary["status"] == "completed" and summary["step"] == 4
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]  # rank 0 writes; no duplicated lines from rank 1
    assert (run / "checkpoints" / "step_0000004" / "model.safetensors").is_file()


def test_two_process_multilabel_eval_gathers_every_clip(tmp_path):
    """mAP needs every clip's scores: each rank scores its shard, the engine gathers them."""
    import numpy as np
    import soundfile as sf

    lines = []
    for i in range(7):  # odd count: the two shards differ in size
        t = np.arange(8000) / 16000
        sf.write(tmp_path / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t)).astype(np.float32), 16000)
        lines.append({"path": f"{i}.wav", "labels": ["a", "b"] if i % 3 == 0 else (["a"] if i % 2 else ["b"])})
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "finetune", "audio-mae", "--run-dir", str(tmp_path / "run"), "--json",
           "model.kwargs={embed_dim: 16, depth: 2, num_heads: 2}", "data.target_length=128", "data.num_mel_bins=64",
           f"data.source={manifest}", f"data.val_source={manifest}", "train.batch_size=2", "train.num_workers=0",
           "train.max_steps=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["multilabel"] is True
    assert summary["metrics"]["eval/count"] == 7 and 0 <= summary["metrics"]["eval/mAP"] <= 1


def test_two_process_clip_pretraining_gathers_the_global_batch(tmp_path):
    """`percli pretrain clip` under accelerate launch: InfoNCE over both ranks' features, zero-shot eval gathered."""
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "pretrain", "clip", "--run-dir", str(tmp_path / "run"), "--json",
           "train.batch_size=8", "train.num_workers=0", "data.embedded_size=64", "train.log_every=2",
           "optim.ref_batch_size=16", "train.max_steps=4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["effective_batch_size"] == 16 and summary["step"] == 4
    metrics = summary["metrics"]
    assert 0.0 <= metrics["eval/zero_shot_top1"] <= 1.0 and metrics["eval/chance_top1"] == 0.1
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4]  # one line per log step: rank 0 writes
