"""Phonemization in VoiceCraft's token format and the phoneme -> id mapping."""

import sys

import pytest

pytest.importorskip("phonemizer")
pytest.importorskip("espeakng_loader")

from percli.tts import text  # noqa: E402
from percli.tts.text import WORD_SEPARATOR, phonemize, text_to_ids, tokens_to_ids  # noqa: E402

# Pinned from the official TextTokenizer (phonemizer 3.4 espeak backend, espeak-ng 1.52 from espeakng-loader):
# percli's output was compared with it on 1,000 sentences (RealEdit transcripts and the embedded corpus) and
# matched on every one. "that the" is one espeak word (no "_" inside), punctuation tokens stay attached.
PINNED = {
    "Hello, world! How are you?": [
        "h", "ə", "l", "oʊ", ",", "_", "w", "ɜː", "l", "d", "!", "_", "h", "aʊ", "_", "ɑːɹ", "_", "j", "uː", "?",
    ],
    "I believe that the model can": [
        "aɪ", "_", "b", "ᵻ", "l", "iː", "v", "_", "ð", "æ", "t", "ð", "ə", "_", "m", "ɑː", "d", "əl", "_",
        "k", "æ", "n",
    ],
    'Mr. Smith said: "yes" -- maybe.': [
        "m", "ɪ", "s", "t", "ɚ", ".", "_", "s", "m", "ɪ", "θ", "_", "s", "ɛ", "d", ":", "_", '"', "j", "ɛ", "s", '"',
        "_", "m", "eɪ", "b", "iː", ".",
    ],
    "  But when I had approached  ": [
        "b", "ʌ", "t", "_", "w", "ɛ", "n", "_", "aɪ", "_", "h", "æ", "d", "_", "ɐ", "p", "ɹ", "oʊ", "tʃ", "t",
    ],
}


@pytest.mark.parametrize("sentence", list(PINNED))
def test_phonemize_matches_official_token_format(sentence):
    assert phonemize(sentence) == PINNED[sentence]


def test_text_to_ids_maps_every_token_including_word_separator():
    tokens = PINNED["Hello, world! How are you?"]
    phn2num = {tok: i for i, tok in enumerate(sorted(set(tokens)))}
    ids = text_to_ids("Hello, world! How are you?", phn2num)
    assert ids == [phn2num[t] for t in tokens]
    assert ids.count(phn2num[WORD_SEPARATOR]) == 4  # between the 5 words


def test_missing_phonemes_are_an_error_unless_dropped():
    tokens = PINNED["Hello, world! How are you?"]
    phn2num = {tok: i for i, tok in enumerate(sorted(set(tokens) - {"aʊ", "?"}))}
    with pytest.raises(ValueError, match=r"\['\?', 'aʊ'\] are not in the model's phoneme vocabulary"):
        tokens_to_ids(tokens, phn2num)
    kept = tokens_to_ids(tokens, phn2num, drop_unknown=True)
    assert kept == [phn2num[t] for t in tokens if t not in ("aʊ", "?")]


def test_empty_text_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        phonemize("   ")


def test_missing_espeak_names_the_pip_package(monkeypatch):
    monkeypatch.delenv("PHONEMIZER_ESPEAK_LIBRARY", raising=False)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import fails
    text._backend.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="pip install phonemizer espeakng-loader"):
            phonemize("hello")
    finally:
        text._backend.cache_clear()
