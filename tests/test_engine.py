"""Engine behaviour the CLI tests do not reach: NaN guard, mixed precision, accumulation, video."""

import json

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import list_checkpoints, read_weights
from percli.core.rundir import read_metrics
from percli.recipes import hiera_mae
from tests.conftest import TINY_MAE

runner = CliRunner()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_step = hiera_mae.HieraMAETask.loss_step
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += 1
        out = real_step(self, model, batch)
        return {"loss": out["loss"] * float("nan")} if calls["n"] == 4 else out

    monkeypatch.setattr(hiera_mae.HieraMAETask, "loss_step", poisoned)
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(run), *TINY_MAE, "train.max_steps=10",
                                 "train.ckpt_every=2", "train.log_every=1", "recon_images=0"])
    assert result.exit_code == 3, result.output
    assert "non-finite" in json.loads((run / "summary.json").read_text())["error"]
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_0000002"]
    assert all(np.isfinite(r["loss"]) for r in read_metrics(run / "metrics.jsonl"))


def test_bf16_and_grad_accumulation(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(run), "--json", *TINY_MAE,
                                 "train.max_steps=3", "train.mixed_precision=bf16", "train.grad_accum_steps=2",
                                 "train.batch_size=4", "train.grad_clip=1.0", "recon_images=0"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["effective_batch_size"] == 8 and np.isfinite(summary["metrics"]["loss"])


def _write_clip(path, frames=24, size=64, seed=0):
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            img = np.full((size, size, 3), 40, np.uint8)
            x = (t * 2) % (size - 16)
            img[20:36, x:x + 16] = rng.integers(100, 255, 3)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


VIDEO_KWARGS = "input_size: [8, 64, 64], embed_dim: 8, num_heads: 1, stages: [1, 1, 1, 1]"


def test_video_mae_pretraining_then_video_classification(tmp_path):
    data = tmp_path / "clips"
    for cls, seed in (("class_a", 0), ("class_b", 10)):
        (data / cls).mkdir(parents=True)
        for i in range(2):
            _write_clip(data / cls / f"{i}.mp4", seed=seed + i)
    (data / "class_a" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    kwargs = (f"model.kwargs={{{VIDEO_KWARGS}, q_pool: 2, decoder_embed_dim: 16, decoder_depth: 1, "
              "decoder_num_heads: 1}")
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(run), "--json",
                                 "model.name=mae_hiera_base_16x224", kwargs, f"data.source={data}",
                                 "data.num_frames=8", "data.sampling_rate=2", "train.batch_size=2",
                                 "train.num_workers=0", "train.max_steps=3"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["bad_inputs"]["count"] == 1 and summary["bad_inputs"]["files"][0]["path"].endswith("broken.mp4")
    assert torch.isfinite(torch.tensor(summary["metrics"]["loss"]))
    _, meta = read_weights(summary["checkpoint"])
    assert meta["mask_ratio"] == 0.9  # the video default, as in the paper

    ft = runner.invoke(app, ["finetune", "hiera", "--run-dir", str(tmp_path / "ft"), "--json",
                             "model.name=hiera_base_16x224", f"model.kwargs={{{VIDEO_KWARGS}}}",
                             f"model.checkpoint={summary['checkpoint']}", f"data.source={data}",
                             f"data.val_source={data}", "data.num_frames=8", "data.sampling_rate=2",
                             "train.batch_size=2", "train.num_workers=0", "train.max_steps=2", "mixup_prob=0.0"])
    assert ft.exit_code == 0, ft.output
    result = json.loads(ft.stdout)
    assert result["classes"] == ["class_a", "class_b"] and result["metrics"]["eval/count"] == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_grad_scaling_on_gpu(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(run), "--json", *TINY_MAE,
                                 "train.max_steps=3", "train.mixed_precision=fp16", "recon_images=0"])
    assert result.exit_code == 0, result.output
    state = json.loads((run / "checkpoints" / "step_0000003" / "trainer_state.json").read_text())
    assert state["grad_scaler"] is not None  # fp16 runs save the loss-scaler state for resume


def test_an_evaluation_that_fails_leaves_no_loader_worker_behind():
    # workers ignore SIGTERM (the main process checkpoints on it), so one left running would hang the exit
    import multiprocessing

    from percli.core import engine
    from percli.core.config import TrainConfig

    class Failing:
        def eval_step(self, model, batch):
            raise RuntimeError("eval_step broke")

    train = TrainConfig(batch_size=2, num_workers=1, cpu=True)
    data = [{"x": torch.zeros(2)} for _ in range(6)]
    try:  # the exception (and its traceback's frames, holding the loader) is kept, as a CLI handler keeps it
        engine.evaluate(Failing(), torch.nn.Linear(2, 2), data, engine.make_accelerator(train), train,
                        engine.BadInputLog())
    except RuntimeError as err:
        assert "eval_step broke" in str(err) and err.__traceback__ is not None
        assert multiprocessing.active_children() == []
    else:
        pytest.fail("the failing eval_step did not raise")
