"""MetaCLIP curation over Parquet and WebDataset tar shards, input patterns, subcommands and resume."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.shards import expand_braces, expand_inputs, split_member_name
from percli.curation.demo import demo_metadata, demo_pool
from percli.curation.metaclip import curate_shards

runner = CliRunner()
ENTRIES = demo_metadata()
NULL_AT = 7  # the record whose text is null: a bad record in every format


@pytest.mark.parametrize("pattern,expected", [
    ("a{1,2}b", ["a1b", "a2b"]),
    ("pool-{08..11}.tar", ["pool-08.tar", "pool-09.tar", "pool-10.tar", "pool-11.tar"]),
    ("{000..002}", ["000", "001", "002"]),
    ("{3..1}", ["3", "2", "1"]),
    ("{-1..1}", ["-1", "0", "1"]),
    ("{a,b}{x,y}", ["ax", "ay", "bx", "by"]),
    ("{a,{b,c}d}", ["a", "bd", "cd"]),
    ("s{0..1}/{p,q}", ["s0/p", "s0/q", "s1/p", "s1/q"]),
    ("x{y}z", ["x{y}z"]),  # no comma, no range: literal, as in bash
    ("{,a}", ["", "a"]),
    ("plain.jsonl", ["plain.jsonl"]),
])
def test_expand_braces(pattern, expected):
    assert expand_braces(pattern) == expected


def test_expand_inputs_braces_globs_and_errors(tmp_path):
    for name in ["p-00.jsonl", "p-01.jsonl", "p-02.parquet", "q.tar", "notes.txt"]:
        (tmp_path / name).write_text("")
    got = expand_inputs([f"{tmp_path}/p-{{00..01}}.jsonl", f"{tmp_path}/*.parquet", f"{tmp_path}/p-00.jsonl"])
    assert got == [tmp_path / "p-00.jsonl", tmp_path / "p-01.jsonl", tmp_path / "p-02.parquet"]  # no repeats
    with pytest.raises(FileNotFoundError, match=r"p-02.jsonl \(from .*p-\{00\.\.02\}.jsonl\) does not exist"):
        expand_inputs([f"{tmp_path}/p-{{00..02}}.jsonl"])
    with pytest.raises(FileNotFoundError, match=r"\*.gz matches no file"):
        expand_inputs([f"{tmp_path}/*.gz"])
    with pytest.raises(ValueError, match="notes.txt: unknown shard format"):
        expand_inputs([f"{tmp_path}/notes.txt"])
    assert split_member_name("dir/000123.metaclip.json") == ("dir/000123", "metaclip.json")


def pool_records(n=500, seed=1):
    records = demo_pool(n, seed=seed)  # ids "demo-000000", ...: the tar sample keys
    if n > NULL_AT:
        records[NULL_AT]["text"] = None
    return records


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_parquet(path, records, row_group_size=200):
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=row_group_size)
    return path


def add_member(archive, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_700_000_000
    archive.addfile(info, io.BytesIO(data))


def write_tar(path, records):
    """A WebDataset shard: per sample a fake image, the text as .txt (when not null) and the record as .json."""
    with tarfile.open(path, "w") as archive:
        for rec in records:
            add_member(archive, f"{rec['id']}.jpg", rec["id"].encode() * 3)
            if rec["text"] is not None:
                add_member(archive, f"{rec['id']}.txt", rec["text"].encode())
            add_member(archive, f"{rec['id']}.json", json.dumps(rec).encode())
    return path


WRITERS = {"jsonl": write_jsonl, "parquet": write_parquet, "tar": write_tar}


def kept_records(path):
    """(id, entries) of every record of a curated shard, in order."""
    if path.name.endswith(".jsonl"):
        return [(r.get("id", r.get("key")), r.get("metaclip_entries", r.get("entries")))
                for r in map(json.loads, path.read_text().splitlines())]
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        return list(zip(table.column("id").to_pylist(), table.column("metaclip_entries").to_pylist()))
    with tarfile.open(path) as archive:
        return [(m.name.split(".")[0], json.loads(archive.extractfile(m).read())["metaclip_entries"])
                for m in archive.getmembers() if m.name.endswith(".metaclip.json")]


@pytest.mark.parametrize("fmt,text_field", [("parquet", "text"), ("tar", "txt"), ("tar", "text")])
def test_each_format_curates_like_jsonl_in_its_own_format(tmp_path, fmt, text_field):
    records = pool_records()
    reference = curate_shards([write_jsonl(tmp_path / "pool.jsonl", records)], tmp_path / "ref", ENTRIES, t=10)
    shard = WRITERS[fmt](tmp_path / f"pool.{fmt}", records)
    summary = curate_shards([shard], tmp_path / "out", ENTRIES, t=10, text_field=text_field)
    keys = ("texts_read", "matched", "kept", "expected_kept", "bad_records", "entries_matched")
    assert {k: summary[k] for k in keys} == {k: reference[k] for k in keys}
    assert summary["bad_records"] == 1 and 0 < summary["kept"] < summary["matched"] < len(records)
    out = tmp_path / "out" / "curated" / f"pool.{fmt}"
    assert summary["outputs"] == [str(out)]
    kept = kept_records(out)
    assert kept == kept_records(tmp_path / "ref" / "curated" / "pool.jsonl")
    assert len(kept) == summary["kept"]
    by_id = {r["id"]: r for r in records}
    if fmt == "parquet":
        table = pq.read_table(out)
        assert table.schema.names == ["id", "text", "metaclip_entries"]
        assert table.column("text").to_pylist() == [by_id[i]["text"] for i, _ in kept]
    else:
        with tarfile.open(shard) as source, tarfile.open(out) as curated:
            original = {m.name: source.extractfile(m).read() for m in source.getmembers()}
            members = [m.name for m in curated.getmembers()]
            assert members == [f"{i}.{ext}" for i, _ in kept for ext in ("jpg", "txt", "json", "metaclip.json")]
            for m in curated.getmembers():  # every input member is copied byte for byte
                assert m.name.endswith(".metaclip.json") or curated.extractfile(m).read() == original[m.name]


def test_bad_parquet_rows_and_truncated_tar_are_counted_not_fatal(tmp_path):
    records = pool_records(300)
    records[20]["text"] = 5  # a non-string text: a column of mixed types cannot exist, so a second file holds it
    write_parquet(tmp_path / "a.parquet", records[:20] + records[21:])
    write_parquet(tmp_path / "b.parquet", [{"id": "x", "text": 5}])
    tar = write_tar(tmp_path / "pool.tar", pool_records(300))
    with tarfile.open(tar) as archive:
        member = archive.getmember("demo-000100.json")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[:member.offset_data + 10])  # sample 100 breaks off inside its .json
    summary = curate_shards([tmp_path / "a.parquet", tmp_path / "b.parquet", cut], tmp_path / "out", ENTRIES, t=10)
    assert summary["bad_records"] == 1 + 1 + 1 + 1  # null text, int text, null text in the tar, truncated sample
    assert summary["texts_read"] == 298 + 0 + 99
    reasons = [b["reason"] for b in summary["bad_examples"]]
    assert reasons[:2] == ["'text' is null", "'text' is not a string"] and "truncated" in reasons[-1]
    assert summary["bad_examples"][-1] == {"file": str(cut), "sample": 100, "offset": member.offset,
                                           "reason": reasons[-1]}  # the header of the member that breaks off
    assert f"at byte {member.offset}" in reasons[-1]


def cli(*args):
    result = runner.invoke(app, ["curate", "metaclip", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def curated_bytes(out_dir):
    return {p.name: p.read_bytes() for p in sorted((out_dir / "curated").iterdir())}


def test_match_count_balance_chain_equals_the_one_shot_run(tmp_path):
    records = pool_records(600)
    write_parquet(tmp_path / "pool-0.parquet", records[:300])
    write_tar(tmp_path / "pool-1.tar", records[300:])
    shards = str(tmp_path / "pool-{0..1}.*")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(ENTRIES))
    common = ["-m", meta, "--text-field", "text"]
    one = json.loads(cli(shards, *common, "--t", 8, "-o", tmp_path / "one", "--json").stdout)
    cli("match", shards, *common, "-o", tmp_path / "m")
    counted = json.loads(cli("count", tmp_path / "m", "-m", meta, "-o", tmp_path / "c", "--json").stdout)
    assert (tmp_path / "c" / "entry_counts.json").read_bytes() == (tmp_path / "one" / "entry_counts.json").read_bytes()
    assert counted["texts_read"] == one["texts_read"] and counted["bad_records"] == one["bad_records"] == 1
    counts = tmp_path / "c" / "entry_counts.json"
    cli("balance", shards, *common, "--counts", counts, "--t", 8, "--matches", tmp_path / "m", "-o", tmp_path / "b")
    cli("balance", shards, *common, "--counts", counts, "--t", 8, "-o", tmp_path / "b2")  # matching again
    assert list(curated_bytes(tmp_path / "one")) == ["pool-0.parquet", "pool-1.tar"]
    assert curated_bytes(tmp_path / "b") == curated_bytes(tmp_path / "one") == curated_bytes(tmp_path / "b2")
    # count straight from the inputs gives the same counts
    cli("count", shards, *common, "-o", tmp_path / "c2")
    assert (tmp_path / "c2" / "entry_counts.json").read_bytes() == counts.read_bytes()
    # --output-format index: positions, keys and entries of the same kept records
    index = json.loads(cli(shards, *common, "--t", 8, "--output-format", "index", "-o", tmp_path / "i",
                           "--json").stdout)
    assert index["kept"] == one["kept"] and index["output_format"] == "index"
    for name, part in (("pool-0", records[:300]), ("pool-1", records[300:])):
        lines = [json.loads(x) for x in (tmp_path / "i" / "curated" / f"{name}.index.jsonl").read_text().splitlines()]
        same = kept_records(next((tmp_path / "one" / "curated").glob(f"{name}.*")))
        assert [(x["key"], x["entries"]) for x in lines] == same
        assert [part[x["index"]]["id"] for x in lines] == [x["key"] for x in lines]


def test_cli_reports_pattern_and_match_dir_errors(tmp_path):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(ENTRIES))
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps({"dog": 3}))
    cases = [
        (["match", str(tmp_path / "pool-{0..1}.tar"), "-m", meta], "pool-0.tar (from"),
        (["run", str(tmp_path / "*.parquet"), "-m", meta], "matches no file"),
        (["balance", write_jsonl(tmp_path / "p.jsonl", pool_records(5)), "-m", meta, "--counts", meta],
         "counts (--counts): "),
        (["balance", tmp_path / "p.jsonl", "-m", meta, "--counts", counts, "--matches", tmp_path],
         "holds no finished match run"),
        (["run", tmp_path / "p.jsonl", "-m", meta, "--output-format", "csv"],
         "output_format (--output-format): got 'csv'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["curate", "metaclip", *map(str, args), "-o", str(tmp_path / "o")])
        assert result.exit_code == 2 and message in result.stderr, (args, result.output)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_resume_after_a_crash_in_balance_loses_and_duplicates_nothing(tmp_path, monkeypatch, fmt):
    import percli.curation.metaclip as metaclip

    records = pool_records(900)
    shards = [WRITERS[fmt](tmp_path / f"s{i}.{fmt}", records[i * 300:(i + 1) * 300]) for i in range(3)]
    full = curate_shards(shards, tmp_path / "full", ENTRIES, t=10, seed=1)

    real = metaclip._balance_shard
    calls = []

    def crash_after_first(path, target, *args, **kwargs):
        calls.append(path.name)
        if len(calls) == 2:
            target.with_name(f".{target.name}.tmp-999").write_text("half a file")  # what a crash leaves
            raise OSError("disk gone")
        return real(path, target, *args, **kwargs)

    monkeypatch.setattr(metaclip, "_balance_shard", crash_after_first)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk gone"):
        curate_shards(shards, out, ENTRIES, t=10, seed=1)
    assert (out / "progress" / "s0.json").is_file() and not (out / "progress" / "s1.json").exists()
    seen = []
    monkeypatch.setattr(metaclip, "_balance_shard", lambda path, *a, **k: seen.append(path.name) or real(path, *a, **k))
    resumed = curate_shards(shards, out, ENTRIES, t=10, seed=1, resume=True)
    assert seen == [f"s1.{fmt}", f"s2.{fmt}"] and resumed["resumed_shards"] == 1
    assert curated_bytes(out) == curated_bytes(tmp_path / "full")
    kept_ids = [i for p in sorted((out / "curated").iterdir()) for i, _ in kept_records(p)]
    assert len(kept_ids) == len(set(kept_ids)) == full["kept"]  # nothing lost or duplicated
    keys = ("texts_read", "matched", "kept", "expected_kept", "kept_sd", "bad_records", "bad_examples")
    assert {k: resumed[k] for k in keys} == {k: full[k] for k in keys} and full["bad_records"] == 1
    assert not list(out.rglob(".*tmp*"))
    with pytest.raises(ValueError, match="other settings"):  # a marker from another seed is not reused
        curate_shards(shards, out, ENTRIES, t=10, seed=2, resume=True)


def test_gzipped_jsonl_is_read_and_written_gzipped(tmp_path):
    import gzip

    records = pool_records(200)
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    gz = curate_shards([tmp_path / "p.jsonl.gz"], tmp_path / "gz", ENTRIES, t=5)
    plain = curate_shards([write_jsonl(tmp_path / "p.jsonl", records)], tmp_path / "plain", ENTRIES, t=5)
    assert gz["kept"] == plain["kept"] and gz["bad_records"] == 1
    with gzip.open(tmp_path / "gz" / "curated" / "p.jsonl.gz", "rb") as f:
        assert f.read() == (tmp_path / "plain" / "curated" / "p.jsonl").read_bytes()
    assert np.isclose(gz["expected_kept"], plain["expected_kept"])


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_reads_long_names_and_keeps_member_bytes(tmp_path, tar_format):
    from percli.core.data.shards import _tar_members

    names = ["a/" * 60 + "k1.txt", "a/" * 60 + "k1.json", "dir/k2.txt", "k3.txt"]
    if tar_format != tarfile.USTAR_FORMAT:
        names.append("café/k4.txt")  # non-ASCII: a PAX path record or a GNU long name
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=tar_format) as archive:
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)  # not a file: skipped
        for i, name in enumerate(names):
            add_member(archive, name, f"text {i} ".encode() * (i * 70))
    with path.open("rb") as f:
        members = list(_tar_members(f))
    with tarfile.open(path) as archive:
        expected = [(m.name, archive.extractfile(m).read()) for m in archive.getmembers() if m.isfile()]
    assert [(m.name, m.data) for m in members] == expected and len(expected) == len(names)
    copy = tmp_path / "copy.tar"  # the raw bytes of the members make an equal archive
    copy.write_bytes(b"".join(m.raw for m in members) + bytes(1024))
    with tarfile.open(copy) as archive:
        assert [(m.name, archive.extractfile(m).read()) for m in archive.getmembers()] == expected
    broken = bytearray(path.read_bytes())
    broken[20] ^= 1  # flip a bit in the first header's name field
    (tmp_path / "bad.tar").write_bytes(bytes(broken))
    with (tmp_path / "bad.tar").open("rb") as f, pytest.raises(ValueError, match="checksum"):
        list(_tar_members(f))
