"""`percli pretrain soundscape`, `percli tts stylize` and `percli eval stylize` through the CLI, on a micro config
of the embedded scenes; bad inputs refused with nothing written."""

from __future__ import annotations

import json
import math

import av
import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from percli.cli import app

runner = CliRunner()
MICRO = ("data.embedded_size=12", "data.heldout_utterances=4", "data.train_scenes=3", "data.heldout_scenes=2",
         "data.train_items=8", "data.val_items=2", "data.clip_s=1.0", "stylize.items=4", "stylize.steps=2",
         "stylize.estimator_clips=8", "stylize.estimator_steps=2", "vae_train.max_steps=2", "vae_train.batch_size=2",
         "vae_train.num_workers=0", "vae_train.eval_every=0", "train.max_steps=2", "train.batch_size=2",
         "train.num_workers=0", "train.eval_every=2", "model.kwargs.width=32", "model.kwargs.depth=1",
         "model.kwargs.num_heads=2", "model.kwargs.vae.channels=8")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("soundscape") / "run"
    result = runner.invoke(app, ["pretrain", "soundscape", "--run-dir", str(run), "--json", *MICRO])
    assert result.exit_code == 0, result.output[-3000:]
    return run, json.loads(result.stdout)


def test_two_stages_train_and_score(trained):
    run, summary = trained
    assert summary["vae"]["status"] == "completed" and summary["vae"]["step"] == 2
    assert (run / "vae" / "checkpoints").is_dir() and (run / "checkpoints").is_dir()
    figures = summary["stylize"]
    assert figures["items"] == 4
    assert set(figures["rt60_error"]) >= {"input", "stylized", "hint_zeroed", "target"}
    assert all(math.isfinite(v) and v >= 0 for v in figures["rt60_error"].values())
    assert 0 <= figures["hint_match_r1"]["stylized"] <= 1
    gain = figures["hint_gain_s"]
    assert abs(gain["mean"] - (figures["rt60_error"]["hint_zeroed"] - figures["rt60_error"]["stylized"])) < 1e-5
    assert 0 <= gain["items_better"] <= 1 and gain["stderr"] >= 0
    assert (run / "stylize.png").stat().st_size > 1000 and (run / "rt60_estimator.safetensors").is_file()
    for name in ("stylized_0.wav", "input_0.wav", "target_0.wav", "hint_0.mp4"):
        assert (run / "samples" / name).stat().st_size > 100, name
    assert summary["metrics"]["eval/loss"] > 0


def test_resume_skips_the_finished_vae_stage(trained, tmp_path):
    run, _ = trained
    before = (run / "vae" / "summary.json").read_text()
    result = runner.invoke(app, ["pretrain", "soundscape", "--run-dir", str(run), "--resume", "--json", *MICRO,
                                 "train.max_steps=3", "stylize.items=0"])
    assert result.exit_code == 0, result.output[-3000:]
    assert json.loads(result.stdout)["step"] == 3
    assert (run / "vae" / "summary.json").read_text() == before


def _write_wav(path, seconds: float, rate: int, amplitude: float = 0.3):
    t = np.arange(round(seconds * rate)) / rate
    wave = amplitude * np.sin(2 * math.pi * 180 * t) * (np.sin(2 * math.pi * 3 * t) > 0)
    soundfile.write(str(path), wave.astype(np.float32), rate)
    return path


def _write_silent_video(path):
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=4)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        for _ in range(4):
            frame = np.full((32, 32, 3), 120, np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode(None))
    return path


def test_stylize_a_recording_with_a_video_hint(trained, tmp_path):
    run, _ = trained
    speech = _write_wav(tmp_path / "talk.wav", 1.5, 22050)  # another sample rate: resampled, said so
    out = tmp_path / "out" / "talk_styled.wav"
    result = runner.invoke(app, ["tts", "stylize", str(speech), "--hint", str(run / "samples" / "hint_1.mp4"),
                                 "--checkpoint", str(run), "-o", str(out), "--steps", "2", "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["resampled_from"] == {"speech": 22050} and summary["chunks"] == 2
    assert summary["hint_image"] == "video frame"
    info = soundfile.info(str(out))
    assert info.samplerate == 16000 and abs(info.duration - 1.5) < 0.02
    assert out.with_suffix(".png").stat().st_size > 1000
    again = runner.invoke(app, ["tts", "stylize", str(speech), "--hint", str(run / "samples" / "hint_1.mp4"),
                                "--checkpoint", str(run), "-o", str(tmp_path / "again.wav"), "--steps", "2"])
    assert again.exit_code == 0
    assert np.array_equal(soundfile.read(str(out))[0], soundfile.read(str(tmp_path / "again.wav"))[0])


@pytest.mark.parametrize("case", ["silent speech", "no audio track", "no picture", "not a soundscape run"])
def test_bad_inputs_are_refused_and_nothing_is_written(trained, tmp_path, case):
    run, _ = trained
    speech = _write_wav(tmp_path / "talk.wav", 1.0, 16000)
    hint = str(run / "samples" / "hint_0.mp4")
    checkpoint = str(run)
    expect = {"silent speech": "silent", "no audio track": "no audio track", "no picture": "picture",
              "not a soundscape run": "soundscape"}[case]
    if case == "silent speech":
        speech = _write_wav(tmp_path / "quiet.wav", 1.0, 16000, amplitude=0.0)
    elif case == "no audio track":
        hint = str(_write_silent_video(tmp_path / "mute.mp4"))
    elif case == "no picture":
        hint = str(run / "samples" / "target_0.wav")
    else:
        checkpoint = str(run / "vae")
    out = tmp_path / "styled.wav"
    result = runner.invoke(app, ["tts", "stylize", str(speech), "--hint", hint, "--checkpoint", checkpoint,
                                 "-o", str(out), "--steps", "2"])
    assert result.exit_code != 0
    assert expect in result.output
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_eval_stylize_scores_the_run(trained, tmp_path):
    run, _ = trained
    result = runner.invoke(app, ["eval", "stylize", "--checkpoint", str(run), "--items", "4", "--steps", "2",
                                 "--estimator", str(run / "rt60_estimator.safetensors"), "--run-dir",
                                 str(tmp_path / "ev"), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["items"] == 4 and summary["training_run"] == str(run.resolve())
    # the run's own held-out items (its data section), the same estimator, sampler seed and steps as its end-of-run
    # scores (the run ended at step 2; the resume test may have moved it on, so compare the data-only figures)
    at_end = trained[1]["stylize"]
    for key in ("input", "target"):
        assert summary["rt60_error"][key] == pytest.approx(at_end["rt60_error"][key], abs=1e-6)
    assert summary["mel_distance"]["input"] == pytest.approx(at_end["mel_distance"]["input"], abs=1e-6)


def test_pretrain_on_videos_counts_the_skipped_ones(tmp_path):
    from percli.core.data.av_events import write_av_mp4

    t = np.arange(4 * 16000) / 16000
    talk = (0.3 * np.sin(2 * math.pi * 150 * t) * (np.sin(2 * math.pi * 2 * t) > 0)).astype(np.float32)
    for i in range(3):
        write_av_mp4(tmp_path / "videos" / f"v{i}.mp4", np.full((16, 32, 32, 3), 40 * i, np.uint8), 4, talk, 16000)
    _write_silent_video(tmp_path / "videos" / "mute.mp4")
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "soundscape", "--run-dir", str(run), "--json", *MICRO,
                                 f"data.videos={tmp_path / 'videos'}", "stylize.items=0"])
    assert result.exit_code == 0, result.output[-3000:]
    videos = json.loads(result.stdout)["videos"]
    assert videos["train"] == 2 and videos["heldout"] == 1
    assert [v["path"].endswith("mute.mp4") for v in videos["skipped"]] == [True]


def test_vocoder_trains_and_stylize_uses_it(trained, tmp_path):
    run, _ = trained
    data = [m for m in MICRO if m.startswith("data.")]
    voc = tmp_path / "voc"
    result = runner.invoke(app, ["pretrain", "vocoder", "--run-dir", str(voc), "--json", *data, "train.max_steps=2",
                                 "train.batch_size=2", "train.num_workers=0", "segment_s=0.2"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["heldout_mel_l1"] > 0 and summary["griffin_lim_mel_l1"] > 0 and summary["clips"] == 2
    speech = _write_wav(tmp_path / "talk.wav", 1.0, 16000)
    out = tmp_path / "styled.wav"
    styled = runner.invoke(app, ["tts", "stylize", str(speech), "--hint", str(run / "samples" / "hint_0.mp4"),
                                 "--checkpoint", str(run), "--vocoder", str(voc), "-o", str(out), "--steps", "2",
                                 "--json"])
    assert styled.exit_code == 0, styled.output[-3000:]
    assert json.loads(styled.stdout)["vocoder"] == str(voc) and abs(soundfile.info(str(out)).duration - 1.0) < 0.01
    wrong = runner.invoke(app, ["tts", "stylize", str(speech), "--hint", str(run / "samples" / "hint_0.mp4"),
                                "--checkpoint", str(run), "--vocoder", str(run), "-o", str(tmp_path / "x.wav")])
    assert wrong.exit_code != 0 and "pretrain vocoder" in wrong.output


def _tower(path, name, kwargs):
    import torch

    from percli.core.checkpoint import save_weights
    from percli.models import create_model

    torch.manual_seed(0)
    save_weights(path, create_model(name, **kwargs).state_dict(), {"name": name, "kwargs": kwargs})
    return str(path)


def test_frozen_clip_and_audio_mae_towers_embed_the_hint(trained, tmp_path):
    """The paper's CLAP / CLIP role: frozen percli towers embed the hint in training, stylize and eval."""
    clip = _tower(tmp_path / "clip.safetensors", "clip_vit_b32_quickgelu",
                  {"embed_dim": 16, "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 16, "layers": 1,
                                                   "head_width": 8},
                   "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}})
    audio = _tower(tmp_path / "amae.safetensors", "audiomae_vit_small_patch16",
                   {"img_size": [208, 64], "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 0})
    run = tmp_path / "run"
    micro = [m for m in MICRO if not m.startswith(("vae_train", "model.kwargs.vae"))]
    result = runner.invoke(app, ["pretrain", "soundscape", "--run-dir", str(run), "--json", *micro,
                                 f"vae={trained[0] / 'vae'}", "model.kwargs.vae.channels=8",
                                 f"hint.audio_tower={audio}", f"hint.image_tower={clip}"])
    assert result.exit_code == 0, result.output[-3000:]
    from percli.core.checkpoint import read_meta, run_weights

    meta = read_meta(run_weights(run))
    assert meta["kwargs"]["audio_hint"] == "embedding" and meta["kwargs"]["audio_embed_dim"] == 32
    assert meta["kwargs"]["image_hint"] == "embedding" and meta["kwargs"]["image_embed_dim"] == 16
    assert json.loads(result.stdout)["stylize"]["items"] == 4
    speech = _write_wav(tmp_path / "talk.wav", 1.0, 16000)
    styled = runner.invoke(app, ["tts", "stylize", str(speech), "--hint", str(trained[0] / "samples" / "hint_0.mp4"),
                                 "--checkpoint", str(run), "-o", str(tmp_path / "s.wav"), "--steps", "2"])
    assert styled.exit_code == 0, styled.output[-3000:]
    bad = runner.invoke(app, ["pretrain", "soundscape", "--dry-run", "hint.image_tower=clip@/nowhere.pt"])
    assert bad.exit_code != 0 and "hint.image_tower" in bad.output
