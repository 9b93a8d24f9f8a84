"""DINOv2 across two CPU processes (gloo): the loss statistics are global, and a launched run trains.

Each rank holds half of a batch. The DINO/iBOT centers and the Sinkhorn-Knopp assignments must equal
what one process computes on the whole batch; otherwise a multi-GPU run would train a different model.
"""

import json
import os
import subprocess

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from percli.recipes.dinov2_losses import DINOLoss, iBOTPatchLoss, sinkhorn_knopp
from tests.conftest import PYTHON, free_port, subprocess_env

K = 6


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, K, generator=g) * 3, torch.randn(10, K, generator=g) * 3  # cls [8, K], patches [10, K]


def _single_process() -> dict[str, torch.Tensor]:
    cls, patches = _batch()
    dino, ibot = DINOLoss(K, center_momentum=0.5), iBOTPatchLoss(K, center_momentum=0.5)
    for loss, logits in ((dino, cls), (ibot, patches)):
        loss.update_center(logits)
        loss.apply_center_update()
    return {"dino_center": dino.center.clone(), "ibot_center": ibot.center.clone(),
            "sk": sinkhorn_knopp(cls, 0.1, len(cls))}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cls, patches = _batch()
        cls_half, patch_half = cls.chunk(2)[rank], patches.chunk(2)[rank]
        dino, ibot = DINOLoss(K, center_momentum=0.5), iBOTPatchLoss(K, center_momentum=0.5)
        dino.update_center(cls_half)
        dino.apply_center_update()
        ibot.update_center(patch_half)
        ibot.apply_center_update()
        sk = sinkhorn_knopp(cls_half, 0.1, len(cls))
        torch.save({"dino_center": dino.center, "ibot_center": ibot.center, "sk": sk},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_centers_and_sinkhorn_over_two_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    ref = _single_process()
    for key in ("dino_center", "ibot_center"):  # (the official iBOT center divides by the local row count times
        for r in ranks:                          # the world size, so it is the global mean when ranks hold equal
            torch.testing.assert_close(r[key], ref[key])  # counts, as here; DDP then broadcasts rank 0's buffers)
    torch.testing.assert_close(torch.cat([r["sk"] for r in ranks]), ref["sk"])
    # Sanity: the per-rank statistics alone would differ.
    cls, _ = _batch()
    local = sinkhorn_knopp(cls.chunk(2)[0], 0.1, 4)
    assert not torch.allclose(local, ref["sk"][:4], atol=1e-3)


def test_accelerate_launch_two_process_dinov2_pretraining(tmp_path):
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "true"
    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "pretrain", "dinov2", "--run-dir", str(run), "--json",
           "train.batch_size=4", "train.num_workers=0", "data.embedded_size=40", "train.log_every=2",
           "train.max_steps=4", "train.ckpt_every=4", "crops.local_number=2", "optim.ref_batch_size=8"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["effective_batch_size"] == 8 and summary["step"] == 4
    knn = summary["knn"]
    assert 0.0 <= knn["knn_teacher_top1"] <= 1.0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4]
    assert (run / "checkpoints" / "step_0000004" / "model.safetensors").is_file()
