"""`percli caption altogether --write-shards`: every input record back in its format, plus its caption."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from percli.captioning.scenes import write_scene_folder
from percli.cli import app
from percli.core.data import shards as formats
from tests import test_caption_command

runner = CliRunner()
checkpoint = test_caption_command.checkpoint  # the tiny captioner fixture


def _tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def _pool(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A scene folder (JSONL), a Parquet and a tar shard, each with a corrupt image and a record without alt-text."""
    folder = write_scene_folder(tmp_path / "scenes", "test", 4)
    (folder / "images" / "scene-test-s0-000002.png").write_bytes(b"not a png")
    with (folder / "records.jsonl").open("a") as f:
        f.write(json.dumps({"key": "no-alt", "image": "images/scene-test-s0-000000.png"}) + "\n")
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()][:4]
    pngs = [(folder / r["image"]).read_bytes() for r in records]
    table = pa.table({"uid": ["a", "b", "c", "d"], "image": [pngs[0], b"not a png", pngs[3], pngs[1]],
                      "alt_text": [records[0]["alt_text"], records[1]["alt_text"], None, "a photo"],
                      "altogether": ["old"] * 4})
    parquet = tmp_path / "pool.parquet"
    pq.write_table(table, parquet)
    shard = tmp_path / "pool.tar"
    with tarfile.open(shard, "w") as tar:
        for i, (record, image) in enumerate(zip(records, [pngs[0], b"garbage", pngs[3], pngs[1]])):
            alt = b"" if i == 3 else record["alt_text"].encode()  # sample 3: empty alt-text, captioned from the image
            for name, data in ((f"t{i}.png", image), (f"t{i}.txt", alt), (f"t{i}.json", b'{"n": 1}')):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
    return folder, parquet, shard


def _caption(inputs, checkpoint, out, *extra):
    args = ["caption", "altogether", "--checkpoint", str(checkpoint), "-o", str(out), "--alt-text", "alt_text",
            "--chunk-size", "3", "--write-shards", "--json", *extra]
    for path in inputs:
        args += ["--images", str(path)]
    return runner.invoke(app, args)


def test_shards_hold_every_record_and_its_caption_and_resume_after_a_crash(tmp_path, checkpoint, monkeypatch):
    folder, parquet, shard = _pool(tmp_path)
    inputs_before = {p: p.read_bytes() for p in (folder / "records.jsonl", parquet, shard)}
    out = tmp_path / "out"
    real_write, calls = formats._ParquetWriter.write, []

    def crash(self, *args, **kwargs):
        calls.append(1)
        raise RuntimeError("injected crash while writing a shard")

    monkeypatch.setattr(formats._ParquetWriter, "write", crash)
    crashed = _caption([folder, parquet, shard], checkpoint, out)
    assert crashed.exit_code != 0 and "injected crash" in str(crashed.exception) and calls
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["records.jsonl"]  # no partial or temp shard
    monkeypatch.setattr(formats._ParquetWriter, "write", real_write)

    resumed = _caption([folder, parquet, shard], checkpoint, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["shards"] == [str(out / "shards" / n) for n in ("records.jsonl", "pool.parquet", "pool.tar")]
    assert summary["shards_resumed"] == 1 and summary["chunks_resumed"] == summary["chunks"]
    assert all(p.read_bytes() == data for p, data in inputs_before.items())  # inputs untouched
    captions = {r["key"]: r["altogether"] for r in map(json.loads, (out / "captions.jsonl").read_text().splitlines())}
    assert summary["bad_images"]["count"] == 3 and summary["bad_records"]["count"] == 0
    assert summary["without_alt_text"] == 3 and summary["captioned"] == 10

    # JSONL: same records in order, image paths absolute, caption or null (the corrupt image)
    original = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    written = [json.loads(line) for line in (out / "shards" / "records.jsonl").read_text().splitlines()]
    assert len(written) == len(original) == 5
    for before, after in zip(original, written):
        assert after["image"] == str((folder / before["image"]).absolute())
        assert Path(after["image"]).is_file()
        assert {k: v for k, v in after.items() if k not in ("image", "altogether")} == \
            {k: v for k, v in before.items() if k != "image"}
        assert after["altogether"] == captions.get(before["key"])
    assert [r["altogether"] is None for r in written] == [False, False, True, False, False]

    # Parquet: same rows and columns, the old `altogether` column replaced by the captions (null: row 1)
    table = pq.read_table(out / "shards" / "pool.parquet")
    source = pq.read_table(parquet)
    assert table.column_names == ["uid", "image", "alt_text", "altogether"]
    assert table.schema.field("altogether").type == pa.string()
    for name in ("uid", "image", "alt_text"):
        assert table.column(name).to_pylist() == source.column(name).to_pylist()
    assert table.column("altogether").to_pylist() == [captions["row0"], None, captions["row2"], captions["row3"]]
    assert isinstance(captions["row0"], str)

    # tar: every member byte-identical, in order, plus <key>.altogether.txt for the captioned samples
    members = _tar_members(out / "shards" / "pool.tar")
    added = {name: data for name, data in members if name.endswith(".altogether.txt")}
    assert [m for m in members if not m[0].endswith(".altogether.txt")] == _tar_members(shard)
    assert sorted(added) == ["t0.altogether.txt", "t2.altogether.txt", "t3.altogether.txt"]  # t1: corrupt image
    assert all(added[f"t{i}.altogether.txt"].decode() == captions[f"t{i}"] for i in (0, 2, 3))
    names = [name for name, _ in members]
    assert names.index("t0.altogether.txt") == names.index("t0.json") + 1  # within its sample


def test_inputs_with_the_same_name_are_refused(tmp_path, checkpoint):
    one = write_scene_folder(tmp_path / "one", "test", 2)
    two = write_scene_folder(tmp_path / "two", "test", 2, seed=1)
    result = _caption([one, two], checkpoint, tmp_path / "out")
    assert result.exit_code == 2 and "records.jsonl" in result.output


def test_parquet_path_images_become_absolute_in_the_written_shard(tmp_path, checkpoint):
    folder = write_scene_folder(tmp_path / "scenes", "test", 3)
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    parquet = folder / "pool.parquet"  # beside images/, so the relative paths resolve from the input
    pq.write_table(pa.table({"image": [r["image"] for r in records], "alt_text": [r["alt_text"] for r in records]}),
                   parquet)
    result = _caption([parquet], checkpoint, tmp_path / "out")
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "out" / "shards" / "pool.parquet")
    images = table.column("image").to_pylist()
    assert images == [str((folder / r["image"]).absolute()) for r in records]
    assert all(Path(p).is_file() for p in images) and None not in table.column("altogether").to_pylist()
