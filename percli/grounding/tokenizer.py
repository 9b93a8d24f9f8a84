"""A shared multilingual subword vocabulary (BPE) for grounded captions, as XLM trains one over all languages.

Origin: written for percli, on Hugging Face ``tokenizers``. :func:`train_tokenizer` learns byte-pair merges
from the captions of every language together, after NFKC normalisation (optionally lowercased) and
SentencePiece-style pre-tokenisation: spaces become ``▁`` and punctuation stands alone, so accented letters
(``ß``, ``é``, ``ü``) stay whole characters and decoding gives the plain text back. The special tokens have
fixed ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3, ``<mask>`` 4, then the language tags ``<en>``,
``<de>``, ``<fr>``. :func:`load_tokenizer` also wraps a local Hugging Face tokenizer folder (a fast
tokenizer) in the same :class:`SubwordTokenizer` interface.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

LANGUAGE_TAGS: tuple[str, ...] = ("<en>", "<de>", "<fr>")
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<unk>", "<s>", "</s>", "<mask>", *LANGUAGE_TAGS)
TOKENIZER_FILE = "tokenizer.json"
_SPACE = "\u2581"  # "▁", SentencePiece's word-start mark


class SubwordTokenizer:
    """Text <-> subword ids over a ``tokenizers.Tokenizer``, with the special ids a model needs.

    Args:
        backend: The tokenizer (its own specials are not added by ``encode``).
        pad_id, unk_id, bos_id, eos_id, mask_id: Special ids (``mask_id``/``unk_id`` may be None).
        language_ids: Language code -> id of its tag token.
    """

    def __init__(self, backend: Tokenizer, *, pad_id: int, unk_id: int | None, bos_id: int, eos_id: int,
                 mask_id: int | None, language_ids: dict[str, int]) -> None:
        self.backend = backend
        self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.mask_id = pad_id, unk_id, bos_id, eos_id, mask_id
        self.language_ids = dict(language_ids)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def lang_id(self, language: str) -> int:
        """Id of the tag token of ``language`` (e.g. ``"de"`` -> id of ``<de>``)."""
        if language not in self.language_ids:
            raise ValueError(f"this tokenizer has no tag for language {language!r}; it has "
                             f"{', '.join(sorted(self.language_ids)) or 'none'}")
        return self.language_ids[language]

    def encode(self, text: str) -> list[int]:
        """Subword ids of ``text``, without special tokens."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Plain text of ``ids``; special tokens (padding, tags, ...) are dropped."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)

    def batch(self, texts: Sequence[str], max_len: int,
              add_bos_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``texts`` into one right-padded batch.

        Args:
            texts: B texts.
            max_len: Longest row, ``<s>``/``</s>`` included; longer texts are cut (their ``</s>`` kept).
            add_bos_eos: Wrap every text in ``<s>`` ... ``</s>``.

        Returns:
            ids LongTensor [B, L] padded with ``pad_id``, and mask BoolTensor [B, L] (True = a real token), where
            L is the longest row of the batch (at most ``max_len``).
        """
        extra = 2 if add_bos_eos else 0
        if max_len < extra + 1:
            raise ValueError(f"max_len must be >= {extra + 1}, got {max_len}")
        rows = []
        for encoding in self.backend.encode_batch(list(texts), add_special_tokens=False):
            body = encoding.ids[: max_len - extra]
            rows.append([self.bos_id, *body, self.eos_id] if add_bos_eos else body)
        length = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask


def _from_backend(backend: Tokenizer, where: Path) -> SubwordTokenizer:
    """Wrap a tokenizer that has our special tokens (e.g. one :func:`train_tokenizer` wrote)."""
    ids = {token: backend.token_to_id(token) for token in SPECIAL_TOKENS}
    missing = [token for token in ("<pad>", "<s>", "</s>") if ids[token] is None]
    if missing:
        raise ValueError(f"{where}: no {', '.join(missing)} token; use a tokenizer from train_tokenizer or a "
                         "Hugging Face tokenizer folder (with tokenizer_config.json)")
    languages = {tag[1:-1]: ids[tag] for tag in LANGUAGE_TAGS if ids[tag] is not None}
    return SubwordTokenizer(backend, pad_id=ids["<pad>"], unk_id=ids["<unk>"], bos_id=ids["<s>"],
                            eos_id=ids["</s>"], mask_id=ids["<mask>"], language_ids=languages)


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: str | Path,
                    lowercase: bool = False) -> SubwordTokenizer:
    """Learn a BPE vocabulary shared by all languages and save it.

    Args:
        texts: Training sentences of every language together.
        vocab_size: Vocabulary size, special tokens included (fewer when the texts allow no more merges).
        path: ``tokenizer.json`` to write, or a folder to write it in (created). Written to a temp name and
            renamed, so a crash never leaves half a file.
        lowercase: Lowercase after NFKC normalisation.

    Returns:
        The trained tokenizer.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), *([normalizers.Lowercase()] if lowercase else [])])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always"),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    backend.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    path = Path(path)
    file = path if path.suffix == ".json" else path / TOKENIZER_FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    backend.save(str(tmp))
    os.replace(tmp, file)
    return _from_backend(backend, file)


def _from_hugging_face(folder: Path) -> SubwordTokenizer:
    """Wrap the fast tokenizer of a local Hugging Face folder; its language tags are ``<xx>``, ``__xx__`` or
    ``xx_XX``-style tokens."""
    from transformers import AutoTokenizer  # slow to import: only here

    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if not hf.is_fast:
        raise ValueError(f"{folder}: only fast (tokenizer.json-backed) Hugging Face tokenizers are supported")
    bos = hf.bos_token_id if hf.bos_token_id is not None else hf.cls_token_id
    eos = hf.eos_token_id if hf.eos_token_id is not None else hf.sep_token_id
    if bos is None or eos is None:
        raise ValueError(f"{folder}: the tokenizer has no begin/end-of-sentence (or cls/sep) token")
    vocab = hf.get_vocab()
    languages = {}
    for language in ("en", "de", "fr"):
        candidates = [f"<{language}>", f"__{language}__", f"[{language}]"] + sorted(
            t for t in hf.all_special_tokens if t.startswith(f"{language}_") and len(t) == 5)
        found = next((vocab[t] for t in candidates if t in vocab), None)
        if found is not None:
            languages[language] = found
    pad = hf.pad_token_id if hf.pad_token_id is not None else eos  # never attended to nor scored
    return SubwordTokenizer(hf.backend_tokenizer, pad_id=pad, unk_id=hf.unk_token_id, bos_id=bos, eos_id=eos,
                            mask_id=hf.mask_token_id, language_ids=languages)


def load_tokenizer(path: str | Path) -> SubwordTokenizer:
    """Load a tokenizer: a ``tokenizer.json`` file, a folder holding one (as :func:`train_tokenizer` writes), or a
    local Hugging Face tokenizer folder (one with ``tokenizer_config.json``, read offline)."""
    path = Path(path).expanduser()
    if path.is_file():
        return _from_backend(Tokenizer.from_file(str(path)), path)
    if (path / "tokenizer_config.json").is_file():
        return _from_hugging_face(path)
    if (path / TOKENIZER_FILE).is_file():
        return _from_backend(Tokenizer.from_file(str(path / TOKENIZER_FILE)), path / TOKENIZER_FILE)
    raise ValueError(f"{path}: no {TOKENIZER_FILE} file or Hugging Face tokenizer folder (tokenizer_config.json) "
                     "there; train one with train_tokenizer")


def run_tokenizer(meta: dict, checkpoint: str | Path) -> SubwordTokenizer:
    """The tokenizer of a percli run: the path its metadata records (``tokenizer``), else the tokenizer.json of
    the run dir (found from a checkpoint inside it: the run may have moved)."""
    checkpoint = Path(checkpoint).expanduser().resolve()
    recorded = Path(meta.get("tokenizer", "")).expanduser()
    candidates = [recorded] if str(meta.get("tokenizer", "")) and recorded.exists() else []
    candidates += [p / TOKENIZER_FILE for p in (checkpoint, *list(checkpoint.parents)[:3])]
    for candidate in candidates:
        if candidate.exists():
            return load_tokenizer(candidate)
    raise ValueError(f"{checkpoint}: its tokenizer ({meta.get('tokenizer')}) is gone and no {TOKENIZER_FILE} is in "
                     "the run dir")
