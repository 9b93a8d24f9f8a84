"""The curation jobs on the job registry: `curate metaclip run|match|count|balance|build-metadata`,
`curate cit`, `curate mode` and `curate text-quality` dry-run their default (or name the key it lacks),
show their config, write config.yaml / env.json / summary.json on a tiny run, print one JSON object with
--json, and the resumable MetaCLIP stages continue a run dir with --resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from percli.cli import app
from percli.curation.demo import demo_metadata, demo_pool
from percli.jobs import JOBS, find_method
from tests.summary_schema import assert_common_schema

runner = CliRunner()
WORDNET = Path("/usr/share/wordnet/data.noun").is_file()

# method -> (a key its default config lacks, or None when the default runs), arguments of a tiny run.
CASES = {
    "metaclip run": (None, ["{pool}", "-m", "{meta}", "--t", "5"]),
    "metaclip match": ("inputs", ["{pool}", "-m", "{meta}"]),
    "metaclip count": ("sources", ["{pool}", "-m", "{meta}"]),
    "metaclip balance": ("inputs", ["{pool}", "-m", "{meta}", "--counts", "{counts}", "--t", "5"]),
    "metaclip build-metadata": (None if WORDNET else "wordnet", ["--no-wordnet", "--unigrams", "{unigrams}",
                                                                 "--min-unigram-count", "2"]),
    "cit": (None, ["{pool}", "-m", "{classes}", "--encoder", "hashing", "--threshold", "0.2"]),
    "mode": (None, ["{pool}", "--encoder", "hashing", "--fine", "4", "--coarse", "2", "--classes", "{classes}"]),
    "text-quality": (None, ["{pool}", "--prune", "0.2"]),
}


def test_every_curate_job_has_a_case():
    assert sorted(job.method for job in JOBS if job.verb == "curate") == sorted(CASES)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("pool")
    pool = folder / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in demo_pool(300, seed=4)))
    (folder / "meta.json").write_text(json.dumps(demo_metadata()))
    (folder / "counts.json").write_text(json.dumps({e: 40 for e in demo_metadata()[:60]}))
    (folder / "classes.txt").write_text("dog\ncat\nbeach\n")
    (folder / "unigrams.txt").write_text("dog 9\ncat 5\nrare 1\n")
    return {name: str(folder / f"{name}.{ext}") for name, ext in
            (("pool", "jsonl"), ("meta", "json"), ("counts", "json"), ("classes", "txt"), ("unigrams", "txt"))}


def command(method: str) -> list[str]:
    return ["curate", *method.split()]


def tiny_args(method: str, files: dict[str, str]) -> list[str]:
    return [a.format(**files) for a in CASES[method][1]]


@pytest.mark.parametrize("method", CASES)
def test_dry_run_of_the_default_prints_the_config_or_names_the_missing_key(method, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, [*command(method), "--dry-run", "-o", str(out)])
    missing = CASES[method][0]
    if missing is None:
        assert result.exit_code == 0, result.output
        assert isinstance(yaml.safe_load(result.stdout), dict)
    else:
        assert result.exit_code == 2 and f"bad config: {missing}" in result.stderr, result.output
    assert not out.exists()


@pytest.mark.parametrize("method", CASES)
def test_dry_run_of_a_tiny_config_is_valid(method, files, tmp_path):
    result = runner.invoke(app, [*command(method), *tiny_args(method, files), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.stdout)
    assert isinstance(cfg, dict) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", CASES)
def test_show_config(method):
    shown = runner.invoke(app, ["show-config", method.replace(" ", "-"), "--verb", "curate", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout).keys() == yaml.safe_load(
        runner.invoke(app, ["show-config", method, "--verb", "curate"]).stdout).keys()


@pytest.mark.parametrize("method", CASES)
def test_tiny_run_writes_the_run_dir_and_one_json_object(method, files, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, [*command(method), *tiny_args(method, files), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # exactly one JSON object: anything else on stdout fails to parse
    assert_common_schema(summary)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["run_dir"] == str(out)
    assert isinstance(yaml.safe_load((out / "config.yaml").read_text()), dict)
    assert json.loads((out / "env.json").read_text())["world_size"] == 1
    table = runner.invoke(app, [*command(method), *tiny_args(method, files), "-o", str(out), "--overwrite"])
    assert table.exit_code == 0 and f"curate {method}: completed" in table.stdout  # the generic summary table


@pytest.mark.parametrize("method", [m for m in CASES if find_method(m, "curate").resumable])
def test_resume_continues_the_run_dir_from_its_config(method, files, tmp_path):
    out = tmp_path / "out"
    first = runner.invoke(app, [*command(method), *tiny_args(method, files), "-o", str(out), "--json"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*command(method), "-o", str(out), "--resume", "--json"])  # arguments from config.yaml
    assert again.exit_code == 0, again.output
    before, after = json.loads(first.stdout), json.loads(again.stdout)
    assert after["texts_read"] == before["texts_read"] == 300
    if "resumed_shards" in before:
        assert (before["resumed_shards"], after["resumed_shards"]) == (0, 1)  # the one shard was done
    assert after.get("kept") == before.get("kept")


def test_metaclip_with_no_stage_named_runs_the_one_shot_job_and_stages_chain(files, tmp_path):
    one = runner.invoke(app, ["curate", "metaclip", files["pool"], "-m", files["meta"], "--t", "5", "--json",
                              "-o", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout)["method"] == "metaclip"
    match = runner.invoke(app, ["curate", "metaclip", "match", files["pool"], "-m", files["meta"],
                                "-o", str(tmp_path / "m")])
    counted = runner.invoke(app, ["curate", "metaclip", "count", str(tmp_path / "m"), "-m", files["meta"],
                                  "-o", str(tmp_path / "c")])
    assert match.exit_code == counted.exit_code == 0, counted.output
    assert (tmp_path / "c" / "entry_counts.json").read_bytes() == (tmp_path / "one" / "entry_counts.json").read_bytes()


def test_build_metadata_run_dir_is_read_by_metadata(files, tmp_path):
    built = runner.invoke(app, ["curate", "metaclip", "build-metadata", *tiny_args("metaclip build-metadata", files),
                                "-o", str(tmp_path / "meta"), "--json"])
    assert built.exit_code == 0, built.output
    entries = json.loads((tmp_path / "meta" / "metadata.json").read_text())
    assert entries == [str(i) for i in range(100)] + ["dog", "cat"]
    run = runner.invoke(app, ["curate", "metaclip", files["pool"], "-m", str(tmp_path / "meta"), "--json",
                              "-o", str(tmp_path / "run")])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["num_entries"] == 102


def test_mode_no_balanced_switch_reaches_the_config(files):
    args = ["curate", "mode", files["pool"], "--encoder", "hashing", "--dry-run", "--json"]
    assert json.loads(runner.invoke(app, args).stdout)["balanced"] is True
    assert json.loads(runner.invoke(app, [*args, "--no-balanced"]).stdout)["balanced"] is False
    assert json.loads(runner.invoke(app, [*args, "--balanced"]).stdout)["balanced"] is True
