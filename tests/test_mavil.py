"""MAViL (AV-SUPERB's VisionTransformerMM): position tables, masking draws, layouts and the official loader.

Parity with the official outputs is in tests/test_golden.py; these pin what the golden cases do not reach."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from percli.models import create_model
from percli.models.mavil import VisionTransformerMM, load_official_state, sincos_pos_embed_3d
from tests.conftest import GOLDEN_DIR

TINY = dict(img_size=(64, 32), embed_dim=16, depth=2, num_heads=2, num_classes=3, n_frm=2, video_size=32)


def _inputs(batch: int = 2, frames: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 1, 64, 32, generator=g), torch.randn(batch, 3, frames, 32, 32, generator=g)


@pytest.mark.parametrize("case", ["mavil_tiny_cfg", "mavil_nofusion_tiny_cfg"])
def test_constructor_position_tables_equal_the_official_sincos_helpers(case):
    path = GOLDEN_DIR / case / "state.safetensors"
    if not path.is_file():
        pytest.skip(f"golden case {case} not found in {GOLDEN_DIR}")
    state = load_file(str(path))
    dim = state["cls_token"].shape[-1]
    fbank = (1024, 128) if state["pos_embed"].shape[1] == 513 else (64, 32)
    n_frm = 2 * (state["pos_embed_v"].shape[1] - 1) // 196
    model = VisionTransformerMM(img_size=fbank, embed_dim=dim, depth=1, num_heads=2, n_frm=n_frm)
    torch.testing.assert_close(model.pos_embed, state["pos_embed"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.pos_embed_v, state["pos_embed_v"], atol=1e-6, rtol=0)
    assert not model.pos_embed.requires_grad and not model.pos_embed_v.requires_grad


def test_video_table_puts_time_first_then_the_spatial_table():
    emb = sincos_pos_embed_3d(16, grid=2, frames=3)[0, 1:].view(3, 4, 16)  # [T, H*W, D]
    assert torch.equal(emb[:, :1, :4].expand(-1, 4, -1), emb[:, :, :4])  # time quarter: same for every patch
    assert torch.equal(emb[:1, :, 4:].expand(3, -1, -1), emb[:, :, 4:])  # spatial part: same for every frame


def test_masking_draws_from_the_generator_in_the_official_order():
    model = VisionTransformerMM(**TINY, depth_av=1, ft=True).eval()
    x, v = _inputs()
    rates = (0.25, 0.5, 0.5)
    drawn = model.forward_features_av(x, v, *rates, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    noise = {"mask_noise_t": torch.rand(2, 4, generator=g), "mask_noise_f": torch.rand(2, 2, generator=g),
             "mask_noise_v": torch.rand(2, 4, generator=g)}
    torch.testing.assert_close(model.forward_features_av_mask(x, v, *rates, **noise), drawn)
    assert not torch.allclose(model.forward_features_av(x, v), drawn)


def test_frames_beyond_n_frm_are_ignored_and_the_pretrained_layout_has_no_classifier():
    model = VisionTransformerMM(**TINY, depth_av=2, ft=False).eval()
    x, v = _inputs(frames=4)
    torch.testing.assert_close(model.forward_features_av(x, v), model.forward_features_av(x, v[:, :, :2]))
    with pytest.raises(ValueError, match="no classifier"):
        model(x, v)
    lists = model.avsuperb_features(x, v)
    assert [len(lists[k]) for k in ("audio_feats", "video_feats", "fusion_feats")] == [3, 3, 3]
    assert lists["fusion_feats"][-1].shape == (2, 1, 32)
    assert lists["fusion_seq_feats"][0].shape == (2, 1 + 8 + 1 + 4, 16)  # both CLS, 4x2 audio and 1x2x2 video tokens
    torch.testing.assert_close(lists["fusion_feats"][-1][:, 0], model.forward_features_av(x, v))


def test_no_fusion_layout_returns_one_output_per_tower_and_refuses_the_expert():
    model = VisionTransformerMM(**TINY, av_fusion=False).eval()
    x, v = _inputs()
    logits_a, logits_v = model(x, v)
    assert logits_a.shape == logits_v.shape == (2, 3)
    torch.testing.assert_close(model.head_a(model.forward_features_a(x)), logits_a)
    with pytest.raises(ValueError, match="fusion layout"):
        model.avsuperb_features(x, v)


def test_loader_drops_pretraining_tensors_and_a_foreign_head_and_names_the_fine_tuned_layout():
    fine_tuned = VisionTransformerMM(**TINY, depth_av=3, ft=True).state_dict()
    target = VisionTransformerMM(**{**TINY, "num_classes": 5}, depth_av=3, ft=True)
    report = load_official_state(target, {**fine_tuned, "decoder_pred.weight": torch.zeros(2)})
    assert report.head_reset and {"head_av.weight", "head_av.bias", "decoder_pred.weight"} <= set(report.dropped)
    assert report.missing == ["head_av.bias", "head_av.weight"]
    torch.testing.assert_close(target.blocks_av[2].mlp.fc1.weight, fine_tuned["blocks_av.2.mlp.fc1.weight"])
    with pytest.raises(RuntimeError, match="depth_av=3, ft=True"):
        load_official_state(VisionTransformerMM(**TINY), fine_tuned)
    no_tables = {k: t for k, t in fine_tuned.items() if not k.startswith("pos_embed")}
    assert set(load_official_state(VisionTransformerMM(**TINY, depth_av=3, ft=True), no_tables).missing) == {
        "pos_embed", "pos_embed_v"}


def test_registered_variants_record_their_arguments_and_preprocessing():
    with torch.device("meta"):
        model = create_model("mavil_vit_large_patch16", depth_av=3, ft=True)
    meta = model.checkpoint_meta()
    assert meta["name"] == "mavil_vit_large_patch16"
    assert (meta["config"]["embed_dim"], meta["config"]["depth"], meta["config"]["depth_av"]) == (1024, 24, 3)
    assert meta["preprocess"]["video"]["frames"] == 8 and meta["preprocess"]["audio"]["target_length"] == 1024
