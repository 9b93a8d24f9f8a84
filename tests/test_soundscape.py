"""Soundscape stylization: generated scenes, the mel VAE, the latent diffusion model, the RT60 estimator and scores."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from percli.core.mel import MelConfig, griffin_lim, log_mel
from percli.models import create_model
from percli.models.soundscape import MelVAE, SoundscapeLDM, load_state
from percli.tts import rt60_estimator, scenes
from percli.tts.stylize import hint_match

SR = 16000


def _speech(n: int = 6, seconds: float = 1.0) -> list[torch.Tensor]:
    """Speech-like bursts: harmonic syllables with pauses, one pitch per utterance."""
    t = torch.arange(round(seconds * SR)) / SR
    out = []
    for i in range(n):
        f0 = 110 + 20 * i
        tone = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 6))
        gate = (torch.sin(2 * math.pi * (3 + i % 3) * t) > 0.2).float()
        out.append(0.3 * tone * gate)
    return out


@pytest.fixture(scope="module")
def split() -> dict[str, scenes.SceneSplit]:
    return scenes.split_scenes(_speech(), train_scenes=3, heldout_scenes=2, heldout_utterances=2)


def test_scenes_are_seeded_and_held_out_disjoint(split):
    assert scenes.make_scene(3) == scenes.make_scene(3) != scenes.make_scene(4)
    low, high = scenes.RT60_RANGE
    assert all(low <= s.rt60 <= high for s in split["train"].scenes + split["val"].scenes)
    assert {s.index for s in split["train"].scenes}.isdisjoint(s.index for s in split["val"].scenes)
    assert len(split["train"].utterances) == 4 and len(split["val"].utterances) == 2
    with pytest.raises(ValueError, match="leave none"):
        scenes.split_scenes(_speech(2), 1, 1, 2)
    pictures = [scenes.scene_image(s) for s in split["train"].scenes]
    assert pictures[0].shape == (3, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE) and 0 <= pictures[0].min()
    assert not np.allclose(pictures[0], pictures[1])


def test_pairs_repeat_by_index_and_share_the_scene(split):
    data = scenes.StylizationPairs(split["train"], 8, clip_s=1.0, enhance="oracle", waves=True)
    a, b = data[5], data[5]
    assert torch.equal(a["target"], b["target"]) and torch.equal(a["hint"], b["hint"])
    assert a["target"].shape == (64, 100) and a["image"].shape == (3, 64, 64)
    scene = next(s for s in split["train"].scenes if s.index == a["scene"])
    assert a["rt60"] == scene.rt60
    assert not torch.equal(a["target_wave"], a["hint_wave"])  # another utterance of the same video
    # oracle enhancement: the input is the dry utterance the target was recorded from
    dry = [scenes.fit_length(u, SR) for u in split["train"].utterances]
    assert any(torch.equal(a["speech_wave"], d) for d in dry)
    spectral = scenes.StylizationPairs(split["train"], 8, clip_s=1.0, enhance="spectral", waves=True)[5]
    assert spectral["speech_wave"].shape == (SR,) and not torch.equal(spectral["speech_wave"], a["speech_wave"])


def test_cross_scene_items_target_the_hint_scene(split):
    data = scenes.CrossScenePairs(split["val"], 6, clip_s=1.0, enhance="oracle", waves=True)
    for i in range(6):
        item = data[i]
        assert item["scene"] != item["input_scene"]
        assert item["rt60"] == next(s.rt60 for s in split["val"].scenes if s.index == item["scene"])


def test_render_reverberates_at_the_scene_rt60():
    """The tail after a burst decays at the scene's RT60: 60 dB per rt60 seconds (fitted on -5..-25 dB)."""
    scene = scenes.Scene(0, rt60=0.6, drr_db=0.0, tilt=1.0, hum_hz=100.0, hum_db=-10.0, snr_db=200.0)
    burst = torch.zeros(SR * 2)
    burst[:800] = torch.randn(800, generator=torch.Generator().manual_seed(0))
    wet = scenes.render(burst, scene, SR * 2, SR, np.random.default_rng(0))
    from percli.core.acoustics import rt60_from_rir

    assert abs(rt60_from_rir(wet[800:], SR) - 0.6) < 0.08


def test_vae_shapes_and_learns():
    torch.manual_seed(0)
    vae = MelVAE(channels=8, z_channels=4)
    mel = log_mel(torch.randn(2, SR) * 0.1)  # [2, 64, 101]
    mean, logvar = vae.encode(mel)
    assert mean.shape == (2, 4, 16, 25) and vae.decode(mean).shape == (2, 64, 100)
    opt = torch.optim.Adam(vae.parameters(), 3e-3)
    first = None
    for _ in range(30):
        loss, parts = vae(mel, generator=torch.Generator().manual_seed(0))
        first = first if first is not None else float(parts["l1"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(parts["l1"]) < 0.6 * first
    with pytest.raises(ValueError, match="multiple of 4"):
        MelVAE(n_mels=62)
    with pytest.raises(ValueError, match="too short"):
        vae.encode(mel[..., :3])


def _tiny(**kwargs) -> SoundscapeLDM:
    torch.manual_seed(0)
    args = {"vae": {"channels": 8, "z_channels": 4}, "width": 32, "depth": 1, "num_heads": 2, "audio_tokens": 2,
            "num_timesteps": 50}
    return SoundscapeLDM(**{**args, **kwargs})


def _batch(n: int = 2) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    mel = log_mel(torch.randn(n, SR, generator=g) * 0.1)[..., :100]
    return mel, mel.flip(-1), {"mel": mel.roll(1, 0), "image": torch.rand(n, 3, 64, 64, generator=g)}


def test_ldm_loss_hint_dropout_and_sampling():
    model = _tiny()
    target, speech, hint = _batch()
    loss, parts = model(target, speech, hint, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.vae.parameters())  # the VAE is frozen
    # p_uncond = 1: every row gets the null hint, so the hint no longer changes the loss and only the null tokens
    # (not the hint towers) learn
    dropped = _tiny(p_uncond=1.0)
    other = {"mel": hint["mel"] + 1.0, "image": 1 - hint["image"]}
    dropped(target, speech, hint, generator=torch.Generator().manual_seed(0))[0].backward()
    assert dropped.null_hint.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in dropped.audio_tower.parameters())
    a = dropped(target, speech, hint, generator=torch.Generator().manual_seed(0))[0]
    b = dropped(target, speech, other, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(a, b)
    kept = _tiny(p_uncond=0.0)
    a = kept(target, speech, hint, generator=torch.Generator().manual_seed(0))[0]
    b = kept(target, speech, other, generator=torch.Generator().manual_seed(0))[0]
    assert not torch.equal(a, b)
    model.eval()
    first = model.stylize(speech, hint, steps=3, generator=torch.Generator().manual_seed(0))
    again = model.stylize(speech, hint, steps=3, generator=torch.Generator().manual_seed(0))
    assert first.shape == (2, 64, 100) and torch.equal(first, again)
    zeroed = model.stylize(speech, None, steps=3, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(first, zeroed)


def test_guidance_one_never_calls_the_unconditional_branch(monkeypatch):
    model = _tiny().eval()
    _, speech, hint = _batch()
    calls = []
    real = model.denoise

    def spy(x, t, cond, hint_tokens):
        calls.append(hint_tokens.data_ptr() == model.null_hint.data_ptr())
        return real(x, t, cond, hint_tokens)

    monkeypatch.setattr(model, "denoise", spy)
    model.stylize(speech, hint, steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert calls and not any(calls)
    calls.clear()
    model.stylize(speech, hint, steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 4 and any(calls)


def test_ldm_options_and_limits():
    with pytest.raises(ValueError, match="audio_hint"):
        _tiny(audio_hint="clap")
    model = _tiny(audio_hint="embedding", audio_embed_dim=12, image_hint="none")
    target, speech, _ = _batch()
    loss, _ = model(target, speech, {"audio_embedding": torch.randn(2, 12)})
    assert torch.isfinite(loss)
    short = _tiny(max_frames=8)
    with pytest.raises(ValueError, match="max_frames"):
        short(target, speech, _batch()[2])
    with torch.device("meta"):
        create_model("soundscape_ldm_tiny")
        create_model("soundscape_ldm")


def test_loader_takes_a_vae_then_a_full_state():
    vae = MelVAE(channels=8, z_channels=4)
    model = _tiny()
    report = load_state(model, vae.state_dict())
    assert torch.equal(model.vae.encoder[0].weight, vae.encoder[0].weight)
    assert report.missing and all(not k.startswith("vae.") for k in report.missing)
    fresh = _tiny(p_uncond=0.5)
    load_state(fresh, model.state_dict())
    assert torch.equal(fresh.out.weight, model.out.weight)
    with pytest.raises(RuntimeError, match="does not fit"):
        load_state(_tiny(width=64), model.state_dict())


def test_griffin_lim_inverts_a_log_mel():
    t = torch.arange(SR) / SR
    wave = 0.5 * torch.sin(2 * math.pi * 440 * t)
    mel = log_mel(wave)
    rebuilt = griffin_lim(mel, MelConfig(), iters=32, generator=torch.Generator().manual_seed(0))
    assert abs(rebuilt.numel() - wave.numel()) <= MelConfig().hop_length
    error = (log_mel(rebuilt)[:, 5:-5] - mel[:, 5:-5]).abs().mean()
    assert error < 0.5, error


def test_rt60_estimator_learns_and_hint_match_ranks(split):
    clips, rt60 = rt60_estimator.training_clips(split["train"].utterances, 6, SR, MelConfig(), seed=0)
    assert clips.shape == (6, 64, 100)
    low, high = rt60_estimator.RANGE
    assert ((rt60 >= low) & (rt60 <= high)).all()
    model = rt60_estimator.train_estimator(split["train"].utterances, clips=48, steps=60, batch_size=16, clip_s=1.0,
                                           seed=0)
    x, y = rt60_estimator.training_clips(split["train"].utterances, 48, SR, MelConfig(), seed=0)
    fitted = (rt60_estimator.estimate(model, x).log() - y.log()).abs().mean()
    constant = (y.log() - y.log().mean()).abs().mean()  # the best constant guess's error
    assert fitted < constant
    scenes_ = torch.tensor([0, 1, 2, 3])
    assert hint_match(model, x[:4], x[:4], scenes_) == 1.0  # each output is its own hint


def test_video_pairs_index_skips_bad_videos_and_draws_disjoint_clips(tmp_path):
    from percli.core.data.av_events import write_av_mp4
    from percli.tts.video_pairs import VideoPairs, index_videos, list_videos

    folder = tmp_path / "videos"
    frames = np.zeros((20, 32, 32, 3), np.uint8)
    for i in range(2):
        frames[:] = 60 * (i + 1)
        speech = torch.cat([torch.zeros(SR // 2), _speech(1, 4.0)[0], torch.zeros(SR // 2)]).numpy()
        write_av_mp4(folder / f"talk_{i}.mp4", frames, 4, speech, SR)
    write_av_mp4(folder / "short.mp4", frames[:4], 4, _speech(1, 1.0)[0].numpy(), SR)
    write_av_mp4(folder / "music.mp4", frames, 4, 1e-6 * np.ones(5 * SR, np.float32), SR)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 64)
    videos = list_videos(str(folder))
    assert len(videos) == 5
    usable, skipped = index_videos(videos, tmp_path / "cache", 1.0, SR)
    assert sorted(Path(r["video"]).name for r in usable) == ["talk_0.mp4", "talk_1.mp4"]
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    assert set(reasons) == {"short.mp4", "music.mp4", "broken.mp4"} and "shorter than two" in reasons["short.mp4"]
    stamp = Path(usable[0]["audio"]).stat().st_mtime_ns
    again, _ = index_videos(videos, tmp_path / "cache", 1.0, SR)  # resumed from index.jsonl: nothing re-decoded
    assert again == usable and Path(usable[0]["audio"]).stat().st_mtime_ns == stamp
    data = VideoPairs(usable, 6, clip_s=1.0, enhance="none")
    for i in range(6):
        v, a, b = data.draw(i)
        assert a + SR <= b or b + SR <= a  # clips A and B do not overlap
        assert any(s0 <= a + SR // 2 and a <= s1 for s0, s1 in usable[v]["spans"])  # A holds speech
    item = data[0]
    assert item["target"].shape == (64, 100) and item["image"].shape == (3, 64, 64) and "hint_wave" not in item
    waves = VideoPairs(usable, 6, clip_s=1.0, enhance="none", waves=True)[0]  # what frozen audio towers read
    assert waves["hint_wave"].shape == (SR,) and torch.equal(waves["hint"], item["hint"])
    assert abs(float(item["image"].mean()) - 60 * (data.draw(0)[0] + 1) / 255) < 0.05  # the video's own frame
