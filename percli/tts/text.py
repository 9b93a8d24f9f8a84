"""Text to phoneme tokens to ids, in the format the released VoiceCraft checkpoints were trained on.

VoiceCraft phonemizes with ``phonemizer``'s espeak backend (``en-us``, stress marks removed,
punctuation kept, phones separated by "|" and words by "_") and then splits every word into
phones: a phone is a run of word characters ("aɪ", "ɑːɹ", "tʃ") and every other visible character
(",", "!", '"') is a token of its own. Words are joined by the word-separator token "_", which is
itself in the vocabulary. The checkpoint's ``phn2num`` maps these tokens to ids.

espeak-ng comes from the ``espeakng-loader`` wheel (the shared library and its data, used through
ctypes, no system package). A user who set ``PHONEMIZER_ESPEAK_LIBRARY`` keeps their own library.
Different espeak-ng releases phonemize a few words differently; ``espeakng-loader`` 0.2.x ships 1.52.
"""

from __future__ import annotations

import functools
import os
import re

LANGUAGE = "en-us"
WORD_SEPARATOR = "_"
PHONE_SEPARATOR = "|"
# One phone is a run of word characters; any other non-space character (punctuation) stands alone.
_PHONE = re.compile(r"\w+|[^\w\s]")
_INSTALL_HINT = "install it with `pip install phonemizer espeakng-loader` (espeak-ng itself ships in espeakng-loader)"


@functools.cache
def _backend(language: str):
    """The phonemizer espeak backend with the options VoiceCraft's tokenizer uses (built once per language)."""
    try:
        from phonemizer.backend import EspeakBackend
        from phonemizer.backend.espeak.wrapper import EspeakWrapper
        from phonemizer.punctuation import Punctuation
    except ImportError as exc:
        raise RuntimeError(f"phonemization needs the `phonemizer` package: {_INSTALL_HINT}") from exc
    if "PHONEMIZER_ESPEAK_LIBRARY" not in os.environ:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise RuntimeError(f"phonemization needs espeak-ng (`espeakng-loader` package): {_INSTALL_HINT}") from exc
        EspeakWrapper.set_library(espeakng_loader.get_library_path())
        EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
    try:
        return EspeakBackend(
            language,
            punctuation_marks=Punctuation.default_marks(),
            preserve_punctuation=True,
            with_stress=False,
            tie=False,
            language_switch="keep-flags",
            words_mismatch="ignore",
        )
    except RuntimeError as exc:
        raise RuntimeError(f"espeak-ng could not be loaded ({exc}); {_INSTALL_HINT}") from exc


def phonemize(text: str, language: str = LANGUAGE) -> list[str]:
    """Phoneme tokens of ``text`` as VoiceCraft's tokenizer produces them.

    Example: ``phonemize("Hello, world!")`` -> ``["h", "ə", "l", "oʊ", ",", "_", "w", "ɜː", "l", "d", "!"]``.
    """
    if not text.strip():
        raise ValueError("the text to phonemize is empty")
    from phonemizer.separator import Separator

    separator = Separator(word=WORD_SEPARATOR, syllable="-", phone=PHONE_SEPARATOR)
    phonemized = _backend(language).phonemize([text.strip()], separator=separator, strip=True, njobs=1)[0]
    tokens: list[str] = []
    for word in phonemized.split(WORD_SEPARATOR):
        tokens += [p for p in _PHONE.findall(word) if p != PHONE_SEPARATOR] + [WORD_SEPARATOR]
    return tokens[:-1]  # a separator between words, none after the last


def tokens_to_ids(tokens: list[str], phn2num: dict[str, int], drop_unknown: bool = False) -> list[int]:
    """Map phoneme tokens to vocabulary ids.

    Args:
        tokens: phoneme tokens from :func:`phonemize`.
        phn2num: the checkpoint's phoneme vocabulary.
        drop_unknown: skip tokens missing from ``phn2num`` as the official inference scripts do
            silently; by default they are an error, since dropped phonemes change what is spoken.
    """
    missing = sorted({t for t in tokens if t not in phn2num})
    if missing and not drop_unknown:
        raise ValueError(
            f"phonemes {missing} are not in the model's phoneme vocabulary ({len(phn2num)} symbols); "
            "rephrase the text (spell out numbers and symbols) or drop them explicitly (drop_unknown=True)"
        )
    return [phn2num[t] for t in tokens if t in phn2num]


def text_to_ids(text: str, phn2num: dict[str, int], drop_unknown: bool = False, language: str = LANGUAGE) -> list[int]:
    """Phonemize ``text`` and map it to ids with ``phn2num`` (see :func:`tokens_to_ids`)."""
    return tokens_to_ids(phonemize(text, language), phn2num, drop_unknown)
