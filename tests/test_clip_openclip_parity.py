"""percli's CLIP against open_clip's ``CLIP(**cfg)`` built from the same config dicts (skipped without open_clip).

open_clip_torch is not a percli dependency; these tests run where it is installed (``pip install
open_clip_torch==3.3.0``). Each case builds both models from one open_clip model-config dict, checks
the parameter names and shapes, copies open_clip's random weights into percli's model strictly and
compares the image/text features, the logit scale (and bias) and the logits.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest
import torch

from percli.models import create_model
from percli.models.clip import CLIP, CLIPTextCfg, CLIPVisionCfg, load_official_state

open_clip = pytest.importorskip("open_clip")
from open_clip import model as oc_model  # noqa: E402

VISION = dict(image_size=32, patch_size=8, width=32, head_width=16, layers=2)
TEXT = dict(context_length=12, vocab_size=1000, width=16, heads=2, layers=2)


def case(vision: dict | None = None, text: dict | None = None, **top) -> dict:
    return {"embed_dim": 24, "quick_gelu": True, **top,
            "vision_cfg": {**VISION, **(vision or {})}, "text_cfg": {**TEXT, **(text or {})}}


CASES = {
    "registered_tiny": case(),
    "rectangular_image": case({"image_size": [32, 48]}),
    "rectangular_patch": case({"image_size": [32, 48], "patch_size": [8, 16]}),
    "image_not_a_multiple": case({"image_size": 36}),
    "bigG_mlp_ratio": case({"mlp_ratio": 4.9231}, {"mlp_ratio": 3.5}),
    "avg_pool": case({"pool_type": "avg"}),
    "no_pool": case({"pool_type": "none"}),
    "final_ln_after_pool": case({"final_ln_after_pool": True, "pool_type": "avg"}),
    "no_ln_pre": case({"no_ln_pre": True}),
    "attn_pooler": case({"attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 4}),
    "attn_pooler_avg": case({"attentional_pool": True, "attn_pooler_queries": 3, "attn_pooler_heads": 2,
                             "pool_type": "avg"}),
    "layer_scale": case({"ls_init_value": 0.1}, {"ls_init_value": 0.2}),
    "sin_cos_2d": case({"pos_embed_type": "sin_cos_2d"}),
    "patch_dropout_eval": case({"patch_dropout": 0.5}),
    "gelu_kwargs_norm_kwargs": case({"act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}},
                                    {"norm_kwargs": {"eps": 1e-6}}, quick_gelu=False),
    "text_eos_pool": case(text={"pool_type": "eos", "eos_id": 999}),
    "text_first_pool_bidirectional": case(text={"pool_type": "first", "no_causal_mask": True}),
    "text_last_pool": case(text={"pool_type": "last", "final_ln_after_pool": True}),
    "text_proj_bias": case(text={"proj_bias": True}),
    "text_no_proj": case(text={"proj_type": "none"}, embed_dim=16),
    "logit_bias": case(init_logit_scale=2.0, init_logit_bias=-5.0, nonscalar_logit_scale=True),
    "ignored_foreign_options": case({"timm_pool": "", "timm_drop": 0.1}, {"hf_proj_type": "linear", "pad_id": 3}),
}


def _defaults(cls: type) -> dict:
    return {f.name: (f.default if f.default is not MISSING else f.default_factory()) for f in fields(cls)}


@pytest.mark.parametrize(("ours", "theirs"), [(CLIPVisionCfg, oc_model.CLIPVisionCfg),
                                              (CLIPTextCfg, oc_model.CLIPTextCfg)])
def test_config_schema_matches_open_clip(ours: type, theirs: type) -> None:
    assert _defaults(ours) == _defaults(theirs)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.filterwarnings("ignore:The use of `x.T`")  # pool_type="none": [B, N, D] logits, as in open_clip
@torch.no_grad()
def test_same_config_gives_open_clip_names_shapes_and_outputs(name: str) -> None:
    cfg = CASES[name]
    torch.manual_seed(0)
    theirs = open_clip.CLIP(**cfg).eval()
    ours = CLIP(**cfg).eval()
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    load_official_state(ours, theirs.state_dict())
    height, width = (cfg["vision_cfg"]["image_size"],) * 2 if isinstance(cfg["vision_cfg"]["image_size"], int) \
        else cfg["vision_cfg"]["image_size"]
    image = torch.randn(2, 3, height, width)
    text = torch.randint(1, 998, (3, TEXT["context_length"]))
    text[:, 7:] = 0
    text[:, 6] = 999  # an end-of-text token, the highest id of each row
    for got, expected in zip(ours(image, text), theirs(image, text), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for got, expected in zip(ours.get_logits(image, text), theirs.get_logits(image, text), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    if not cfg["vision_cfg"].get("attentional_pool"):
        kw = dict(image_indices=[0, 1], normalize_intermediates=True, image_output_extra_tokens=True)
        got, expected = ours.forward_intermediates(image, **kw), theirs.forward_intermediates(image, **kw)
        for key in ("image_intermediates", "image_intermediates_prefix"):
            for a, b in zip(got[key], expected[key], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["clip_vit_b32_quickgelu", "clip_vit_b16_quickgelu", "clip_vit_l14_quickgelu",
                                  "clip_vit_h14_quickgelu", "clip_vit_bigg14_quickgelu"])
def test_registered_variants_match_open_clip_model_configs(name: str) -> None:
    config = {"clip_vit_b32_quickgelu": "ViT-B-32-quickgelu", "clip_vit_b16_quickgelu": "ViT-B-16-quickgelu",
              "clip_vit_l14_quickgelu": "ViT-L-14-quickgelu", "clip_vit_h14_quickgelu": "ViT-H-14-quickgelu",
              "clip_vit_bigg14_quickgelu": "ViT-bigG-14-quickgelu"}[name]
    cfg = open_clip.get_model_config(config)
    with torch.device("meta"):
        theirs, ours, direct = open_clip.CLIP(**cfg), create_model(name), CLIP(**cfg)
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    assert {k: tuple(v.shape) for k, v in direct.state_dict().items()} == want
