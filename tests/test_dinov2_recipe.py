"""`percli pretrain dinov2`: config, EMA/temperature schedules, masks, a short run and exact resume."""

from __future__ import annotations

import json
import math
import signal

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file
from typer.testing import CliRunner

from percli.cli import app
from percli.recipes.dinov2 import LossSection, cosine_momentum, ema_update, sample_masks, teacher_temperature
from tests.conftest import sigterm_after_step

runner = CliRunner()
SHORT = ["data.embedded_size=48", "train.batch_size=8", "train.log_every=1", "train.num_workers=0",
         "crops.local_number=2", "knn_k=5"]


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dry_run_shows_official_defaults_and_tiny_preset():
    result = runner.invoke(app, ["pretrain", "dinov2", "--dry-run", "--preset", "none"])
    assert result.exit_code == 0, result.output
    for text in ("n_prototypes: 65536", "momentum_teacher: 0.992", "koleo_weight: 0.1", "global_size: 224"):
        assert text in result.output
    tiny = runner.invoke(app, ["pretrain", "dinov2", "--dry-run"])
    assert tiny.exit_code == 0 and "global_size: 32" in tiny.output


def test_ema_update_and_schedules_by_hand():
    teacher, student = nn.Linear(2, 1, bias=False), nn.Linear(2, 1, bias=False)
    teacher.weight.data = torch.tensor([[1.0, 2.0]])
    student.weight.data = torch.tensor([[3.0, -2.0]])
    ema_update(teacher, student, 0.75)  # 0.75 * t + 0.25 * s
    assert torch.allclose(teacher.weight, torch.tensor([[1.5, 1.0]]))
    assert cosine_momentum(0, 100, 0.992) == pytest.approx(0.992)
    assert cosine_momentum(50, 100, 0.992) == pytest.approx(0.996)
    assert cosine_momentum(100, 100, 0.992) == pytest.approx(1.0)
    loss = LossSection()  # 0.04 -> 0.07 over the first 30% of the steps
    assert teacher_temperature(0, 100, loss) == pytest.approx(0.04)
    assert teacher_temperature(15, 100, loss) == pytest.approx(0.055)
    assert teacher_temperature(60, 100, loss) == pytest.approx(0.07)


def test_masks_cover_half_the_images_at_official_ratios():
    torch.manual_seed(0)
    masks = sample_masks(16, 8, 8, LossSection())
    per_image = masks.sum(1)
    assert (per_image > 0).sum() == 8  # mask_sample_probability 0.5
    ratios = per_image[per_image > 0].float() / 64
    assert ratios.min() >= 0.05 and ratios.max() <= 0.5 + 1e-6 and not math.isclose(ratios.min(), ratios.max())


def test_short_run_checkpoints_teacher_and_resumes_exactly(tmp_path, monkeypatch):
    full = runner.invoke(app, ["pretrain", "dinov2", "--run-dir", str(tmp_path / "full"), *SHORT,
                               "train.max_steps=4", "train.ckpt_every=2"])
    assert full.exit_code == 0, full.output
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["status"] == "completed" and set(summary["knn"]) >= {"knn_teacher_top1", "knn_random_init_top1"}
    probe = summary["linear_probe"]
    assert 0.0 <= probe["linear_teacher_top1"] <= probe["linear_teacher_top5"] <= 1.0
    state = load_file(tmp_path / "full" / "checkpoints" / "step_0000004" / "model.safetensors")
    assert "teacher.backbone.cls_token" in state and "student.dino_head.last_layer.weight_v" in state
    assert int(state["ema_steps"]) == 3 and int(state["micro_batches"]) == 4  # step 4's update is applied next
    assert not torch.equal(state["teacher.backbone.blocks.0.attn.qkv.weight"],
                           state["student.backbone.blocks.0.attn.qkv.weight"])
    assert state["dino_loss.center"].abs().sum() > 0

    undo = sigterm_after_step(monkeypatch, 2)
    part = tmp_path / "part"
    first = runner.invoke(app, ["pretrain", "dinov2", "--run-dir", str(part), *SHORT, "train.max_steps=4",
                                "train.ckpt_every=2"])
    assert first.exit_code == 128 + signal.SIGTERM, first.output
    undo()
    resumed = runner.invoke(app, ["pretrain", "dinov2", "--run-dir", str(part), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert _losses(part) == pytest.approx(_losses(tmp_path / "full"), rel=1e-5)


@pytest.mark.parametrize("freeze_epochs", [100.0, 0.0])
def test_frozen_last_layer_keeps_the_prototypes_while_the_rest_learns(tmp_path, freeze_epochs):
    """During the frozen epochs the student's prototypes keep their directions (AdamW's decay only rescales
    the weight-normalised `weight_v`), so the EMA teacher's stay parallel to them; the MLP still trains."""
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "dinov2", "--run-dir", str(run), *SHORT, "train.max_steps=3",
                                 f"freeze_last_layer_epochs={freeze_epochs}"])
    assert result.exit_code == 0, result.output
    state = load_file(run / "checkpoints" / "step_0000003" / "model.safetensors")

    def rows(part: str) -> torch.Tensor:
        return nn.functional.normalize(state[f"{part}.dino_head.last_layer.weight_v"], dim=1)

    assert not torch.equal(state["student.dino_head.mlp.0.weight"], state["teacher.dino_head.mlp.0.weight"])
    same = torch.allclose(rows("student"), rows("teacher"), atol=1e-6)
    assert same == (freeze_epochs > 0)
