"""Perception Encoder model: released configs, 2D RoPE, intermediates, checkpoint loading.

Numerical parity with the official code is in tests/test_golden.py (pe_core_tiny_cfg, pe_spatial_tiny_cfg).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from percli.models import create_model, list_models
from percli.models.pe import PECLIP, PEVisionTransformer, apply_rope, load_official_state, rope_2d_angles
from tests.conftest import GOLDEN_DIR

FULL_CONFIGS = GOLDEN_DIR / "full_configs" / "pe"
RELEASED = {
    "PE-Core-T16-384": "pe_core_t16_384", "PE-Core-S16-384": "pe_core_s16_384", "PE-Core-B16-224": "pe_core_b16_224",
    "PE-Core-L14-336": "pe_core_l14_336", "PE-Core-G14-448": "pe_core_g14_448", "PE-Lang-L14-448": "pe_lang_l14_448",
    "PE-Lang-G14-448": "pe_lang_g14_448", "PE-Spatial-T16-512": "pe_spatial_t16_512",
    "PE-Spatial-S16-512": "pe_spatial_s16_512", "PE-Spatial-B16-512": "pe_spatial_b16_512",
    "PE-Spatial-L14-448": "pe_spatial_l14_448", "PE-Spatial-G14-448": "pe_spatial_g14_448",
}
TINY_VISION = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=4.0, output_dim=16,
                   use_cls_token=True)
TINY_TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=2, output_dim=16)


def tiny_clip() -> PECLIP:
    torch.manual_seed(0)
    return PECLIP(TINY_VISION, TINY_TEXT).eval()


def tiny_text(batch: int = 3) -> torch.Tensor:
    """Rows [sot=62, ids..., eot=63, 0 pad...] of different lengths (EOT is the largest id, as in CLIP BPE)."""
    text = torch.zeros(batch, 8, dtype=torch.long)
    for i, length in enumerate((3, 5, 8)[:batch]):
        text[i, :length] = torch.randint(1, 62, (length,))
        text[i, 0], text[i, length - 1] = 62, 63
    return text


def official_keys(name: str) -> tuple[list[tuple[str, tuple[int, ...]]], dict[str, int]]:
    keys, totals = [], {}
    for line in (FULL_CONFIGS / name / "keys.txt").read_text().splitlines():
        if line.startswith("#"):
            words = line[2:].split()
            if words[-1].isdigit():
                totals[words[0]] = int(words[-1])
            continue
        key, shape = line.rsplit(" (", 1)
        keys.append((key, tuple(int(d) for d in shape.rstrip(")").split(",") if d.strip())))
    return keys, totals


@pytest.mark.skipif(not FULL_CONFIGS.is_dir(), reason=f"no {FULL_CONFIGS} (set PERCLI_GOLDEN_DIR)")
@pytest.mark.parametrize("official,name", RELEASED.items(), ids=list(RELEASED.values()))
def test_released_config_has_official_names_shapes_and_counts(official: str, name: str) -> None:
    with torch.device("meta"):
        model = create_model(name)
    keys, totals = official_keys(official)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == keys  # names, shapes and order
    assert sum(p.numel() for p in model.parameters()) == totals["total_parameters"]
    by_tower = json.loads((FULL_CONFIGS / "param_counts_by_tower.json").read_text())[official]
    vision = model.visual if isinstance(model, PECLIP) else model
    assert sum(p.numel() for p in vision.parameters()) == by_tower["vision"]


def test_every_released_config_is_registered() -> None:
    assert set(RELEASED.values()) <= set(list_models())


def test_rope_angles_follow_columns_then_rows_with_cls_at_origin() -> None:
    angles = rope_2d_angles(2, 3, head_dim=8, cls_token=True)
    assert angles.shape == (1, 1 + 2 * 3, 8)
    assert torch.equal(angles[0, 0], torch.zeros(8))  # cls token: not rotated
    # head_dim 8 -> 4 channels per axis -> frequencies 1 and 10000^-0.5, each for an interleaved pair;
    # patch (row 1, col 2) with a cls token sits at 1-based position (2, 3)
    expected = torch.tensor([3.0, 3.0, 0.03, 0.03, 2.0, 2.0, 0.02, 0.02])
    torch.testing.assert_close(angles[0, 1 + 1 * 3 + 2], expected)
    no_cls = rope_2d_angles(2, 3, head_dim=8, cls_token=False)
    assert no_cls.shape == (1, 6, 8) and torch.equal(no_cls[0, 0], torch.zeros(8))  # 0-based: (0, 0) first


def test_rope_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    angles = rope_2d_angles(5, 5, head_dim=8, cls_token=False)[0]  # [25, 8]

    def score(q_pos: int, k_pos: int) -> torch.Tensor:
        return (apply_rope(q, angles[None, q_pos:q_pos + 1]) * apply_rope(k, angles[None, k_pos:k_pos + 1])).sum()

    # (row 0, col 0) vs (1, 2) and (2, 1) vs (3, 3): the same offset (1, 2)
    torch.testing.assert_close(score(0, 1 * 5 + 2), score(2 * 5 + 1, 3 * 5 + 3))
    assert not torch.allclose(score(0, 1 * 5 + 2), score(0, 2 * 5 + 1))  # another offset, another score
    half = apply_rope(q.bfloat16(), angles[None, 7:8])
    assert half.dtype == torch.bfloat16


def test_vision_tower_runs_at_other_resolutions_and_keeps_native_posemb() -> None:
    visual = tiny_clip().visual
    assert torch.equal(visual.sample_abs_posemb(4, 4)[0], visual.positional_embedding)
    tokens = visual.forward_features(torch.randn(2, 3, 48, 24))
    assert tokens.shape == (2, 1 + 6 * 3, 32)
    assert visual.sample_abs_posemb(6, 3)[0, 0].equal(visual.positional_embedding[0])  # cls row kept


@torch.no_grad()
def test_intermediates_match_truncated_forward_and_final_embeddings() -> None:
    model = tiny_clip()
    image, text = torch.randn(2, 3, 32, 32), tiny_text()
    out = model.forward_intermediates(image, text)
    assert len(out["image_intermediates"]) == len(out["text_intermediates"]) == 2
    for i, tokens in enumerate(out["image_intermediates"]):
        torch.testing.assert_close(tokens, model.visual.forward_features(image, layer_idx=i))
    torch.testing.assert_close(out["image_features"], model.encode_image(image))
    torch.testing.assert_close(out["text_features"], model.encode_text(text))


@torch.no_grad()
def test_clip_forward_normalises_and_text_is_causal() -> None:
    model = tiny_clip()
    image, text = torch.randn(2, 3, 32, 32), tiny_text()
    image_features, text_features, scale = model(image, text)
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(scale, torch.tensor(1 / 0.07))
    changed = text.clone()
    changed[:, 4:] = 5  # later tokens must not change earlier states
    torch.testing.assert_close(model.text_tokens(changed)[:, :4], model.text_tokens(text)[:, :4])
    video = torch.randn(2, 3, 3, 32, 32)
    torch.testing.assert_close(model.encode_video(video), torch.stack([model.encode_image(v).mean(0) for v in video]))
    with pytest.raises(ValueError, match="at most 8"):
        model.encode_text(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("pool_type,expected", [("tok", lambda t: t[:, 0]), ("avg", lambda t: t.mean(1))])
@torch.no_grad()
def test_token_and_average_pooling(pool_type: str, expected) -> None:
    torch.manual_seed(0)
    visual = PEVisionTransformer(**{**TINY_VISION, "pool_type": pool_type}).eval()
    image = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(visual(image), expected(visual.forward_features(image, norm=True)) @ visual.proj)


def test_backward_reaches_every_parameter() -> None:
    model = tiny_clip().train()
    image_features, text_features, scale = model(torch.randn(3, 3, 32, 32), tiny_text())
    logits = scale * image_features @ text_features.T
    torch.nn.functional.cross_entropy(logits, torch.arange(3)).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.logit_scale.grad.abs() > 0


@torch.no_grad()
def test_load_official_clip_file_into_clip_and_into_vision_tower(tmp_path) -> None:
    source, image = tiny_clip(), torch.randn(1, 3, 32, 32)
    path = tmp_path / "PE-Core-tiny.pt"  # the DDP prefix and wrapper the official loader also strips
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    torch.manual_seed(1)
    clip = PECLIP(TINY_VISION, TINY_TEXT).eval()
    assert load_official_state(clip, path).dropped == []
    torch.testing.assert_close(clip.encode_image(image), source.encode_image(image))

    visual = PEVisionTransformer(**TINY_VISION).eval()
    report = load_official_state(visual, source.state_dict())
    assert "logit_scale" in report.dropped and "token_embedding.weight" in report.dropped
    assert not any(k.startswith("visual.") for k in report.dropped)
    torch.testing.assert_close(visual(image), source.encode_image(image))

    vision_only = tmp_path / "PE-Spatial-tiny.safetensors"
    save_file(source.visual.state_dict(), str(vision_only))
    with pytest.raises(RuntimeError, match="vision-only file"):
        load_official_state(PECLIP(TINY_VISION, TINY_TEXT), vision_only)
    wrong = PEVisionTransformer(**{**TINY_VISION, "width": 64})
    with pytest.raises(RuntimeError, match=r"wrong shape .*\[96, 32\] != \[192, 64\]"):
        load_official_state(wrong, vision_only)


def test_checkpoint_meta_rebuilds_the_model() -> None:
    model = create_model("pe_core_t16_384", vision_cfg={"layers": 1}, text_cfg={"layers": 1, "vocab_size": 512})
    meta = json.loads(json.dumps(model.checkpoint_meta()))  # JSON-ready
    assert meta["name"] == "pe_core_t16_384" and meta["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert meta["preprocess"]["input_size"] == [3, 384, 384] and meta["preprocess"]["context_length"] == 32
    rebuilt = PECLIP(**meta["config"])
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()]
    assert math.isclose(rebuilt.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
