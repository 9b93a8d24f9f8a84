"""What percli does with hostile input, concurrent runs and broken settings (issue 26's fault study):
one line and exit 2 for everything the user can fix, nothing half-written, no run dir left behind."""

import json
import os
import signal
import subprocess
import time

import pytest
from PIL import Image
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data import JsonlImageDataset
from percli.core.rundir import LOCK_NAME, claim_run_dir, read_metrics, unlock_run_dir
from tests.conftest import PYTHON, TINY_CLS, TINY_MAE, subprocess_env

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _image(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), colour).save(path)
    return path


# --- item 2: labels -------------------------------------------------------------------------------


def test_huge_integer_label_is_refused_at_once_with_its_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.png", "label": 0}\n' + json.dumps({"path": "b.png", "label": 10**30}) + "\n")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"m\.jsonl:2: label 1000000000000000000000000000000 implies"):
        JsonlImageDataset(manifest)
    assert time.perf_counter() - start < 1.0  # no range(1e30) was built


@pytest.mark.parametrize("line, expected", [
    ('{"path": "b.png", "label": 1000000000000000000000000000000}', "m.jsonl:2: label 1000000"),
    ('{"path": "b.png", "label": -1}', "m.jsonl:2: no label"),
    ('{"path": "b.png"}', "m.jsonl:2: no label"),
])
def test_finetune_refuses_bad_labels_naming_the_line(tmp_path, line, expected):
    for name in ("a", "b"):
        _image(tmp_path / f"{name}.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.png", "label": 0}\n' + line + "\n")
    run = tmp_path / "run"
    result = invoke("finetune", "hiera", "--run-dir", run, *TINY_CLS, f"data.source={manifest}", "train.max_steps=1")
    assert result.exit_code == 2 and expected in result.output, result.output
    assert "Traceback" not in result.output and not run.exists()


def test_validation_folder_uses_the_training_classes(tmp_path):
    for cls, colour in (("cat", (250, 0, 0)), ("dog", (0, 250, 0)), ("eel", (0, 0, 250))):
        for i in range(8):
            _image(tmp_path / "train" / cls / f"{i}.png", colour)
    _image(tmp_path / "val" / "eel" / "0.png", (0, 0, 250))  # a val set holding one of the three classes
    result = invoke("finetune", "hiera", "--run-dir", tmp_path / "run", "--json", *TINY_CLS,
                    f"data.source={tmp_path / 'train'}", f"data.val_source={tmp_path / 'val'}", "train.max_steps=1")
    assert result.exit_code == 0, result.output
    from percli.recipes.classification import classification_dataset
    from percli.recipes.hiera_classify import Config

    val = classification_dataset(str(tmp_path / "val"), "val", False, Config().data, (3, 64, 64), False,
                                 classes=["cat", "dog", "eel"])
    assert val.samples[0][1] == 2  # 'eel' keeps its training index (alone it would have been class 0)
    _image(tmp_path / "val" / "fox" / "0.png")
    with pytest.raises(ValueError, match="'fox' are not among the 3 classes"):
        classification_dataset(str(tmp_path / "val"), "val", False, Config().data, (3, 64, 64), False,
                               classes=["cat", "dog", "eel"])


# --- item 4: all-bad data ----------------------------------------------------------------------------


def test_all_unreadable_images_fail_instead_of_completing(tmp_path):
    data = tmp_path / "data"
    for i in range(10):
        (data / "x").mkdir(parents=True, exist_ok=True)
        (data / "x" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))  # truncated PNGs
    run = tmp_path / "run"
    result = invoke("pretrain", "hiera-mae", "--run-dir", run, "--json", *TINY_MAE, f"data.source={data}",
                    "train.max_steps=50", "train.batch_size=4")
    assert result.exit_code == 2, result.output
    assert "no usable sample" in result.output and str(data) in result.output, result.output
    assert "all 8 file(s) read were unreadable (10 in the set" in result.output  # 2 full batches of 4 per epoch
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["bad_inputs"]["count"] == 8
    assert summary["step"] == 2  # stopped after one epoch (2 micro-batches of 4), not after 50 steps


def test_all_unreadable_audio_fails_instead_of_completing(tmp_path):
    from tests.test_audio_recipes import MAE

    data = tmp_path / "audio"
    data.mkdir()
    for i in range(8):
        (data / f"{i}.wav").write_bytes(b"RIFF" + os.urandom(40))
    result = invoke("pretrain", "audio-mae", "--run-dir", tmp_path / "run", *MAE, f"data.source={data}",
                    "data.mean=-4.0", "data.std=4.0", "train.max_steps=20", "train.batch_size=4")
    assert result.exit_code == 2 and "no usable sample" in result.output, result.output


# --- item 5: run-dir lock ----------------------------------------------------------------------------


HOLD = """
import sys, time
from pathlib import Path
from percli.core.rundir import claim_run_dir
claim_run_dir(Path(sys.argv[1]), resume=False, overwrite=False)
print("held", flush=True)
time.sleep(120)
"""


def _holder(run):
    proc = subprocess.Popen([PYTHON, "-c", HOLD, str(run)], stdout=subprocess.PIPE, env=subprocess_env(), text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_locked_run_dir_refuses_resume_and_overwrite_then_frees_after_a_crash(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        (run / "config.yaml").write_text("train: {max_steps: 3}\n")
        for flag in ("--resume", "--overwrite"):
            result = invoke("pretrain", "hiera-mae", "--run-dir", run, flag, *TINY_MAE)
            assert result.exit_code == 2, result.output
            assert f"in use by PID {holder.pid}" in result.output
        assert (run / "config.yaml").read_text() == "train: {max_steps: 3}\n"  # --overwrite removed nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops the lock with the process
        holder.wait()
    claim_run_dir(run, resume=True, overwrite=False)  # no stale lock
    unlock_run_dir(run)


def test_two_concurrent_runs_on_one_dir_exactly_one_proceeds(tmp_path):
    run = tmp_path / "run"
    args = ["-m", "percli.cli", "pretrain", "hiera-mae", "--run-dir", str(run), *TINY_MAE, "train.max_steps=400",
            "train.log_every=1"]
    env = subprocess_env()
    first = subprocess.Popen([PYTHON, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.2)
    second = subprocess.run([PYTHON, *args, "--overwrite"], env=env, capture_output=True, text=True, timeout=120)
    first.send_signal(signal.SIGTERM)  # end the first run early (it checkpoints and exits)
    out, errs = first.communicate(timeout=120)
    assert second.returncode == 2 and f"in use by PID {first.pid}" in second.stderr, second.stderr
    assert first.returncode == 128 + signal.SIGTERM, errs
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1))  # one run's lines, none interleaved or lost


# --- item 6 and 12: resume config, config errors, run dir --------------------------------------------


@pytest.mark.parametrize("content, expected", [
    ("", "is empty"), ("train: [1, 2\n", "is not valid YAML"), ("- a\n- b\n", "not a mapping"),
    ("train: {batch_size: -3}\n", "train.batch_size: got -3"),
])
def test_resume_refuses_a_missing_empty_or_invalid_config(tmp_path, content, expected):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(content)
    (run / "checkpoints").mkdir()
    result = invoke("pretrain", "hiera-mae", "--run-dir", run, "--resume", *TINY_MAE)
    assert result.exit_code == 2 and expected in result.output and "config.yaml" in result.output, result.output
    assert (run / "config.yaml").read_text() == content  # left as it was


@pytest.mark.parametrize("override, key", [
    ("train.batch_size=0", "train.batch_size"), ("train.batch_size=-1", "train.batch_size"),
    ("train.grad_accum_steps=0", "train.grad_accum_steps"), ("train.max_steps=-5", "train.max_steps"),
    ("optim.lr=nan", "optim.lr"), ("optim.lr=inf", "optim.lr"), ("optim.weight_decay=.nan", "optim.weight_decay"),
    ("model.kwargs.embed_dim=-8", "model.kwargs.embed_dim"), ("optim.warmup_fraction=2", "optim.warmup_fraction"),
])
def test_dry_run_reports_out_of_range_values(override, key):
    result = invoke("pretrain", "hiera-mae", "--dry-run", override)
    assert result.exit_code == 2 and f"bad config: {key}: got" in result.output, result.output


def test_malformed_override_yaml_is_a_config_error():
    result = invoke("pretrain", "hiera-mae", "--dry-run", "model.kwargs={embed_dim: [1,")
    assert result.exit_code == 2 and "not valid YAML" in result.output and "Traceback" not in result.output


def test_run_dir_that_is_a_file_is_refused_even_in_a_dry_run(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    for extra in (["--dry-run"], []):
        result = invoke("pretrain", "hiera-mae", "--run-dir", target, *TINY_MAE, *extra)
        assert result.exit_code == 2 and "is a file" in result.output, result.output
    result = invoke("pretrain", "hiera-mae", "--run-dir", target / "sub", *TINY_MAE)
    assert result.exit_code == 2 and "is a file" in result.output


def test_a_run_failing_on_its_inputs_leaves_no_run_dir(tmp_path):
    run = tmp_path / "run"
    result = invoke("pretrain", "hiera-mae", "--run-dir", run, *TINY_MAE, f"data.source={tmp_path / 'nowhere'}")
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not run.exists()
    again = invoke("pretrain", "hiera-mae", "--run-dir", run, *TINY_MAE, "train.max_steps=1")
    assert again.exit_code == 0, again.output  # the dir is free for the corrected run


def test_disk_full_while_checkpointing_exits_2(tmp_path, monkeypatch):
    import errno

    from percli.core import checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "checkpoints"))

    monkeypatch.setattr(checkpoint, "finish_checkpoint", full)
    result = invoke("pretrain", "hiera-mae", "--run-dir", tmp_path / "run", *TINY_MAE, "train.max_steps=1")
    assert result.exit_code == 2 and "No space left on device" in result.output and "--resume" in result.output


def test_a_bug_exits_1_with_its_traceback_and_the_report_hint(tmp_path, monkeypatch, capsys):
    from percli import cli
    from percli.recipes import hiera_mae

    def broken(*a, **k):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(hiera_mae, "run", broken)
    monkeypatch.setattr("sys.argv", ["percli", "pretrain", "hiera-mae", "--run-dir", str(tmp_path / "r"), *TINY_MAE])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "an internal bug" in err and "this is a bug in percli" in err


def test_lock_file_does_not_make_a_finished_run_dir_look_foreign(tmp_path):
    run = tmp_path / "run"
    assert invoke("pretrain", "hiera-mae", "--run-dir", run, *TINY_MAE, "train.max_steps=2").exit_code == 0
    assert (run / LOCK_NAME).is_file()
    resumed = invoke("pretrain", "hiera-mae", "--run-dir", run, "--resume", "train.max_steps=3")
    assert resumed.exit_code == 0, resumed.output
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r][-1] == 3


def test_a_malformed_manifest_line_is_counted_in_the_run_summary(tmp_path):
    for i in range(8):
        _image(tmp_path / f"{i}.png", (30 * i, 90, 200 - 20 * i))
    lines = [json.dumps({"path": f"{i}.png", "label": i % 2}) for i in range(8)] + ["{not json", '{"label": 1}']
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    result = invoke("finetune", "hiera", "--run-dir", tmp_path / "run", "--json", *TINY_CLS,
                    f"data.source={tmp_path / 'm.jsonl'}", "train.max_steps=1")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["bad_records"]["count"] == 2
    assert [e["line"] for e in summary["bad_records"]["examples"]] == [9, 10]


def test_a_refused_resume_leaves_the_runs_config_as_it_was(tmp_path):
    run = tmp_path / "run"
    assert invoke("pretrain", "hiera-mae", "--run-dir", run, *TINY_MAE, "train.max_steps=2").exit_code == 0
    before = (run / "config.yaml").read_text()
    refused = invoke("pretrain", "hiera-mae", "--run-dir", run, "--resume", f"data.source={tmp_path / 'gone'}")
    assert refused.exit_code == 2 and "does not exist" in refused.output
    assert (run / "config.yaml").read_text() == before  # the next --resume still continues the real run
