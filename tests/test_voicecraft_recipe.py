"""`percli pretrain voicecraft`: config checks, a tiny end-to-end run on the espeak-ng corpus, bad audio
counted and skipped, and exact resume."""

import json
import math
import signal

import pytest
import soundfile
from typer.testing import CliRunner

from percli.cli import app
from percli.core.rundir import read_metrics
from percli.tts.corpus import build_corpus
from tests.conftest import sigterm_after_step

runner = CliRunner()
# 16 sentences (4 held out), a 32-d 2-layer model over a 4 x 32 random-init codec: ~0.1 s a step. The tiny
# preset's ScaledAdam + Eden and dynamic batches (up to 700 frames: 2-4 utterances of 2-3.5 s, 5 batches an epoch).
TINY = ["model.kwargs={d_model: 32, nhead: 2, num_decoder_layers: 2}",
        "model.codec_kwargs={n_filters: 4, dimension: 16, bins: 32}", "data.embedded_size=16", "data.val_size=4",
        "data.max_tokens=700", "train.batch_size=4", "train.num_workers=0", "train.log_every=1"]
FIXED_ADAMW = ["data.max_tokens=null", "optim.name=adamw", "optim.lr=2e-3"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"), size=16)


def test_dry_run_validates_the_config(tmp_path):
    ok = runner.invoke(app, ["pretrain", "voicecraft", "--dry-run"])
    assert ok.exit_code == 0, ok.output
    assert "voicecraft_330m" in ok.output and "bins: 64" in ok.output
    missing = runner.invoke(app, ["pretrain", "voicecraft", "--preset", "830m", "--dry-run"])
    assert missing.exit_code == 2 and "data.source" in missing.output
    wrong = runner.invoke(app, ["pretrain", "voicecraft", "--dry-run", "model.name=hiera_base_224"])
    assert wrong.exit_code == 2 and "not a VoiceCraft model" in wrong.output


def test_short_run_trains_checkpoints_and_speaks(tmp_path, corpus):
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "voicecraft", "--run-dir", str(run), "--json", *TINY,
                                 "train.max_steps=16", f"data.source={corpus}"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 16 and sum(losses[-4:]) < sum(losses[:4]) - 0.4, losses
    assert 0 < summary["metrics"]["eval/top10acc"] <= 1 and summary["bad_inputs"]["count"] == 0

    phn2num = json.loads((run / "phn2num.json").read_text())
    assert "_" in phn2num and sorted(phn2num.values()) == list(range(len(phn2num)))
    wave, rate = soundfile.read(summary["sample"])
    assert rate == 16000 and abs(len(wave) / rate - summary["sample_s"]) < 1e-3
    assert summary["sample_s"] > summary["sample_prompt_s"] > 0 and summary["sample_new_frames"] > 0

    # what `percli tts` reads: the run dir alone rebuilds model, codec and vocabulary
    from percli.tts.inference import load_voicecraft

    bundle = load_voicecraft(run, None)
    assert bundle.phn2num == phn2num and bundle.codec.quantizer.bins == 32
    assert bundle.model.text_pad_token == len(phn2num) and bundle.model.config["d_model"] == 32

    # `percli tts edit` with this trained run: a WAV of the reported length whose unedited frames are the
    # input's codec codes (checked through the library with the same seed)
    import torch

    from percli.core.data.audio import load_audio
    from percli.tts import inference

    first = json.loads(corpus.read_text().splitlines()[0])
    first["audio"] = str(corpus.parent / first["audio"])  # the manifest names it relative to its folder
    words = first["text"].split()
    wav, rate = soundfile.read(first["audio"])
    step = len(wav) / rate / len(words)
    alignment = tmp_path / "words.json"
    alignment.write_text(json.dumps({"words": [{"word": w, "start": i * step, "end": (i + 1) * step}
                                               for i, w in enumerate(words)]}))
    target = " ".join(["painted" if i == 3 else w for i, w in enumerate(words)])
    out = tmp_path / "edited.wav"
    edited = runner.invoke(app, ["tts", "edit", first["audio"], "--transcript", first["text"], "--target", target,
                                 "--checkpoint", str(run), "--alignment", str(alignment), "-o", str(out), "--json"])
    assert edited.exit_code == 0, edited.output
    report = json.loads(edited.stdout)
    samples, sr = soundfile.read(str(out))
    assert sr == 16000 and len(samples) == report["frames"] * 320
    (start, end), = report["edit_span_frames"]
    original = inference.encode(bundle, load_audio(first["audio"], 16000))
    again = inference.edit_codes(bundle, inference.phoneme_ids(target, bundle), original, [(start, end)],
                                 inference.Sampling(stop_repetition=-1, seed=1))
    assert again.codes.shape[1] == report["frames"]
    assert torch.equal(again.codes[:, :start], original[:, :start])
    assert torch.equal(again.codes[:, again.codes.shape[1] - (original.shape[1] - end):], original[:, end:])


def test_default_run_dir_relative_to_the_working_dir(tmp_path, monkeypatch):
    # the README command: no --run-dir, so the run (and the embedded corpus in its cache) lands under ./runs
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["pretrain", "voicecraft", *TINY, "train.max_steps=2", "sample_prompt_fraction=0"])
    assert result.exit_code == 0, result.output
    run, = (tmp_path / "runs").iterdir()
    assert json.loads((run / "summary.json").read_text())["bad_inputs"]["count"] == 0
    manifest = run / "cache" / "embedded_corpus" / "manifest.jsonl"
    audio = [json.loads(line)["audio"] for line in manifest.read_text().splitlines()]
    assert audio[0] == "utt_0000.wav" and all((manifest.parent / a).is_file() for a in audio)


def test_unreadable_audio_is_counted_and_skipped(tmp_path, corpus):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00not audio at all")
    lines = [json.dumps({**r, "audio": str(corpus.parent / r["audio"])})  # moved away from the corpus folder
             for r in map(json.loads, corpus.read_text().splitlines())]
    lines.insert(2, json.dumps({"audio": str(broken), "text": "A broken file."}))
    lines.insert(3, "{not json")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    # fixed batches of train.batch_size and AdamW + cosine: the engine's other path
    result = runner.invoke(app, ["pretrain", "voicecraft", "--run-dir", str(run), *TINY, *FIXED_ADAMW,
                                 "train.max_steps=6", f"data.source={manifest}", "sample_prompt_fraction=0"])
    assert result.exit_code == 0, result.output
    bad = json.loads((run / "summary.json").read_text())["bad_inputs"]
    assert bad["count"] == 1 and bad["files"][0]["path"] == str(broken)
    assert json.loads((run / "summary.json").read_text())["left_out"]["malformed_lines"] == 1
    assert json.loads((run / "summary.json").read_text())["effective_batch_size"] == 4


def test_resume_reproduces_uninterrupted_losses(tmp_path, monkeypatch):
    # each run builds its own corpus under its run dir: the synthesis must be deterministic too
    args = [*TINY, "train.max_steps=8", "train.ckpt_every=3", "sample_prompt_fraction=0"]
    full = runner.invoke(app, ["pretrain", "voicecraft", "--run-dir", str(tmp_path / "full"), *args])
    assert full.exit_code == 0, full.output

    # dynamic batches (tiny preset + TINY): 5 an epoch, so the run resumes at the 5th batch of epoch 0
    epochs = {r["step"]: r["epoch"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r}
    assert epochs[4] == epochs[5] == 0 and epochs[6] == 1
    undo = sigterm_after_step(monkeypatch, 4)
    part = tmp_path / "part"
    stopped = runner.invoke(app, ["pretrain", "voicecraft", "--run-dir", str(part), *args])
    assert stopped.exit_code == 128 + signal.SIGTERM, stopped.output
    undo()
    resumed = runner.invoke(app, ["pretrain", "voicecraft", "--run-dir", str(part), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    expected = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    got = [r["loss"] for r in read_metrics(part / "metrics.jsonl") if "loss" in r]
    assert len(got) == 8 and got == expected


def test_two_processes_agree_on_dynamic_batches_and_finish(tmp_path, corpus):
    """Two gloo processes on token-bucketed batches with ScaledAdam: the ranks' samplers agree on the number of
    micro-batches (a rank with fewer would leave the other waiting in DDP's all-reduce), so the run ends; the
    shards' disjointness is tests/test_dynamic_batches.py's."""
    import subprocess

    from tests.conftest import PYTHON, free_port, subprocess_env

    env = {**subprocess_env(), "ACCELERATE_USE_CPU": "true"}
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "pretrain", "voicecraft", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
           "train.max_steps=3", "sample_prompt_fraction=0", f"data.source={corpus}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["step"] == 3
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
