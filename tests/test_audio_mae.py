"""Audio-MAE: official full-size parameter layouts, masking, checkpoints, timm port, tiny configs."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch

from percli.models import create_model
from percli.models.audio_mae import (
    AudioMaskedAutoencoderViT,
    AudioViT,
    convert_official_to_timm,
    convert_timm_to_official,
    finetune_masking_2d,
    load_official_state,
    random_masking,
    random_masking_2d,
)
from tests.conftest import GOLDEN_DIR

FULL_CONFIGS = GOLDEN_DIR / "full_configs" / "audiomae"
# full_configs folder -> (registered percli name, overrides)
FULL_CONFIG_MODELS = {
    "mae_vit_base_patch16_audioset_pretrain_decoder_mode1": ("audiomae_mae_vit_base_patch16", {}),
    "mae_vit_base_patch16_audioset_decoder_mode0": ("audiomae_mae_vit_base_patch16", {"decoder_mode": 0}),
    "vit_small_patch16_audioset_ft": ("audiomae_vit_small_patch16", {}),
    "vit_base_patch16_audioset_ft": ("audiomae_vit_base_patch16", {}),
    "vit_large_patch16_audioset_ft": ("audiomae_vit_large_patch16", {}),
}
FOLDERS = sorted(p.name for p in FULL_CONFIGS.iterdir() if p.is_dir()) if FULL_CONFIGS.is_dir() else []

# 128 frames x 64 mel bins -> an 8 x 4 token grid: the local decoder's 4x4 windows and (2, 0) shift still apply
TINY = dict(img_size=(128, 64), embed_dim=32, depth=2, num_heads=2)
TINY_MAE = dict(TINY, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, decoder_mode=1,
                local_decoder_depth=2, local_decoder_heads=2, norm_pix_loss=True)


def _read_keys(path: Path) -> tuple[list[tuple[str, tuple[int, ...]]], dict[str, int]]:
    entries, totals = [], {}
    for line in path.read_text().splitlines():
        if m := re.fullmatch(r"# (\w+) (\d+)", line.strip()):
            totals[m[1]] = int(m[2])
        elif line and not line.startswith("#"):
            name, shape = line.split(" ", 1)
            entries.append((name, tuple(int(s) for s in re.findall(r"\d+", shape))))
    return entries, totals


@pytest.mark.skipif(not FOLDERS, reason=f"no Audio-MAE full configs under {FULL_CONFIGS}")
@pytest.mark.parametrize("folder", FOLDERS)
def test_full_config_state_dict_matches_official_names_shapes_and_counts(folder: str) -> None:
    assert folder in FULL_CONFIG_MODELS, f"add {folder} to FULL_CONFIG_MODELS"
    name, overrides = FULL_CONFIG_MODELS[folder]
    with torch.device("meta"):
        model = create_model(name, **overrides)
    expected, totals = _read_keys(FULL_CONFIGS / folder / "keys.txt")
    actual = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert actual == expected
    assert sum(v.numel() for v in model.state_dict().values()) == totals["total_parameters"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == totals["trainable_parameters"]


# --------------------------------------------------------------------------- masking

def test_random_masking_keeps_lowest_noise_tokens_and_restores_order() -> None:
    x = torch.arange(2 * 10, dtype=torch.float32).view(2, 10, 1)
    noise = torch.rand(2, 10, generator=torch.Generator().manual_seed(0))
    kept, mask, ids_restore = random_masking(x, 0.7, noise=noise)
    assert kept.shape == (2, 3, 1) and mask.sum(1).tolist() == [7.0, 7.0]
    for b in range(2):
        lowest = noise[b].argsort()[:3]
        assert kept[b, :, 0].tolist() == x[b, lowest, 0].tolist()
        assert mask[b, lowest].eq(0).all()
    assert torch.equal(ids_restore, noise.argsort(1).argsort(1))


def test_random_masking_2d_removes_whole_time_rows_and_freq_columns() -> None:
    T, Fq = 8, 4
    x = torch.arange(2 * T * Fq, dtype=torch.float32).view(2, T * Fq, 1)
    g = torch.Generator().manual_seed(1)
    kept, mask, ids_restore = random_masking_2d(x, (T, Fq), 0.5, 0.5, generator=g)
    grid = mask.view(2, T, Fq)
    kept_rows = grid.eq(0).any(2)  # [2, T]
    kept_cols = grid.eq(0).any(1)  # [2, F]
    assert kept_rows.sum(1).tolist() == [4, 4] and kept_cols.sum(1).tolist() == [2, 2]
    # a token is kept iff its row and its column are kept
    assert torch.equal(grid.eq(0), kept_rows[:, :, None] & kept_cols[:, None, :])
    assert kept.shape == (2, 8, 1)
    for b in range(2):  # kept tokens in raster order
        assert kept[b, :, 0].tolist() == x[b, mask[b] == 0, 0].tolist()
    # ids_restore puts kept tokens back: sorting by it recovers the mask
    order = ids_restore.argsort(1)
    assert mask.gather(1, order)[:, :8].eq(0).all()


def test_random_masking_2d_same_generator_seed_same_mask() -> None:
    x = torch.randn(2, 32, 3)
    a = random_masking_2d(x, (8, 4), 0.6, 0.5, generator=torch.Generator().manual_seed(5))[1]
    b = random_masking_2d(x, (8, 4), 0.6, 0.5, generator=torch.Generator().manual_seed(5))[1]
    assert torch.equal(a, b)


def test_finetune_masking_2d_gathers_rows_then_columns_in_noise_order() -> None:
    T, Fq = 4, 4
    x = torch.arange(T * Fq, dtype=torch.float32).view(1, T * Fq, 1)
    noise_t = torch.tensor([[0.3, 0.1, 0.9, 0.8]])
    noise_f = torch.tensor([[0.5, 0.2, 0.7, 0.1]])
    out = finetune_masking_2d(x, (T, Fq), 0.5, 0.5, noise_t, noise_f)
    # rows 1 then 0, columns 3 then 1
    assert out[0, :, 0].tolist() == [1 * 4 + 3, 1 * 4 + 1, 0 * 4 + 3, 0 * 4 + 1]


# --------------------------------------------------------------------------- tiny models

def test_tiny_local_decoder_mae_loss_and_shapes_on_small_input() -> None:
    model = AudioMaskedAutoencoderViT(**TINY_MAE).eval()
    x = torch.randn(2, 1, 128, 64)
    assert torch.equal(model.unpatchify(model.patchify(x)), x)
    loss, pred, mask = model(x, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert pred.shape == (2, 32, 256) and mask.shape == (2, 32) and mask.sum().item() == 2 * 24
    again = model(x, mask_ratio=0.75, generator=torch.Generator().manual_seed(0))[0]
    assert torch.isfinite(loss) and torch.equal(loss, again)
    loss2d, _, mask2d = model(x, mask_2d=True, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss2d) and mask2d.shape == (2, 32)
    loss.backward()  # trainable end to end
    assert model.decoder_blocks[1].attn.tau.grad is not None


def test_config_rebuilds_the_same_model() -> None:
    model = AudioMaskedAutoencoderViT(**TINY_MAE)
    clone = type(model)(**model.config)
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model.preprocess["num_mel_bins"] == 64 and model.preprocess["std"] == pytest.approx(4.5689974)


def test_forward_intermediates_returns_every_block_tokens() -> None:
    model = AudioViT(**TINY, num_classes=3).eval()
    x = torch.randn(2, 1, 128, 64)
    maps = model.forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [(2, 33, 32)] * 2
    pooled = model.fc_norm(maps[-1][:, 1:].mean(1))
    torch.testing.assert_close(pooled, model.forward_features(x))
    assert model(x, 0.5, 0.5).shape == (2, 3)  # masked fine-tune forward


# --------------------------------------------------------------------------- checkpoints

def _official_checkpoint(state: dict, path: Path) -> Path:
    """The layout main_pretrain.py saves: model, optimizer, epoch, scaler and argparse args."""
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
                "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="mae_vit_base_patch16")}, path)
    return path


def test_pretraining_checkpoint_loads_into_mae_and_finetune_model(tmp_path: Path) -> None:
    mae = AudioMaskedAutoencoderViT(**TINY_MAE).eval()
    path = _official_checkpoint(mae.state_dict(), tmp_path / "checkpoint-32.pth")

    again = AudioMaskedAutoencoderViT(**TINY_MAE)
    report = load_official_state(again, path)
    assert report.missing == [] and report.dropped == []
    for k, v in mae.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k

    clf = AudioViT(**TINY, num_classes=5).eval()
    report = load_official_state(clf, path)
    assert "mask_token" in report.dropped and "norm.weight" in report.dropped
    assert report.missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert torch.equal(clf.pos_embed, mae.pos_embed)  # the checkpoint's table, as main_finetune_as.py
    x = torch.randn(2, 1, 128, 64)
    with torch.no_grad():
        noise = torch.arange(32.0).expand(2, -1)  # keep every token in order
        latent = mae.forward_encoder(x, 0.0, noise=noise)[0]
        torch.testing.assert_close(mae.norm(clf.forward_intermediates(x)[-1]), latent)


def test_safetensors_and_foreign_objects(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = AudioViT(**TINY, num_classes=4)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    other = AudioViT(**TINY, num_classes=4)
    assert load_official_state(other, tmp_path / "m.safetensors").missing == []
    torch.testing.assert_close(other.state_dict(), model.state_dict())

    torch.save({"model": model.state_dict(), "args": _NotAllowed()}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="safetensors"):
        load_official_state(other, tmp_path / "bad.pth")


class _NotAllowed:
    pass


def test_other_num_classes_resets_head() -> None:
    src = AudioViT(**TINY, num_classes=527)
    dst = AudioViT(**TINY, num_classes=10)
    report = load_official_state(dst, {"model": src.state_dict()})
    assert report.head_reset and report.missing == ["head.bias", "head.weight"]


@pytest.mark.parametrize("global_pool", [True, False])
def test_timm_port_round_trip_gives_same_outputs(global_pool: bool) -> None:
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    model = AudioViT(**TINY, num_classes=5, global_pool=global_pool).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ported = timm_vit.VisionTransformer(img_size=(128, 64), patch_size=16, in_chans=1, num_classes=5, embed_dim=32,
                                        depth=2, num_heads=2, global_pool="avg" if global_pool else "token").eval()
    ported.load_state_dict(convert_official_to_timm(model.state_dict()), strict=True)
    x = torch.randn(2, 1, 128, 64)
    with torch.no_grad():
        torch.testing.assert_close(ported(x), model(x), atol=1e-5, rtol=1e-4)
        feats = ported.forward_head(ported.forward_features(x), pre_logits=True)
        torch.testing.assert_close(feats, model.forward_features(x), atol=1e-5, rtol=1e-4)
    back = AudioViT(**TINY, num_classes=5, global_pool=global_pool)
    back.load_state_dict(convert_timm_to_official(ported.state_dict()), strict=True)
    torch.testing.assert_close(back.state_dict(), model.state_dict())
