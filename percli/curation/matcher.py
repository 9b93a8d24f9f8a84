"""MetaCLIP sub-string matching: which metadata entries occur, as whole words, in a text.

Semantics follow the official v1 code (facebookresearch/MetaCLIP, `metaclip1/substr_matching.py`),
rewritten from its definition: a text matches entry e when `" " + e + " "` is a substring of
`spacing(text)` (whole words, case-sensitive, overlaps allowed, no Unicode normalisation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PUNCTS_TO_WRAP = ",.;:?!`"
CHARS_TO_SPACE = "\t\n\r"
# One translate() does what the official chain of str.replace calls does: each punctuation mark
# becomes " p ", then tab/newline/return become a space. The replacements never produce a
# character that a later replacement would touch, so the order does not matter.
_SPACING_TABLE = str.maketrans({**{p: f" {p} " for p in PUNCTS_TO_WRAP}, **{c: " " for c in CHARS_TO_SPACE}})


def spacing(text: str) -> str:
    """The official v1 text normalisation: pad with spaces, respace punctuation, blank out tabs/newlines."""
    return f" {text} ".translate(_SPACING_TABLE)


def spaced_entry(entry: str) -> str:
    """The official v1 entry normalisation: one space on each side."""
    return f" {entry} "


def reference_match(text: str, entries: Sequence[str]) -> list[int]:
    """The official naive matcher (one `in` per entry); slow, kept as the ground truth for tests."""
    spaced = spacing(text)
    return [i for i, entry in enumerate(entries) if spaced_entry(entry) in spaced]


class MetadataMatcher:
    """Finds every metadata entry whose spaced form is a substring of a spaced text.

    Exactly equivalent to `reference_match` for every entry, including entries with double
    spaces, leading/trailing spaces, punctuation or the empty string. Why: the spaced text
    starts and ends with a space, so it is `" " + " ".join(tokens) + " "` with
    `tokens = spacing(text).split(" ")[1:-1]` (tokens may be empty). A substring that starts and
    ends with a space starts and ends at two of those separating spaces, so `" " + e + " "` occurs
    in the text if and only if `e == " ".join(tokens[a:b])` for some a < b. The matcher therefore
    looks up contiguous token runs in a dict of entries, extending a run only while it is a prefix
    (in whole tokens) of some entry. Entries that can never match (e.g. `St. Louis`, whose "St." is
    never a token of a spaced text) are simply never found.

    Args:
        entries: the metadata; an entry's index is its id. Duplicate strings share their matches.
    """

    def __init__(self, entries: Sequence[str]):
        self.entries = list(entries)
        self._ids: dict[str, list[int]] = {}
        self._prefixes: set[str] = set()  # joined proper token-prefixes of multi-token entries
        for entry_id, entry in enumerate(self.entries):
            if not isinstance(entry, str):
                raise ValueError(f"metadata entry {entry_id} is {type(entry).__name__}, not a string")
            self._ids.setdefault(entry, []).append(entry_id)
            parts = entry.split(" ")
            for n in range(1, len(parts)):
                self._prefixes.add(" ".join(parts[:n]))

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, text: str) -> list[int]:
        """Sorted distinct ids of the entries that `text` matches."""
        tokens = spacing(text).split(" ")
        ids = self._ids
        prefixes = self._prefixes
        found: set[int] = set()
        last = len(tokens) - 1  # tokens[0] and tokens[-1] are the empty strings outside the padding
        for start in range(1, last):
            run = tokens[start]
            end = start + 1
            while True:
                hit = ids.get(run)
                if hit is not None:
                    found.update(hit)
                if end >= last or run not in prefixes:
                    break
                run = f"{run} {tokens[end]}"
                end += 1
        return sorted(found)

    def match_many(self, texts: Iterable[str]) -> list[list[int]]:
        """`match` over many texts."""
        return [self.match(text) for text in texts]
