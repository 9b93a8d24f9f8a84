"""`percli eval av-superb` end to end: every task on the mini-benchmark with a user upstream, resume, cache."""

import json
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from percli.avsuperb import runner as runner_mod
from percli.avsuperb.tasks import TASKS
from percli.cli import app

USER_UPSTREAM = textwrap.dedent('''
    """A small hand-made upstream, as a user would plug in: log-mel audio layers, pooled-colour video layers."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    import torchaudio


    class Expert(nn.Module):
        modalities = {"audio", "video"}
        feature_rate = 100.0

        def __init__(self, dim=24):
            super().__init__()
            self.mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=dim)
            self.mix = nn.Linear(dim, dim)
            self.video_proj = nn.Linear(3 * 4 * 4, dim)

        def preprocess_audio(self, wav, sample_rate):
            wav = torchaudio.functional.resample(wav, sample_rate, 16000) if sample_rate != 16000 else wav
            return torch.log(self.mel(wav) + 1e-6).T  # [T, dim]

        def preprocess_video(self, frames, fps):
            x = frames.permute(0, 3, 1, 2).float() / 255.0
            return F.adaptive_avg_pool2d(x, 4).flatten(1)  # [F, 48]

        def forward(self, batch):
            out = {"audio_feats": [], "video_feats": [], "fusion_feats": []}
            audio = [a for a, _ in batch if a is not None]
            video = [v for _, v in batch if v is not None]
            if audio:
                lengths = torch.tensor([len(a) for a in audio])
                a = nn.utils.rnn.pad_sequence(audio, batch_first=True)
                out["audio_feats"] = [a, torch.tanh(self.mix(a))]
                out["lengths"] = lengths
            if video:
                v = self.video_proj(nn.utils.rnn.pad_sequence(video, batch_first=True))
                out["video_feats"] = [v, torch.relu(v)]
            if audio and video:
                steps = out["audio_feats"][0].shape[1]
                v_t = F.interpolate(v.transpose(1, 2), size=steps, mode="linear").transpose(1, 2)
                out["fusion_feats"] = [torch.cat([x, v_t], -1) for x in out["audio_feats"]]
            return out


    def build(dim=24, checkpoint=None):
        return Expert(dim)
''')


@pytest.fixture(scope="module")
def user_upstream(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_upstream")
    (folder / "avsuperb_runner_expert.py").write_text(USER_UPSTREAM)
    sys.path.insert(0, str(folder))
    yield "avsuperb_runner_expert:build"
    sys.path.remove(str(folder))
    sys.modules.pop("avsuperb_runner_expert", None)


@pytest.fixture(scope="module")
def minibench(tmp_path_factory):
    return tmp_path_factory.mktemp("mini")


def _run(*args):
    result = CliRunner().invoke(app, ["eval", "av-superb", *args], catch_exceptions=False)
    return result


def test_every_task_runs_on_the_minibench_with_a_user_upstream(tmp_path, user_upstream, minibench):
    result = _run("--upstream", user_upstream, "--minibench", str(minibench), "--steps", "4", "--batch-size", "4",
                  "--run-dir", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    got = {(r["task"], r["features"]): r for r in summary["results"]}
    assert set(got) == {(task, "fusion") for task in TASKS}  # each task's official default: fusion features
    for (task, _), r in got.items():
        assert r["metric"] == TASKS[task].metric and 0.0 <= r["value"] <= 1.0 + 1e-9, r
        assert len(r["layer_weights"]) == 2 and abs(sum(r["layer_weights"]) - 1.0) < 1e-6
        assert r["mini_benchmark"] and r["train_clips"] > 0 and r["test_clips"] > 0
    assert set(got[("lrs3", "fusion")]["metrics"]) == {"cer", "wer"}
    run = tmp_path / "run"
    assert (run / "results.md").read_text().count("\n") == 2 + len(TASKS)
    assert (run / "results.csv").read_text().splitlines()[0].startswith("task,features,metric,value_percent")
    assert (run / "tasks" / "ks-fusion" / "metrics.jsonl").is_file()


def test_resume_finishes_only_the_missing_pairs_and_the_cache_is_reused(tmp_path, user_upstream, minibench,
                                                                        monkeypatch):
    run = tmp_path / "run"
    common = ["--upstream", user_upstream, "--minibench", str(minibench), "--steps", "3", "--batch-size", "4",
              "--tasks", "ks,iemocap,as20k", "--features", "audio", "--run-dir", str(run)]
    real = runner_mod.Runner.run_pair
    done = []

    def crash_on_as20k(self, task, feat, resume):
        if task == "as20k":
            raise RuntimeError("simulated crash")  # the run stops midway
        done.append(task)
        return real(self, task, feat, resume)

    monkeypatch.setattr(runner_mod.Runner, "run_pair", crash_on_as20k)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(*common)
    assert done == ["ks", "iemocap"] and not (run / "results" / "as20k-audio.json").exists()
    first = json.loads((run / "results" / "ks-audio.json").read_text())

    ran = []
    monkeypatch.setattr(runner_mod.Runner, "run_pair", lambda self, t, f, r: ran.append(t) or real(self, t, f, r))
    result = _run(*common, "--resume", "--json")
    assert result.exit_code == 0, result.output
    assert ran == ["as20k"]
    summary = json.loads(result.stdout)
    assert summary["resumed_pairs"] == 2 and [r["task"] for r in summary["results"]] == ["ks", "iemocap", "as20k"]
    assert summary["results"][0] == first

    again = _run(*common[:-1], str(tmp_path / "other"), "--cache-dir", str(run / "features"), "--tasks", "ks",
                 "--json")
    assert again.exit_code == 0
    assert "ks/audio: train features from the cache" in again.output
    assert json.loads(again.stdout)["results"][0]["value"] == first["value"]  # same features, same seed


def test_bad_options_name_the_fix(tmp_path):
    result = _run("--tasks", "ks,nope", "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == 2 and "unknown ['nope']" in result.output
    result = _run("--data", "ks", "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == 2 and "TASK=DIR" in result.output
    result = _run("--upstream", "nosuch.module:build", "--run-dir", str(tmp_path / "r"))
    assert result.exit_code == 2


def test_two_processes_extract_the_same_features_and_score_every_trial(tmp_path, minibench):
    import subprocess

    from safetensors.torch import load_file

    from tests.conftest import PYTHON, free_port, subprocess_env

    args = ["--upstream", "audio-mae", "--tasks", "ks,voxceleb", "--steps", "3", "--batch-size", "4",
            "--minibench", str(minibench), "--json"]
    one = _run(*args, "--run-dir", str(tmp_path / "one"))
    assert one.exit_code == 0, one.output
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "eval", "av-superb", *args, "--run-dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    assert two["world_size"] == 2
    for r1, r2 in zip(json.loads(one.stdout)["results"], two["results"]):
        assert (r1["task"], r1["train_clips"], r1["test_clips"]) == (r2["task"], r2["train_clips"], r2["test_clips"])
        assert 0.0 <= r2["value"] <= 1.0
    for name in ("ks/train-audio.safetensors", "voxceleb/test-audio.safetensors"):
        a, b = load_file(tmp_path / "one" / "features" / name), load_file(tmp_path / "two" / "features" / name)
        assert torch.allclose(a["feats"], b["feats"], atol=1e-5), name  # rank shards gathered back in order


def test_trainable_upstream_is_finetuned_per_task_and_scores(tmp_path, user_upstream, minibench):
    result = _run("--upstream", user_upstream, "--minibench", str(minibench), "--tasks", "ks,lrs3", "--features",
                  "audio", "--trainable", "--steps", "3", "--batch-size", "4", "--run-dir", str(tmp_path / "run"),
                  "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)["results"]
    assert [r["task"] for r in results] == ["ks", "lrs3"] and all(r["trainable_upstream"] for r in results)
    assert not (tmp_path / "run" / "features").exists()  # nothing cached: the upstream changes while training
    from safetensors import safe_open

    ckpt = next((tmp_path / "run" / "tasks" / "ks-audio" / "checkpoints").glob("step_*"))
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert any(n.startswith("upstream.mix.") for n in names)  # the upstream's weights are part of the model
    assert set(results[1]["metrics"]) == {"cer", "wer"}
