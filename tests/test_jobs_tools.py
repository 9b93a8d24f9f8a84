"""The selection, search, conversion and AV-SUPERB jobs on the job registry: `select run|simulate`,
`search-arch`, `convert` and `eval av-superb` dry-run their default (or name the key it lacks), show their
config, write config.yaml / env.json / summary.json on a tiny run, print one JSON object with --json, and the
resumable ones continue a run dir with --resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from percli.cli import app
from percli.jobs import JOBS, find_method
from tests.summary_schema import assert_common_schema

runner = CliRunner()
HIERA = {"input_size": [64, 64], "embed_dim": 8, "num_heads": 1, "stages": [1, 1, 1, 1]}

# job name -> (a key its default config lacks, or None when the default is valid), arguments of a tiny run.
CASES = {
    "select run": ("strategy", ["-s", "margin", "-b", "3", "--probs", "{probs}"]),
    "select simulate": (None, ["--strategies", "random,margin", "--seeds", "1", "--initial", "10", "--budget", "10",
                               "--rounds", "1", "--steps", "5"]),
    "search-arch": (None, ["--strategy", "random", "--space", "vit-micro", "--budget", "2", "--proxy-steps", "2"]),
    "convert": ("source", ["{hiera}", "-o", "{tmp}/w.safetensors", "--model", "hiera_tiny_224", "--kwargs",
                           json.dumps(HIERA)]),
    "eval av-superb": (None, ["--upstream", "audio-mae", "--tasks", "ks", "--features", "audio", "--steps", "2",
                              "--batch-size", "4", "--minibench", "{mini}"]),
}


def test_every_job_of_this_group_has_a_case():
    mine = {"select", "search-arch", "convert"}
    names = {job.name for job in JOBS if job.verb in mine or job.name == "eval av-superb"}
    assert names == set(CASES)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("inputs")
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=20)
    np.save(folder / "probs.npy", probs)
    torch.manual_seed(0)
    from percli.models import create_model

    torch.save({"model_state": create_model("hiera_tiny_224", **HIERA).state_dict()}, folder / "hiera.pth")
    return {"probs": str(folder / "probs.npy"), "hiera": str(folder / "hiera.pth"), "mini": str(folder / "mini")}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run dirs (runs/<verb>-<method>-<time>) land here


def command(name: str) -> list[str]:
    return name.split()


def job_of(name: str):
    return next(job for job in JOBS if job.name == name)


def tiny_args(name: str, files: dict[str, str], tmp_path) -> list[str]:
    values = {"tmp": str(tmp_path), **files}
    out = []
    for arg in CASES[name][1]:
        for key, value in values.items():
            arg = arg.replace(f"{{{key}}}", value)
        out.append(arg)
    return out


@pytest.mark.parametrize("name", CASES)
def test_dry_run_of_the_default_prints_the_config_or_names_the_missing_key(name, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, [*command(name), "--dry-run", "--run-dir", str(run)])
    missing = CASES[name][0]
    if missing is None:
        assert result.exit_code == 0, result.output
        assert isinstance(yaml.safe_load(result.stdout), dict)
    else:
        assert result.exit_code == 2 and f"{missing}" in result.stderr and "not set" in result.stderr, result.output
    assert not run.exists()


@pytest.mark.parametrize("name", CASES)
def test_dry_run_of_a_tiny_config_is_valid(name, files, tmp_path):
    result = runner.invoke(app, [*command(name), *tiny_args(name, files, tmp_path), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.stdout), dict) and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", CASES)
def test_show_config(name):
    job = job_of(name)
    method = job.method or job.verb
    shown = runner.invoke(app, ["show-config", method, "--verb", job.verb, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout).keys() == yaml.safe_load(
        runner.invoke(app, ["show-config", method, "--verb", job.verb]).stdout).keys()


@pytest.mark.parametrize("name", CASES)
def test_tiny_run_writes_the_run_dir_and_one_json_object(name, files, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, [*command(name), *tiny_args(name, files, tmp_path), "--run-dir", str(run), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # exactly one JSON object: anything else on stdout fails to parse
    assert summary == json.loads((run / "summary.json").read_text())
    assert_common_schema(summary)
    assert summary["status"] == "completed" and summary["run_dir"] == str(run)
    assert isinstance(yaml.safe_load((run / "config.yaml").read_text()), dict)
    assert json.loads((run / "env.json").read_text())["world_size"] == 1
    table = runner.invoke(app, [*command(name), *tiny_args(name, files, tmp_path), "--run-dir", str(run),
                                "--overwrite"])
    assert table.exit_code == 0, table.output
    assert f"{name}: completed" in table.stdout  # the generic summary table


@pytest.mark.parametrize("name", [n for n in CASES if job_of(n).resumable])
def test_resume_continues_the_run_dir_from_its_config(name, files, tmp_path):
    run = tmp_path / "run"
    first = runner.invoke(app, [*command(name), *tiny_args(name, files, tmp_path), "--run-dir", str(run), "--json"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*command(name), "--run-dir", str(run), "--resume", "--json"])  # args from config.yaml
    assert again.exit_code == 0, again.output
    before, after = json.loads(first.stdout), json.loads(again.stdout)
    if name == "search-arch":
        assert (before["resumed_candidates"], after["resumed_candidates"]) == (0, 2)
        assert after["best_config"] == before["best_config"]
    else:
        assert (before["resumed_pairs"], after["resumed_pairs"]) == (0, 1)
        assert after["results"] == before["results"]


def test_non_resumable_jobs_have_no_resume_flag():
    assert find_method("convert", "convert") is job_of("convert")  # a top-level job by its verb
    for name in ("select run", "select simulate", "convert"):
        assert not job_of(name).resumable
        result = runner.invoke(app, [*command(name), "--resume"])
        assert result.exit_code == 2 and "No such option: --resume" in result.output


def test_convert_writes_the_file_where_asked_and_its_record_in_a_run_dir(files, tmp_path):
    out = tmp_path / "weights" / "w.safetensors"
    args = ["convert", files["hiera"], "-o", str(out), "--model", "hiera_tiny_224", "--kwargs", json.dumps(HIERA)]
    first = runner.invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    assert out.is_file() and json.loads(first.stdout)["output"] == str(out)
    again = runner.invoke(app, [*args, "--json"])  # the same second: another run dir, but the file exists
    assert again.exit_code == 2 and "--overwrite" in again.output
    third = runner.invoke(app, [*args, "--overwrite", "--json"])
    assert third.exit_code == 0, third.output
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(name.startswith("convert-") for name in runs)  # the failed one left nothing
    assert all((tmp_path / "runs" / name / "summary.json").is_file() for name in runs)


def test_bad_kwargs_json_is_a_config_error_not_a_crash(files):
    result = runner.invoke(app, ["convert", files["hiera"], "-o", "w.safetensors", "--kwargs", "{bad"])
    assert result.exit_code == 2 and "kwargs (--kwargs)" in result.output and "Traceback" not in result.output


def test_select_without_a_subcommand_is_select_run(files, tmp_path):
    result = runner.invoke(app, ["select", "-s", "entropy", "-b", "2", "--probs", files["probs"], "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    picks = [json.loads(line) for line in (tmp_path / summary["run_dir"] / "picks.jsonl").read_text().splitlines()]
    assert [p["index"] for p in picks] == summary["indices"] and len(picks) == 2
