"""CiT selection: a planted relevant subset is found, the min-ratio fallback, the top-ratio cut, the command."""

import json
import random

import numpy as np
import pytest
from typer.testing import CliRunner

from percli.cli import app
from percli.curation.cit import curate_cit, select_batch, select_top_ratio
from percli.curation.text_encoder import HashingEncoder, load_text_encoder

CLASSES = ["zebra", "giraffe", "elephant"]
OTHER_WORDS = ("market report bank soup tower car highway mountain snow bread violin concert roof history rome "
               "river chair lamp window garden kitchen teacher phone camera guitar ticket cookie sunset").split()


def planted_pool(path, seed=0):
    """500 unrelated captions with 50 captions naming a class scattered among them; returns the planted ids."""
    rng = random.Random(seed)
    records = [{"id": f"u{i}", "text": " ".join(rng.sample(OTHER_WORDS, 5))} for i in range(500)]
    planted = set()
    for i in range(50):
        words = rng.sample(OTHER_WORDS, 4)
        words.insert(rng.randrange(5), CLASSES[i % 3])
        records.insert(rng.randrange(len(records) + 1), {"id": f"p{i}", "text": " ".join(words)})
        planted.add(f"p{i}")
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return planted


def kept_records(out_dir, name="pool"):
    return [json.loads(line) for line in (out_dir / "curated" / f"{name}.jsonl").read_text().splitlines()]


# A wide hashing space: captions and class names share a bucket only when they share a word.
WIDE_HASHING = HashingEncoder(dim=1 << 14)


def test_threshold_selects_exactly_the_planted_captions(tmp_path):
    planted = planted_pool(tmp_path / "pool.jsonl")
    # A 5-word caption holding a class name has cosine 1/sqrt(9) = 0.33 with it (5 words + 4 bigrams), others 0.
    summary = curate_cit([tmp_path / "pool.jsonl"], tmp_path / "out", CLASSES, WIDE_HASHING, threshold=0.2,
                         min_ratio=0.003, batch_size=128)
    kept = kept_records(tmp_path / "out")
    assert {r["id"] for r in kept} == planted
    assert all(r["cit_label"] in r["text"].split() for r in kept)
    assert all(r["cit_similarity"] == pytest.approx(1 / 3, abs=1e-5) for r in kept)
    assert (summary["texts_read"], summary["kept"], summary["fallback_batches"]) == (550, 50, 0)
    assert summary["kept_per_class"] == {"zebra": 17, "giraffe": 17, "elephant": 16}


def test_min_ratio_fallback_keeps_the_top_of_each_batch_when_nothing_passes(tmp_path):
    planted = planted_pool(tmp_path / "pool.jsonl")
    summary = curate_cit([tmp_path / "pool.jsonl"], tmp_path / "out", CLASSES, WIDE_HASHING, threshold=0.9,
                         min_ratio=0.05, batch_size=100)
    # Batches of 100 (x5) keep int(0.05 * 100) = 5 each, the last batch of 50 keeps int(2.5) = 2.
    assert summary["passed_threshold"] == 0
    assert (summary["kept"], summary["batches"], summary["fallback_batches"]) == (27, 6, 6)
    assert {r["id"] for r in kept_records(tmp_path / "out")} <= planted  # the top of a batch is its planted ones


def test_select_batch_falls_back_only_below_min_ratio():
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.8, 0.7, 0.0, 0.6, 0.5, 0.4])
    mask, fell_back = select_batch(scores, threshold=0.55, min_ratio=0.3)
    assert not fell_back and mask.tolist() == (scores > 0.55).tolist()
    mask, fell_back = select_batch(scores, threshold=0.85, min_ratio=0.3)  # 1 of 10 passes < 30%
    assert fell_back and np.flatnonzero(mask).tolist() == [0, 4, 5]
    mask, fell_back = select_batch(scores, threshold=0.85, min_ratio=0.0)
    assert not fell_back and mask.sum() == 1


def test_top_ratio_keeps_exactly_that_fraction_most_similar_first(tmp_path):
    planted = planted_pool(tmp_path / "pool.jsonl")
    summary = curate_cit([tmp_path / "pool.jsonl"], tmp_path / "out", CLASSES, WIDE_HASHING, top_ratio=0.2,
                         batch_size=64)
    kept = kept_records(tmp_path / "out")
    assert summary["kept"] == len(kept) == 110  # round(0.2 * 550)
    assert planted <= {r["id"] for r in kept}
    ties = np.array([0.5, 0.5, 0.9, 0.5])
    assert np.flatnonzero(select_top_ratio(ties, 0.5)).tolist() == [0, 2]  # equal scores: the earlier wins


def test_minilm_selects_captions_about_the_classes(tmp_path):
    relevant = ["my cat sleeping on the sofa", "a kitten chasing a ball of yarn", "a dog wearing a red collar",
                "a dog running on the beach", "a brown horse in a field", "a puppy chewing a shoe"]
    unrelated = ["stock market report for tuesday", "quarterly earnings of the bank", "a bowl of tomato soup",
                 "the eiffel tower at night", "a red sports car on a highway", "mountain landscape with snow",
                 "how to bake sourdough bread", "a violin concert in vienna", "solar panels on a roof",
                 "the history of ancient rome"]
    texts = unrelated[:5] + relevant + unrelated[5:]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    summary = curate_cit([tmp_path / "pool.jsonl"], tmp_path / "out", ["dog", "cat", "horse"],
                         load_text_encoder("minilm"), threshold=0.3, batch_size=8)
    kept = kept_records(tmp_path / "out")
    assert [r["text"] for r in kept] == relevant
    assert [r["cit_label"] for r in kept] == ["cat", "cat", "dog", "dog", "horse", "dog"]
    assert summary["encoder"] == "minilm"


def test_command_on_demo_pool_writes_summary_and_json(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["curate", "cit", "--encoder", "hashing", "--threshold", "0.3", "--output",
                                      str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["demo"] and summary["texts_read"] == 2000
    kept = kept_records(out, "demo_pool")
    assert len(kept) == summary["kept"] > 50
    assert all(r["cit_similarity"] > 0.3 for r in kept)
    with_label = sum(r["cit_label"] in r["text"].lower() for r in kept)
    assert with_label >= 0.9 * len(kept)  # the rest are hash collisions of the 1024-bucket encoder


def test_command_counts_bad_records_and_reads_class_files(tmp_path):
    planted_pool(tmp_path / "pool.jsonl")
    with (tmp_path / "pool.jsonl").open("a") as f:
        f.write("{not json\n" + json.dumps({"caption": "no text field"}) + "\n")
    (tmp_path / "classes.txt").write_text("zebra\n\n giraffe \nelephant\nzebra\n")
    result = CliRunner().invoke(app, ["curate", "cit", str(tmp_path / "pool.jsonl"), "--metadata",
                                      str(tmp_path / "classes.txt"), "--encoder", "hashing", "--top-ratio", "0.1",
                                      "--output", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["texts_read"], summary["kept"], summary["bad_records"], summary["num_classes"]) == (550, 55, 2, 3)


@pytest.mark.parametrize("args, message", [
    (["{pool}"], "metadata (--metadata): not set"),
    (["{pool}", "-m", "{classes}", "--encoder", "nope"], "unknown text encoder"),
    (["{pool}", "-m", "{classes}", "--threshold", "2"], "--threshold"),
    (["{pool}", "-m", "{classes}", "--top-ratio", "0"], "--top-ratio"),
    (["missing.jsonl", "-m", "{classes}"], "missing.jsonl"),
    (["{pool}", "-m", "{classes}", "--encoder", "hashing", "--output", "{nonempty}"], "--overwrite"),
])
def test_command_rejects_bad_input_with_exit_2(tmp_path, args, message):
    (tmp_path / "pool.jsonl").write_text(json.dumps({"text": "a zebra"}) + "\n")
    (tmp_path / "classes.txt").write_text("zebra\n")
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "x").write_text("x")
    paths = {"pool": tmp_path / "pool.jsonl", "classes": tmp_path / "classes.txt", "nonempty": tmp_path / "nonempty"}
    args = [a.format(**paths) for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    result = CliRunner().invoke(app, ["curate", "cit", *args])
    assert result.exit_code == 2
    assert message in result.output
