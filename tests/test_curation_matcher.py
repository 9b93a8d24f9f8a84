"""The batched trie matcher: exact against the brute-force `in` reference in the batch corner cases."""

import random

import numpy as np

from percli.curation.matcher import _BATCH, _SEPARATORS, MetadataMatcher, reference_match

WORDS = ["dog", "hot", "cat", "a", "", "New", "York", "x.y", "\x00", "\x01b", "é", "😀", "\ud800", "a\tb", "c!"]


def _check(entries: list[str], texts: list[str]) -> MetadataMatcher:
    matcher = MetadataMatcher(entries)
    offsets, ids = matcher.match_batch(texts)
    assert offsets.shape == (len(texts) + 1,) and offsets[0] == 0 and (np.diff(offsets) >= 0).all()
    assert offsets[-1] == len(ids)
    for i, text in enumerate(texts):
        assert ids[offsets[i]:offsets[i + 1]].tolist() == reference_match(text, entries), repr(text)
    return matcher


def test_texts_holding_separator_characters_are_matched_exactly():
    entries = ["dog", "hot dog", "a", "cat a dog", "", "New York"]
    # Each text carries one of the join separators; one text carries all of them, so that batch falls back
    # to text-by-text matching. Runs must never cross from one text into the next.
    texts = [f"hot{c}dog cat" for c in _SEPARATORS] + ["cat a", "dog", "hot", "dog New", "York a"]
    _check(entries, texts)
    _check(entries, texts + ["".join(_SEPARATORS) + " dog"])


def test_entries_holding_separator_characters():
    entries = ["\x00", "a \x00 b", "\x01dog", "dog"]
    _check(entries, ["a \x00 b", "x \x00", "\x01dog dog", "a", "b \x00"])


def test_runs_do_not_cross_text_boundaries_and_batches_chain():
    entries = ["dog cat", "cat", "dog"]
    texts = ["dog", "cat"] * (_BATCH // 2 + 7)  # adjacent texts would spell "dog cat" across the boundary
    matcher = _check(entries, texts)
    assert matcher.match_batch([])[0].tolist() == [0]


def test_random_batches_with_duplicates_and_empty_tokens():
    rng = random.Random(5)
    for _ in range(20):
        entries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(30)]
        texts = [" ".join(rng.choice(WORDS + ["dog,", "cat.", "  "]) for _ in range(rng.randint(0, 8)))
                 for _ in range(50)]
        _check(entries, texts)
