"""`percli pretrain dinov2` distillation (--preset distill-tiny) and high-resolution continuation (highres-tiny)."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import save_weights
from percli.core.config import ConfigError
from percli.core.optim import build_optimizer
from percli.jobs import get_job
from percli.models.dinov2 import resample_pos_table
from percli.recipes.dinov2 import DINOv2Task
from tests.conftest import sigterm_after_step

runner = CliRunner()
SHORT = ["data.embedded_size=48", "train.batch_size=8", "train.log_every=1", "train.num_workers=0",
         "crops.local_number=2", "knn_k=5"]
HEAD = ["head.n_prototypes=32", "head.hidden_dim=16", "head.bottleneck_dim=8"]
TEACHER = ["model.kwargs.embed_dim=16", "model.kwargs.depth=1", "model.kwargs.num_heads=2", *HEAD]
STUDENT = ["model.kwargs.embed_dim=8", "model.kwargs.depth=1", "model.kwargs.num_heads=2", *HEAD]


def _config(preset: str, *overrides: str):
    return get_job("pretrain", "dinov2").resolve_config(preset, overrides=[*SHORT, *overrides])


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> str:
    """A `pretrain dinov2` checkpoint file of a tiny model (its EMA teacher and heads at init)."""
    task = DINOv2Task(_config("tiny", *TEACHER))
    torch.manual_seed(0)
    meta = task.build_model()
    path = tmp_path_factory.mktemp("teacher") / "model.safetensors"
    save_weights(path, meta.state_dict(), task.model_meta())
    return str(path)


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _batch(task: DINOv2Task) -> dict:
    dataset = task.train_dataset()
    return task.collate([dataset[i] for i in range(4)])


def test_distill_teacher_is_frozen_and_student_trains_unmasked_without_drop_path(teacher_file):
    task = DINOv2Task(_config("distill-tiny", *STUDENT, f"model.teacher={teacher_file}"))
    torch.manual_seed(0)
    meta = task.build_model().train()
    teacher = meta.target_network(torch.device("cpu"))
    assert teacher is not meta.teacher and not teacher.training and not meta.teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("_distill") or "distill" in k for k in meta.state_dict())  # never saved
    assert all(block.drop_path_rate == 0.0 for block in meta.student["backbone"].blocks)
    saved = load_file(teacher_file)
    optimizer = build_optimizer(meta, task.cfg.optim, 1e-2)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    assert not in_optimizer & {id(p) for p in meta.teacher.parameters()}

    seen_masks = []
    backbone = meta.student["backbone"]
    prepare = backbone.prepare_tokens_with_masks
    backbone.prepare_tokens_with_masks = lambda x, masks=None: seen_masks.append(masks) or prepare(x, masks)
    batch = _batch(task)
    student_before = backbone.blocks[0].attn.qkv.weight.detach().clone()
    for _ in range(2):
        out = task.loss_step(meta, batch)
        out["loss"].backward()
        # every trainable parameter gets a gradient (DDP needs no unused ones); the mask token is frozen
        assert all(p.grad is not None for p in meta.parameters() if p.requires_grad)
        assert not backbone.mask_token.requires_grad
        optimizer.step()
        optimizer.zero_grad()
    assert seen_masks and all(m is None for m in seen_masks)
    assert out["ibot_loss"] > 0  # on every patch of the global crops, no masks needed
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, saved[f"teacher.{key}"]), key
    assert not torch.equal(backbone.blocks[0].attn.qkv.weight, student_before)


def test_ema_teacher_stays_in_eval_mode():
    meta = DINOv2Task(_config("tiny", *TEACHER)).build_model().train()
    assert meta.student.training and not meta.teacher.training  # no drop-path in the targets


@pytest.mark.parametrize("overrides, message", [
    ([], "model.teacher: not set"),
    (["model.teacher=/no/such/run"], "does not exist"),
    (["model.kwargs.drop_path_rate=0.1", "model.teacher=."], "without stochastic depth"),
])
def test_distill_config_errors_on_dry_run(overrides, message):
    result = runner.invoke(app, ["pretrain", "dinov2", "--preset", "distill-tiny", "--dry-run", *overrides])
    assert result.exit_code == 2 and message in result.output, result.output


def test_distill_refuses_incompatible_teachers(teacher_file, tmp_path):
    with pytest.raises(ConfigError, match="32 prototypes.*student's head 256"):
        DINOv2Task(_config("distill-tiny", *STUDENT, f"model.teacher={teacher_file}",
                           "head.n_prototypes=256")).build_model()
    with pytest.raises(ConfigError, match="patch grid"):
        DINOv2Task(_config("distill-tiny", *STUDENT, f"model.teacher={teacher_file}",
                           "model.kwargs.patch_size=8")).build_model()
    release = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 8)}, release)
    with pytest.raises(ConfigError, match="backbones without the DINO/iBOT heads"):
        DINOv2Task(_config("distill-tiny", *STUDENT, f"model.teacher={release}")).build_model()
    classifier = tmp_path / "classifier.safetensors"
    save_weights(classifier, {"w": torch.zeros(1)}, {"name": "dinov2_vits14", "task": "dinov2_classify"})
    with pytest.raises(ConfigError, match="dinov2_classify checkpoint"):
        DINOv2Task(_config("distill-tiny", *STUDENT, f"model.teacher={classifier}")).build_model()


def test_distill_run_saves_the_student_ema_and_resumes_exactly(teacher_file, tmp_path, monkeypatch):
    args = ["pretrain", "dinov2", "--preset", "distill-tiny", *SHORT, *STUDENT, f"model.teacher={teacher_file}",
            "train.max_steps=4", "train.ckpt_every=2"]
    full = runner.invoke(app, [*args, "--run-dir", str(tmp_path / "full")])
    assert full.exit_code == 0, full.output
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert {"knn_teacher_top1", "knn_distill_teacher_top1"} <= set(summary["knn"])
    state = load_file(tmp_path / "full" / "checkpoints" / "step_0000004" / "model.safetensors")
    assert state["teacher.backbone.pos_embed"].shape[-1] == 8  # the student's EMA, not the frozen teacher
    assert not any("distill" in k for k in state)

    undo = sigterm_after_step(monkeypatch, 2)
    part = tmp_path / "part"
    first = runner.invoke(app, [*args, "--run-dir", str(part)])
    assert first.exit_code == 128 + signal.SIGTERM, first.output
    undo()
    resumed = runner.invoke(app, ["pretrain", "dinov2", "--run-dir", str(part), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert _losses(part) == pytest.approx(_losses(tmp_path / "full"), rel=1e-5)


def test_highres_continues_the_run_at_the_new_resolution(teacher_file, tmp_path):
    task = DINOv2Task(_config("highres-tiny", f"model.init={teacher_file}"))
    meta = task.build_model()
    saved = load_file(teacher_file)
    for part in ("student", "teacher"):
        for key, value in getattr(meta, part).state_dict().items():
            if key != "backbone.pos_embed":
                assert torch.equal(value, saved[f"{part}.{key}"]), key
    # 32 -> 64 px with patch 4: the 8x8 table resampled to 16x16, as the official interpolation
    expected = resample_pos_table(saved["student.backbone.pos_embed"], 16, 16, 0.1)
    assert torch.allclose(meta.student["backbone"].pos_embed, expected)
    assert torch.equal(meta.dino_loss.center, saved["dino_loss.center"]) and int(meta.ema_steps) == 0
    assert _batch(task)["global_crops"].shape[-2:] == (64, 64)

    result = runner.invoke(app, ["pretrain", "dinov2", "--preset", "highres-tiny", *SHORT, "train.max_steps=1",
                                 f"model.init={teacher_file}", "--run-dir", str(tmp_path / "hr")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "hr" / "summary.json").read_text())["status"] == "completed"
    state = load_file(tmp_path / "hr" / "checkpoints" / "step_0000001" / "model.safetensors")
    assert state["student.backbone.pos_embed"].shape == (1, 1 + 16 * 16, 16)
