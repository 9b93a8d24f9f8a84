"""`percli finetune altogether` from Parquet and WebDataset tar shards: the same triples as the JSONL records."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.transforms.functional import pil_to_tensor
from typer.testing import CliRunner

from percli.captioning.scenes import write_scene_folder
from percli.captioning.triples import RecordTriples
from percli.cli import app
from percli.core.data.images import BadSample
from tests.test_altogether_recipe import TINY

runner = CliRunner()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The same 6 scenes as JSONL, tar (.json fields, or text members) and Parquet ({bytes} structs)."""
    root = tmp_path_factory.mktemp("pool")
    folder = write_scene_folder(root / "scenes", "train", 6)
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    for r in records:
        r["alt_text"] = [r["alt_text"], f"photo {r['key'][-2:]}"]  # several alt-texts: the pt stage picks
    jsonl = folder / "pool.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    pngs = [(folder / r["image"]).read_bytes() for r in records]
    shard = root / "pool.tar"
    with tarfile.open(shard, "w") as tar:
        for i, (r, png) in enumerate(zip(records, pngs)):
            _add(tar, f"{r['key']}.png", png)
            if i % 2:
                _add(tar, f"{r['key']}.json", json.dumps({"alt_text": r["alt_text"], "caption": r["caption"]}).encode())
            else:  # the caption as a text member instead of a .json field
                _add(tar, f"{r['key']}.json", json.dumps({"alt_text": r["alt_text"]}).encode())
                _add(tar, f"{r['key']}.caption", r["caption"].encode())
        _add(tar, "corrupt.png", b"not a png")
        _add(tar, "corrupt.caption", b"a caption")
        _add(tar, "no-caption.png", pngs[0])  # no caption anywhere: a bad record in stage ft
    parquet = root / "pool.parquet"
    pq.write_table(pa.table({"key": [r["key"] for r in records],
                             "image": [{"bytes": png, "path": None} for png in pngs],
                             "alt_text": [r["alt_text"] for r in records],
                             "caption": [r["caption"] for r in records]}), parquet)
    return jsonl, shard, parquet


def _texts(dataset: RecordTriples, n: int) -> list[tuple[str, str, str]]:
    torch.manual_seed(0)
    return [(item["key"], item["prompt"], item["target"]) for item in map(dataset.__getitem__, range(n))]


@pytest.mark.parametrize("stage", ["ft", "pt"])
def test_tar_and_parquet_give_the_jsonl_triples(pool, stage):
    jsonl, shard, parquet = pool
    datasets = [RecordTriples(str(p), pil_to_tensor, stage, 0.0) for p in (jsonl, shard, parquet)]
    expected = _texts(datasets[0], 6)
    assert all(target for _, _, target in expected) and sum(bool(prompt) for _, prompt, _ in expected) >= 3
    for dataset in datasets[1:]:
        assert _texts(dataset, 6) == expected
        assert torch.equal(dataset[3]["image"], datasets[0][3]["image"])
    tar_set = datasets[1]
    assert len(tar_set) == (7 if stage == "ft" else 6)  # pt: the last two samples have no alt-text
    assert tar_set.bad_records.count == (1 if stage == "ft" else 2)
    if stage == "ft":
        assert tar_set.bad_records.count == 1 and tar_set.bad_records.examples[0]["sample"] == 7
        with pytest.raises(BadSample, match="corrupt"):
            tar_set[6]


def test_two_steps_from_tar_and_parquet(tmp_path, pool):
    _, shard, parquet = pool
    result = runner.invoke(app, ["finetune", "altogether", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
                                 f"data.source={shard} {parquet}", "train.max_steps=2", "train.batch_size=13"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["step"] == 2
    assert summary["bad_records"]["count"] == 1
    assert summary["bad_inputs"]["count"] == 1 and "corrupt" in json.dumps(summary["bad_inputs"])


def test_invalid_alt_texts_are_counted_not_fatal_and_train_without_alt_text(tmp_path):
    folder = write_scene_folder(tmp_path / "scenes", "train", 5)
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    for record, alt in zip(records, [7, {"first key": 1}, ["ok", 3], None, ["one", "two"]]):
        record["alt_text"] = alt
    jsonl = folder / "pool.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    shard = tmp_path / "pool.tar"
    with tarfile.open(shard, "w") as tar:
        for r in records[:2]:
            _add(tar, f"{r['key']}.png", (folder / r["image"]).read_bytes())
            _add(tar, f"{r['key']}.alt_text", b"caf\xe9")  # Latin-1, not UTF-8
            _add(tar, f"{r['key']}.caption", r["caption"].encode())
    ft = RecordTriples(f"{jsonl} {shard}", pil_to_tensor, "ft", 0.0)
    assert len(ft) == 7 and ft.bad_records.count == 0  # the caption is the target: every record trains
    assert [alts for _, _, alts, _, _ in ft.items] == [[], [], [], [], ["one", "two"], [], []]
    assert ft.invalid_alt_text.count == 5
    reasons = [e["reason"] for e in ft.invalid_alt_text.examples]
    assert "(it is a list)" in reasons[2] and "(it is a dict)" in reasons[1] and "not UTF-8" in reasons[3]
    assert [e.get("line", e.get("sample")) for e in ft.invalid_alt_text.examples] == [1, 2, 3, 0, 1]
    pt = RecordTriples(str(jsonl), pil_to_tensor, "pt", 0.0)
    assert len(pt) == 1 and pt.bad_records.count == 4 and pt.invalid_alt_text.count == 3  # pt: no alt-text, no target
