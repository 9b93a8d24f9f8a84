"""`percli curate metaclip` under `accelerate launch` with two CPU processes equals one process.

The shards mix Parquet, WebDataset tar and JSONL; every format is written byte-identically.
"""

from __future__ import annotations

import json
import subprocess

from percli.curation.demo import demo_metadata, demo_pool
from tests.conftest import PYTHON, free_port, subprocess_env
from tests.test_shards import kept_records, write_jsonl, write_parquet, write_tar

VOLATILE = ("output_dir", "outputs", "world_size")  # differ by run dir or process count, by design


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


def curate(tmp_path, out, shards, metadata, processes):
    env = subprocess_env()
    args = ["-m", "percli.cli", "curate", "metaclip", str(tmp_path / "shard{0..3}.*"), "--metadata", str(metadata),
            "--t", "20", "--seed", "3", "--output", str(out), "--json"]
    if processes == 1:
        cmd = [PYTHON, *args]
    else:
        env["ACCELERATE_USE_CPU"] = "true"
        # --multi_gpu with USE_CPU starts the processes on gloo (see tests/test_distributed.py).
        cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_two_processes_give_the_same_output_as_one(tmp_path):
    shards, metadata = write_shards(tmp_path)
    (tmp_path / "other.jsonl").write_text("")  # not matched by the pattern
    one = curate(tmp_path, tmp_path / "one", shards, metadata, 1)
    two = curate(tmp_path, tmp_path / "two", shards, metadata, 2)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert {k: v for k, v in one.items() if k not in VOLATILE} == {k: v for k, v in two.items() if k not in VOLATILE}
    assert one["bad_records"] == 1 and 0 < one["kept"] < one["matched"] and one["head_entries"] > 0
    saved_one = json.loads((tmp_path / "one" / "summary.json").read_text())
    saved_two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert saved_two["world_size"] == 2
    assert {k: v for k, v in saved_one.items() if k not in VOLATILE} == {
        k: v for k, v in saved_two.items() if k not in VOLATILE}
    for name in ["entry_counts.json", *(f"curated/{p.name}" for p in shards)]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert sum(len(kept_records(tmp_path / "two" / "curated" / p.name)) for p in shards) == two["kept"]
    assert one["inputs"] == [str(p) for p in shards]
    assert not list((tmp_path / "two").rglob(".*tmp*"))
