"""Progress that fits batch logs: with stderr not a terminal, plain lines (training every log_every steps,
data jobs per shard or chunk) instead of a live bar that shows only when it ends."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from typer.testing import CliRunner

from percli.cli import app
from percli.core.progress import Progress, plain_progress
from percli.core.rundir import read_metrics
from percli.curation.demo import demo_metadata, demo_pool
from tests import test_caption_command
from tests.conftest import PYTHON, TINY_MAE, subprocess_env

runner = CliRunner()
checkpoint, scenes = test_caption_command.checkpoint, test_caption_command.scenes  # the tiny captioner fixtures

TRAIN_LINE = re.compile(r"^train (\d+)/(\d+) steps \| loss [\d.]+ \| lr \S+ \| samples/s [\d,.]+ \| eta \d+:\d\d:\d\d$")


def test_batch_log_gets_one_plain_line_per_log_every_steps(tmp_path):
    """A real `percli pretrain hiera-mae` with stderr through a pipe (SLURM, nohup, CI)."""
    run = tmp_path / "run"
    proc = subprocess.run([PYTHON, "-m", "percli.cli", "pretrain", "hiera-mae", "--run-dir", str(run), *TINY_MAE,
                           "train.max_steps=7", "train.log_every=2", "recon_images=0"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)  # pipes: not a TTY
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stderr  # no live bar, no colour codes
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train ")]
    assert all(TRAIN_LINE.match(line) for line in lines), lines
    logged = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    # One line per log_every steps (2, 4, 6) and the last step, each with the loss metrics.jsonl holds.
    assert [int(TRAIN_LINE.match(line).group(1)) for line in lines] == [r["step"] for r in logged] == [2, 4, 6, 7]
    assert [line.split(" | ")[1] for line in lines] == [f"loss {r['loss']:.4f}" for r in logged]


def test_plain_progress_counts_rate_and_eta_without_the_resumed_units(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("percli.core.progress.time.time", lambda: now[0])
    lines: list[str] = []
    with plain_progress(lines.append)("match", 4, "shards") as bar:  # started at t=100
        now[0] = 110.0
        bar.advance(skipped=True, note="a.jsonl already done, skipped (--resume)")
        now[0] = 120.0  # 1 shard worked in 20 s, 2 left
        bar.advance(records=500, note="b.jsonl -> matches/b.npz")
        bar.update(2.5, {"loss": "1.0"})  # no line asked for: nothing printed
    assert lines == [
        "match 1/4 shards | records 0 | records/s 0.0 | eta ? | a.jsonl already done, skipped (--resume)",
        "match 2/4 shards | records 500 | records/s 25.0 | eta 0:00:40 | b.jsonl -> matches/b.npz",
    ]
    silent = Progress("train", 3, enabled=False, live=False, out=lines.append)
    silent.update(1, line=True)
    assert len(lines) == 2  # ranks other than 0 print nothing


def test_metaclip_stages_log_a_progress_line_per_shard(tmp_path):
    pools = []
    for i in range(2):
        pools.append(tmp_path / f"pool{i}.jsonl")
        pools[-1].write_text("".join(json.dumps(r) + "\n" for r in demo_pool(100, seed=i)))
    (tmp_path / "meta.json").write_text(json.dumps(demo_metadata()))
    result = runner.invoke(app, ["curate", "metaclip", *map(str, pools), "-m", str(tmp_path / "meta.json"),
                                 "--t", "5", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for stage in ("match", "balance"):
        lines = [line for line in result.stderr.splitlines() if line.startswith(f"{stage} ")]
        assert [line.split(" | ")[0] for line in lines] == [f"{stage} 1/2 shards", f"{stage} 2/2 shards"], lines
        assert lines[-1].split(" | ")[1] == "records 200"  # every text read once per stage
        assert "records/s" in lines[-1] and "eta" in lines[-1] and "pool1.jsonl -> " in lines[-1]


def test_caption_logs_a_progress_line_per_chunk(tmp_path, scenes, checkpoint):
    result = runner.invoke(app, ["caption", "altogether", "--images", str(scenes), "--checkpoint", str(checkpoint),
                                 "-o", str(tmp_path / "out"), "--batch-size", "2", "--chunk-size", "4"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("caption ")]
    # 11 records in chunks of 4: the shard counts as done with its last chunk.
    assert [line.split(" | ")[0] for line in lines] == ["caption 0/1 shards"] * 2 + ["caption 1/1 shards"]
    assert [line.split(" | ")[1] for line in lines] == ["records 4", "records 8", "records 11"]
    assert lines[-1].endswith("chunk 3/3 written")


@pytest.mark.parametrize("total, done, expected", [(3, 1, "x 1/3 steps"), (1, 1 / 3 + 1 / 3 + 1 / 3, "x 1/1 steps")])
def test_fractions_of_a_unit_add_up_to_whole_ones(total, done, expected):
    bar = Progress("x", total, live=False, out=lambda _line: None)
    bar.update(done)
    assert bar.line().startswith(expected)
