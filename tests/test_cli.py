import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from percli.cli import app
from percli.core.rundir import read_metrics
from tests.conftest import TINY_CLS, TINY_MAE

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_version_and_discovery():
    assert invoke("--help").exit_code == 0
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("percli ")
    models = invoke("ls", "models").stdout.split()
    for name in ("hiera_base_224", "hiera_huge_16x224", "mae_hiera_base_224", "mae_hiera_large_16x224"):
        assert name in models
    recipes = json.loads(invoke("ls", "recipes", "--json").stdout)
    assert {"percli pretrain hiera-mae", "percli finetune hiera", "percli eval classify"} <= {
        r["command"] for r in recipes}
    assert invoke("ls", "gadgets").exit_code == 2


def test_show_config_and_dry_run():
    shown = invoke("show-config", "hiera-mae", "--preset", "in1k", "--json")
    assert shown.exit_code == 0
    cfg = json.loads(shown.stdout)
    assert cfg["model"]["name"] == "mae_hiera_base_224" and cfg["optim"]["lr"] == 8e-4
    dry = invoke("pretrain", "hiera-mae", "--dry-run", "--json", "train.max_steps=7")
    assert dry.exit_code == 0 and json.loads(dry.stdout)["train"]["max_steps"] == 7
    assert invoke("show-config", "no-such-method").exit_code == 2
    shared = invoke("show-config", "audio-mae")  # pretrain and finetune both have it
    assert shared.exit_code == 2 and "--verb finetune" in shared.output
    ft = json.loads(invoke("show-config", "audio-mae", "--verb", "finetune", "--json").stdout)
    assert ft["model"]["name"] == "audiomae_vit_base_patch16" and ft["optim"]["layer_decay"] == 0.75


def test_bad_config_names_key_and_fix(tmp_path):
    result = invoke("pretrain", "hiera-mae", "--dry-run", "train.max_step=5")
    assert result.exit_code == 2
    assert "train.max_step: unknown key" in result.output and "train.max_steps" in result.output
    result = invoke("pretrain", "hiera-mae", "--dry-run", "train.mixed_precision=fp8")
    assert result.exit_code == 2 and "'bf16'" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    result = invoke("pretrain", "hiera-mae", "--config", bad, "--dry-run")
    assert result.exit_code == 2 and "optim.lrr: unknown key" in result.output
    result = invoke("pretrain", "hiera-mae", "--run-dir", tmp_path / "r", "model.name=mae_hiera_gigantic_224")
    assert result.exit_code == 2 and "percli ls models" in result.output


def test_pretrain_writes_the_run_dir(tmp_path):
    run = tmp_path / "run"
    result = invoke("pretrain", "hiera-mae", "--run-dir", run, "--json", *TINY_MAE,
                    "train.max_steps=6", "train.log_every=2", "train.ckpt_every=3")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["step"] == 6
    assert summary == json.loads((run / "summary.json").read_text())
    for name in ("config.yaml", "env.json", "metrics.jsonl", "reconstructions.png"):
        assert (run / name).is_file(), name
    lines = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in lines] == [2, 4, 6]
    assert all({"step", "loss", "lr"} <= set(r) for r in lines)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000003", "step_0000006"]
    assert json.loads((run / "env.json").read_text())["world_size"] == 1
    # A non-empty run dir is refused unless --resume or --overwrite.
    again = invoke("pretrain", "hiera-mae", "--run-dir", run, *TINY_MAE, "train.max_steps=2")
    assert again.exit_code == 2 and "--overwrite" in again.output
    over = invoke("pretrain", "hiera-mae", "--run-dir", run, "--overwrite", *TINY_MAE, "train.max_steps=2")
    assert over.exit_code == 0 and json.loads((run / "summary.json").read_text())["step"] == 2


def test_loss_falls_on_embedded_data(tmp_path):
    result = invoke("pretrain", "hiera-mae", "--run-dir", tmp_path / "r", *TINY_MAE, "train.max_steps=60",
                    "train.log_every=5", "optim.lr=3e-3", "optim.ref_batch_size=8", "recon_images=0")
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")]
    assert losses[-1] < 0.8 * losses[0], losses


def _image_folder(root, corrupt: bool):
    for cls, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40 + i, 40), colour).save(root / cls / f"{i}.png")
    if corrupt:
        (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return root


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    data = _image_folder(tmp_path / "data", corrupt=True)
    result = invoke("pretrain", "hiera-mae", "--run-dir", tmp_path / "r", "--json", *TINY_MAE,
                    f"data.source={data}", "train.batch_size=13", "train.max_steps=2", "recon_images=0")
    assert result.exit_code == 0, result.output
    bad = json.loads(result.stdout)["bad_inputs"]
    assert bad["count"] == 1 and bad["files"][0]["path"].endswith("broken.jpg")


def test_finetune_from_mae_checkpoint_then_eval(tmp_path):
    pre = tmp_path / "pre"
    assert invoke("pretrain", "hiera-mae", "--run-dir", pre, *TINY_MAE, "train.max_steps=2",
                  "recon_images=0").exit_code == 0
    ckpt = next((pre / "checkpoints").iterdir())
    ft = tmp_path / "ft"
    result = invoke("finetune", "hiera", "--run-dir", ft, "--json", *TINY_CLS, f"model.checkpoint={ckpt}",
                    "train.max_steps=4", "train.eval_every=2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {"eval/top1", "eval/top5", "eval/loss"} <= set(summary["metrics"])
    from percli.core.data import EmbeddedShapesDataset

    assert summary["classes"] == EmbeddedShapesDataset().classes  # the head has the embedded set's 10 classes
    final = next(iter(sorted((ft / "checkpoints").iterdir())[-1:]))
    ev = invoke("eval", "classify", "--run-dir", tmp_path / "ev", "--json", f"checkpoint={final}",
                "data.embedded_size=64", "train.batch_size=8", "train.num_workers=0")
    assert ev.exit_code == 0, ev.output
    metrics = json.loads(ev.stdout)["metrics"]
    assert metrics["count"] == 16
    assert metrics["top1"] == pytest.approx(summary["metrics"]["eval/top1"])


def test_eval_needs_a_checkpoint(tmp_path):
    result = invoke("eval", "classify", "--run-dir", tmp_path / "ev")
    assert result.exit_code == 2 and "checkpoint=PATH" in result.output


def test_weight_decay_schedule_reaches_the_steps(tmp_path):
    from percli.core.optim import lr_at
    result = invoke("pretrain", "hiera-mae", "--run-dir", tmp_path / "r", *TINY_MAE, "train.max_steps=6",
                    "train.log_every=2", "optim.weight_decay=0.05", "optim.weight_decay_end=0.4", "recon_images=0")
    assert result.exit_code == 0, result.output
    logged = [r["weight_decay"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    assert logged == pytest.approx([lr_at(step, 6, 0.05, 0, 0.4) for step in (1, 3, 5)])  # each window's last step
