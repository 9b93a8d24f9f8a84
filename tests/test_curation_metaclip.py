"""MetaCLIP curation: matching equals the official spaced-`in` rule, counts, balancing, sharding, CLI."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from typer.testing import CliRunner

from percli.cli import app as cli
from percli.core.data.shards import read_records
from percli.curation.demo import demo_metadata, demo_pool
from percli.curation.matcher import MetadataMatcher, reference_match, spaced_entry, spacing
from percli.curation.metaclip import (
    balance_shards,
    count_matches,
    curate_shards,
    entry_counts,
    entry_probabilities,
    keep_decision,
    keep_probabilities,
    keep_probability,
    load_entry_counts,
    load_metadata,
    match_shards,
)


def official_spacing(text: str) -> str:
    """The official v1 function, as a chain of replaces (our spacing() uses one translate)."""
    spaced = f" {text} "
    for p in [",", ".", ";", ":", "?", "!", "`"]:
        spaced = spaced.replace(p, f" {p} ")
    for c in ["\t", "\n", "\r"]:
        spaced = spaced.replace(c, " ")
    return spaced


ALPHABET = "aabbA  ,.;:?!`-'\t\n\r"


def random_case(rng: random.Random) -> tuple[list[str], list[str]]:
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 30))) for _ in range(60)]
    entries = ["", " ", "  ", "a", "b", "A", "a b", "a  b", " a", "a ", "a-b", "a,b", "a , b", "a.", "ab", "a\tb", "a`"]
    for _ in range(40):  # short random strings, including internal punctuation and double spaces
        entries.append("".join(rng.choice("abA -',.;:?!`") for _ in range(rng.randrange(0, 6))))
    for _ in range(40):  # pieces of the spaced texts, so that long and odd entries do match
        spaced = spacing(rng.choice(texts))
        i = rng.randrange(len(spaced))
        entries.append(spaced[i:i + rng.randrange(1, 12)])
    return texts, entries


def test_spacing_equals_official_chain_of_replaces():
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(ALPHABET + "é\u00a0") for _ in range(rng.randrange(0, 25)))
        assert spacing(text) == official_spacing(text)
    assert spaced_entry("hot dog") == " hot dog "


def test_matcher_equals_bruteforce_in_on_random_texts_and_entries():
    rng = random.Random(1234)
    hits = 0
    for _ in range(120):  # 7,200 texts against ~100 entries each
        texts, entries = random_case(rng)
        matcher = MetadataMatcher(entries)
        got = matcher.match_many(texts)
        for text, ids in zip(texts, got):
            assert ids == reference_match(text, entries), (text, entries)
            hits += len(ids)
    assert hits > 20_000  # the case generator does produce matches, long entries included


@pytest.mark.parametrize("text,entries,expected", [
    ("doghouse", ["dog"], []),
    ("DOG", ["dog"], []),
    ("Dogs", ["dogs"], []),
    ("a dog", ["dog"], ["dog"]),
    ("A dog, and a hot dog!", ["dog", "hot dog", "hot", "and a", "dog,"], ["dog", "hot dog", "hot", "and a"]),
    ("St. Louis, Missouri", ["St. Louis", "St", "Louis", "Missouri"], ["St", "Louis", "Missouri"]),
    ("U.S. flag", ["U.S.", "U", "flag"], ["U", "flag"]),
    ("rock-n-roll band", ["rock-n-roll", "rock", "band"], ["rock-n-roll", "band"]),
    ("new\tyork\ncity", ["new york", "york city"], ["new york", "york city"]),
    ("new  york", ["new york", "new  york", "new"], ["new  york", "new"]),
    ("", ["", " "], [""]),  # the spaced empty text is two spaces, exactly the spaced empty entry
    ("x", ["", "x"], ["x"]),
    ("a,b", ["", "a", "b", "a , b"], ["a", "b", "a , b"]),  # "a,b" is spaced to " a , b "
    ("a, b", ["", "a , b"], [""]),  # " a ,  b ": the respaced comma leaves a double space
])
def test_official_matching_behaviour(text, entries, expected):
    matcher = MetadataMatcher(entries)
    assert [entries[i] for i in matcher.match(text)] == expected
    assert matcher.match(text) == reference_match(text, entries)


def test_duplicate_entries_all_match_and_ids_are_sorted():
    entries = ["dog", "cat", "dog", "hot dog"]
    assert MetadataMatcher(entries).match("cat and hot dog") == [0, 1, 2, 3]


def csr(matches):
    """(offsets, ids) of a list of sorted distinct id lists, as `MetadataMatcher.match_batch` returns them."""
    offsets = np.concatenate(([0], np.cumsum([len(m) for m in matches]))).astype(np.int64)
    return offsets, np.asarray([e for m in matches for e in m], dtype=np.int64)


def test_entry_counts_count_a_text_once_per_distinct_entry():
    offsets, ids = csr([[0, 2], [2], [], [1]])
    counts = entry_counts(ids, 4)
    assert counts.dtype == np.uint64
    assert counts.tolist() == [1, 1, 2, 0]


def test_match_batch_equals_match_per_text():
    texts = [rec["text"] for rec in demo_pool(300, seed=9)] + ["", "dog"]
    matcher = MetadataMatcher(demo_metadata())
    offsets, ids = matcher.match_batch(texts)
    assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(texts))] == matcher.match_many(texts)


def test_keep_probability_edge_cases():
    counts = np.array([10, 100, 1000, 0], dtype=np.uint64)
    assert keep_probability([], counts, 50) == 0.0
    assert keep_probability([0], counts, 50) == 1.0  # tail entry: always kept
    assert keep_probability([1, 0], counts, 50) == 1.0
    assert keep_probability([3], counts, 50) == 1.0  # never counted: treated as tail
    assert keep_probability([1], counts, 50) == pytest.approx(0.5)
    assert keep_probability([1, 2], counts, 50) == pytest.approx(1 - 0.5 * 0.95)
    assert keep_probability([1, 1], counts, 50) == pytest.approx(0.5)  # repeated ids count once
    assert keep_probability([2], counts, 1000) == 1.0  # c_e == t is tail
    assert keep_probability([2], counts, math.inf) == 1.0
    with pytest.raises(ValueError):
        keep_probability([1], counts, 0)
    matches = [[], [0], [], [1], [1, 2], [2], [3], []]  # empty segments first, inside and last
    vec = keep_probabilities(*csr(matches), entry_probabilities(counts, 50))
    assert vec.tolist() == pytest.approx([keep_probability(m, counts, 50) for m in matches])


def test_keep_decision_is_deterministic_and_calibrated():
    assert keep_decision("abc", 0.5, 0) == keep_decision("abc", 0.5, 0)
    assert all(keep_decision(f"k{i}", 1.0, 3) for i in range(1000))
    assert not any(keep_decision(f"k{i}", 0.0, 3) for i in range(1000))
    rate = np.mean([keep_decision(f"k{i}", 0.3, 7) for i in range(20000)])
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20000)
    flips = sum(keep_decision(f"k{i}", 0.5, 1) != keep_decision(f"k{i}", 0.5, 2) for i in range(2000))
    assert 800 < flips < 1200  # a different seed gives different decisions


def test_balancing_formula_predicts_realized_kept_count():
    # 150k texts over 2,000 Zipf-distributed entries, 1-4 matches each (as matching would give).
    rng = np.random.default_rng(0)
    num_entries, n = 2000, 150_000
    zipf = 1.0 / np.arange(1, num_entries + 1)
    zipf /= zipf.sum()
    sizes = rng.integers(0, 5, size=n)
    flat = rng.choice(num_entries, size=int(sizes.sum()), p=zipf)
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    matches = [sorted(set(flat[bounds[i]:bounds[i + 1]].tolist())) for i in range(n)]
    offsets, ids = csr(matches)
    counts = entry_counts(ids, num_entries)
    t = 500
    assert (counts > t).sum() > 20  # there is a head to balance
    probs = keep_probabilities(offsets, ids, entry_probabilities(counts, t))
    kept = sum(keep_decision(f"x{i}", p, 0) for i, p in enumerate(probs))
    expected, sd = float(probs.sum()), math.sqrt(float(np.sum(probs * (1 - probs))))
    assert abs(kept - expected) < 3 * sd
    assert expected <= np.minimum(counts, t).sum()  # the "640M" upper bound of issue #24
    tail = np.asarray(counts <= t)
    assert expected >= sum(any(tail[e] for e in m) for m in matches)  # tail texts are all kept
    assert (probs == 0).sum() == sum(not m for m in matches)


def write_jsonl(path, records, extra_lines=()):
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def kept_ids(summary):
    ids = []
    for out in summary["outputs"]:
        with open(out) as f:
            ids += [json.loads(line)["id"] for line in f]
    return ids


def test_decisions_do_not_depend_on_sharding(tmp_path):
    pool, entries = demo_pool(4000, seed=1), demo_metadata()
    whole = write_jsonl(tmp_path / "whole.jsonl", pool)
    half_a = write_jsonl(tmp_path / "a.jsonl", pool[:1700])
    half_b = write_jsonl(tmp_path / "b.jsonl", pool[1700:])
    at_once = curate_shards([whole], tmp_path / "once", entries, t=30, seed=5)
    match_shards([half_a], tmp_path / "ma", entries)
    match_shards([half_b], tmp_path / "mb", entries)
    counts = count_matches(tmp_path / "ma", entries)[0] + count_matches(tmp_path / "mb", entries)[0]
    assert np.array_equal(counts, load_entry_counts(tmp_path / "once" / "entry_counts.json", entries))
    shard_a = balance_shards([half_a], tmp_path / "sa", entries, counts, t=30, seed=5)
    shard_b = balance_shards([half_b], tmp_path / "sb", entries, counts, t=30, seed=5, match_dir=tmp_path / "mb")
    both = curate_shards([half_a, half_b], tmp_path / "both", entries, t=30, seed=5)
    assert kept_ids(shard_a) + kept_ids(shard_b) == kept_ids(at_once) == kept_ids(both)
    assert shard_a["expected_kept"] + shard_b["expected_kept"] == pytest.approx(at_once["expected_kept"])
    assert at_once["head_entries"] > 20 and 0 < at_once["kept"] < at_once["matched"]


def test_curate_counts_malformed_lines_and_tags_kept_records(tmp_path):
    records = [{"id": 1, "text": "a hot dog"}, {"uuid": "u2", "caption": "dog"}, {"text": "nothing here"}]
    bad_lines = ["{not json", "[1, 2]", '{"text": 5}', '"just a string"', "", "   "]
    path = write_jsonl(tmp_path / "in.jsonl", records + [{"text": "dog"}], bad_lines)
    with path.open("ab") as f:
        f.write(b'{"text": "\xff\xfe"}\n')
    summary = curate_shards([path], tmp_path / "out", ["dog", "hot dog"], t=1e9, seed=0)
    assert summary["bad_records"] == 4 + 1 + 1  # bad JSON, array, int text, string, no 'text', not UTF-8
    assert summary["texts_read"] == 3 and summary["matched"] == 2 and summary["kept"] == 2
    assert summary["expected_kept"] == 2.0
    kept = [json.loads(line) for line in open(summary["outputs"][0])]
    assert kept[0] == {"id": 1, "text": "a hot dog", "metaclip_entries": [0, 1]}
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["kept"] == 2 and saved["bad_examples"][0] == {
        "file": str(path), "line": 2, "reason": "no 'text' field"}
    assert not list((tmp_path / "out").rglob(".*tmp*"))  # temp files were renamed
    assert [r[2] for r in read_records(path, "caption")] == ["dog"]


def test_saved_matches_are_loaded_without_pickle(tmp_path, monkeypatch):
    """`count` and `balance --matches` read user-given .npz files: np.load gets allow_pickle=False explicitly."""
    real_load, calls = np.load, []
    monkeypatch.setattr(np, "load", lambda *args, **kwargs: calls.append(kwargs) or real_load(*args, **kwargs))
    path = write_jsonl(tmp_path / "in.jsonl", demo_pool(50, seed=2))
    curate_shards([path], tmp_path / "out", demo_metadata(), t=5)  # count and balance both read matches/
    assert len(calls) == 2 and all(kwargs.get("allow_pickle") is False for kwargs in calls)


def test_load_metadata_json_and_lines(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(["dog", "hot dog", " spaced "]))
    (tmp_path / "m.txt").write_text("dog\nhot dog\n\nSt. Louis\n")
    assert load_metadata(tmp_path / "m.json") == ["dog", "hot dog", " spaced "]
    assert load_metadata(tmp_path / "m.txt") == ["dog", "hot dog", "St. Louis"]
    (tmp_path / "bad.json").write_text('{"dog": 1}')
    with pytest.raises(ValueError):
        load_metadata(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        load_metadata(tmp_path / "missing.json")


def test_demo_pool_is_deterministic_with_head_and_tail():
    assert demo_pool(50, seed=3) == demo_pool(50, seed=3) != demo_pool(50, seed=4)
    entries = demo_metadata()
    assert 350 <= len(entries) <= 450 and len(set(entries)) == len(entries)
    assert {"St. Louis", "rock-n-roll", "hot dog", "New York"} <= set(entries)


runner = CliRunner()


def test_cli_without_inputs_curates_the_demo_pool(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(cli, ["curate", "metaclip", "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in ("texts_read", "matched", "kept", "expected_kept", "bad_records", "t", "seed", "num_entries"):
        assert key in summary
    assert summary["demo"] and summary["texts_read"] == 20000 and summary["t"] == 100
    assert abs(summary["kept"] - summary["expected_kept"]) < 3 * summary["kept_sd"]
    assert (out / "demo_pool.jsonl").is_file() and (out / "entry_counts.json").is_file()
    again = runner.invoke(cli, ["curate", "metaclip", "--output", str(out)])
    assert again.exit_code == 2 and "not empty" in again.stderr
    table = runner.invoke(cli, ["curate", "metaclip", "--output", str(out), "--overwrite", "--seed", "1"])
    assert table.exit_code == 0 and "expected_kept" in table.stdout  # the one generic summary table


def test_cli_rejects_bad_input(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "dog"}\n')
    (tmp_path / "bad.json").write_text("{oops")
    cases = [
        (["missing.jsonl", "--metadata", "bad.json"], "does not exist"),
        (["in.jsonl"], "metadata (--metadata): not set"),
        (["in.jsonl", "--metadata", "bad.json"], "not valid JSON"),
        (["in.jsonl", "--metadata", "nope.txt"], "does not exist"),
        (["--t", "0"], "must be > 0"),
    ]
    for args, message in cases:
        args = [str(tmp_path / a) if a.endswith((".jsonl", ".json", ".txt")) else a for a in args]
        result = runner.invoke(cli, ["curate", "metaclip", *args, "--output", str(tmp_path / "o")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)


def test_cli_resume_continues_the_output_dir(tmp_path):
    out = tmp_path / "run"
    first = runner.invoke(cli, ["curate", "metaclip", "--output", str(out), "--json"])
    assert first.exit_code == 0, first.output
    (out / "progress" / "demo_pool.json").unlink()  # as if the shard had not been marked done
    again = runner.invoke(cli, ["curate", "metaclip", "--output", str(out), "--json", "--resume"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["resumed_shards"] == 0 and summary["kept"] == json.loads(first.stdout)["kept"]
    third = runner.invoke(cli, ["curate", "metaclip", "--output", str(out), "--json", "--resume"])
    assert third.exit_code == 0 and json.loads(third.stdout)["resumed_shards"] == 1
    both = runner.invoke(cli, ["curate", "metaclip", "--output", str(out), "--resume", "--overwrite"])
    assert both.exit_code == 2 and "contradict" in both.stderr


def test_entry_counts_png_is_written_and_valid(tmp_path):
    from PIL import Image

    from percli.core.chart import HEIGHT, WIDTH
    from percli.curation.plot import save_entry_counts_png

    pool = write_jsonl(tmp_path / "in.jsonl", demo_pool(2000, seed=1))
    curate_shards([pool], tmp_path / "out", demo_metadata(), t=20, seed=0)
    with Image.open(tmp_path / "out" / "entry_counts.png") as image:
        assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
        image.verify()
    for counts, t in [(np.zeros(3, dtype=np.uint64), 5.0), (np.array([7], dtype=np.uint64), math.inf)]:
        path = save_entry_counts_png(counts, t, tmp_path / "edge.png")  # no matches / one entry / t = inf
        with Image.open(path) as image:
            assert image.size == (WIDTH, HEIGHT)
    assert not list(tmp_path.rglob(".*tmp*"))
