"""`percli pretrain audio-mae` / `percli finetune audio-mae` end to end on tiny models."""

import json

import numpy as np
import soundfile as sf
from typer.testing import CliRunner

from percli.cli import app
from percli.core.rundir import read_metrics

runner = CliRunner()
ENCODER = "embed_dim: 16, depth: 2, num_heads: 2"
DATA = ["data.target_length=128", "data.num_mel_bins=64", "data.embedded_size=48", "train.num_workers=0",
        "train.batch_size=8"]
MAE = [f"model.kwargs={{{ENCODER}, decoder_embed_dim: 16, decoder_mode: 1, local_decoder_depth: 2, "
       "local_decoder_heads: 2, norm_pix_loss: true}", *DATA]
CLS = [f"model.kwargs={{{ENCODER}}}", *DATA]


def test_pretrain_then_finetune_on_embedded_sounds(tmp_path):
    pre = tmp_path / "pre"
    result = runner.invoke(app, ["pretrain", "audio-mae", "--run-dir", str(pre), "--json", *MAE, "train.max_steps=4",
                                 "train.log_every=1", "recon_clips=2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (pre / "reconstructions.png").is_file() and len(read_metrics(pre / "metrics.jsonl")) == 4
    ft = runner.invoke(app, ["finetune", "audio-mae", "--run-dir", str(tmp_path / "ft"), "--json", *CLS,
                             f"model.checkpoint={summary['checkpoint']}", "train.max_steps=3"])
    assert ft.exit_code == 0, ft.output
    out = json.loads(ft.stdout)
    assert out["multilabel"] is False and len(out["classes"]) == 8
    assert out["metrics"]["eval/count"] == 12 and 0 <= out["metrics"]["eval/top1"] <= 1


def _tone(path, freq, seconds=0.6, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32), sr)


def test_multilabel_manifest_reports_map_and_d_prime_and_skips_bad_audio(tmp_path):
    lines = []
    for i in range(8):
        _tone(tmp_path / f"{i}.wav", 200 + 150 * i)
        labels = ["low"] if i < 3 else (["high"] if i < 6 else ["low", "high"])
        lines.append({"path": f"{i}.wav", "labels": labels})
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00garbage")
    lines.append({"path": "bad.wav", "labels": ["low"]})
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = runner.invoke(app, ["finetune", "audio-mae", "--run-dir", str(tmp_path / "run"), "--json", *CLS,
                                 f"data.source={manifest}", f"data.val_source={manifest}", "data.mixup=0.5",
                                 "train.batch_size=4", "train.max_steps=3", "balanced_sampling=true"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["multilabel"] is True
    assert {"eval/mAP", "eval/d_prime", "eval/mAUC"} <= set(out["metrics"])
    assert out["bad_inputs"]["count"] == 1 and out["bad_inputs"]["files"][0]["path"].endswith("bad.wav")


def test_img_size_must_match_the_data(tmp_path):
    result = runner.invoke(app, ["pretrain", "audio-mae", "--run-dir", str(tmp_path / "r"), *MAE,
                                 "model.kwargs={img_size: [256, 128]}", "data.target_length=128"])
    assert result.exit_code == 2 and "img_size" in result.output


def test_audio_stats_command_matches_the_library(tmp_path):
    from percli.core.data import build_dataset, compute_fbank_stats

    for i, f in enumerate((300, 900)):
        _tone(tmp_path / f"{i}.wav", f)
    result = runner.invoke(app, ["audio-stats", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    mean, std = compute_fbank_stats(build_dataset(str(tmp_path), kind="audio"))
    assert got == {"mean": mean, "std": std} and std > 0
    assert runner.invoke(app, ["audio-stats", str(tmp_path / "missing")]).exit_code == 2


def test_eval_classify_on_an_audio_checkpoint(tmp_path):
    ft = runner.invoke(app, ["finetune", "audio-mae", "--run-dir", str(tmp_path / "ft"), "--json", *CLS,
                             "train.max_steps=2"])
    assert ft.exit_code == 0, ft.output
    trained = json.loads(ft.stdout)
    ev = runner.invoke(app, ["eval", "classify", "--run-dir", str(tmp_path / "ev"), "--json",
                             f"checkpoint={trained['checkpoint']}", "data.embedded_size=48", "train.num_workers=0",
                             "train.batch_size=8"])
    assert ev.exit_code == 0, ev.output
    # same checkpoint, same held-out clips: eval reproduces the finetune run's final evaluation
    metrics = json.loads(ev.stdout)["metrics"]
    assert metrics["count"] == trained["metrics"]["eval/count"]
    assert metrics["top1"] == trained["metrics"]["eval/top1"]


def test_dry_run_names_a_missing_label_csv(tmp_path):
    result = runner.invoke(app, ["finetune", "audio-mae", "--dry-run", f"data.label_csv={tmp_path / 'no.csv'}"])
    assert result.exit_code == 2 and "data.label_csv" in result.output and "label CSV" in result.output
