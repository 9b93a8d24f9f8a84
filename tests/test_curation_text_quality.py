"""Text-quality pruning: each line filter, the perplexity weights, token-weighted document scores, pruning."""

import json
import math
import random

import numpy as np
import pytest
from typer.testing import CliRunner

from percli.cli import app
from percli.curation import text_quality as tq


@pytest.mark.parametrize("name, passing, failing", [
    ("starts_capitalised", "The cat sat.", "the cat sat."),
    ("not_all_caps", "The Cat Sat.", "THE CAT SAT!"),
    ("word_repetition_le_0.2", "one two three four five", "buy now buy now buy"),  # 1 - 2/5 = 0.6
    ("digit_punct_per_word_le_0.25", "A quiet day, at home with old friends.", "Call 555-0199 now!"),  # 2/8, 9/3
    ("no_curly_bracket", "if x then y", "function f() { return 1; }"),
    ("ends_with_terminal_punct", 'He said "go."', "a caption without an end"),
    ("two_stop_words", "The end of it.", "The end is near."),
    ("no_javascript_lorem_ipsum", "Java is an island.", "Please enable JavaScript to continue."),
    ("more_than_3_tokens", "Hi, you there", "Hi you there"),  # 4 tokens (the comma counts) vs 3
    ("word_count_4_to_255", "one two three four", "one two three"),
])
def test_each_line_filter_on_hand_made_lines(name, passing, failing):
    check = tq.LINE_FILTERS[name]
    assert check(passing) and not check(failing)


def test_word_count_filter_upper_bound():
    assert tq.LINE_FILTERS["word_count_4_to_255"]("w " * 255)
    assert not tq.LINE_FILTERS["word_count_4_to_255"]("w " * 256)


def test_weights_follow_the_perplexity_formula_on_a_hand_computed_case():
    # Three lines: (log-prob, tokens) = (-2, 2), (-4, 2), (-8, 4). PPL_all = exp(14 / 8).
    # Filter 0 passes lines 0-1: PPL_0 = exp(6 / 4) -> w_0 = 1 - exp(1.5 - 1.75). Filter 1 passes line 2:
    # PPL_1 = exp(2) > PPL_all -> w_1 = 0. Filter 2 passes nothing -> 0.
    passes = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=bool)
    logprobs, tokens = np.array([-2.0, -4.0, -8.0]), np.array([2, 2, 4])
    weights, ppl = tq.filter_weights(logprobs.sum(), tokens.sum(), logprobs @ passes, tokens @ passes)
    np.testing.assert_allclose(weights, [1 - math.exp(-0.25), 0.0, 0.0])
    assert ppl["all_lines"] == pytest.approx(math.exp(1.75))
    assert ppl["by_filter"]["not_all_caps"] == pytest.approx(math.exp(2.0))
    assert ppl["by_filter"]["word_repetition_le_0.2"] is None


def test_reference_lm_is_a_distribution():
    lm = tq.BigramLM().fit([["the", "cat", "sat"], ["the", "dog", "sat"], ["a", "cat"]])
    vocab = list(lm.unigrams) + ["<never seen>"]  # every unseen token shares the <unk> slot
    for prev in ["<s>", "the", "cat", "sat", "zebra"]:
        assert sum(lm.prob(tok, prev) for tok in vocab) == pytest.approx(1.0)
    # p(cat | the) = 0.7 * 1/2 + 0.3 * (2 + 1) / (8 + 5 + 1)
    assert lm.prob("cat", "the") == pytest.approx(0.35 + 0.3 * 3 / 14)
    assert lm.logprob(["the", "cat"]) == pytest.approx(math.log(lm.prob("the", "<s>") * lm.prob("cat", "the")))


def test_document_score_weights_lines_by_token_count():
    good = "The cat sat on the mat."  # 7 tokens, passes all 10 filters
    short = "x"  # 1 token, passes 5 of 10: not_all_caps, repetition, digit/punct, no {, no javascript
    assert tq.filter_passes(good).all() and tq.filter_passes(short).sum() == 5
    weights = np.ones(len(tq.FILTER_NAMES))
    assert tq.document_score(f"{good}\n\n{short}\n", weights) == pytest.approx((7 * 1.0 + 1 * 0.5) / 8)
    weights[tq.FILTER_NAMES.index("starts_capitalised")] = 3.0  # "x" fails it: its line score is 5 / 12
    assert tq.document_score(short, weights) == pytest.approx(5 / 12)
    assert tq.document_score("  \n", weights) == 0.0


def test_prune_mask_drops_exactly_the_lowest_fraction():
    scores = np.array([0.5, 0.1, 0.9, 0.1, 0.7, 0.3, 0.2, 0.8, 0.6, 0.4])
    assert np.flatnonzero(~tq.prune_mask(scores, 0.3)).tolist() == [1, 3, 6]
    assert tq.prune_mask(scores, 0.0).all()


NOUNS = "cat dog garden river city teacher window market village storm bridge painter".split()
VERBS = "watched crossed painted followed visited described found repaired".split()
JUNK = [
    "IMG_2231.JPG\nDSC_0042.jpg 1920x1080 44KB",
    "CLICK HERE!!! BUY NOW!!! FREE FREE FREE",
    "var x = {a: 1, b: 2};\nfunction f(y) { return y * 2; }",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit",
    "Please enable JavaScript to view this page",
    "a3f9c2 77e1b0 9d0c4e 11ab2f\n0x7ffe 0x0042 0x1f00",
    "home | about | contact | login | 2024",
    "$$$ 100% 200% 300% ### @@@",
]


def fluent_document(rng):
    lines = []
    for _ in range(rng.randrange(2, 5)):
        a, b = rng.sample(NOUNS, 2)
        lines.append(f"The {a} {rng.choice(VERBS)} the {b} and walked to the {rng.choice(NOUNS)} with a friend.")
    return "\n".join(lines)


def planted_corpus(path):
    rng = random.Random(0)
    records = [{"id": f"good{i}", "text": fluent_document(rng)} for i in range(72)]
    for i, junk in enumerate(JUNK * 3):
        records.insert(rng.randrange(len(records) + 1), {"id": f"junk{i}", "text": junk})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {r["id"] for r in records if r["id"].startswith("junk")}


def test_planted_junk_documents_are_pruned_first(tmp_path):
    junk = planted_corpus(tmp_path / "corpus.jsonl")
    summary = tq.curate_text_quality([tmp_path / "corpus.jsonl"], tmp_path / "out", prune=0.25)
    kept = [json.loads(line) for line in (tmp_path / "out" / "curated" / "corpus.jsonl").read_text().splitlines()]
    assert (summary["documents_read"], summary["pruned"]) == (96, 24)
    assert not junk & {r["id"] for r in kept}  # exactly the 24 junk documents went
    assert all(0.0 <= w <= 1.0 for w in summary["weights"].values()) and sum(summary["weights"].values()) > 0
    assert summary["perplexity"]["all_lines"] > 1
    assert min(r["quality_score"] for r in kept) > summary["score_cutoff"]


def test_command_demo_json_and_weights_round_trip(tmp_path):
    runner = CliRunner()
    first = runner.invoke(app, ["curate", "text-quality", "--output", str(tmp_path / "a"), "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary == json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (summary["documents_read"], summary["pruned"]) == (20000, 6000)
    weights = json.loads((tmp_path / "a" / "weights.json").read_text())
    assert list(weights) == list(tq.FILTER_NAMES)
    # The demo pool's junk texts (file names, hashes) score lowest: none survives the 30% cut.
    kept = (tmp_path / "a" / "curated" / "demo_pool.jsonl").read_text()
    assert ".jpg" not in kept and ".png" not in kept
    again = runner.invoke(app, ["curate", "text-quality", str(tmp_path / "a" / "demo_pool.jsonl"), "--weights",
                                str(tmp_path / "a" / "weights.json"), "--output", str(tmp_path / "b"), "--json"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "b" / "curated" / "demo_pool.jsonl").read_text() == kept


@pytest.mark.parametrize("weights, message", [
    ({"no_such_filter": 1.0}, "unknown filters"),
    ({"not_all_caps": -1}, ">= 0"),
    ({"not_all_caps": 0.0}, "every filter weight given is 0"),
])
def test_bad_weights_exit_2(tmp_path, weights, message):
    (tmp_path / "w.json").write_text(json.dumps(weights))
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "A line."}) + "\n")
    result = CliRunner().invoke(app, ["curate", "text-quality", str(tmp_path / "c.jsonl"), "--weights",
                                      str(tmp_path / "w.json"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output


def test_bad_prune_and_bad_records(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "A line of text."}) + "\n{oops\n" + json.dumps({"t": 1}))
    result = CliRunner().invoke(app, ["curate", "text-quality", str(tmp_path / "c.jsonl"), "--prune", "1.0",
                                      "--output", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--prune" in result.output
    result = CliRunner().invoke(app, ["curate", "text-quality", str(tmp_path / "c.jsonl"), "--prune", "0",
                                      "--output", str(tmp_path / "y"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["documents_read"], summary["kept"], summary["bad_records"]) == (1, 1, 2)
    assert summary["weights_source"].startswith("uniform")  # one line passing every filter: no PPL contrast


def test_parquet_input_gives_the_same_scores_as_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    planted_corpus(tmp_path / "corpus.jsonl")
    records = [json.loads(line) for line in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "corpus.parquet", row_group_size=40)
    tq.curate_text_quality([tmp_path / "corpus.jsonl"], tmp_path / "a", prune=0.25)
    tq.curate_text_quality([tmp_path / "corpus.parquet"], tmp_path / "b", prune=0.25)
    assert (tmp_path / "a" / "curated" / "corpus.jsonl").read_text() == \
        (tmp_path / "b" / "curated" / "corpus.jsonl").read_text()
