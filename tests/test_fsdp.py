"""FSDP (`train.fsdp=true`) with two CPU processes (gloo): the same losses and evaluation as DDP, full weights
in model.safetensors, each rank's optimizer shard beside them, and `--resume` exact from either layout."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from percli.core import checkpoint as ckpt
from percli.core import scale
from percli.core.rundir import read_metrics
from tests.conftest import PYTHON, TINY_CLS, TINY_MAE, free_port, subprocess_env

MAE = [*TINY_MAE, "train.batch_size=4", "train.max_steps=6", "train.ckpt_every=3", "train.log_every=1",
       "recon_images=2"]


def launch(verb: str, method: str, run: Path, *args: str, resume: bool = False) -> dict:
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", verb, method, "--run-dir", str(run), "--json", *(["--resume"] if resume else []),
           *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def losses(run: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["lr"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def test_fsdp_trains_as_ddp_saves_full_weights_and_resumes_exactly(tmp_path):
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    summary = launch("pretrain", "hiera-mae", fsdp, *MAE, "train.fsdp=true")
    launch("pretrain", "hiera-mae", ddp, *MAE)
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert losses(fsdp) == losses(ddp)  # the same global batch and gradients: identical losses

    step3 = fsdp / "checkpoints" / "step_0000003"
    assert sorted(p.name for p in step3.iterdir()) == ["model.safetensors", "optimizer.rank0.safetensors",
                                                       "optimizer.rank1.safetensors", "trainer_state.json"]
    sharded, replicated = ckpt.load_checkpoint(step3), ckpt.load_checkpoint(ddp / "checkpoints" / "step_0000003")
    assert sharded["optimizer"] is None and sharded["trainer_state"]["optimizer_shards"] == 2
    # model.safetensors holds whole tensors, equal to DDP's (not one rank's shard)
    assert {k: v.shape for k, v in sharded["model"].items()} == {k: v.shape for k, v in replicated["model"].items()}
    assert all(torch.equal(sharded["model"][k], replicated["model"][k]) for k in replicated["model"])
    # the two shards put together are DDP's optimizer state
    shards = [ckpt.read_optimizer(step3 / ckpt.optimizer_file(r)) for r in range(2)]
    assert any(s["state"][0]["exp_avg"].shape != replicated["optimizer"]["state"][0]["exp_avg"].shape for s in shards)
    whole = scale.full_optimizer_state(shards)
    for pid, state in replicated["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.allclose(whole["state"][pid][name], value, atol=1e-7), (pid, name)

    # a crash after step 3: each rank resumes from its own shard; steps 4-6 repeat the uninterrupted run
    expected = losses(fsdp)
    shutil.rmtree(fsdp / "checkpoints" / "step_0000006")
    launch("pretrain", "hiera-mae", fsdp, resume=True)
    assert losses(fsdp) == expected

    # a DDP checkpoint resumed with FSDP (the whole optimizer state cut to each rank's rows): exact too
    shutil.rmtree(ddp / "checkpoints" / "step_0000006")
    launch("pretrain", "hiera-mae", ddp, "train.fsdp=true", resume=True)
    assert losses(ddp) == expected


def test_fsdp_evaluation_with_uneven_shards_and_grad_checkpointing_matches_ddp(tmp_path):
    """13 evaluation images over 2 ranks in batches of 2: 4 and 3 batches; the short rank runs a stand-in
    forward (FSDP's collectives) whose result is not counted."""
    args = [*TINY_CLS, "data.embedded_size=52", "train.batch_size=2", "train.max_steps=4", "train.eval_every=2",
            "train.log_every=2"]
    sharded = launch("finetune", "hiera", tmp_path / "fsdp", *args, "train.fsdp=true", "model.grad_checkpointing=true")
    plain = launch("finetune", "hiera", tmp_path / "ddp", *args)
    assert sharded["metrics"]["eval/count"] == plain["metrics"]["eval/count"] == 13
    runs = (tmp_path / "fsdp", tmp_path / "ddp")
    evals = [[value for r in read_metrics(run / "metrics.jsonl") if "eval/loss" in r
              for value in (r["step"], r["eval/loss"], r["eval/top1"])] for run in runs]
    assert len(evals[0]) == 6 and evals[0] == pytest.approx(evals[1], abs=1e-6)
    flat = [[value for row in losses(run) for value in row] for run in runs]
    assert flat[0] == pytest.approx(flat[1], abs=1e-6)


def test_dim0_rows_follow_torch_chunk():
    for rows in (1, 3, 7, 8):
        for world in (1, 2, 3, 4):
            chunks = torch.arange(rows).chunk(world)
            for rank in range(world):
                start, length = scale.dim0_rows(rows, world, rank)
                got = torch.arange(rows).narrow(0, start, length)
                want = chunks[rank] if rank < len(chunks) else torch.arange(0)
                assert torch.equal(got, want), (rows, world, rank)
