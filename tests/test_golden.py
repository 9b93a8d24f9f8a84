"""Golden parity with the official implementations, driven by the case folders on disk.

Every folder under ``$PERCLI_GOLDEN_DIR`` (default ``<repo>/../shared/golden``) holding a
``config.json`` is one case: the official model's state, inputs and outputs (see the README
there). A case runs through the runner registered for its official file and class in `RUNNERS`;
a family percli does not implement yet is skipped with its name. Adding a family = writing one
runner that builds the percli model, replays the case's "calls" and returns every output by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import GOLDEN_DIR


@dataclass(frozen=True)
class Case:
    """One golden case folder."""

    name: str
    path: Path
    config: dict

    def inputs(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "inputs.safetensors"))

    def state(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "state.safetensors"))


def discover_cases(root: Path) -> list[Case]:
    """Case folders under `root` (skipping `full_configs` and folders without config.json)."""
    if not root.is_dir():
        return []
    cases = []
    for folder in sorted(root.iterdir()):
        config_file = folder / "config.json"
        if folder.name == "full_configs" or not config_file.is_file():
            continue
        cases.append(Case(folder.name, folder, json.loads(config_file.read_text())))
    return cases


# --------------------------------------------------------------------------- runners

Runner = Callable[[Case], dict[str, torch.Tensor]]


def _build_strict(cls: type[torch.nn.Module], case: Case) -> torch.nn.Module:
    model = cls(**case.config["constructor_kwargs"])
    # strict: every official tensor must be consumed and every percli tensor provided
    model.load_state_dict(case.state(), strict=True)
    return model.eval()


@torch.no_grad()
def run_hiera(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.hiera import Hiera

    model = _build_strict(Hiera, case)
    x, mask = case.inputs()["x"], case.inputs()["mask"]
    out: dict[str, torch.Tensor] = {}
    out["probs_eval"], maps = model(x, return_intermediates=True)
    out.update({f"intermediate_{i}": m for i, m in enumerate(maps)})
    model.train()  # the official head skips its softmax in train mode (all drop rates are 0)
    out["logits_trainmode"] = model(x)
    model.eval()
    out["masked_tokens_out"], maps = model(x, mask=mask, return_intermediates=True)
    out.update({f"masked_intermediate_{i}": m for i, m in enumerate(maps)})
    return out


@torch.no_grad()
def run_hiera_mae(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.hiera import MaskedAutoencoderHiera

    model = _build_strict(MaskedAutoencoderHiera, case)
    x, mask = case.inputs()["x"], case.inputs()["mask"]
    ratio = case.config["mask_ratio"]
    out: dict[str, torch.Tensor] = {}
    out["loss"], out["pred"], out["label"], out["mask_out"] = model(x, ratio, mask=mask)
    out["encoder_latent"] = model.forward_encoder(x, ratio, mask=mask)[0]
    out["decoder_pred_full"], out["pred_mask"] = model.forward_decoder(out["encoder_latent"], mask)
    return out


def _audiomae_kwargs(case: Case) -> dict:
    kwargs = dict(case.config["constructor_kwargs"])
    # the cases record the official norm factory as text; percli's default is that same LayerNorm
    norm = kwargs.pop("norm_layer", "")
    assert "LayerNorm" in norm and "eps=1e-6" in norm, f"unexpected official norm_layer {norm!r}"
    return kwargs


@torch.no_grad()
def run_audiomae_mae(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.audio_mae import AudioMaskedAutoencoderViT

    model = AudioMaskedAutoencoderViT(**_audiomae_kwargs(case))
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs, ratio = case.inputs(), case.config["mask_ratio"]
    x = inputs["x"]

    def run(prefix: str, **masking: torch.Tensor | bool) -> dict[str, torch.Tensor]:
        latent, mask, ids_restore = model.forward_encoder(x, ratio, **masking)
        pred = model.forward_decoder(latent, ids_restore)
        loss = model.forward_loss(x, pred, mask, norm_pix_loss=model.norm_pix_loss)
        return {f"{prefix}encoder_out": latent, f"{prefix}mask": mask, f"{prefix}ids_restore": ids_restore,
                f"{prefix}pred": pred, f"{prefix}loss": loss}

    out = run("", mask_2d=model.mask_2d, noise=inputs["noise"])
    out["target_patches"] = model.patchify(x)
    if "mask2d_noise_t" in inputs:  # second run with time/frequency masking
        out.update(run("mask2d_", mask_2d=True, noise_t=inputs["mask2d_noise_t"], noise_f=inputs["mask2d_noise_f"]))
    return out


@torch.no_grad()
def run_audiomae_vit(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.audio_mae import AudioViT

    model = AudioViT(**_audiomae_kwargs(case))  # 1024x128, 1 channel: the fine-tune patch embed
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs = case.inputs()
    x = inputs["x"]
    masked = model(x, case.config["mask_t_prob"], case.config["mask_f_prob"],
                   noise_t=inputs["masked_noise_t"], noise_f=inputs["masked_noise_f"])
    return {"logits": model(x), "features": model.forward_features(x), "masked_logits": masked}


@torch.no_grad()
def run_voicecraft(case: Case) -> dict[str, torch.Tensor]:
    import random

    from percli.models.voicecraft import VoiceCraft, kwargs_from_official_args
    from percli.models.voicecraft_codebooks import unmasked_intervals

    model = VoiceCraft(**kwargs_from_official_args(case.config["model_args_after_init"]))
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs, seed = case.inputs(), case.config["rng_seed"]
    # replay the official draws: random.seed(seed) / torch.manual_seed(seed) == these two generators
    res = model(inputs["x"], inputs["x_lens"], inputs["y"], inputs["y_lens"], rng=random.Random(seed),
                generator=torch.Generator().manual_seed(seed), return_intermediates=True)
    audio = res["audio"]
    out = {k: res[k] for k in ("loss", "top10acc", "effective_ntoken", "x_input", "x_padding_mask", "embedded_y",
                               "y_input", "y_padding_mask", "decoder_xy_input", "decoder_out_y", "logits_BKSC")}
    out.update({"cated_y_KTB": audio.tokens, "new_y_lens": audio.lengths, "logits_final_KTC": res["logits"],
                "targets_KT": res["targets"]})
    # the unpadded text / audio blocks of the full mask: read them in the longest sample
    L, blocked = res["x_input"].shape[1], res["decoder_blocked"]
    out["x_attention_mask"] = blocked[int(inputs["x_lens"].argmax()), :L, :L]
    out["y_attention_mask"] = blocked[int(audio.lengths.argmax()), L:, L:]
    out["decoder_attn_mask_float"] = blocked.repeat_interleave(model.nhead, dim=0)  # [B*heads, ..]
    for k in range(model.n_codebooks):
        out[f"top10acc_by_codebook_{k}"] = res["top10acc_by_codebook"][k]
        out[f"ce_loss_codebook_{k}"] = res["ce_by_codebook"][k]
    for i, spans in enumerate(audio.mask_intervals):
        out[f"mask_intervals_b{i}"] = torch.tensor(spans)
        out[f"non_mask_intervals_b{i}"] = torch.tensor(unmasked_intervals(spans, int(inputs["y_lens"][i])))
        out[f"mask_position_b{i}"] = torch.tensor(audio.mask_positions[i])
        out[f"mask_value_b{i}"] = torch.tensor(audio.mask_values[i])
        for j, (piece, delayed) in enumerate(zip(audio.targets[i], audio.shifted[i])):
            out[f"rearranged_b{i}_seg{j}"], out[f"shifted_b{i}_seg{j}"] = piece, delayed
    return out


def _pe_vision_outputs(visual: torch.nn.Module, x: torch.Tensor, x_res2: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs both PE cases share: per-block tokens, RoPE tables and the resized abs pos-embed."""
    out = {f"layer_{i}": visual.forward_features(x, layer_idx=i) for i in range(len(visual.transformer.resblocks))}
    out["ff_prenorm"] = visual.forward_features(x)
    out["rope_freq"] = visual.rope_angles(x.shape[2] // visual.patch_size, x.shape[3] // visual.patch_size)
    grid2 = (x_res2.shape[2] // visual.patch_size, x_res2.shape[3] // visual.patch_size)
    out["res2_rope_freq"], out["res2_abs_posemb"] = visual.rope_angles(*grid2), visual.sample_abs_posemb(*grid2)
    return out


@torch.no_grad()
def run_pe_clip(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.pe import PECLIP

    kwargs = case.config["constructor_kwargs"]  # init_logit_scale: the default (the state holds the value)
    model = PECLIP(kwargs["vision_cfg"], kwargs["text_cfg"])
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs, visual = case.inputs(), model.visual
    x, x_res2, text = inputs["x"], inputs["x_res2"], inputs["text"]
    out = _pe_vision_outputs(visual, x, x_res2)
    out["image_features"], out["text_features"], out["logit_scale"] = model(x, text)
    out["logits_per_image"] = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    out["encode_image"], out["encode_text"] = model.encode_image(x), model.encode_text(text)
    out["ff_norm"] = visual.forward_features(x, norm=True)
    out["ff_norm_strip_cls"] = visual.forward_features(x, norm=True, strip_cls_token=True)
    out["pooled_before_proj"] = visual.pool(out["ff_norm"])
    out["res2_encode_image"], out["res2_ff_norm"] = model.encode_image(x_res2), visual.forward_features(x_res2, True)
    out["text_tokens_ln_final"] = model.text_tokens(text)
    out["text_short_encode_text"] = model.encode_text(inputs["text_short"])
    return out


@torch.no_grad()
def run_pe_vision(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.pe import PEVisionTransformer

    model = _build_strict(PEVisionTransformer, case)
    inputs = case.inputs()
    out = _pe_vision_outputs(model, inputs["x"], inputs["x_res2"])
    out["forward"], out["res2_forward"] = model(inputs["x"]), model(inputs["x_res2"])
    return out


@torch.no_grad()
def run_openclip(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.clip import CLIP

    model = _build_strict(CLIP, case)
    image, text = case.inputs()["image"], case.inputs()["text"]
    out: dict[str, torch.Tensor] = {}
    out["image_features"], out["text_features"], out["logit_scale"] = model(image, text)
    out["logits_per_image"], out["logits_per_text"] = model.get_logits(image, text)
    out["encode_image"], out["encode_text"] = model.encode_image(image), model.encode_text(text)
    fi = model.forward_intermediates(image, text, image_output_extra_tokens=True, output_logits=True)
    for i, (patches, prefix) in enumerate(zip(fi["image_intermediates"], fi["image_intermediates_prefix"])):
        out[f"image_intermediate_{i}"], out[f"image_intermediate_prefix_{i}"] = patches, prefix
    out.update({f"text_intermediate_{i}": t for i, t in enumerate(fi["text_intermediates"])})
    out["fi_image_logits"] = fi["image_logits"]
    last = model.forward_intermediates(image, text, image_indices=[-1], text_indices=[-1], intermediates_only=True,
                                       normalize_intermediates=True, image_output_fmt="NLC",
                                       image_output_extra_tokens=True)
    out["image_patch_tokens_ln_post"] = last["image_intermediates"][0]
    out["image_cls_token_ln_post"] = last["image_intermediates_prefix"][0]
    out["text_tokens_ln_final"] = last["text_intermediates"][0]
    return out


@torch.no_grad()
def run_dinov2(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.dinov2 import DinoVisionTransformer

    kwargs = dict(case.config["constructor_kwargs"])
    # the official block/attention classes are recorded as text, and block_chunks only groups blocks for FSDP:
    # percli's one block type is the SDPA path those name (XFORMERS_DISABLED), and 0 keeps the flat names
    assert "NestedTensorBlock" in kwargs.pop("block_fn") and kwargs.pop("block_chunks") == 0
    model = DinoVisionTransformer(**kwargs)
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs = case.inputs()
    x, x_res2 = inputs["x"], inputs["x_res2"]
    out = {"forward": model(x)}
    out.update({f"ff_{k}": v for k, v in model.forward_features(x).items() if k != "masks"})
    out.update({f"ffmask_{k}": v for k, v in model.forward_features(x, masks=inputs["masks"]).items() if k != "masks"})
    normed = model.get_intermediate_layers(x, n=2, reshape=True, return_class_token=True, norm=True)
    for i, ((patches, cls), raw) in enumerate(zip(normed, model.get_intermediate_layers(x, n=2, norm=False))):
        out[f"interm_{i}_patch_bchw"], out[f"interm_{i}_cls"], out[f"interm_{i}_patch_prenorm"] = patches, cls, raw
    out.update({f"ffres2_{k}": v for k, v in model.forward_features(x_res2).items() if k != "masks"})
    H2, W2 = x_res2.shape[2:]
    tokens = torch.zeros(1, 1 + (H2 // model.patch_size) * (W2 // model.patch_size), model.embed_dim)
    out["ffres2_pos_embed_interp"] = model.interpolate_pos_encoding(tokens, H2, W2)
    return out


# (official_file, official_class) -> runner. Families not listed are skipped, not failed.
RUNNERS: dict[tuple[str, str], Runner] = {
    ("hiera/hiera.py", "Hiera"): run_hiera,
    ("hiera/hiera_mae.py", "MaskedAutoencoderHiera"): run_hiera_mae,
    ("models_mae.py", "MaskedAutoencoderViT"): run_audiomae_mae,
    ("models_vit.py", "VisionTransformer"): run_audiomae_vit,
    ("models/voicecraft.py", "VoiceCraft"): run_voicecraft,
    ("src/open_clip/model.py (towers: src/open_clip/transformer.py VisionTransformer / TextTransformer)", "CLIP"):
        run_openclip,
    ("core/vision_encoder/pe.py", "CLIP"): run_pe_clip,
    ("core/vision_encoder/pe.py", "VisionTransformer"): run_pe_vision,
    ("dinov2/models/vision_transformer.py", "DinoVisionTransformer"): run_dinov2,
}


# --------------------------------------------------------------------------- the test

CASES = discover_cases(GOLDEN_DIR)


def _assert_matches(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: dict) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {list(actual.shape)} != {list(expected.shape)}"
    if expected.dtype == torch.bool or not expected.dtype.is_floating_point:
        assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
        assert torch.equal(actual, expected), f"{name}: integer/bool tensor differs"
        return
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"], msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(not CASES, reason=f"no golden cases found in {GOLDEN_DIR} (set PERCLI_GOLDEN_DIR)")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_case_matches_official_outputs(case: Case) -> None:
    # a class may carry a note after its name, e.g. "VisionTransformer (models_vit.py, subclass of ...)"
    key = (case.config.get("official_file", "?"), case.config.get("official_class", "?").split(" ")[0])
    runner = RUNNERS.get(key)
    if runner is None:
        family = case.config.get("official_repo", "unknown repo")
        pytest.skip(f"family not implemented in percli yet: {family} {key[0]}::{key[1]}")
    expected = load_file(str(case.path / "outputs.safetensors"))
    actual = runner(case)
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"runner produced no value for {missing}"
    tol = case.config["recommended_tolerance"]
    for name, want in expected.items():
        _assert_matches(name, actual[name], want, tol)
