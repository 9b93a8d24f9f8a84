"""HiFi-GAN generator: official sizes and names, checkpoint conversion both ways, and GAN-free overfitting."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from percli.core.checkpoint import RefusedPickleError
from percli.core.mel import MelConfig, log_mel
from percli.models import check_checkpoint_fits, create_model, family_fit, weights_loader
from percli.models import hifigan as hg

# (weights + biases with weight norm folded, weights only, the paper's Table 1 figure in millions)
PAPER = {"hifigan_v1": (13_926_017, 13_916_384, 13.92), "hifigan_v2": (925_985, 923_576, 0.92),
         "hifigan_v3": (1_462_273, 1_460_448, 1.46)}


class Payload:  # a custom object: a checkpoint pickling it must be refused, never unpickled
    def __reduce__(self):
        return (print, ("unpickled!",))


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _clip(seconds: float = 0.5, sr: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return sum(0.3 / k * torch.sin(2 * math.pi * 220 * k * t) for k in range(1, 5)).unsqueeze(0)


def _perturbed(name: str) -> nn.Module:
    """A model whose weight-norm g is not ||v|| (so a lost g or v would show in the outputs)."""
    torch.manual_seed(0)
    model = create_model(name)
    with torch.no_grad():
        for key, p in model.named_parameters():
            p.mul_(1 + 0.5 * torch.rand_like(p)) if key.endswith("original0") else p.add_(0.01 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("name", list(PAPER))
def test_official_variants_have_the_paper_parameter_counts(name):
    folded_count, weights_only, paper = PAPER[name]
    model = hg.remove_weight_norm(_meta(name))
    assert not any("parametrizations" in k for k in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == folded_count
    assert sum(p.numel() for k, p in model.named_parameters() if k.endswith("weight")) == weights_only
    # Table 1 matches weights+biases truncated to 0.01M, and weights alone rounded to 0.01M
    assert math.floor(folded_count / 1e4) / 100 == paper
    assert round(weights_only / 1e6, 2) == paper


def test_variant_configs_and_16k_variants_match_percli_mel():
    cfg = MelConfig()
    for name in ("hifigan_16k_v1", "hifigan_16k_tiny"):
        model = _meta(name)
        assert model.hop_length == model.config["hop_length"] == cfg.hop_length
        assert model.config["num_mels"] == cfg.n_mels and model.sampling_rate == cfg.sample_rate
    v3 = _meta("hifigan_v3")
    assert v3.config["upsample_rates"] == [8, 8, 4] and v3.config["hop_length"] == 256 and v3.config["resblock"] == "2"
    assert isinstance(v3.resblocks[0], hg.ResBlock2) and len(v3.resblocks) == 9
    assert _meta("hifigan_v1", upsample_initial_channel=64).config["upsample_initial_channel"] == 64
    tiny = hg.remove_weight_norm(_meta("hifigan_16k_tiny"))
    assert sum(p.numel() for p in tiny.parameters()) == 26_405
    with pytest.raises(ValueError, match="resblock"):
        hg.HiFiGANGenerator(resblock="3")


@pytest.mark.parametrize("name", ["hifigan_v1", "hifigan_v2", "hifigan_v3", "hifigan_16k_v1", "hifigan_16k_tiny"])
def test_builds_on_meta_with_a_loader_that_accepts_official_names(name):
    model = _meta(name)
    assert all(p.is_meta for p in model.parameters())
    assert weights_loader(model) is hg.load_official_state
    official = hg.official_state_dict(model)
    assert {"conv_pre.weight_g", "conv_pre.weight_v", "conv_pre.bias", "ups.0.weight_g", "conv_post.weight_v"} <= set(
        official)
    block = "convs1.2" if model.config["resblock"] == "1" else "convs.1"
    assert f"resblocks.0.{block}.weight_g" in official
    # what `create_model_for` does with a file's tensor stand-ins: build on meta, fit through the family loader
    check_checkpoint_fits(lambda: create_model(name), "g_x", official, family_fit)


def test_shapes_match_torchs_legacy_weight_norm_as_the_official_code_used():
    with pytest.warns(FutureWarning):  # deprecated, but what the official models.py calls
        legacy = nn.utils.weight_norm(nn.ConvTranspose1d(512, 256, 16, 8, padding=4))
    ours = hg.official_state_dict(_meta("hifigan_v1"))
    assert ours["ups.0.weight_g"].shape == legacy.weight_g.shape == (512, 1, 1)
    assert ours["ups.0.weight_v"].shape == legacy.weight_v.shape


@pytest.mark.parametrize("name", ["hifigan_16k_tiny", "hifigan_v3"])
def test_output_is_frames_times_hop_in_minus_one_one(name):
    model = create_model(name).eval()
    mel = torch.randn(2, model.config["num_mels"], 7) * 3
    with torch.no_grad():
        wave = model(mel)
    assert wave.shape == (2, 7 * model.hop_length)
    assert wave.abs().max() <= 1 and wave.std() > 0


def test_official_checkpoint_round_trip_through_the_loader(tmp_path):
    source = _perturbed("hifigan_16k_tiny")
    state = {}
    for key, t in source.state_dict().items():  # the official layout, spelled out independently of the module
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        state[key.replace(".parametrizations.weight.original1", ".weight_v")] = t.clone()
    assert state.keys() == hg.official_state_dict(source).keys()
    assert any(k.endswith(".weight_g") for k in state) and not any("parametrizations" in k for k in state)
    path = tmp_path / "g_00000001"
    torch.save({"generator": state}, path)
    mel = torch.randn(1, 64, 9)
    with torch.no_grad():
        expected = source(mel)
        fresh = create_model("hifigan_16k_tiny").eval()
        assert not torch.equal(fresh(mel), expected)
        report = weights_loader(fresh)(fresh, path)
        assert report.source_format == "official"
        assert torch.equal(fresh(mel), expected)
        # folded layouts, both ways: an exported (weight-norm-free) model, and a folded state into a weight-normed one
        folded = hg.remove_weight_norm(create_model("hifigan_16k_tiny")).eval()
        hg.load_official_state(folded, path)
        assert torch.allclose(folded(mel), expected, atol=1e-6)
        back = create_model("hifigan_16k_tiny").eval()
        assert hg.load_official_state(back, folded.state_dict()).source_format == "percli"
        assert torch.allclose(back(mel), expected, atol=1e-6)
        assert torch.allclose(hg.remove_weight_norm(copy.deepcopy(source))(mel), expected, atol=1e-6)


def test_percli_safetensors_loads_and_mismatches_are_named(tmp_path):
    from safetensors.torch import save_file

    source = _perturbed("hifigan_16k_tiny")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "model.safetensors")
    target = create_model("hifigan_16k_tiny").eval()
    assert hg.load_official_state(target, tmp_path / "model.safetensors").source_format == "percli"
    mel = torch.randn(1, 64, 5)
    with torch.no_grad():
        assert torch.equal(target(mel), source(mel))
    with pytest.raises(RuntimeError, match="wrong shape"):
        hg.load_official_state(create_model("hifigan_16k_tiny", num_mels=80), source.state_dict())
    partial = {k: v for k, v in hg.official_state_dict(source).items() if k != "conv_pre.weight_v"}
    with pytest.raises(RuntimeError, match="conv_pre"):
        hg.load_official_state(target, partial)


def test_loader_reads_with_weights_only_and_refuses_pickled_objects(tmp_path, monkeypatch, capsys):
    model = create_model("hifigan_16k_tiny")
    evil = tmp_path / "g_evil"
    torch.save({"generator": hg.official_state_dict(model), "extra": Payload()}, evil)
    with pytest.raises(RefusedPickleError):
        hg.load_official_state(model, evil)
    assert "unpickled!" not in capsys.readouterr().out
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    clean = tmp_path / "g_clean"
    torch.save({"generator": hg.official_state_dict(model)}, clean)
    hg.load_official_state(model, clean)
    assert calls and all(c.get("weights_only") is True and c.get("map_location") == "cpu" for c in calls)
    torch.save({"mpd": {}, "msd": {}}, tmp_path / "do_00000001")
    with pytest.raises(ValueError, match="generator"):
        hg.load_official_state(model, tmp_path / "do_00000001")


def test_losses_are_zero_on_identity_and_crop_the_generator_overhang():
    wave = _clip(0.25)
    longer = torch.cat([wave, torch.zeros(1, 160)], dim=-1)  # generator gives (frames) * hop > the clip
    out = hg.vocoder_loss(longer, wave)
    assert set(out) == {"loss", "mel_l1", "stft"}
    assert float(out["loss"]) < 1e-5
    noisy = wave + 0.05 * torch.randn_like(wave)
    out = hg.vocoder_loss(noisy, wave, mel_weight=2.0)
    assert float(out["mel_l1"]) > 0 and float(out["stft"]) > 0
    assert torch.isclose(out["loss"], 2.0 * out["mel_l1"] + out["stft"])
    assert torch.isclose(hg.mel_l1_loss(noisy, wave, MelConfig()), out["mel_l1"])


def test_tiny_16k_vocoder_overfits_one_harmonic_clip():
    torch.manual_seed(0)
    wave = _clip(0.5)
    mel = log_mel(wave, MelConfig())
    model = create_model("hifigan_16k_tiny")
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        wave_hat = model(mel)
        assert wave_hat.shape[-1] == mel.shape[-1] * 160 >= wave.shape[-1]
        out = hg.vocoder_loss(wave_hat, wave)
        losses.append({k: float(v.detach()) for k, v in out.items()})
        optim.zero_grad()
        out["loss"].backward()
        optim.step()
    assert losses[-1]["loss"] < 0.6 * losses[0]["loss"]
    assert losses[-1]["mel_l1"] < 0.6 * losses[0]["mel_l1"] and losses[-1]["stft"] < losses[0]["stft"]
