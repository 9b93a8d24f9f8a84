"""percli's open_clip-compatible CLIP: registered sizes, checkpoint loading, pooling and intermediates.

Numerical parity with open_clip itself is the golden case ``openclip_vit_tiny_cfg`` (tests/test_golden.py).
"""

from __future__ import annotations

import functools

import pytest
import torch
from safetensors.torch import save_file

from percli.models import create_model, list_models
from percli.models.clip import CLIP, QuickGELU, load_official_state
from percli.models.clip_tokenizer import CLIPTokenizer
from tests.conftest import GOLDEN_DIR

# open_clip 3.3.0 CLIP(**get_model_config(name)): total, visual.*, logit_scale (../shared/golden/full_configs).
OPEN_CLIP_COUNTS = {
    "clip_vit_b32_quickgelu": ("ViT-B-32-quickgelu", 151277313, 87849216),
    "clip_vit_b16_quickgelu": ("ViT-B-16-quickgelu", 149620737, 86192640),
    "clip_vit_l14_quickgelu": ("ViT-L-14-quickgelu", 427616513, 303966208),
    "clip_vit_h14_quickgelu": ("ViT-H-14-quickgelu", 986109441, 632076800),
    "clip_vit_bigg14_quickgelu": ("ViT-bigG-14-quickgelu", 2539567105, 1844907264),
}
TINY = dict(embed_dim=24, quick_gelu=True,
            vision_cfg=dict(image_size=48, patch_size=8, width=32, head_width=16, layers=2),
            text_cfg=dict(context_length=16, vocab_size=49408, width=12, heads=2, layers=2))


def tiny_clip(seed: int = 0, **overrides) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(**{**TINY, **overrides}).eval()


@functools.cache
def _tokens() -> torch.Tensor:
    return CLIPTokenizer(context_length=16)(["a photo of a cat", "two dogs in the snow", "a red square"])


def texts() -> torch.Tensor:
    return _tokens().clone()


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_COUNTS))
def test_registered_variant_has_open_clip_names_shapes_and_counts(name: str) -> None:
    assert name in list_models()
    with torch.device("meta"):
        model = create_model(name)
    config, total, vision = OPEN_CLIP_COUNTS[name]
    state = model.state_dict()
    assert sum(t.numel() for t in state.values()) == total
    assert sum(t.numel() for k, t in state.items() if k.startswith("visual.")) == vision
    keys_file = GOLDEN_DIR / "full_configs" / "openclip" / config / "keys.txt"
    if keys_file.is_file():  # the exact open_clip key list, in order, with shapes
        rows = [line.rsplit(" (", 1) for line in keys_file.read_text().splitlines() if not line.startswith("#")]
        official = {key: [int(d) for d in dims.rstrip(",)").split(",") if d.strip()] for key, dims in rows}
        assert {k: list(t.shape) for k, t in state.items()} == official
    assert isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_load_official_state_reads_a_metaclip_style_checkpoint(tmp_path) -> None:
    source = tiny_clip(seed=1)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # DDP-trained open_clip checkpoint
    state["module.logit_scale"] = state["module.logit_scale"].reshape(1)
    torch.save({"epoch": 32, "name": "b32_400m", "state_dict": state}, tmp_path / "b32_400m.pt")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    image = torch.randn(2, 3, 48, 48)
    want = source(image, texts())
    for path in (tmp_path / "b32_400m.pt", tmp_path / "model.safetensors"):
        model = tiny_clip(seed=2)
        report = load_official_state(model, path)
        assert report.source_format == "open_clip" and not report.missing and not report.dropped
        for got, expected in zip(model(image, texts()), want):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_load_official_state_names_what_does_not_fit() -> None:
    state = tiny_clip().state_dict()
    state["logit_bias"] = torch.zeros(())  # a SigLIP checkpoint
    del state["visual.proj"]
    with pytest.raises(RuntimeError, match=r"missing \['visual.proj'\], unexpected \['logit_bias'\]"):
        load_official_state(tiny_clip(), state)
    with pytest.raises(RuntimeError, match=r"wrong shape \['visual.positional_embedding \[50, 32\]"):
        load_official_state(tiny_clip(), tiny_clip(vision_cfg={**TINY["vision_cfg"], "image_size": 56}).state_dict())


@torch.no_grad()
def test_text_embedding_is_read_at_the_end_of_text_token() -> None:
    model, text = tiny_clip(), texts()
    base = model.encode_text(text)
    eot = text.argmax(dim=-1)
    after = text.clone()
    after[0, eot[0] + 1:] = 1234  # tokens after the EOT cannot reach it through the causal mask
    torch.testing.assert_close(model.encode_text(after), base)
    before = text.clone()
    before[0, 1] = 1234
    assert not torch.allclose(model.encode_text(before)[0], base[0])
    # a shorter context (the causal prefix) gives the same embedding
    torch.testing.assert_close(model.encode_text(text[:, :int(eot.max()) + 1]), base)


@torch.no_grad()
def test_forward_returns_normalised_features_and_exp_scale() -> None:
    model = tiny_clip()
    image_features, text_features, scale = model(torch.randn(2, 3, 48, 48), texts())
    assert image_features.shape == (2, 24) and text_features.shape == (3, 24)
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(scale, torch.tensor(1 / 0.07))
    assert model(text=texts())[0] is None


@torch.no_grad()
def test_forward_intermediates_layout_and_early_stop() -> None:
    model, image = tiny_clip(), torch.randn(2, 3, 48, 48)
    full = model.forward_intermediates(image, texts(), image_output_extra_tokens=True, output_logits=True)
    assert [tuple(t.shape) for t in full["image_intermediates"]] == [(2, 32, 6, 6)] * 2
    assert [tuple(t.shape) for t in full["image_intermediates_prefix"]] == [(2, 1, 32)] * 2
    assert [tuple(t.shape) for t in full["text_intermediates"]] == [(3, 16, 12)] * 2
    torch.testing.assert_close(full["image_logits"], model.get_logits(image, texts())[0])
    first = model.forward_intermediates(image, texts(), image_indices=[0], text_indices=1, stop_early=True,
                                        intermediates_only=True, image_output_fmt="NLC")
    assert set(first) == {"image_intermediates", "text_intermediates"}
    nlc = full["image_intermediates"][0].flatten(2).transpose(1, 2)  # [B, C, gh, gw] -> [B, gh*gw, C]
    torch.testing.assert_close(first["image_intermediates"][0], nlc)
    torch.testing.assert_close(first["text_intermediates"][0], full["text_intermediates"][1])


@torch.no_grad()
def test_average_pooling_and_gelu_options() -> None:
    model = tiny_clip(quick_gelu=False, vision_cfg={**TINY["vision_cfg"], "pool_type": "avg"})
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    image = torch.randn(2, 3, 48, 48)
    tokens = model.visual.transformer(model.visual.embed(image))
    want = model.visual.ln_post(tokens)[:, 1:].mean(dim=1) @ model.visual.proj
    torch.testing.assert_close(model.encode_image(image), want)


@pytest.mark.parametrize(("tower", "key", "value", "supported"), [
    ("vision_cfg", "qk_norm", True, "custom attention blocks"),
    ("vision_cfg", "block_type", "custom", "'default'"),
    ("vision_cfg", "timm_model_name", "resnet50", "timm image towers"),
    ("vision_cfg", "layers", [3, 4, 6, 3], "ResNet towers"),
    ("vision_cfg", "pool_type", "max", "'tok', 'avg', 'none'"),
    ("vision_cfg", "attentional_pool", "parallel", "False or True"),
    ("vision_cfg", "image_size", [48, 48, 3], r"\(H, W\) pair"),
    ("vision_cfg", "output_tokens", True, "forward_intermediates"),
    ("text_cfg", "embed_cls", True, "CoCa"),
    ("text_cfg", "hf_model_name", "bert-base-uncased", "Hugging Face"),
    ("text_cfg", "hf_tokenizer_name", "bert-base-uncased", "CLIP BPE"),
    ("text_cfg", "pool_type", "mean", "'argmax', 'eos'"),
    ("text_cfg", "proj_type", "mlp", "'linear' or 'none'"),
])
def test_unsupported_open_clip_values_are_refused_naming_the_key(tower, key, value, supported) -> None:
    with pytest.raises(ValueError, match=rf"{tower}\.{key}=.* is not supported by percli's CLIP; supported: .*"
                                         rf"{supported}"):
        CLIP(**{**TINY, tower: {**TINY[tower], key: value}})
    with pytest.raises(ValueError, match=r"vision_cfg: unknown open_clip options \['patch_sise'\]"):
        CLIP(**{**TINY, "vision_cfg": {**TINY["vision_cfg"], "patch_sise": 8}})


@torch.no_grad()
def test_rectangular_image_and_patch_sizes_give_a_non_square_grid() -> None:
    model = tiny_clip(vision_cfg={**TINY["vision_cfg"], "image_size": [32, 64], "patch_size": [8, 16]})
    assert model.visual.grid_size == (4, 4) and model.visual.conv1.stride == (8, 16)
    model = tiny_clip(vision_cfg={**TINY["vision_cfg"], "image_size": (32, 64)})
    assert model.visual.grid_size == (4, 8)
    assert model.visual.positional_embedding.shape == (4 * 8 + 1, 32)
    assert model.preprocess["image_size"] == [32, 64] and tiny_clip().preprocess["image_size"] == 48
    image = torch.randn(2, 3, 32, 64)
    assert model.encode_image(image).shape == (2, 24)
    out = model.forward_intermediates(image, image_indices=[1], intermediates_only=True)
    assert out["image_intermediates"][0].shape == (2, 32, 4, 8)
    with pytest.raises(RuntimeError):  # the square image the table was not built for
        model.encode_image(torch.randn(2, 3, 48, 48))
    rebuilt = CLIP(**model.checkpoint_meta()["config"])  # the (H, W) pair survives the checkpoint metadata
    assert rebuilt.visual.grid_size == (4, 8)


@torch.no_grad()
def test_pooling_and_block_options_change_the_tower_as_open_clip_describes() -> None:
    image = torch.randn(2, 3, 48, 48)
    model = tiny_clip(vision_cfg={**TINY["vision_cfg"], "final_ln_after_pool": True, "no_ln_pre": True,
                                  "mlp_ratio": 2.5, "ls_init_value": 0.1})
    assert isinstance(model.visual.ln_pre, torch.nn.Identity)
    assert model.visual.transformer.resblocks[0].mlp.c_fc.out_features == 80  # int(32 * 2.5)
    torch.testing.assert_close(model.visual.transformer.resblocks[0].ls_1.gamma, torch.full((32,), 0.1))
    tokens = model.visual.transformer(model.visual.embed(image))
    torch.testing.assert_close(model.encode_image(image), model.visual.ln_post(tokens[:, 0]) @ model.visual.proj)
    pooled = tiny_clip(vision_cfg={**TINY["vision_cfg"], "attentional_pool": True, "attn_pooler_queries": 5,
                                   "attn_pooler_heads": 4})
    assert pooled.visual.attn_pool.query.shape == (5, 24) and pooled.visual.proj.shape == (24, 24)
    assert pooled.encode_image(image).shape == (2, 24)
    assert tiny_clip(vision_cfg={**TINY["vision_cfg"], "pool_type": "none"}).encode_image(image).shape == (2, 37, 24)
    text = tiny_clip(text_cfg={**TINY["text_cfg"], "proj_type": "none", "pool_type": "last",
                               "no_causal_mask": True})
    assert text.text_projection is None and text.encode_text(texts()).shape == (3, 12)
    biased = tiny_clip(init_logit_bias=-10.0, nonscalar_logit_scale=True)
    assert biased.logit_scale.shape == (1,) and len(biased(image, texts())) == 4
    logits = biased.get_logits(image, texts())[0]
    torch.testing.assert_close(logits, tiny_clip(init_logit_bias=-10.0).get_logits(image, texts())[0])


def test_checkpoint_meta_rebuilds_the_model() -> None:
    model = create_model("clip_vit_b32_quickgelu", embed_dim=24, vision_cfg=TINY["vision_cfg"],
                         text_cfg=TINY["text_cfg"])
    meta = model.checkpoint_meta()
    assert meta["name"] == "clip_vit_b32_quickgelu" and meta["preprocess"]["image_size"] == 48
    rebuilt = CLIP(**meta["config"])
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
