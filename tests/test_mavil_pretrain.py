"""MAViL pretraining: the model's masked views, targets and checkpoints, and `percli pretrain mavil` stages 1 and 2."""

import json
import signal

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import read_weights, save_weights
from percli.core.rundir import read_metrics
from percli.models import create_model
from percli.models.audio_mae import AudioMaskedAutoencoderViT
from percli.models.mavil import VisionTransformerMM
from percli.models.mavil import load_official_state as load_encoder
from percli.models.mavil_pretrain import (
    PRETRAIN_ONLY,
    load_official_state,
    masked_mse,
    patchify_audio,
    patchify_video,
)
from percli.recipes.mavil_pretrain import probe_map
from tests.conftest import sigterm_after_step

runner = CliRunner()
KWARGS = dict(img_size=[64, 32], embed_dim=16, depth=1, num_heads=2, depth_av=1, n_frm=2, video_size=32,
              decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, proj_dim=8)
TINY = ["model.kwargs={img_size: [400, 128], embed_dim: 16, depth: 1, num_heads: 2, depth_av: 1, n_frm: 2, "
        "video_size: 64, decoder_embed_dim: 16, decoder_depth: 1, decoder_num_heads: 2, proj_dim: 8}",
        "data.embedded_size=20", "train.batch_size=4", "train.num_workers=0"]


def _model(**overrides):
    torch.manual_seed(0)
    return create_model("mavil_pretrain_vit_small_patch16", **{**KWARGS, **overrides})


def _batch(n=3):
    torch.manual_seed(1)
    return torch.randn(n, 1, 64, 32), torch.randn(n, 3, 2, 32, 32)


def test_patchify_orders_tokens_as_the_patch_embeddings():
    x, v = _batch()
    p = 16
    # a Conv3d whose kernel copies each tubelet pixel to one output channel gives the token order and layout
    conv = nn.Conv3d(3, 2 * p * p * 3, (2, p, p), (2, p, p), bias=False)
    eye = torch.eye(2 * p * p * 3).view(2, p, p, 3, 2 * p * p * 3).permute(4, 3, 0, 1, 2)  # [out, c, u, i, j]
    with torch.no_grad():
        conv.weight.copy_(eye)
    assert torch.allclose(conv(v).flatten(2).transpose(1, 2), patchify_video(v, p))
    mae = AudioMaskedAutoencoderViT(img_size=(64, 32), embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                                    decoder_depth=1, decoder_num_heads=2)
    assert torch.equal(mae.patchify(x), patchify_audio(x, p))


def test_views_are_masked_independently_and_only_the_first_is_decoded():
    model = _model()
    x, v = _batch()
    out = model(x, v, mask_ratio_a=0.75, mask_ratio_v=0.5, views=2)
    assert out["audio_embeds"].shape == (2, 3, 8) and out["video_embeds"].shape == (2, 3, 8)
    assert torch.allclose(out["audio_embeds"].norm(dim=-1), torch.ones(2, 3))
    assert not torch.allclose(out["audio_embeds"][0], out["audio_embeds"][1])  # different masks, different views
    assert out["pred_a"].shape == (3, 8, 256) and out["pred_v"].shape == (3, 4, 2 * 16 * 16 * 3)
    assert out["mask_a"].sum(dim=1).tolist() == [6.0] * 3 and out["mask_v"].sum(dim=1).tolist() == [2.0] * 3


def test_masked_mse_counts_only_masked_tokens():
    pred, target = torch.zeros(1, 4, 2), torch.tensor([[[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [9.0, 9.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert masked_mse(pred, target, mask, normalize=False) == pytest.approx(2.5)  # (1 + 4) / 2
    target = torch.tensor([[[1.0, 3.0], [5.0, 7.0]]])
    # per-token standardisation: each target becomes (-1/sqrt(2), 1/sqrt(2)) up to eps
    assert masked_mse(torch.zeros(1, 2, 2), target, torch.ones(1, 2), normalize=True) == pytest.approx(0.5, abs=1e-5)


def test_every_loss_term_sends_gradients_to_its_modules():
    model = _model()
    x, v = _batch(4)
    out = model(x, v, 0.75, 0.5, 2)
    ta, tv = model.raw_targets(x, v)
    (masked_mse(out["pred_a"], ta, out["mask_a"], True) + masked_mse(out["pred_v"], tv, out["mask_v"], True)
     + out["audio_embeds"].sum() + out["video_embeds"].sum()).backward()
    for name in ("decoder_pred.weight", "decoder_pred_v.weight", "audio_proj.fc.weight", "video_proj.fc.weight",
                 "blocks.0.attn.qkv.weight", "blocks_v.0.attn.qkv.weight", "blocks_av.0.mlp.fc1.weight",
                 "patch_embed.proj.weight", "patch_embed_v.proj.weight", "mask_token", "mask_token_v"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_pretraining_checkpoint_keeps_the_released_encoder_names(tmp_path):
    model = _model()
    encoder_kwargs = {k: v for k, v in KWARGS.items() if not k.startswith(("decoder_", "proj_"))}
    encoder = VisionTransformerMM(**encoder_kwargs)
    pretrain_only = {k for k in model.state_dict() if k.startswith(PRETRAIN_ONLY)}
    assert set(model.state_dict()) - pretrain_only == set(encoder.state_dict())
    report = load_encoder(encoder, model.state_dict())  # a finetune / retrieval / AV-SUPERB model loads it
    assert set(report.dropped) == pretrain_only and not report.missing
    assert torch.equal(encoder.blocks_av[0].attn.qkv.weight, model.blocks_av[0].attn.qkv.weight)
    # encoder-only weights start a pretraining model: the decoders and projections are reported at init
    fresh = _model()
    report = load_official_state(fresh, encoder.state_dict())
    assert set(report.missing) == pretrain_only
    assert torch.equal(fresh.blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc1.weight)
    # the fine-tuned layout (3 fusion blocks + head) loads its first fusion blocks; the rest is dropped
    tuned = VisionTransformerMM(**{**encoder_kwargs, "depth_av": 3, "ft": True, "num_classes": 5})
    report = load_official_state(fresh, tuned.state_dict())
    assert {"head_av.weight", "fc_norm_av.weight", "blocks_av.2.norm1.weight"} <= set(report.dropped)
    assert torch.equal(fresh.blocks_av[0].norm1.weight, tuned.blocks_av[0].norm1.weight)
    # a stage-1 file starts a stage-2 student: only the prediction layers (another width) stay at init
    student = _model(target_dim=16)
    report = load_official_state(student, model.state_dict())
    pred = {"decoder_pred.weight", "decoder_pred.bias", "decoder_pred_v.weight", "decoder_pred_v.bias"}
    assert set(report.dropped) == pred and set(report.missing) == pred
    assert torch.equal(student.decoder_blocks_v[0].attn.qkv.weight, model.decoder_blocks_v[0].attn.qkv.weight)


def test_teacher_features_are_the_fused_tokens_of_the_unmasked_clip():
    model = _model().eval()
    x, v = _batch()
    fa, fv = model.contextual_features(x, v)
    a, w = model.towers(x, v)
    ref_a, ref_v = model.fuse(a, w)
    assert torch.equal(fa, ref_a[:, 1:]) and torch.equal(fv, ref_v[:, 1:])
    assert fa.shape == (3, 8, 16) and fv.shape == (3, 4, 16) and not fa.requires_grad


def test_probe_map_separates_informative_from_random_features():
    torch.manual_seed(0)
    targets = (torch.rand(40, 3) < 0.4).float()
    informative = torch.cat([targets * 3 + 0.1 * torch.randn(40, 3), torch.randn(40, 5)], dim=1)
    assert probe_map(informative, targets) > 0.95
    assert probe_map(torch.randn(40, 8), targets) < 0.8


def _run(tmp_path, name, *args):
    result = runner.invoke(app, ["pretrain", "mavil", "--run-dir", str(tmp_path / name), "--json", *args])
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


def test_stage_one_then_stage_two_with_the_teacher(tmp_path):
    result, s1 = _run(tmp_path, "s1", *TINY, "train.max_steps=2")
    assert result.exit_code == 0, result.output[-3000:]
    metrics = s1["metrics"]
    for key in ("recon_audio", "recon_video", "inter_loss", "intra_loss", "eval/a2v_R@1", "eval/v2a_R@10",
                "eval/probe_mAP"):
        assert key in metrics, key
    assert metrics["eval/clips"] == 20 and 0 <= metrics["eval/a2v_R@1"] <= 1
    result, s2 = _run(tmp_path, "s2", "--preset", "stage2", f"model.teacher={tmp_path / 's1'}", *TINY[1:],
                      "train.max_steps=2")
    assert result.exit_code == 0, result.output[-3000:]
    # the stage2 preset starts the student from the teacher: all but its prediction layers (another width)
    assert "4 tensors not used (decoder_pred, decoder_pred_v)" in result.output.replace("\n", " ")
    tensors, meta = read_weights(tmp_path / "s2" / "checkpoints" / "step_0000002")
    assert meta["stage"] == 2 and meta["kwargs"]["target_dim"] == 16 and meta["kwargs"]["embed_dim"] == 16
    assert tensors["decoder_pred.weight"].shape == (16, 16) and tensors["decoder_pred_v.weight"].shape == (16, 16)
    assert "eval/probe_mAP" in s2["metrics"]
    # the stage-2 checkpoint is a MAViL encoder for finetuning: its pretraining modules are reported as dropped
    s2_checkpoint = tmp_path / "s2" / "checkpoints" / "step_0000002"
    tuned = runner.invoke(app, ["finetune", "mavil", f"model.checkpoint={s2_checkpoint}",
                                "model.kwargs={img_size: [400, 128], embed_dim: 16, depth: 1, num_heads: 2, n_frm: 2, "
                                "video_size: 64}", "data.embedded_size=20", "train.batch_size=4",
                                "train.num_workers=0", "train.max_steps=1", "--run-dir", str(tmp_path / "ft")])
    assert tuned.exit_code == 0, tuned.output[-3000:]
    assert "tensors not used (audio_proj, decoder_blocks" in tuned.output.replace("\n", " ")


def test_bad_teacher_and_bad_settings_name_the_key(tmp_path):
    result, _ = _run(tmp_path, "a", *TINY, "stage=2", f"model.teacher={tmp_path / 'nowhere'}")
    assert result.exit_code == 2 and "model.teacher" in result.output
    other = save_weights(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, {"name": "flap_vit_base_patch16"})
    result, _ = _run(tmp_path, "b", *TINY, "stage=2", f"model.teacher={other}")
    assert result.exit_code == 2 and "not a `percli pretrain mavil` checkpoint" in result.output
    result, _ = _run(tmp_path, "s", "--preset", "stage2", *TINY[1:])
    assert result.exit_code == 2 and "model.teacher: stage 2" in result.output
    result, _ = _run(tmp_path, "t", *TINY, f"model.teacher={other}")
    assert result.exit_code == 2 and "set stage=2" in result.output
    result, _ = _run(tmp_path, "u", *TINY, "student_init=teacher")
    assert result.exit_code == 2 and "student_init=teacher is for stage 2" in result.output
    result, _ = _run(tmp_path, "c", *TINY, "views=1")
    assert result.exit_code == 2 and "intra_weight" in result.output
    result, _ = _run(tmp_path, "d", *TINY, "mask_ratio_video=0.99")
    assert result.exit_code == 2 and "mask_ratio_video" in result.output


def test_manifest_run_skips_and_counts_bad_clips(tmp_path):
    from percli.core.data.av_events import make_av_events
    from tests.test_av_events import _hostile_manifest

    good = make_av_events(tmp_path / "train", 3, seed=3)
    folder = tmp_path / "hostile"
    folder.mkdir()
    manifest, _, _ = _hostile_manifest(folder, good)
    result, out = _run(tmp_path, "run", *TINY, f"data.source={manifest}", f"data.val_source={manifest}",
                       "train.max_steps=2", "train.batch_size=2")
    assert result.exit_code == 0, result.output[-3000:]
    reasons = {f["reason"].split(":")[0] for f in out["bad_inputs"]["files"]}
    assert {"no_audio_track", "silent_audio", "short_audio", "corrupt_video", "empty_file"} <= reasons
    assert out["bad_records"]["count"] >= 4  # the malformed manifest lines
    assert out["metrics"]["eval/clips"] == 3  # good, blank_caption, one_blank (captions are not needed)
    assert "eval/probe_mAP" not in out["metrics"]  # manifest clips carry no event labels


def test_sigterm_then_resume_reproduces_the_uninterrupted_losses(tmp_path, monkeypatch):
    args = [*TINY, "train.max_steps=4", "train.log_every=1", "train.ckpt_every=2"]
    full = runner.invoke(app, ["pretrain", "mavil", "--run-dir", str(tmp_path / "full"), *args])
    assert full.exit_code == 0, full.output
    undo = sigterm_after_step(monkeypatch, 3)
    stopped = runner.invoke(app, ["pretrain", "mavil", "--run-dir", str(tmp_path / "part"), *args])
    assert stopped.exit_code == 128 + signal.SIGTERM, stopped.output
    undo()
    resumed = runner.invoke(app, ["pretrain", "mavil", "--run-dir", str(tmp_path / "part"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    expected = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    assert [r["loss"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl") if "loss" in r] == expected


def test_eval_retrieval_ranks_a_pretraining_checkpoint_with_its_projections():
    from percli.core.data.av_clips import collate_av_clips
    from percli.core.data.av_events import AVEventsSpec, EmbeddedAVEvents
    from percli.recipes.retrieval_eval import MAViLEvaluator

    model = create_model("mavil_pretrain_vit_small_patch16", **{**KWARGS, "img_size": [400, 128]}).eval()
    clips = EmbeddedAVEvents(2, split="test", spec=AVEventsSpec(sample_rate=16000))
    batch = collate_av_clips([clips[0], clips[1]])
    batch["index"] = torch.tensor([0, 1])
    with torch.no_grad():
        out = MAViLEvaluator(model).eval_step(model, batch)
    assert out["audio_embeds"].shape == (2, 8) and out["visual_embeds"].shape == (2, 8)  # proj_dim, not embed_dim
    assert torch.allclose(out["audio_embeds"].norm(dim=-1), torch.ones(2))


def test_two_processes_train_stage_two_and_gather_the_held_out_clips(tmp_path):
    """DDP (gloo): the stage-2 student with its teacher, every parameter used, retrieval over both ranks' clips."""
    import subprocess

    from tests.conftest import PYTHON, free_port, subprocess_env

    result, _ = _run(tmp_path, "s1", *TINY, "train.max_steps=1")
    assert result.exit_code == 0, result.output[-3000:]
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "pretrain", "mavil", "--preset", "stage2", f"model.teacher={tmp_path / 's1'}",
           "--run-dir", str(tmp_path / "s2"), "--json", *TINY[1:], "train.max_steps=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["effective_batch_size"] == 8 and summary["step"] == 2
    assert summary["metrics"]["eval/clips"] == 20 and "eval/probe_mAP" in summary["metrics"]
