"""PE-AV / PE-A-Frame: release folders, masking, spans and bad input.

Parity with the official outputs is in tests/test_golden.py (peav_tiny_cfg, peaframe_tiny_cfg); the code
defaults' key names and counts against full_configs/pe_audio are in tests/test_registry.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from percli.models.pe_av import SPAN_THRESHOLD, PEAudioFrame, PEAudioVisual, frame_spans, from_folder

TOWER = {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
         "max_position_embeddings": 64}
DAC = {"encoder_hidden_size": 2, "downsampling_ratios": [2, 4], "codebook_size": 8, "codebook_dim": 4,
       "hidden_size": 8, "sampling_rate": 16000}
TEXT = {"vocab_size": 32, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
        "global_attn_every_n_layers": 2, "local_attention": 4, "max_position_embeddings": 32, "pad_token_id": 0}
VISION = {"image_size": 16, "patch_size": 8, "width": 16, "layers": 1, "heads": 2, "mlp_ratio": 2.0, "output_dim": 12,
          "pool_type": "attn", "attn_pooler_heads": 2, "use_cls_token": True}
AV_KW = {"audio_visual_model": {"audio_model": {"dac_vae_encoder": DAC, "audio_transformer": TOWER},
                                "visual_model": {"pe_encoder": VISION, "visual_transformer": TOWER},
                                "audio_visual_transformer": TOWER},
         "text_model": TEXT, "output_dim": 8, "nth_text_layer": 1}
FRAME_KW = {"audio_model": {"dac_vae_encoder": DAC, "audio_transformer": TOWER}, "text_model": TEXT, "output_dim": 8,
            "nth_text_layer": 1}


def _model(cls, kwargs, seed=0):
    torch.manual_seed(seed)
    return cls(**kwargs).eval()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(2, 1, 80, generator=g) * 0.1
    audio[1, :, 40:] = 0
    audio_mask = torch.ones(2, 80, dtype=torch.bool)
    audio_mask[1, 40:] = False
    frames = torch.rand(2, 4, 3, 16, 16, generator=g) * 2 - 1
    frames[1, 2:] = 0
    frames_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    ids = torch.tensor([[1, 5, 6, 7, 8, 2], [1, 9, 10, 2, 0, 0]])
    return audio, audio_mask, frames, frames_mask, ids, (ids != 0).long()


def _save_release(folder, model):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model.config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


@pytest.mark.parametrize("cls, kwargs", [(PEAudioVisual, AV_KW), (PEAudioFrame, FRAME_KW)])
def test_a_release_folder_builds_the_model_its_config_describes(tmp_path, cls, kwargs):
    model = _model(cls, kwargs, seed=3)
    _save_release(tmp_path / "release", model)
    loaded = from_folder(tmp_path / "release")
    assert type(loaded) is cls
    audio, audio_mask, frames, frames_mask, ids, text_mask = _batch()
    with torch.no_grad():
        if cls is PEAudioVisual:
            a = model(ids, frames, audio, text_mask, frames_mask, audio_mask)["audio_visual_embeds"]
            b = loaded(ids, frames, audio, text_mask, frames_mask, audio_mask)["audio_visual_embeds"]
        else:
            a = model(ids, audio, attention_mask=text_mask, padding_mask=audio_mask)["probs"]
            b = loaded(ids, audio, attention_mask=text_mask, padding_mask=audio_mask)["probs"]
    assert torch.equal(a, b)
    # and the build alone (weights=False) is a fresh init of the same architecture
    assert from_folder(tmp_path / "release", weights=False).state_dict().keys() == model.state_dict().keys()


def test_release_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        from_folder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        from_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"text_model": TEXT}))
    with pytest.raises(ValueError, match="neither 'audio_visual_model'"):
        from_folder(tmp_path)
    model = _model(PEAudioFrame, FRAME_KW)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["text_head.proj.weight"] = torch.zeros(3, 3)
    del state["logit_bias"]
    (tmp_path / "config.json").write_text(json.dumps(model.config))
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match="logit_bias") as err:
        from_folder(tmp_path)
    assert "text_head.proj.weight" in str(err.value)


def test_masks_keep_padded_steps_out_of_every_tower():
    # the codec itself sees a padded clip's zero tail (as in the official batching), so the towers are checked
    # on codec latents: garbage in the padded steps must not reach the valid ones
    model = _model(PEAudioVisual, AV_KW)
    audio, _, frames, frames_mask, ids, text_mask = _batch()
    audio_model = model.audio_visual_model.audio_model
    with torch.no_grad():
        latents = audio_model.dac_vae_encoder(audio[1:, :, :40]).transpose(1, 2)  # [1, 5, D]
        padded = torch.randn(2, 10, latents.shape[-1]) * 50
        padded[1, :5] = latents[0]
        feature_mask = torch.tensor([[True] * 10, [True] * 5 + [False] * 5])
        garbage_frames = frames.clone()
        garbage_frames[1, 2:] = torch.rand(2, 3, 16, 16) * 2 - 1
        ids_garbage = ids.clone()
        ids_garbage[1, 4:] = 7
        batch = model(ids_garbage, garbage_frames, None, text_mask, frames_mask, feature_mask, input_features=padded)
        alone = model(ids[1:, :4], frames[1:, :2], None, input_features=latents)
    for key in ("audio_embeds", "visual_embeds", "audio_visual_embeds", "audio_text_embeds", "visual_plus_text_embeds"):
        torch.testing.assert_close(batch[key][1:], alone[key], atol=1e-5, rtol=1e-4, msg=key)
    # the waveform path derives the latent mask from the sample mask, one step per codec hop
    _, audio_mask, *_ = _batch()
    assert torch.equal(audio_model(audio, audio_mask).mask[1], torch.tensor([True] * 5 + [False] * 5))


def test_each_modality_alone_gives_its_own_embeddings():
    model = _model(PEAudioVisual, AV_KW)
    audio, _, frames, _, ids, text_mask = _batch()
    with torch.no_grad():
        text = model(ids, attention_mask=text_mask)
        audio_only = model(input_values=audio)
        both = model(ids, frames, audio, text_mask)
    assert text["audio_embeds"] is None and text["audio_visual_text_embeds"] is not None
    assert audio_only["visual_embeds"] is None and audio_only["audio_visual_embeds"] is None
    torch.testing.assert_close(audio_only["audio_embeds"], both["audio_embeds"])
    torch.testing.assert_close(model.encode_audio_text(ids, text_mask), both["audio_text_embeds"])
    torch.testing.assert_close(model.encode_audio_video(audio, frames), both["audio_visual_embeds"])


def test_a_waveform_too_short_for_the_codec_is_a_clear_error():
    model = _model(PEAudioFrame, FRAME_KW)
    with pytest.raises(ValueError, match="too short .* codec hop \\(8\\)"):
        model(torch.tensor([[1, 2]]), torch.zeros(1, 1, 3))
    out = model(torch.tensor([[1, 2]]), torch.zeros(1, 1, 5))  # 5 samples reflect-pad to one hop
    assert out["probs"].shape == (1, 1)


def test_frame_spans_cut_runs_above_the_threshold_end_exclusive():
    probs = torch.tensor([[0.1, 0.5, 0.6, 0.2, 0.9], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert frame_spans(probs, 0.3, 0.04) == [[[0.04, 0.12], [0.16, 0.2]], []]
    assert frame_spans(torch.full((1, 3), 0.3), 0.3, 1.0) == [[]]  # strictly above
    assert SPAN_THRESHOLD == 0.3


def test_frame_model_scores_every_codec_frame_against_the_text():
    model = _model(PEAudioFrame, FRAME_KW)
    audio, audio_mask, _, _, ids, text_mask = _batch()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-0.5)
        out = model(ids, audio, attention_mask=text_mask, padding_mask=audio_mask, threshold=0.5)
    expected = (out["audio_embeds"] * out["text_embeds"][:, None]).sum(-1) * 2.0 - 0.5
    torch.testing.assert_close(out["logits"], expected)
    assert out["probs"].shape == (2, 10)
    assert out["spans"] == frame_spans(out["probs"], 0.5, 8 / 16000)
