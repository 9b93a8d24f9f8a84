"""The CLIP byte-level BPE tokenizer (OpenAI CLIP / open_clip ``SimpleTokenizer``), offline.

The vocabulary is OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (MIT), shipped in
``percli/models/data``: 48,894 merges over 256 byte symbols and their ``</w>`` (end of word)
forms, then ``<start_of_text>`` = 49406 and ``<end_of_text>`` = 49407; 49,408 ids in all.

Text goes through the steps of open_clip's default ``clean='lower'``: ``ftfy.fix_text``, HTML
unescaped twice, whitespace runs collapsed to one space, stripped, lower-cased. open_clip imports
ftfy unconditionally; percli uses it when it is installed (exact parity) and otherwise applies the
ftfy steps that act on well-formed text (NFC, curly quotes, Latin ligatures, fullwidth forms,
stray control characters). Without ftfy, mojibake such as ``"cafÃ©"`` is not repaired.
"""

from __future__ import annotations

import gzip
import html
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import regex
import torch

VOCAB_PATH = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # the merges OpenAI kept from the 16e6 file
SOT, EOT = "<start_of_text>", "<end_of_text>"
CONTEXT_LENGTH = 77

# Special tokens first so that they survive as one piece, then English contractions, letter
# runs, single digits (numbers are spelled digit by digit) and runs of other symbols.
_WORD_PATTERN = regex.compile(
    rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE)

# The ftfy fixes that need no encoding detection, as `str.translate` tables.
_FTFY_FALLBACK = {
    0x02BC: "'", **{c: "'" for c in range(0x2018, 0x201C)}, **{c: '"' for c in range(0x201C, 0x2020)},
    0x3000: " ", **{c: chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)},  # fullwidth ASCII
    **{c: unicodedata.normalize("NFKC", chr(c)) for c in range(0xFB00, 0xFB07)},  # ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ
    **{c: None for c in [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070),
                         *range(0xFFF9, 0xFFFD), 0xFEFF]},
}


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """The printable stand-in for each byte (GPT-2's reversible byte map), in vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the other 68 (controls, space,
    soft hyphen) follow in byte order as U+0100 onwards, so no symbol is whitespace.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def fix_text(text: str) -> str:
    """ftfy.fix_text when ftfy is installed, else its encoding-free subset (see module doc)."""
    try:
        import ftfy
    except ImportError:
        return unicodedata.normalize("NFC", text.translate(_FTFY_FALLBACK))
    return ftfy.fix_text(text)


def clean_text(text: str) -> str:
    """open_clip's ``clean='lower'``: fix, unescape HTML twice, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """Text -> CLIP token ids, identical to ``open_clip.tokenize``.

    ``tokenizer(["a photo of a cat"])`` -> LongTensor [1, 77]: ``<start_of_text>``, the BPE ids,
    ``<end_of_text>``, zero padding. Longer texts are cut to ``context_length`` and their last
    id replaced by ``<end_of_text>`` (text encoders pool at the highest id, the EOT).
    """

    def __init__(self, vocab_path: str | Path = VOCAB_PATH, context_length: int = CONTEXT_LENGTH):
        lines = gzip.open(vocab_path, "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]  # line 0 is a version header
        symbols = list(byte_symbols().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {piece: i for i, piece in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_decoder = {s: b for b, s in byte_symbols().items()}
        self.sot_token_id, self.eot_token_id = self.encoder[SOT], self.encoder[EOT]
        self.vocab_size = len(vocab)
        self.context_length = context_length
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    def bpe(self, word: str) -> list[str]:
        """Split one pre-token (in byte symbols) into vocabulary pieces, lowest-rank merge first."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self.merge_rank.get(pair, NUM_MERGES), pair) for pair in zip(parts, parts[1:])]
            rank, (first, second) = min(ranked)
            if rank == NUM_MERGES:  # no adjacent pair is a known merge
                break
            merged, i = [], 0
            while i < len(parts):  # merge every non-overlapping occurrence, left to right
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` after cleaning, without start/end tokens."""
        symbols = byte_symbols()
        ids = []
        for word in _WORD_PATTERN.findall(clean_text(text)):
            ids.extend(self.encoder[piece] for piece in self.bpe("".join(symbols[b] for b in word.encode("utf-8"))))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (word ends become spaces; special tokens are spelled out)."""
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids [len(texts), context_length] (int64), zero-padded, truncated as the class doc says."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length - 1] + [self.eot_token_id]
            out[row, :len(ids)] = torch.tensor(ids)
        return out
