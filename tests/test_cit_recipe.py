"""`percli pretrain cit`: the curation round's rule on hand-made embeddings, the sampler's subsets, a tiny run
whose rounds are logged and resumed exactly, and two processes scoring the pool together."""

import json
import shutil
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.loader import ResumableSampler
from percli.core.rundir import read_metrics
from percli.recipes.cit import CitTask, Config
from tests.conftest import PYTHON, free_port, subprocess_env

runner = CliRunner()
TINY = ["data.embedded_size=64", "train.batch_size=8", "train.num_workers=0", "train.log_every=1",
        "model.kwargs.vision_cfg.layers=1", "model.kwargs.text_cfg.layers=1"]


def test_a_sampler_subset_is_shuffled_and_cycled_to_the_epoch_length():
    sampler = ResumableSampler(10, seed=3, num_samples=12, subsets=True)
    sampler.set_subset([7, 7, 2, 5])
    first = [i % 10 for i in sampler]
    assert len(first) == 12 and sorted(first) == sorted([7, 7, 2, 5] * 3)
    sampler.set_epoch(1)
    assert [i % 10 for i in sampler] != first  # a new order each epoch
    two = [ResumableSampler(10, seed=3, num_samples=12, subsets=True, world_size=2, rank=r) for r in (0, 1)]
    for s in two:
        s.set_subset([7, 7, 2, 5])
    assert sorted(i % 10 for s in two for i in s) == sorted(first)  # the ranks split one order
    with pytest.raises(ValueError, match="not all in"):
        sampler.set_subset([10])


class _Texts(torch.nn.Module):
    """encode_text stand-in: class names and on-task captions point one way, off-task captions another."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def encode_text(self, ids, normalize=False):
        off = torch.tensor([bool(row[0] == 1) for row in ids.tolist()])
        return torch.stack([(~off).float(), off.float()], dim=1)


def test_a_round_keeps_the_on_task_captions_and_fills_the_epoch():
    cfg = Config()
    cfg.train.batch_size, cfg.curation.threshold, cfg.curation.min_ratio = 4, 0.5, 0.0
    task = CitTask(cfg)
    task.texts, task.pool = [f"cap {i}" for i in range(20)], None
    off = {1, 4, 5, 9, 12, 13, 17}
    task.tokenizer = lambda texts: torch.tensor([[1 if t.startswith("cap ") and int(t[4:]) in off else 0]
                                                for t in texts])
    task.epoch_len = 30  # more than the 13 on-task captions: the pool is streamed again
    ids, stats = task.curate(0, _Texts())
    assert len(ids) == 30 and not set(ids) & off and set(ids) == set(range(20)) - off
    assert 0.6 < stats["ratio"] < 0.7  # kept / scored, over the pool batches the round read
    again, _ = task.curate(0, _Texts())
    assert again == ids  # a pure function of (seed, round)
    task.epoch_len = 13  # exactly the on-task captions: one whole pass
    ids, stats = task.curate(2, _Texts())
    assert sorted(ids) == sorted(set(range(20)) - off) and stats["ratio"] == pytest.approx(13 / 20)
    cfg.curation.min_ratio = 0.5  # a batch of 8 with fewer than 4 passing keeps its 4 best instead
    task.texts = [f"cap {i}" for i in (1, 4, 5, 9, 12, 13, 17, 0)]
    fallback, stats = task.curate(1, _Texts())
    assert stats["ratio"] == 0.5 and 7 in fallback  # index 7: the one on-task caption ("cap 0")


def test_tiny_run_logs_each_round_and_resumes_exactly(tmp_path):
    args = [*TINY, "curation.every=3", "train.max_steps=6", "train.ckpt_every=2", "train.keep_last=3",
            "curation.threshold=0.0"]
    full = runner.invoke(app, ["pretrain", "cit", "--run-dir", str(tmp_path / "full"), "--json", *args])
    assert full.exit_code == 0, full.output
    summary = json.loads(full.stdout)
    assert 0 <= summary["metrics"]["eval/zero_shot_top1"] <= 1
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    rounds = [r for r in rows if "curation/ratio" in r]
    assert [r["step"] for r in rounds] == [1, 4] and all(0 < r["curation/ratio"] <= 1 for r in rounds)

    part = tmp_path / "part"
    first = runner.invoke(app, ["pretrain", "cit", "--run-dir", str(part), *args])
    assert first.exit_code == 0
    for step in ("step_0000006", "step_0000004"):  # the crash: back to step 2, inside round 0
        shutil.rmtree(part / "checkpoints" / step, ignore_errors=True)
    resumed = runner.invoke(app, ["pretrain", "cit", "--run-dir", str(part), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    got = [(r["step"], r.get("loss"), r.get("curation/ratio")) for r in read_metrics(part / "metrics.jsonl")
           if "eval/zero_shot_top1" not in r]
    want = [(r["step"], r.get("loss"), r.get("curation/ratio")) for r in rows if "eval/zero_shot_top1" not in r]
    assert got == want  # the same losses and one line per round: round 0's ids came from the checkpoint

    evaluated = runner.invoke(app, ["eval", "zero-shot", "--json", f"model.checkpoint={summary['checkpoint']}",
                                    "data.embedded_size=40", "train.num_workers=0"])
    assert evaluated.exit_code == 0, evaluated.output


def test_offline_and_none_modes(tmp_path):
    for mode in ("offline", "none"):
        result = runner.invoke(app, ["pretrain", "cit", "--run-dir", str(tmp_path / mode), *TINY,
                                     f"curation.mode={mode}", "curation.every=2", "train.max_steps=4"])
        assert result.exit_code == 0, result.output
        rounds = [r for r in read_metrics(tmp_path / mode / "metrics.jsonl") if r.get("epoch") is not None
                  and any(k.startswith("curation/") for k in r)]
        if mode == "offline":  # curated once, then the same ids again (also after a resume)
            assert len(rounds) == 2 and "curation/ratio" in rounds[0] and rounds[1]["curation/reused"] == 1.0
        else:  # an epoch is the whole pool (64 items = 8 steps of 8): one line, everything kept
            assert [r["curation/ratio"] for r in rounds] == [1.0]


def test_two_processes_score_the_pool_together(tmp_path):
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "pretrain", "cit", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
           "curation.every=2", "train.max_steps=4", "curation.threshold=0.0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["step"] == 4
    rounds = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "curation/ratio" in r]
    assert [r["step"] for r in rounds] == [1, 3]
