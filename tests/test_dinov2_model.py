"""DINOv2 backbone: released configs, timm names, pos-embed interpolation, mask token, checkpoint loading.

Numerical parity with the official code is in tests/test_golden.py (dinov2_tiny_cfg, dinov2_reg_swiglu_tiny_cfg).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from percli.models import create_model, list_models
from percli.models.dinov2 import (
    DinoVisionTransformer,
    convert_official_to_timm,
    convert_timm_to_official,
    drop_add_residual,
    load_official_state,
)
from tests.conftest import GOLDEN_DIR

FULL_CONFIGS = GOLDEN_DIR / "full_configs" / "dinov2"
RELEASED = [f"dinov2_vit{size}14{reg}" for reg in ("", "_reg") for size in "sblg"]
# the golden cases' geometry: 56 px -> 4x4 patches of 14
TINY = dict(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=1.0)
TINY_REG_SWIGLU = dict(TINY, embed_dim=48, num_heads=3, ffn_layer="swiglufused", num_register_tokens=4,
                       interpolate_antialias=True, interpolate_offset=0.0)


def official_keys(name: str) -> tuple[list[tuple[str, tuple[int, ...]]], int]:
    """(name, shape) lines of full_configs/dinov2/<name>/keys.txt, and its total parameter count."""
    keys, total = [], -1
    for line in (FULL_CONFIGS / name / "keys.txt").read_text().splitlines():
        if line.startswith("# total_parameters"):
            total = int(line.split()[-1])
        elif not line.startswith("#"):
            key, shape = line.rsplit(" (", 1)
            keys.append((key, tuple(int(d) for d in shape.rstrip(")").split(",") if d.strip())))
    return keys, total


def tiny_model(**kwargs) -> DinoVisionTransformer:
    """A tiny model whose every parameter is perturbed (unit gammas / zero biases would hide swaps)."""
    torch.manual_seed(0)
    model = DinoVisionTransformer(**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def images(batch: int = 2, height: int = 56, width: int = 56) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


@pytest.mark.skipif(not FULL_CONFIGS.is_dir(), reason=f"no {FULL_CONFIGS} (set PERCLI_GOLDEN_DIR)")
@pytest.mark.parametrize("name", RELEASED)
def test_released_config_has_official_names_shapes_and_counts(name: str) -> None:
    with torch.device("meta"):  # shapes only: ViT-g costs nothing
        model = create_model(name)
    keys, total = official_keys(name)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == keys  # names, shapes and order
    count = sum(p.numel() for p in model.parameters())
    assert count == total == json.loads((FULL_CONFIGS / "param_counts.json").read_text())[name]


def test_every_released_config_is_registered() -> None:
    assert set(RELEASED) <= set(list_models())


@pytest.mark.parametrize("timm_name,kwargs", [("vit_small_patch14_dinov2", TINY),
                                              ("vit_giant_patch14_reg4_dinov2", TINY_REG_SWIGLU)],
                         ids=["mlp", "reg4_swiglu"])
def test_timm_names_round_trip_with_identical_outputs(timm_name: str, kwargs: dict) -> None:
    timm = pytest.importorskip("timm")
    model, x = tiny_model(**kwargs), images()
    with torch.no_grad():
        ours = model.forward_features(x)
    tokens = torch.cat([ours["x_norm_clstoken"][:, None], ours["x_norm_regtokens"], ours["x_norm_patchtokens"]], 1)

    timm_state = convert_official_to_timm(model.state_dict())
    reference = timm.create_model(timm_name, pretrained=False, img_size=56, embed_dim=kwargs["embed_dim"], depth=2,
                                  num_heads=kwargs["num_heads"]).eval()
    reference.load_state_dict(timm_state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(reference.forward_features(x), tokens, atol=1e-5, rtol=1e-4)

    back = DinoVisionTransformer(**kwargs).eval()
    report = load_official_state(back, timm_state)
    assert report.source_format == "timm" and report.missing == ["mask_token"]
    assert set(convert_timm_to_official(timm_state)) == set(model.state_dict()) - {"mask_token"}
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours["x_norm_clstoken"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(back.forward_features(x)["x_prenorm"], ours["x_prenorm"], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [TINY, TINY_REG_SWIGLU], ids=["offset", "antialias"])
def test_pos_embed_interpolation_keeps_rows_and_columns_apart(kwargs: dict) -> None:
    model = DinoVisionTransformer(**kwargs)
    with torch.no_grad():
        # channel 0 varies down the rows only, channel 1 across the columns only
        ramp = torch.arange(4.0)
        model.pos_embed[0, 1:, 0] = ramp[:, None].expand(4, 4).reshape(-1)
        model.pos_embed[0, 1:, 1] = ramp[None, :].expand(4, 4).reshape(-1)
    height, width = 3 * 14, 7 * 14
    table = model.interpolate_pos_encoding(torch.zeros(1, 1 + 3 * 7, model.embed_dim), height, width)
    grid = table[0, 1:].reshape(3, 7, -1)  # raster order: rows of 7 patches
    assert torch.equal(table[0, 0], model.pos_embed[0, 0])  # cls position: never resized
    rows, cols = grid[..., 0], grid[..., 1]
    assert torch.allclose(rows, rows[:, :1].expand(3, 7)) and torch.allclose(cols, cols[:1].expand(3, 7))
    assert rows[-1, 0] > rows[0, 0] and cols[0, -1] > cols[0, 0]
    # the native grid uses the table as stored
    assert model.interpolate_pos_encoding(torch.zeros(1, 17, model.embed_dim), 56, 56) is model.pos_embed


def test_other_resolutions_give_matching_grids_and_bad_sizes_are_named() -> None:
    model = tiny_model(**TINY_REG_SWIGLU)
    x = images(height=70, width=42)  # 5x3 patches from a 4x4 table
    with torch.no_grad():
        out = model.forward_features(x)
        (patches, cls), = model.get_intermediate_layers(x, n=1, reshape=True, return_class_token=True)
    assert out["x_norm_patchtokens"].shape == (2, 15, 48) and out["x_prenorm"].shape == (2, 1 + 4 + 15, 48)
    assert patches.shape == (2, 48, 5, 3)
    torch.testing.assert_close(patches.flatten(2).transpose(1, 2), out["x_norm_patchtokens"])
    torch.testing.assert_close(cls, out["x_norm_clstoken"])
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        model(images(height=60, width=56))


def test_masked_patches_ignore_their_pixels() -> None:
    model, x = tiny_model(**TINY_REG_SWIGLU), images()
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [0, 5, 15]] = True
    masks[1, 3] = True
    changed = x.clone()
    changed[0, :, :14, :14] += 1.0  # patch 0 of image 0: masked
    changed[1, :, :14, 42:] += 1.0  # patch 3 of image 1: masked
    with torch.no_grad():
        base = model.forward_features(x, masks)
        torch.testing.assert_close(model.forward_features(changed, masks)["x_prenorm"], base["x_prenorm"])
        assert not torch.allclose(model.forward_features(changed)["x_prenorm"], model.forward_features(x)["x_prenorm"])
        tokens = model.prepare_tokens_with_masks(x, masks)  # [B, 1 + 4 + 16, C]
    expected = model.mask_token[0] + model.pos_embed[0, 1 + 5]
    torch.testing.assert_close(tokens[0, 1 + 4 + 5], expected)
    assert base["masks"] is masks
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x, torch.zeros_like(masks))["x_prenorm"],
                                   model.forward_features(x)["x_prenorm"])


def test_multi_crop_lists_run_each_crop_batch() -> None:
    model = tiny_model(**TINY)
    crops = [images(), images(batch=3, height=28, width=28)]
    masks = torch.rand(2, 16, generator=torch.Generator().manual_seed(2)) > 0.5
    with torch.no_grad():
        outs = model.forward_features(crops, [masks, None])
        torch.testing.assert_close(outs[0]["x_prenorm"], model.forward_features(crops[0], masks)["x_prenorm"])
        assert outs[1]["x_norm_patchtokens"].shape == (3, 4, 32) and outs[1]["masks"] is None
        blocks = model.forward_intermediates(crops[0])
        picked = model.get_intermediate_layers(crops[0], n=[0], norm=False)
        torch.testing.assert_close(model.norm(blocks[-1])[:, 0], model(crops[0]))
    assert len(blocks) == 2
    torch.testing.assert_close(picked[0], blocks[0][:, 1:])


def test_large_drop_path_adds_scaled_residual_to_a_batch_subset() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2)
    out = drop_add_residual(x, lambda t: torch.ones_like(t), drop_rate=0.5)
    changed = (out != x).flatten(1).any(dim=1)
    assert changed.sum() == 2  # int(4 * 0.5) samples kept
    torch.testing.assert_close(out[changed], x[changed] + 2.0)  # residual scaled by 4 / 2
    assert torch.equal(out[~changed], x[~changed])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_official_files_load_strictly(tmp_path, suffix: str) -> None:
    source = tiny_model(**TINY_REG_SWIGLU)
    path = tmp_path / f"dinov2_tiny_reg4_pretrain{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)  # the released backbone files: a plain state dict
    else:
        save_file(source.state_dict(), str(path))
    model = DinoVisionTransformer(**TINY_REG_SWIGLU).eval()
    report = load_official_state(model, path)
    assert report.source_format == "official" and report.missing == [] and report.dropped == []
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_wrong_grid_or_foreign_keys_are_named() -> None:
    state = tiny_model(**TINY).state_dict()
    with pytest.raises(RuntimeError, match="build the model with img_size=56"):
        load_official_state(DinoVisionTransformer(**dict(TINY, img_size=28)), state)
    with pytest.raises(RuntimeError, match="unexpected \\['head.weight'\\]"):
        load_official_state(DinoVisionTransformer(**TINY), {**state, "head.weight": torch.zeros(2, 32)})


def test_checkpoint_meta_rebuilds_the_model() -> None:
    model = create_model("dinov2_vits14_reg", depth=1)
    meta = json.loads(json.dumps(model.checkpoint_meta()))
    assert meta["name"] == "dinov2_vits14_reg" and meta["preprocess"]["input_size"] == [3, 518, 518]
    rebuilt = DinoVisionTransformer(**meta["config"])
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == \
        [(k, v.shape) for k, v in model.state_dict().items()]
    assert rebuilt.interpolate_antialias and rebuilt.interpolate_offset == 0.0 and rebuilt.num_prefix_tokens == 5
