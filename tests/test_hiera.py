"""Hiera: full-size configs against the official key lists, token geometry, checkpoints, timm parity."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from percli.models import create_model, list_models
from percli.models import hiera_utils as hu
from percli.models.hiera import (
    Hiera,
    MaskedAutoencoderHiera,
    convert_official_to_timm,
    convert_timm_to_official,
    load_official_state,
)
from tests.conftest import GOLDEN_DIR

FULL_CONFIGS = GOLDEN_DIR / "full_configs" / "hiera"
FULL_NAMES = sorted(p.parent.name for p in FULL_CONFIGS.glob("*/keys.txt"))

TINY = dict(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), num_classes=10)
TINY_MAE = dict(input_size=(96, 96), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), q_pool=2, decoder_embed_dim=32,
                decoder_depth=1, decoder_num_heads=2)
TINY_VIDEO = dict(input_size=(8, 64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), q_stride=(1, 2, 2),
                  mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3),
                  sep_pos_embed=True, num_classes=5)


def _read_keys(path: Path) -> tuple[list[tuple[str, tuple[int, ...]]], int]:
    entries, total = [], None
    for line in path.read_text().splitlines():
        if line.startswith("# total_parameters"):
            total = int(line.split()[-1])
        elif line and not line.startswith("#"):
            name, shape = re.fullmatch(r"(\S+) \((.*)\)", line).groups()
            entries.append((name, tuple(int(s) for s in shape.split(",") if s.strip())))
    return entries, total


# --------------------------------------------------------------------------- official configs

@pytest.mark.skipif(not FULL_NAMES, reason=f"no Hiera key lists under {FULL_CONFIGS}")
@pytest.mark.parametrize("name", FULL_NAMES)
def test_registered_variant_has_official_state_layout(name: str) -> None:
    expected, total = _read_keys(FULL_CONFIGS / name / "keys.txt")
    with torch.device("meta"):  # shapes only: huge models cost nothing
        model = create_model(name)
    state = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == expected
    assert sum(v.numel() for v in state.values()) == total
    counts = json.loads((FULL_CONFIGS / "param_counts.json").read_text())
    assert counts[name] == total


def test_every_official_constructor_name_is_registered() -> None:
    sizes = ["tiny", "small", "base", "base_plus", "large", "huge"]
    names = [f"hiera_{s}_224" for s in sizes] + [f"hiera_{s}_16x224" for s in sizes[2:]]
    assert set(names + ["mae_" + n for n in names]) <= set(list_models())


@pytest.mark.parametrize("case", ["hiera_tiny_cfg", "hiera_video_tiny_cfg", "hiera_mae_tiny_cfg",
                                  "hiera_mae_video_tiny_cfg"])
def test_seeded_init_reproduces_official_init(case: str) -> None:
    """Built under the case's seed and perturbed as its README says, percli gives the official state bit for bit."""
    folder = GOLDEN_DIR / case
    if not (folder / "config.json").is_file():
        pytest.skip(f"golden case {case} not found in {GOLDEN_DIR}")
    cfg = json.loads((folder / "config.json").read_text())
    cls = MaskedAutoencoderHiera if cfg["official_class"] == "MaskedAutoencoderHiera" else Hiera
    torch.manual_seed(cfg["seed"])
    model = cls(**cfg["constructor_kwargs"])
    gen = torch.Generator().manual_seed(cfg["seed"] + 12345)
    with torch.no_grad():
        for p in model.parameters():
            p += cfg["perturb_std"] * torch.randn(p.shape, generator=gen)
    official = load_file(str(folder / "state.safetensors"))
    ours = model.state_dict()
    assert list(ours) == list(cfg["state_keys"])  # official order (safetensors files sort their keys)
    assert all(torch.equal(ours[k], official[k]) for k in official)


# --------------------------------------------------------------------------- token geometry

@pytest.mark.parametrize("size,schedule", [
    ([16, 16], [(2, 2)] * 3),
    ([8, 16, 16], [(1, 2, 2)] * 3),
    ([12, 8], [(3, 2), (2, 2)]),
    ([4, 6], []),
])
def test_unroll_then_reroll_is_identity(size: list[int], schedule: list[tuple[int, ...]]) -> None:
    x = torch.randn(2, math.prod(size), 3)
    unrolled = hu.unroll(x, size, schedule)
    assert not torch.equal(unrolled, x) or not schedule  # it really permutes
    assert torch.equal(hu.reroll(unrolled, size, schedule), x.view(2, *size, 3))
    if schedule:  # one unit = the whole unrolled unit: its tokens form that block of the grid
        unit = [math.prod(s[d] for s in schedule) for d in range(len(size))]
        units = hu.reroll_units(unrolled, schedule, len(size))
        grid = x.view(2, *size, 3)
        assert torch.equal(units[:, 0], grid[(slice(None), *[slice(0, u) for u in unit])])


def test_pooling_unrolled_tokens_equals_max_pool_on_the_grid() -> None:
    grid = torch.randn(2, 5, 16, 16)  # [B, C, H, W]
    schedule = [(2, 2)] * 3
    x = hu.unroll(grid.flatten(2).transpose(1, 2), [16, 16], schedule)
    pooled = hu.pool_unrolled(x, 4)
    rerolled = hu.reroll(pooled, [8, 8], schedule[1:])  # [B, 8, 8, C]
    assert torch.equal(rerolled.permute(0, 3, 1, 2), F.max_pool2d(grid, 2))


def test_dropping_masked_units_keeps_exactly_their_tokens() -> None:
    size, schedule = [16, 16], [(2, 2)] * 3
    x = hu.unroll(torch.randn(2, 256, 3), size, schedule)
    mask = torch.tensor([[True, False, False, True], [False, True, True, False]])
    kept = hu.drop_masked_units(x, mask)
    assert kept.shape == (2, 128, 3)
    units = hu.reroll_units(x, schedule, 2)  # [B, 4, 8, 8, C]
    assert torch.equal(hu.reroll_units(kept, schedule, 2), units[mask].view(2, 2, 8, 8, 3))


@pytest.mark.parametrize("unit", [(8, 8), (4, 4)])
def test_masked_forward_sees_the_same_units_as_the_full_forward(unit: tuple[int, int]) -> None:
    """Stages 1-2 attend within units, so a kept unit's maps equal the unmasked model's maps there.

    (4, 4) units are smaller than the unrolled 8x8 unit: the official code mixes up which units it
    drops in that case; percli must still pick the units the raster-order mask names.
    """
    torch.manual_seed(0)
    model = Hiera(**{**TINY, "mask_unit_size": unit, "q_pool": 2, "patch_kernel": (4, 4),
                     "patch_padding": (0, 0)}).eval()  # non-overlapping patches: no leak to undo
    x = torch.randn(2, 3, 64, 64)
    units = 16 // unit[0]
    mask = hu.random_unit_mask(2, units * units, 0.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.forward_intermediates(x)[:2]
        masked = model.forward_intermediates(x, mask=mask)[:2]
    for full_map, masked_map in zip(full, masked, strict=True):
        B, H, W, C = full_map.shape
        u = H // units
        # [B, H, W, C] -> [B, #units, u, u, C] in raster order of units
        windows = full_map.view(B, units, u, units, u, C).transpose(2, 3).reshape(B, -1, u, u, C)
        torch.testing.assert_close(masked_map, windows[mask].view(B, -1, u, u, C), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("units,ratio", [(9, 0.6), (196, 0.6), (784, 0.9), (4, 0.0)])
def test_random_mask_keeps_requested_number_of_units(units: int, ratio: float) -> None:
    mask = hu.random_unit_mask(5, units, ratio, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [int(units * (1 - ratio))] * 5


def test_random_mask_keeps_smallest_noise_and_is_reproducible() -> None:
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7]])
    assert hu.random_unit_mask(1, 5, 0.6, noise=noise).tolist() == [[False, True, False, True, False]]
    draw = [hu.random_unit_mask(3, 49, 0.6, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    with pytest.raises(ValueError):
        hu.random_unit_mask(2, 5, 0.6, noise=torch.rand(2, 4))


def test_patchify_round_trip_and_video_labels_use_first_frame() -> None:
    imgs = torch.randn(2, 3, 32, 48)
    patches = hu.patchify_image(imgs, 16)
    assert patches.shape == (2, 6, 768)
    assert torch.equal(patches[0, 1], imgs[0, :, :16, 16:32].flatten())  # channel-major patch
    assert torch.equal(hu.unpatchify_image(patches, 16, (32, 48)), imgs)
    vid = torch.randn(1, 3, 4, 32, 32)
    labels = hu.patchify_video(vid, 16, time_stride=2)
    assert labels.shape == (1, 2 * 2 * 2, 768)
    assert torch.equal(labels[0, 4], vid[0, :, 2, :16, :16].permute(1, 2, 0).flatten())  # frame 2, channel-minor


# --------------------------------------------------------------------------- model behaviour

def test_forward_intermediates_shapes_image_and_video() -> None:
    image = Hiera(**TINY).eval()
    maps = image.forward_intermediates(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 64), (2, 2, 2, 128)]
    mask = torch.tensor([[True, False, True, False]] * 2)
    masked = image.forward_intermediates(torch.randn(2, 3, 64, 64), mask=mask)
    assert [tuple(m.shape) for m in masked] == [(2, 2, 8, 8, 16), (2, 2, 4, 4, 32), (2, 2, 2, 2, 64), (2, 2, 1, 1, 128)]
    video = Hiera(**TINY_VIDEO).eval()
    maps = video.forward_intermediates(torch.randn(1, 3, 8, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 4, 16, 16, 16), (1, 4, 8, 8, 32), (1, 4, 4, 4, 64),
                                              (1, 4, 2, 2, 128)]


def test_masked_pixels_cannot_leak_into_kept_tokens() -> None:
    """The 7x7 patch kernel overlaps unit borders; masked pixels are zeroed before it."""
    torch.manual_seed(0)
    model = Hiera(**TINY).eval()
    mask = torch.tensor([[True, False, False, True]])  # 2x2 units of 32x32 pixels
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., :32, 32:] = torch.randn(3, 32, 32)  # unit 1 (masked)
    y[..., 32:, :32] = 100.0  # unit 2 (masked)
    with torch.no_grad():
        assert torch.equal(model(x, mask=mask), model(y, mask=mask))
        y[..., 0, 0] += 1.0  # a kept pixel does matter
        assert not torch.equal(model(x, mask=mask), model(y, mask=mask))


def test_forward_returns_logits_in_both_modes_and_probs_on_request() -> None:
    torch.manual_seed(0)
    model = Hiera(**TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)  # timm's convention; the official eval-mode output is the softmax
        probs = model(x, return_probs=True)
        feats = model.forward_features(x)
        assert feats.shape == (2, 128)
        assert torch.allclose(probs, logits.softmax(-1)) and not torch.allclose(probs, logits)
        assert torch.allclose(model.forward_head(feats), logits)
        assert torch.allclose(model.forward_head(feats, apply_softmax=True), probs)
        assert torch.allclose(model(x, return_logits=True), logits)  # the earlier keyword still works
        model.train()
        assert torch.allclose(model(x), logits, atol=1e-6)


def test_masked_tokens_come_out_in_official_order() -> None:
    """With q_pool=2 a unit still holds 2x2 tokens; the official order puts the unit index fastest."""
    model = Hiera(**{**TINY, "input_size": (96, 96), "q_pool": 2}).eval()
    mask = hu.random_unit_mask(2, 9, 0.6, generator=torch.Generator().manual_seed(3))
    tokens, maps = model(torch.randn(2, 3, 96, 96), mask=mask, return_intermediates=True)
    kept = int(mask[0].sum())
    # official: tokens [B, (dy, dx, unit), C]; last-stage map [B, unit, dy, dx, C]
    assert torch.equal(tokens.view(2, 2, 2, kept, -1).permute(0, 3, 1, 2, 4), maps[-1])


def test_mae_mask_from_generator_or_noise_is_reproducible() -> None:
    torch.manual_seed(0)
    model = MaskedAutoencoderHiera(**TINY_MAE).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        a = model(x, 0.6, generator=torch.Generator().manual_seed(7))
        b = model(x, 0.6, generator=torch.Generator().manual_seed(7))
        noise = torch.rand(2, 9)
        c = model(x, 0.6, noise=noise)
        d = model(x, 0.6, mask=hu.random_unit_mask(2, 9, 0.6, noise=noise))
    assert torch.equal(a[3], b[3]) and torch.equal(a[0], b[0])
    assert torch.equal(c[3], d[3]) and torch.equal(c[0], d[0])
    kept = int(9 * 0.4)
    assert a[1].shape == (2 * (9 - kept) * 4, 16 * 16 * 3)  # loss only on the 2x2 tokens of masked units
    assert model.default_mask_ratio == 0.6 and MaskedAutoencoderHiera(**TINY_VIDEO).default_mask_ratio == 0.9


def test_config_rebuilds_the_model_and_metadata_is_json() -> None:
    model = create_model("mae_hiera_tiny_224", **TINY_MAE)
    twin = type(model)(**model.config)
    assert {k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    meta = json.loads(json.dumps(model.checkpoint_meta()))
    assert meta["name"] == "mae_hiera_tiny_224" and meta["preprocess"]["input_size"] == [3, 96, 96]
    with pytest.raises(ValueError, match="mask_unit_size"):
        Hiera(**{**TINY, "mask_unit_size": (3, 3)})


# --------------------------------------------------------------------------- checkpoints

def test_official_pth_with_model_state_loads_strictly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source, target = Hiera(**TINY).eval(), Hiera(**TINY).eval()
    torch.save({"model_state": source.state_dict()}, tmp_path / "hiera.pth")
    report = load_official_state(target, tmp_path / "hiera.pth")
    assert report.source_format == "official" and not report.missing and not report.dropped
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(target(x), source(x))
    save_file(source.state_dict(), str(tmp_path / "hiera.safetensors"))
    assert not load_official_state(Hiera(**TINY), tmp_path / "hiera.safetensors").missing


def test_mae_checkpoint_into_classifier_with_new_head(tmp_path: Path) -> None:
    mae = MaskedAutoencoderHiera(**{**TINY, "q_pool": 2})
    torch.save({"model_state": mae.state_dict()}, tmp_path / "mae.pth")
    clf = Hiera(**{**TINY, "num_classes": 3})
    report = load_official_state(clf, tmp_path / "mae.pth")
    assert any(k.startswith("decoder_blocks.") for k in report.dropped)
    assert set(report.missing) == {"norm.weight", "norm.bias", "head.projection.weight", "head.projection.bias"}
    assert torch.equal(clf.blocks[0].attn.qkv.weight, mae.blocks[0].attn.qkv.weight)

    finetuned = Hiera(**TINY).state_dict()
    report = load_official_state(clf, finetuned)  # 10 classes into a 3-class model
    assert report.head_reset and "head.projection.weight" in report.dropped
    with pytest.raises(RuntimeError, match="unexpected"):
        load_official_state(clf, {**finetuned, "blocks.0.extra": torch.zeros(1)})


def test_timm_weights_give_identical_outputs_both_ways() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    kwargs = {k: v for k, v in TINY.items() if k != "input_size"}
    theirs = timm.create_model("hiera_tiny_224", pretrained=False, img_size=(64, 64), **kwargs).eval()
    ours = create_model("hiera_tiny_224", **TINY).eval()
    report = load_official_state(ours, theirs.state_dict())
    assert report.source_format == "timm" and not report.missing
    assert set(convert_timm_to_official(theirs.state_dict())) == set(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, return_logits=True), theirs(x), atol=1e-6, rtol=1e-5)
        for p in ours.parameters():  # new weights, converted the other way
            p.add_(0.01 * torch.randn_like(p))
        theirs.load_state_dict(convert_official_to_timm(ours.state_dict()), strict=True)
        torch.testing.assert_close(theirs(x), ours(x, return_logits=True), atol=1e-6, rtol=1e-5)
        mask = hu.random_unit_mask(2, 4, 0.5, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(theirs.forward_features(x, mask=mask), ours(x, mask=mask), atol=1e-6, rtol=1e-5)
