"""AMVC (`percli.models.amvc`, `percli finetune amvc`): gradient reversal, the adversarial mask generator, the
EMA teacher's masked consistency, loading a video ViT, the embedded two-style domains and the command."""

import json

import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.embedded_motion import EmbeddedMotionClips
from percli.models import create_model
from percli.models.amvc import load_state, reverse_gradient, top_k_mask

runner = CliRunner()
TINY_VIT = dict(input_size=[4, 16, 16], patch_size=8, t_patch_size=2, embed_dim=32, depth=2, num_heads=2,
                num_classes=8)


def tiny_amvc(**kwargs):
    return create_model("amvc_vit_base_patch16_video", discriminator_dim=16, **{**TINY_VIT, **kwargs})


def test_gradient_reversal_negates_and_scales():
    x = torch.ones(3, requires_grad=True)
    (reverse_gradient(x, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [-0.5, -1.0, -1.5]


def test_top_k_mask_hides_exactly_k_tokens_and_passes_a_gradient():
    scores = torch.randn(4, 10, requires_grad=True)
    mask = top_k_mask(scores, 0.3, gumbel=False)
    assert torch.allclose(mask.detach().sum(1), torch.full((4,), 3.0))
    assert torch.allclose(mask.detach(), mask.detach().round(), atol=1e-6)  # hard 0 / 1 in the forward
    assert mask.detach()[0, scores[0].topk(3)[1]].round().eq(1).all()  # without noise: the highest scores
    mask.sum().backward()
    assert scores.grad.abs().sum() > 0


def test_the_mask_generator_gets_the_negated_gradient_of_the_encoder_objective():
    """The gradient reaching a mask through `features` is minus the true derivative (finite differences)."""
    torch.manual_seed(0)
    model = tiny_amvc().eval().double()
    video = torch.randn(1, 3, 4, 16, 16, dtype=torch.float64)
    n = model.student.encoder.num_patches
    mask = torch.full((1, n), 0.5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(32, dtype=torch.float64)
    (model.features(video, mask) @ weights).sum().backward()
    with torch.no_grad():
        bumped = mask.detach().clone()
        bumped[0, 3] += 1e-5
        true = ((model.features(video, bumped) - model.features(video, mask.detach())) @ weights).sum() / 1e-5
    assert mask.grad[0, 3].item() == pytest.approx(-true.item(), rel=1e-3, abs=1e-7)


def test_losses_reach_every_trainable_part_and_the_teacher_stays_frozen():
    torch.manual_seed(0)
    model = tiny_amvc(threshold=0.0).train()
    assert not model.teacher.training and not any(p.requires_grad for p in model.teacher.parameters())
    source, target = torch.randn(4, 3, 4, 16, 16), torch.randn(4, 3, 4, 16, 16)
    out = model(source, torch.tensor([0, 1, 2, 3]), target)
    assert {"source", "domain", "consistency", "confident", "domain_acc"} <= set(out)
    assert out["confident"].item() == 1.0  # threshold 0: every pseudo-label is used
    (out["source"] + out["domain"] + out["consistency"]).backward()
    for name in ("mask_token", "mask_generator.3.weight", "discriminator.0.weight", "student.head.weight",
                 "student.encoder.blocks.0.attn.qkv.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


def test_a_video_vit_checkpoint_initialises_student_and_teacher():
    vit = create_model("diffmae_vit_base_patch16_video_cls", **TINY_VIT)
    model = tiny_amvc()
    report = load_state(model, vit.state_dict())
    assert torch.equal(model.student.encoder.blocks[1].mlp.fc1.weight, vit.encoder.blocks[1].mlp.fc1.weight)
    assert torch.equal(model.teacher.encoder.blocks[1].mlp.fc1.weight, vit.encoder.blocks[1].mlp.fc1.weight)
    assert "mask_token" in report.missing
    again = tiny_amvc()
    load_state(again, model.state_dict())  # its own state loads whole
    assert torch.equal(again.mask_generator[1].weight, model.mask_generator[1].weight)


def test_the_two_embedded_styles_show_the_same_motions_in_other_pixels():
    studio, film = EmbeddedMotionClips("train", 16, 4, 32), EmbeddedMotionClips("train", 16, 4, 32, style="film")
    assert [studio.label(i) for i in range(16)] == [film.label(i) for i in range(16)]
    a, b = studio.render(3), film.render(3)
    assert (b[..., 0] == b[..., 1]).all() and b.mean() > a.mean()  # grey film, lifted blacks
    assert (film.render(3) == b).all()  # deterministic
    with pytest.raises(ValueError, match="style"):
        EmbeddedMotionClips(style="sepia")


TINY_RUN = ["model.kwargs.input_size=[4,16,16]", "model.kwargs.embed_dim=32", "model.kwargs.depth=2",
            "model.kwargs.num_heads=2", "data.num_frames=4", "data.embedded_size=16", "train.batch_size=4",
            "optim.ref_batch_size=4", "train.max_steps=2", "train.eval_every=2", "train.num_workers=0"]


def test_finetune_amvc_adapts_and_the_source_only_baseline_runs(tmp_path):
    result = runner.invoke(app, ["finetune", "amvc", "--run-dir", str(tmp_path / "amvc"), "--json", *TINY_RUN,
                                 "loss.warmup_steps=0"])
    assert result.exit_code == 0, result.output[-3000:]
    metrics = json.loads(result.stdout)["metrics"]
    assert {"domain", "consistency", "eval/top1", "eval/teacher_top1"} <= set(metrics)
    assert metrics["eval/count"] == 4  # the held-out film clips
    result = runner.invoke(app, ["finetune", "amvc", "--run-dir", str(tmp_path / "src"), "--json", *TINY_RUN,
                                 "loss.domain=0", "loss.consistency=0"])
    assert result.exit_code == 0, result.output[-3000:]
    assert "domain" not in json.loads(result.stdout)["metrics"]
    result = runner.invoke(app, ["finetune", "amvc", "--run-dir", str(tmp_path / "warm"), "--json", *TINY_RUN,
                                 "loss.warmup_steps=1", "train.log_every=1"])
    assert result.exit_code == 0, result.output[-3000:]
    logged = [json.loads(line) for line in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in logged if "loss" in row and "eval/top1" not in row]
    assert "domain" not in train[0] and "domain" in train[-1]  # step 1 source only, step 2 adapts


def test_bad_amvc_configs_name_the_key(tmp_path):
    result = runner.invoke(app, ["finetune", "amvc", "--run-dir", str(tmp_path / "a"), *TINY_RUN, "loss.domain=-1"])
    assert result.exit_code != 0 and "loss.domain" in result.output
    (tmp_path / "clips").mkdir()
    result = runner.invoke(app, ["finetune", "amvc", "--run-dir", str(tmp_path / "b"), *TINY_RUN,
                                 f"data.source={tmp_path / 'clips'}"])
    assert result.exit_code != 0 and "target=" in result.output
