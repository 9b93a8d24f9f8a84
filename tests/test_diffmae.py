"""DiffMAE: the model (masking, top-down decoder, x0 loss, inpainting, classifier loading) and its jobs."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.models import create_model
from percli.models.diffmae import load_state, memory_depths, patchify, unpatchify

runner = CliRunner()
SMALL = dict(input_size=[32, 32], patch_size=8, embed_dim=32, depth=4, num_heads=2, decoder_embed_dim=32,
             decoder_depth=2, decoder_num_heads=2, num_timesteps=100)
ENCODER = {k: SMALL[k] for k in ("input_size", "patch_size", "embed_dim", "depth", "num_heads")}
# the tiny preset shrunk further for CLI runs
TINY = ["model.kwargs={input_size: [32, 32], patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, "
        "decoder_embed_dim: 32, decoder_depth: 2, decoder_num_heads: 2, num_timesteps: 100}",
        "data.embedded_size=32", "train.batch_size=8", "optim.ref_batch_size=8", "train.num_workers=0",
        "inpaint.images=4", "inpaint.steps=3"]
CLS = ["model.kwargs={input_size: [32, 32], patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
       "data.embedded_size=40", "train.batch_size=8", "optim.ref_batch_size=8", "train.num_workers=0"]


def small(**kwargs):
    return create_model("diffmae_vit_base_patch16", **{**SMALL, **kwargs})


@pytest.mark.parametrize(("depth", "decoder_depth", "top_down", "expected"), [
    (24, 8, True, [23, 20, 17, 14, 11, 8, 5, 2]),
    (4, 2, True, [3, 1]),
    (12, 8, True, [11, 10, 8, 7, 5, 4, 2, 1]),
    (4, 3, False, [3, 3, 3]),
])
def test_top_down_connection_reads_deepest_encoder_blocks_first(depth, decoder_depth, top_down, expected):
    assert memory_depths(depth, decoder_depth, top_down) == expected


# timm's vit_{base,large}_patch16_224 / vit_huge_patch14_224 counts (86.57M, 304.33M, 632.05M) less the 1000-class head
@pytest.mark.parametrize(("name", "count"), [("diffmae_vit_base_patch16", 85_798_656),
                                             ("diffmae_vit_large_patch16", 303_301_632),
                                             ("diffmae_vit_huge_patch14", 630_764_800)])
def test_encoder_sizes_are_the_vits_of_the_paper(name, count):
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.encoder.parameters()) == count


def test_patchify_round_trips_in_mae_order():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    patches = patchify(x, 8)
    assert patches.shape == (2, 4, 192)
    assert torch.equal(patches[0, 1, :3], x[0, :, 0, 8])  # (p, p, C): the channels of one pixel are adjacent
    assert torch.equal(unpatchify(patches, 8, 3, 16, 16), x)


def test_loss_is_the_x0_mse_on_the_masked_patches_only():
    torch.manual_seed(0)
    model = small().eval()
    x = torch.randn(3, 3, 32, 32)
    loss, pred, mask = model(x, generator=torch.Generator().manual_seed(1))
    assert mask.sum(1).tolist() == [12.0] * 3  # round(16 * 0.75)
    ids_masked = mask.bool().nonzero()[:, 1].view(3, 12)
    target = torch.gather(patchify(x, 8), 1, ids_masked[..., None].expand(-1, -1, 192))
    assert loss.item() == pytest.approx(torch.mean((pred - target) ** 2).item(), rel=1e-5)
    # the visible patches are the condition: changing a masked patch's pixels changes the target, not the input
    x2 = x.clone()
    first = int(ids_masked[0, 0])
    x2[0, :, (first // 4) * 8:(first // 4) * 8 + 8, (first % 4) * 8:(first % 4) * 8 + 8] += 5.0
    _, pred2, _ = model(x2, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(pred2[1:], pred[1:], atol=1e-6)
    assert not torch.allclose(pred2[0], pred[0])  # its noisy version (x_t) is the decoder's input


@pytest.mark.parametrize("design", ["cross_self", "cross"])
def test_denoising_loss_falls_when_training(design):
    torch.manual_seed(0)
    model = small(decoder_design=design)
    x = torch.randn(8, 3, 32, 32).clamp(-1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    t = torch.full((8,), 50)

    def fixed_loss():
        return model(x, generator=torch.Generator().manual_seed(3), t=t)[0].item()

    before = fixed_loss()
    for _ in range(40):
        loss = model(x, generator=g)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.7 * before
    has_self = any("decoder_blocks.0.attn." in n for n, _ in model.named_parameters())
    assert has_self == (design == "cross_self")


def test_inpaint_keeps_visible_patches_and_is_seeded():
    torch.manual_seed(0)
    model = small().eval()
    x = torch.randn(2, 3, 32, 32)
    keep = torch.zeros(2, 16, dtype=torch.bool)
    keep[0, :6], keep[1, 10:] = True, True
    out = model.inpaint(x, keep, steps=4, generator=torch.Generator().manual_seed(0))
    again = model.inpaint(x, keep, steps=4, generator=torch.Generator().manual_seed(0))
    other = model.inpaint(x, keep, steps=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert torch.equal(patchify(out, 8)[keep], patchify(x, 8)[keep])
    assert not torch.allclose(patchify(out, 8)[~keep], patchify(x, 8)[~keep])
    uneven = keep.clone()
    uneven[1, 0] = True
    with pytest.raises(ValueError, match="same number of visible"):
        model.inpaint(x, uneven)


def test_classifier_takes_the_pretrained_encoder_and_drops_the_decoder():
    torch.manual_seed(0)
    pretrained = small()
    classifier = create_model("diffmae_vit_base_patch16_cls", **ENCODER, num_classes=5)
    report = load_state(classifier, pretrained.state_dict())
    assert any(k.startswith("decoder_blocks.") for k in report.dropped)
    assert set(report.missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    x = torch.randn(2, 3, 32, 32)
    pretrained.eval(), classifier.eval()  # the classifier's drop path is on in training
    tokens = pretrained.encoder.tokens(x)
    for block in pretrained.encoder.blocks:
        tokens = block(tokens)
    ours, _ = classifier.encoder(x)
    assert torch.allclose(ours, tokens, atol=1e-5)  # the same blocks; the classifier pools before its fc_norm
    with pytest.raises(RuntimeError, match="does not fit"):
        load_state(create_model("diffmae_vit_base_patch16_cls", **{**ENCODER, "embed_dim": 64}, num_classes=5),
                   pretrained.state_dict())


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("diffmae") / "pre"
    result = runner.invoke(app, ["pretrain", "diffmae", "--run-dir", str(run), "--json", "train.max_steps=4",
                                 "train.eval_every=2", *TINY])
    assert result.exit_code == 0, result.output[-3000:]
    return run, json.loads(result.stdout)


def test_pretrain_then_finetune_diffmae_on_the_embedded_set(tmp_path, pretrained):
    run, summary = pretrained
    inpainting = summary["inpainting"]
    assert inpainting["images"] == 4 and inpainting["steps"] == 3
    assert 0 < inpainting["psnr"] < 100 and 0 < inpainting["mean_fill_psnr"] < 100
    assert (run / "inpainting.png").stat().st_size > 1000
    assert summary["metrics"]["eval/loss"] > 0
    ft = runner.invoke(app, ["finetune", "diffmae", "--run-dir", str(tmp_path / "ft"), "--json", *CLS,
                             f"model.checkpoint={run}", "train.max_steps=2"])
    assert ft.exit_code == 0, ft.output[-3000:]
    assert "decoder_blocks" in ft.output  # the decoder reported dropped


def test_eval_loss_is_the_same_on_every_evaluation(tmp_path):
    from percli.recipes.diffmae import Config, DiffMAETask

    cfg = Config()
    cfg.model.kwargs = dict(SMALL)
    cfg.data.embedded_size = 16
    task = DiffMAETask(cfg)
    model = task.build_model().eval()
    images = torch.randn(4, 3, 32, 32)
    first = task.eval_reduce(task.eval_step(model, {"image": images}))
    second = task.eval_reduce(task.eval_step(model, {"image": images}))
    assert first == second


def test_bad_mask_ratio_names_the_key():
    result = runner.invoke(app, ["pretrain", "diffmae", "--dry-run", "mask_ratio=1.5"])
    assert result.exit_code == 2 and "mask_ratio" in result.output


def test_inpaint_writes_completions_and_eval_scores_masked_pixels(tmp_path, pretrained):
    from PIL import Image

    run, _ = pretrained
    folder, masks = tmp_path / "images", tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    rng = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        pixels = (torch.rand(32, 32, 3, generator=rng) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{name}.png")
        mask = torch.zeros(32, 32, dtype=torch.uint8)
        mask[:16] = 255  # the top half: patch rows 0 and 1
        Image.fromarray(mask.numpy()).save(masks / f"{name}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    result = runner.invoke(app, ["inpaint", str(folder), "--checkpoint", str(run), "--masks", str(masks),
                                 "--steps", "2", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["images"] == 2 and summary["bad_inputs"]["count"] == 1
    assert "broken.png" in summary["bad_inputs"]["files"][0]["file"]
    written = torch.from_numpy(np.array(Image.open(out / "inpainted" / "a.png"))).int()  # [32, 32, 3]
    original = torch.from_numpy(np.array(Image.open(folder / "a.png"))).int()
    assert (written[16:] - original[16:]).abs().max() <= 1  # visible half kept (up to rounding)
    assert (written[:16] - original[:16]).abs().float().mean() > 5  # the masked half is sampled
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["masked_patches"] for r in rows] == [8, 8]
    assert (out / "grid.png").is_file()
    scored = runner.invoke(app, ["eval", "inpaint", str(folder / "a.png"), "--checkpoint", str(run), "--masks",
                                 str(masks), "--steps", "2", "--json"])
    assert scored.exit_code == 0, scored.output[-3000:]
    metrics = json.loads(scored.stdout)["metrics"]
    assert metrics["psnr"] == pytest.approx(rows[0]["psnr"], abs=1e-4)  # same seed, same sample
    assert "output" not in json.loads(scored.stdout)


def test_inpaint_refuses_a_checkpoint_of_another_method(tmp_path):
    from tests.conftest import TINY_CLS

    cls = runner.invoke(app, ["finetune", "hiera", "--run-dir", str(tmp_path / "cls"), *TINY_CLS,
                              "train.max_steps=1"])
    assert cls.exit_code == 0, cls.output[-2000:]
    (tmp_path / "x.png").write_bytes(b"")
    result = runner.invoke(app, ["inpaint", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "cls"),
                                 "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "pretrain diffmae" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_inpaint_on_cuda_with_a_cpu_generator_matches_the_cpu_draws():
    torch.manual_seed(0)
    model = small().eval()
    x = torch.randn(1, 3, 32, 32)
    keep = torch.zeros(1, 16, dtype=torch.bool)
    keep[0, :4] = True
    cpu = model.inpaint(x, keep, steps=3, generator=torch.Generator().manual_seed(0))
    cuda = model.cuda().inpaint(x.cuda(), keep, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(cuda.cpu(), cpu, atol=1e-4)
