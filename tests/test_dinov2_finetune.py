"""`percli finetune dinov2`: the hub classifier layout, resolution change by interpolation, checkpoints."""

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from percli.cli import app
from percli.models import create_model
from percli.models.dinov2 import DinoLinearClassifier, DinoVisionTransformer, load_official_state

runner = CliRunner()
TINY = dict(patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=1.0)


@pytest.mark.parametrize("registers", [False, True])
def test_resampled_table_gives_the_features_the_release_interpolates_on_the_fly(registers):
    torch.manual_seed(0)
    extra = dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0) if registers else {}
    release = DinoVisionTransformer(img_size=70, **TINY, **extra).eval()  # a 5 x 5 position grid
    classifier = DinoLinearClassifier(DinoVisionTransformer(img_size=42, **TINY, **extra), num_classes=3).eval()
    report = load_official_state(classifier, release.state_dict())
    assert classifier.backbone.pos_embed.shape[1] == 1 + 3 * 3
    assert report.missing == ["linear_head.weight", "linear_head.bias"]  # a backbone file: new head
    x = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        want = release.forward_features(x)["x_norm_clstoken"]
        got = classifier.backbone.forward_features(x)["x_norm_clstoken"]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_classifier_names_logits_and_head_round_trip():
    torch.manual_seed(0)
    model = create_model("dinov2_vits14", num_classes=5, **{**TINY, "img_size": 28})
    assert isinstance(model, DinoLinearClassifier)
    state = model.state_dict()
    assert "backbone.cls_token" in state and state["linear_head.weight"].shape == (5, 64)  # [cls, mean patch]
    x = torch.randn(3, 3, 28, 28)
    out = model.backbone.forward_features(x)
    want = torch.cat([out["x_norm_clstoken"], out["x_norm_patchtokens"].mean(1)], -1) @ state["linear_head.weight"].T
    torch.testing.assert_close(model(x), want + state["linear_head.bias"])
    copy = create_model("dinov2_vits14", num_classes=5, **{**TINY, "img_size": 28})
    report = load_official_state(copy, state)
    assert report.missing == [] and not report.head_reset
    torch.testing.assert_close(copy(x), model(x))
    other = create_model("dinov2_vits14", num_classes=7, **{**TINY, "img_size": 28})
    assert load_official_state(other, state).head_reset  # another class count: the head starts fresh


def test_a_training_checkpoint_gives_its_teacher_backbone():
    torch.manual_seed(0)
    teacher, student = DinoVisionTransformer(img_size=28, **TINY), DinoVisionTransformer(img_size=28, **TINY)
    state = {**{f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()},
             **{f"student.backbone.{k}": v for k, v in student.state_dict().items()},
             "student.dino_head.last_layer.weight_v": torch.zeros(4, 4)}
    fresh = DinoVisionTransformer(img_size=28, **TINY)
    report = load_official_state(fresh, state)
    assert report.source_format == "training checkpoint"
    for k, v in teacher.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_finetune_from_a_pretraining_checkpoint_then_eval_classify(tmp_path):
    kwargs = dict(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, init_values=1.0)
    torch.manual_seed(0)
    backbone = DinoVisionTransformer(**{**kwargs, "img_size": 16})  # pretrained at 16 px, finetuned at 32 px
    save_file({f"teacher.backbone.{k}": v.contiguous() for k, v in backbone.state_dict().items()},
              str(tmp_path / "pretrain.safetensors"))
    args = ["finetune", "dinov2", "--run-dir", str(tmp_path / "run"), "--json",
            f"model.checkpoint={tmp_path / 'pretrain.safetensors'}", "model.kwargs.embed_dim=32",
            "model.kwargs.depth=2", "model.kwargs.num_heads=2", "data.embedded_size=40", "train.max_steps=2",
            "train.eval_every=2", "train.log_every=1", "train.num_workers=0", "train.batch_size=8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and len(summary["classes"]) == 10
    assert "initial weights" in result.stderr and "linear_head" in result.stderr
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002"
    evaluated = runner.invoke(app, ["eval", "classify", "--json", "--run-dir", str(tmp_path / "eval"),
                                    f"checkpoint={ckpt}", "data.source=embedded",
                                    "data.embedded_size=40", "train.num_workers=0", "train.batch_size=8"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)["metrics"]
    assert metrics["count"] == summary["metrics"]["eval/count"]
    assert metrics["top1"] == pytest.approx(summary["metrics"]["eval/top1"])


def test_finetune_dinov2_refuses_other_models(tmp_path):
    result = runner.invoke(app, ["finetune", "dinov2", "--run-dir", str(tmp_path / "r"), "--preset", "none",
                                 "model.name=hiera_tiny_224"])
    assert result.exit_code != 0 and "dinov2_*" in result.output + result.stderr
