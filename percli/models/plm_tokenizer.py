"""The Llama-3 tokenizer PerceptionLM uses, read from a local folder.

A PLM release ships its vocabulary in one of two layouts, and both give the same ids:

* the perception_models layout: ``tokenizer.model`` (also looked for under ``original/``), a tiktoken BPE
  file of ``base64(token bytes) rank`` lines. Llama-3's 256 special tokens follow the BPE ranks (with PLM's
  ``<|image|>`` at offset 2, where Llama-3.1 has a reserved token), and text is split by Llama-3's regex
  before the byte-pair merges;
* the Hugging Face ``perception_lm`` layout: ``tokenizer.json``, read with the ``tokenizers`` library (there
  offset 3 is named ``<|video|>``; PLM itself marks video frames with ``<|image|>`` too).

tiktoken is not a dependency: its merge rule (repeatedly merge the adjacent pair whose concatenation has the
lowest rank, leftmost on ties) is a few lines of Python, cached per pre-token, which is fast enough for
prompts and training conversations.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path

import regex

from percli.core.config import ConfigError

LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
"""Llama-3's pre-tokenizer: contractions, words, numbers of up to three digits, punctuation, whitespace."""

NUM_SPECIAL_TOKENS = 256

# Named special tokens by their offset after the BPE ranks; every other offset is a reserved token, numbered
# in order from 1 (offsets 3, 4, 5, 8, then 10 onwards).
_NAMED_SPECIALS = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    2: "<|image|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    9: "<|eot_id|>",
}

TOKENIZER_FILES = ("tokenizer.model", "original/tokenizer.model", "tokenizer.json")
"""Where a PLM folder keeps its vocabulary, in the order they are tried."""


def llama3_special_tokens() -> list[str]:
    """PLM's 256 special-token names in id order (id = number of BPE ranks + position in this list)."""
    names, reserved = [], 1
    for offset in range(NUM_SPECIAL_TOKENS):
        if offset in _NAMED_SPECIALS:
            names.append(_NAMED_SPECIALS[offset])
        else:
            names.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return names


def find_tokenizer_file(path: str | Path) -> Path:
    """The vocabulary file of a PLM folder (or `path` itself when it is a file).

    Raises:
        ConfigError: Naming the folder and the files looked for, when none is there.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(f"PLM tokenizer: {path} is neither a folder nor a tokenizer file; give the folder of a "
                          "PLM release (tokenizer.model or tokenizer.json)")
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            return path / name
    raise ConfigError(f"PLM tokenizer: {path} holds none of {', '.join(TOKENIZER_FILES)}; give the folder of a PLM "
                      "release (perception_models: tokenizer.model; Hugging Face perception_lm: tokenizer.json)")


def load_tiktoken_ranks(file: str | Path) -> dict[bytes, int]:
    """``{token bytes: rank}`` from a tiktoken BPE file, checked to number its tokens 0..n-1.

    Raises:
        ConfigError: When a line is not ``base64 rank`` (e.g. a SentencePiece model under the same name).
    """
    file = Path(file)
    ranks: dict[bytes, int] = {}
    try:
        lines = file.read_bytes().splitlines()
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"line {lineno} is not 'base64-token rank'")
            ranks[base64.b64decode(fields[0], validate=True)] = int(fields[1])
    except (ValueError, binascii.Error) as e:
        raise ConfigError(f"PLM tokenizer: {file} is not a tiktoken BPE file ({e}); a PLM release's "
                          "tokenizer.model is one, or give its tokenizer.json") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ConfigError(f"PLM tokenizer: {file}: ranks are not 0..{len(ranks) - 1} each once, so the special "
                          "tokens' ids (which follow them) would be wrong")
    return ranks


class _TiktokenBPE:
    """Byte-level BPE over tiktoken ranks with special tokens recognised anywhere in the text."""

    def __init__(self, ranks: dict[bytes, int], special_tokens: dict[str, int]):
        self.ranks = ranks
        self.special_tokens = special_tokens
        self.id_to_bytes = {rank: token for token, rank in ranks.items()}
        self.id_to_bytes.update({i: name.encode() for name, i in special_tokens.items()})
        self.split = regex.compile(LLAMA3_SPLIT_PATTERN)
        # Longest first, so that no special token can be matched by a prefix of another.
        self.specials = regex.compile("|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)))
        self.cache: dict[bytes, list[int]] = {}

    def merge(self, piece: bytes) -> list[int]:
        if piece in self.ranks:
            return [self.ranks[piece]]
        if piece in self.cache:
            return self.cache[piece]
        parts = [piece[i:i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                rank = self.ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best_rank is None:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        ids = [self.ranks[p] for p in parts]
        if len(self.cache) > 200_000:  # bound the memory of a long data job
            self.cache.clear()
        self.cache[piece] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        return [i for piece in self.split.findall(text) for i in self.merge(piece.encode("utf-8"))]

    def encode(self, text: str) -> list[int]:
        ids, start = [], 0
        for match in self.specials.finditer(text):
            ids += self.encode_ordinary(text[start:match.start()])
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        return ids + self.encode_ordinary(text[start:])

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.id_to_bytes[int(i)] for i in ids).decode("utf-8", errors="replace")


class _HFTokenizerJSON:
    """A Hugging Face ``tokenizer.json`` (its added special tokens are matched anywhere in the text)."""

    def __init__(self, file: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(file))
        self.special_tokens = {t.content: i for i, t in self.tokenizer.get_added_tokens_decoder().items()}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


class Llama3Tokenizer:
    """PLM's Llama-3 tokenizer from a release folder (or a ``tokenizer.model`` / ``tokenizer.json`` file).

    Special token strings inside the text (``<|image|>``, ``<|eot_id|>``, ...) become their ids, as the chat
    template relies on.

    Attributes:
        file: The vocabulary file read.
        n_words: Vocabulary size including the special tokens.
        bos_id, eos_id, eot_id, image_id, start_header_id, end_header_id: The ids the chat format uses.
        pad_id: -1, the release's padding marker (never a real id; the collator replaces it by ``eos_id``).
        stop_ids: Ids that end a generated answer (end of text, end of turn).
        special_tokens: ``{name: id}`` of every special token.
    """

    pad_id = -1

    def __init__(self, path: str | Path):
        self.file = find_tokenizer_file(path)
        if self.file.suffix == ".json":
            try:
                self._backend: _TiktokenBPE | _HFTokenizerJSON = _HFTokenizerJSON(self.file)
            except ImportError:
                raise ConfigError(f"PLM tokenizer: reading {self.file} needs the `tokenizers` package (pip install "
                                  "tokenizers), or give the release's tiktoken tokenizer.model") from None
            except Exception as e:  # noqa: BLE001 - tokenizers reports a malformed file as a bare Exception
                raise ConfigError(f"PLM tokenizer: {self.file} is not a Hugging Face tokenizer.json ({e})") from None
            self.n_words = self._backend.tokenizer.get_vocab_size(with_added_tokens=True)
        else:
            ranks = load_tiktoken_ranks(self.file)
            specials = {name: len(ranks) + k for k, name in enumerate(llama3_special_tokens())}
            self._backend = _TiktokenBPE(ranks, specials)
            self.n_words = len(ranks) + len(specials)
        self.special_tokens = dict(self._backend.special_tokens)
        self.bos_id = self.token_id("<|begin_of_text|>")
        self.eos_id = self.token_id("<|end_of_text|>")
        self.eot_id = self.token_id("<|eot_id|>")
        self.image_id = self.token_id("<|image|>")
        self.start_header_id = self.token_id("<|start_header_id|>")
        self.end_header_id = self.token_id("<|end_header_id|>")
        self.stop_ids = (self.eos_id, self.eot_id)

    def token_id(self, name: str) -> int:
        """The id of a special token.

        Raises:
            ConfigError: When the vocabulary does not have it (not a Llama-3/PLM tokenizer).
        """
        if name not in self.special_tokens:
            raise ConfigError(f"PLM tokenizer: {self.file} has no special token {name}; it is not a Llama-3 / "
                              "PerceptionLM tokenizer")
        return self.special_tokens[name]

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Text -> ids, optionally framed by ``<|begin_of_text|>`` / ``<|end_of_text|>``."""
        if not isinstance(text, str):
            raise TypeError(f"PLM tokenizer: expected text, got {type(text).__name__}")
        ids = self._backend.encode(text)
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text (special tokens spelled out; broken UTF-8 becomes U+FFFD)."""
        return self._backend.decode(ids)
