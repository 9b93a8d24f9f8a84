"""Video DiffMAE: tubelets, space-time positions, video masks and scores, the embedded moving-shape clips, and
the pretrain / finetune / inpaint jobs on clips."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.embedded_motion import CLASSES, EmbeddedMotionClips
from percli.core.data.embedded_plm import write_mp4
from percli.core.image_metrics import psnr, ssim
from percli.models import create_model
from percli.models.audio_mae import sincos_pos_embed_2d
from percli.models.common import patchify_video, unpatchify_video
from percli.models.diffmae import sincos_pos_embed_3d
from percli.recipes.diffmae_inpaint import keep_from_pixel_mask, masked_scores, mean_fill, pixel_mask

runner = CliRunner()
SMALL = dict(input_size=[4, 32, 32], patch_size=8, t_patch_size=2, embed_dim=32, depth=2, num_heads=2,
             decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2, num_timesteps=100)
KWARGS = ("model.kwargs={input_size: [4, 32, 32], patch_size: 8, t_patch_size: 2, embed_dim: 32, depth: 2, "
          "num_heads: 2")
TINY = [KWARGS + ", decoder_embed_dim: 32, decoder_depth: 2, decoder_num_heads: 2, num_timesteps: 100}",
        "data.num_frames=4", "data.embedded_size=32", "train.batch_size=8", "optim.ref_batch_size=8",
        "train.num_workers=0", "inpaint.images=2", "inpaint.steps=2"]
CLS = [KWARGS + "}", "data.num_frames=4", "data.embedded_size=40", "train.batch_size=8",
       "optim.ref_batch_size=8", "train.num_workers=0"]


def small(**kwargs):
    return create_model("diffmae_vit_base_patch16_video", **{**SMALL, **kwargs})


def test_tubelets_round_trip_in_the_conv3d_token_order():
    torch.manual_seed(0)
    model = small()
    x = torch.randn(2, 3, 4, 32, 32)
    patches = patchify_video(x, 8, 2)
    assert patches.shape == (2, 2 * 4 * 4, 2 * 8 * 8 * 3)
    assert torch.equal(unpatchify_video(patches, 8, 2, 3, 4, 32, 32), x)
    assert torch.equal(patches[0, 1, :3], x[0, :, 0, 0, 8])  # token 1 = slice 0, row 0, column 1; (pt, p, p, C)
    assert torch.equal(patches[0, 16, :3], x[0, :, 2, 0, 0])  # token 16 = the second tubelet slice
    conv = model.encoder.patch_embed.proj
    flat = conv.weight.permute(0, 2, 3, 4, 1).reshape(conv.out_channels, -1)  # (pt, p, p, C) order
    tokens = conv(x).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens, patches @ flat.T + conv.bias, atol=1e-5)


def test_space_time_positions_extend_the_image_layout():
    emb = sincos_pos_embed_3d(64, (3, 2, 4))[0]  # [1 + 24, 64]
    assert emb.shape == (25, 64) and not emb[0].any()  # the cls slot is zeros
    spatial = sincos_pos_embed_2d(48, (2, 4), cls_token=False)[0]
    for t in range(3):
        frame = emb[1 + 8 * t: 1 + 8 * (t + 1)]
        assert torch.allclose(frame[:, :48], spatial)  # the image embedding in the first 3/4 of the channels
        assert torch.allclose(frame[:, 48:], frame[:1, 48:].expand(8, -1))  # one time code per slice
    assert not torch.allclose(emb[1, 48:], emb[9, 48:])  # slices differ
    assert len({tuple(row.tolist()) for row in emb[1:]}) == 24  # every token its own position


def test_video_loss_is_on_masked_tubelets_and_inpaint_keeps_the_visible_ones():
    torch.manual_seed(0)
    model = small().eval()
    x = torch.randn(2, 3, 4, 32, 32)
    loss, pred, mask = model(x, mask_ratio=0.75, generator=torch.Generator().manual_seed(1))
    assert mask.shape == (2, 32) and int(mask[0].sum()) == 24 and pred.shape == (2, 24, 384)
    ids_masked = mask[0].nonzero().flatten()
    target = patchify_video(x, 8, 2)[0, ids_masked]
    assert torch.allclose(loss, torch.nn.functional.mse_loss(pred, torch.stack([target, patchify_video(
        x, 8, 2)[1, mask[1].nonzero().flatten()]])), atol=1e-6)
    keep = torch.zeros(2, 32, dtype=torch.bool)
    keep[:, ::4] = True
    out = model.inpaint(x, keep, steps=2, generator=torch.Generator().manual_seed(0))
    again = model.inpaint(x, keep, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    hidden = pixel_mask(model, keep)  # [2, 1, 4, 32, 32]
    assert torch.equal(out * ~hidden, x * ~hidden)  # visible tubelets unchanged
    assert (out - x).abs()[hidden.expand_as(x)].mean() > 0.1


def test_a_frame_mask_covers_the_same_patches_in_every_slice():
    model = small()
    mask = torch.zeros(1, 32, 32)
    mask[0, :16, :8] = 1  # patches (0, 0) and (1, 0) of each frame
    keep = keep_from_pixel_mask(mask, model)
    assert keep.shape == (1, 32)
    hidden = [i for i in range(32) if not keep[0, i]]
    assert hidden == [0, 4, 16, 20]  # slice 0 and slice 1
    pixels = pixel_mask(model, keep)[0, 0]  # [4, 32, 32]
    assert torch.equal(pixels, mask.bool().expand(4, -1, -1))
    clip = torch.rand(1, 3, 4, 32, 32)
    filled = mean_fill(clip, pixel_mask(model, keep))
    visible = ~mask.bool()[0]
    expected = clip[0].permute(1, 2, 3, 0)[:, visible].reshape(-1, 3).mean(0)  # the clip's visible mean
    assert torch.allclose(filled[0, :, 2, 0, 0], expected, atol=1e-5)


def test_clip_psnr_pools_the_masked_pixels_and_ssim_averages_frames_with_masked_windows():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, 4, 32, 32, generator=g)
    pred = (truth + 0.1 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    hidden = torch.zeros(2, 1, 4, 32, 32, dtype=torch.bool)
    hidden[..., 8:24, 8:24] = True
    hidden[1, :, 2:] = False  # clip 1: only frames 0 and 1 inpainted
    scores = masked_scores(pred, truth, hidden)
    for b in range(2):
        m = hidden[b].expand(3, -1, -1, -1)
        mse = (pred[b] - truth[b])[m].square().double().mean()
        assert scores["psnr"][b] == pytest.approx(float(10 * torch.log10(1 / mse)), abs=1e-4)
    frames = [float(ssim(pred[1, :, t][None], truth[1, :, t][None], mask=hidden[1, :, t][None])) for t in (0, 1)]
    assert scores["ssim"][1] == pytest.approx(sum(frames) / 2, abs=1e-5)
    assert float(psnr(pred[0, :, 0][None], truth[0, :, 0][None], mask=hidden[0, :, 0][None])) > 0


def test_embedded_clips_are_seeded_and_only_the_motion_tells_the_class():
    data = EmbeddedMotionClips(num_clips=16, num_frames=8, image_size=32)
    assert data.classes == list(CLASSES) and len(CLASSES) == 8
    first, again = data[3], data[3]
    assert first["video"].shape == (3, 8, 32, 32) and first["label"] == 3
    assert torch.equal(first["video"], again["video"])
    val = EmbeddedMotionClips(split="val", num_clips=16, num_frames=8, image_size=32)
    assert not torch.equal(val[3]["video"], first["video"])

    def motion(index):  # mean absolute change between frames, above the pixel noise
        frames = data.render(index).astype(np.float32)
        return float(np.abs(np.diff(frames, axis=0)).mean())

    still, fly = CLASSES.index("still"), CLASSES.index("fly")
    assert motion(fly) > 2 * motion(still)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("diffmae-video") / "pre"
    result = runner.invoke(app, ["pretrain", "diffmae", "--preset", "tiny-video", "--run-dir", str(run), "--json",
                                 "train.max_steps=4", "train.eval_every=2", *TINY])
    assert result.exit_code == 0, result.output[-3000:]
    return run, json.loads(result.stdout)


def test_pretrain_then_finetune_video_diffmae_on_embedded_clips(tmp_path, pretrained):
    run, summary = pretrained
    inpainting = summary["inpainting"]
    assert inpainting["videos"] == 2 and inpainting["mask_ratio"] == 0.9
    assert 0 < inpainting["psnr"] < 100 and 0 < inpainting["mean_fill_psnr"] < 100
    assert (run / "inpainting.png").stat().st_size > 1000
    ft = runner.invoke(app, ["finetune", "diffmae", "--preset", "tiny-video", "--run-dir", str(tmp_path / "ft"),
                             "--json", *CLS, f"model.checkpoint={run}", "train.max_steps=2"])
    assert ft.exit_code == 0, ft.output[-3000:]
    assert "decoder_blocks" in ft.output  # the decoder reported dropped
    assert json.loads(ft.stdout)["metrics"]["eval/count"] == 10


def test_inpaint_videos_with_a_frame_mask(tmp_path, pretrained):
    run, _ = pretrained
    folder = tmp_path / "clips"
    folder.mkdir()
    data = EmbeddedMotionClips(split="val", num_clips=2, num_frames=12, image_size=48)
    for i in range(2):
        write_mp4(folder / f"c{i}.mp4", data.render(i), 8)
    (folder / "broken.mp4").write_bytes(b"\x00" * 64)
    (folder / "empty.mp4").write_bytes(b"")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:16] = 255  # the top half of every frame
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["inpaint", str(folder), "--checkpoint", str(run), "--masks",
                                 str(tmp_path / "mask.png"), "--steps", "2", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["videos"] == 2 and summary["bad_inputs"]["count"] == 2
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["masked_patches"] for r in rows] == [16, 16]  # 2 patch rows x 4 columns x 2 tubelet slices
    for i in range(2):
        assert (out / "inpainted" / f"c{i}.mp4").stat().st_size > 100
        assert (out / "inpainted" / f"c{i}.png").stat().st_size > 1000
    assert not list((out / "inpainted").glob(".*"))  # no temporary file left
    scored = runner.invoke(app, ["eval", "inpaint", str(folder / "c0.mp4"), "--checkpoint", str(run),
                                 "--mask-ratio", "0.5", "--steps", "2", "--json"])
    assert scored.exit_code == 0, scored.output[-3000:]
    metrics = json.loads(scored.stdout)["metrics"]
    assert 0 < metrics["psnr"] < 100 and 0 < metrics["fill_psnr"] < 100


def test_hiera_video_models_train_on_the_embedded_clips(tmp_path):
    result = runner.invoke(app, ["finetune", "hiera", "model.name=hiera_base_16x224",
                                 "model.kwargs={input_size: [16, 64, 64], embed_dim: 16, num_heads: 1, "
                                 "stages: [1, 1, 1, 1]}", "data.source=embedded", "data.num_frames=16",
                                 "data.embedded_size=16", "train.max_steps=1", "train.batch_size=4",
                                 "train.num_workers=0", "--run-dir", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    assert json.loads(result.stdout)["metrics"]["eval/count"] == 4  # 16 // 4 held-out clips
