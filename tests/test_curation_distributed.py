"""`percli curate metaclip` under `accelerate launch` with two CPU processes equals one process, and a
run whose process is killed resumes shard by shard to the same output.

The shards mix Parquet, WebDataset tar and JSONL; every format is written byte-identically.
"""

from __future__ import annotations

import json
import subprocess

from percli.curation.demo import demo_metadata, demo_pool
from tests.conftest import PYTHON, free_port, subprocess_env
from tests.test_shards import kept_records, write_jsonl, write_parquet, write_tar

VOLATILE = ("output_dir", "run_dir", "outputs", "world_size")  # differ by run dir or process count, by design

# Runs percli with MetaCLIP's per-shard balancing patched to kill its own process (SIGKILL: no cleanup,
# no marker, as a node that dies) when it reaches the shard named by PERCLI_TEST_DIE_ON.
DYING_PERCLI = """
import os, signal, sys
import percli.curation.metaclip as metaclip
real = metaclip._balance_shard
def balance_or_die(path, *args, **kwargs):
    if path.name == os.environ["PERCLI_TEST_DIE_ON"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, *args, **kwargs)
metaclip._balance_shard = balance_or_die
from percli.cli import main
sys.argv[0] = "percli"
main()
"""


def write_shards(tmp_path, size=600):
    """Four shards in three formats; the tar shard (rank 1's) holds a sample without text."""
    pool = demo_pool(4 * size, seed=2)
    pool[size + 5]["text"] = None  # a bad record on a rank-1 shard must reach rank 0's summary
    parts = [pool[i * size:(i + 1) * size] for i in range(4)]
    paths = [write_parquet(tmp_path / "shard0.parquet", parts[0]), write_tar(tmp_path / "shard1.tar", parts[1]),
             write_jsonl(tmp_path / "shard2.jsonl", parts[2]), write_parquet(tmp_path / "shard3.parquet", parts[3])]
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps(demo_metadata()))
    return paths, metadata


def launch(tmp_path, out, metadata, processes, *extra, target=("-m", "percli.cli"), env=None):
    env = {**subprocess_env(), **(env or {})}
    args = [*target, "curate", "metaclip", str(tmp_path / "shard{0..3}.*"), "--metadata", str(metadata),
            "--t", "20", "--seed", "3", "--output", str(out), "--json", *extra]
    if processes == 1:
        cmd = [PYTHON, *args]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        # --multi_gpu with USE_CPU starts the processes on gloo (see tests/test_distributed.py).
        cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def curate(tmp_path, out, metadata, processes, *extra):
    proc = launch(tmp_path, out, metadata, processes, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def stable(summary):
    return {k: v for k, v in summary.items() if k not in VOLATILE}


def products(out, shards):
    return {name: (out / name).read_bytes() for name in ["entry_counts.json", *(f"curated/{p.name}" for p in shards)]}


def test_two_processes_give_the_same_output_as_one(tmp_path):
    shards, metadata = write_shards(tmp_path)
    (tmp_path / "other.jsonl").write_text("")  # not matched by the pattern
    one = curate(tmp_path, tmp_path / "one", metadata, 1)
    two = curate(tmp_path, tmp_path / "two", metadata, 2)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert stable(one) == stable(two)
    assert one["bad_records"] == 1 and 0 < one["kept"] < one["matched"] and one["head_entries"] > 0
    saved_one = json.loads((tmp_path / "one" / "summary.json").read_text())
    saved_two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert saved_two["world_size"] == 2
    assert stable(saved_one) == stable(saved_two)
    assert products(tmp_path / "one", shards) == products(tmp_path / "two", shards)
    assert sum(len(kept_records(tmp_path / "two" / "curated" / p.name)) for p in shards) == two["kept"]
    assert one["inputs"] == [str(p) for p in shards]
    assert not list((tmp_path / "two").rglob(".*tmp*"))


def test_killed_two_process_run_resumes_shard_by_shard(tmp_path):
    shards, metadata = write_shards(tmp_path)
    (tmp_path / "dying_percli.py").write_text(DYING_PERCLI)
    out = tmp_path / "killed"
    # Rank 1 takes shard1 then shard3: it balances shard1 and dies when it reaches shard3.
    killed = launch(tmp_path, out, metadata, 2, target=(str(tmp_path / "dying_percli.py"),),
                    env={"PERCLI_TEST_DIE_ON": "shard3.parquet"})
    assert killed.returncode != 0
    assert (out / "progress" / "shard1.json").is_file() and not (out / "progress" / "shard3.json").exists()
    assert not (out / "summary.json").exists() and (out / "config.yaml").is_file()
    resumed = curate(tmp_path, out, metadata, 2, "--resume")
    assert 1 <= resumed["resumed_shards"] <= 3  # shard1 at least (rank 0 may have finished shard0, shard2)
    whole = curate(tmp_path, tmp_path / "whole", metadata, 1)
    def same_work(summary):  # everything but how many shards this invocation found already done
        out = {k: v for k, v in stable(summary).items() if k != "resumed_shards"}
        out["counts"] = {k: v for k, v in out.get("counts", {}).items() if k != "resumed_shards"}
        return out

    assert same_work(resumed) == same_work(whole)
    assert products(out, shards) == products(tmp_path / "whole", shards)
    assert not list(out.rglob(".*tmp*"))
