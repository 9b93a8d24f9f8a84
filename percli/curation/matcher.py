"""MetaCLIP sub-string matching: which metadata entries occur, as whole words, in a text.

Semantics follow the official v1 code (facebookresearch/MetaCLIP, `metaclip1/substr_matching.py`),
rewritten from its definition: a text matches entry e when `" " + e + " "` is a substring of
`spacing(text)` (whole words, case-sensitive, overlaps allowed, no Unicode normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat

import numpy as np

PUNCTS_TO_WRAP = ",.;:?!`"
CHARS_TO_SPACE = "\t\n\r"


def _respace(text: str) -> str:
    """The official chain of replaces: each punctuation mark becomes " p ", then tab/newline/return a space.

    (A chain of `str.replace` runs at memory speed; `str.translate` with multi-character values is ~20x
    slower on long strings.)
    """
    for p in PUNCTS_TO_WRAP:
        if p in text:
            text = text.replace(p, f" {p} ")
    for c in CHARS_TO_SPACE:
        if c in text:
            text = text.replace(c, " ")
    return text


def spacing(text: str) -> str:
    """The official v1 text normalisation: pad with spaces, respace punctuation, blank out tabs/newlines."""
    return _respace(f" {text} ")


def spaced_entry(entry: str) -> str:
    """The official v1 entry normalisation: one space on each side."""
    return f" {entry} "


def reference_match(text: str, entries: Sequence[str]) -> list[int]:
    """The official naive matcher (one `in` per entry); slow, kept as the ground truth for tests."""
    spaced = spacing(text)
    return [i for i, entry in enumerate(entries) if spaced_entry(entry) in spaced]


_BATCH = 4096  # texts per vectorised pass: big enough to amortise numpy calls, small enough for the caches
# Text separators for joining a batch into one string: one-byte control characters, used only when no entry
# holds them. A batch whose texts hold every usable one is matched text by text instead (still exact).
_SEPARATORS = "\x00\x01\x02\x03"
_EMPTY = np.zeros(0, dtype=np.int64)
_HASH_BLOCK = 1 << 20
_MULTIPLIERS = (0x100000001B3, 0x9E3779B97F4A7C15, 0xD6E8FEB86659FD93)  # odd: invertible modulo 2**64
_MIX = np.uint64(0x9E3779B97F4A7C15)


class MetadataMatcher:
    """Finds every metadata entry whose spaced form is a substring of a spaced text.

    Exactly equivalent to `reference_match` for every entry, including entries with double
    spaces, leading/trailing spaces, punctuation or the empty string. Why: the spaced text
    starts and ends with a space, so it is `" " + " ".join(tokens) + " "` with
    `tokens = spacing(text).split(" ")[1:-1]` (tokens may be empty). A substring that starts and
    ends with a space starts and ends at two of those separating spaces, so `" " + e + " "` occurs
    in the text if and only if `e.split(" ")` equals a contiguous run of the text's tokens.
    Entries that can never match (e.g. `St. Louis`, whose "St." is never a token of a spaced
    text) are simply never found.

    How it is fast: no Python code runs per text or per token. The entries become a trie over
    token ids. A batch of texts is joined into one string around a separator token, respaced with
    `str.replace` and encoded to UTF-8; numpy then finds the tokens (the bytes between spaces),
    hashes each one with a polynomial rolling hash (prefix sums modulo 2**64), looks the hashes up
    in an open-addressing table of the entries' tokens, and confirms every hit byte by byte (so a
    hash collision can never create or hide a match). The trie is walked for all token positions
    at once, one level (token) per step, keeping only the runs that are still a prefix of some entry.

    Args:
        entries: the metadata; an entry's index is its id. Duplicate strings share their matches.
    """

    def __init__(self, entries: Sequence[str]):
        self.entries = list(entries)
        for entry_id, entry in enumerate(self.entries):
            if not isinstance(entry, str):
                raise ValueError(f"metadata entry {entry_id} is {type(entry).__name__}, not a string")
        everything = " ".join(self.entries)
        self._separators = [c for c in _SEPARATORS if c not in everything]
        # Every entry's tokens, contiguous: an entry with k spaces has k + 1 tokens (some maybe empty).
        per_entry = np.fromiter(map(str.count, self.entries, repeat(" ")), dtype=np.int64,
                                count=len(self.entries)) + 1
        data = np.frombuffer(f" {everything} ".encode("utf-8", "surrogatepass"), dtype=np.uint8)
        spaces = np.flatnonzero(data == 32)
        token_of = self._build_tokens(data, spaces[:-1] + 1, spaces[1:])
        self._build_trie(token_of, per_entry)

    def _build_tokens(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """The distinct tokens (bytes, lengths, hash table); returns the token id of every given token."""
        lengths = ends - starts
        for multiplier in _MULTIPLIERS:  # two distinct tokens with one hash (~1e-9 for 1e5 tokens): next one
            self._set_multiplier(multiplier)
            keys = self._hashes(data, starts, ends)
            unique, first, token_of = np.unique(keys, return_index=True, return_inverse=True)
            first_start, first_len = starts[first][token_of], lengths[first][token_of]
            same = first_len == lengths
            if same.all():
                nonempty = np.flatnonzero(lengths > 0)
                sizes = lengths[nonempty]
                differ = data[_segment_arange(starts[nonempty], sizes)] != data[
                    _segment_arange(first_start[nonempty], sizes)]
                same = not differ.size or not np.logical_or.reduceat(differ, np.cumsum(sizes) - sizes).any()
            if np.all(same):
                break
        else:  # pragma: no cover - three independent 64-bit collisions
            raise RuntimeError("token hash collisions with every multiplier")
        self._tok_len = lengths[first]
        self._tok_start = np.cumsum(self._tok_len) - self._tok_len
        self._tok_bytes = data[_segment_arange(starts[first], self._tok_len)]
        self._tokens = _IntTable(unique, np.arange(len(unique), dtype=np.int64))
        return token_of.reshape(-1)

    def _build_trie(self, token_of: np.ndarray, per_entry: np.ndarray) -> None:
        """Trie nodes = distinct token prefixes of the entries, made level by level with np.unique."""
        width = len(self._tok_len)
        first_token = np.cumsum(per_entry) - per_entry
        node = np.zeros(len(per_entry), dtype=np.int64)  # each entry's node so far (0: the root)
        parents, tokens, children = [], [], []
        num_nodes = 1
        for level in range(int(per_entry.max(initial=0))):
            active = np.flatnonzero(per_entry > level)
            keys = node[active] * width + token_of[first_token[active] + level]
            unique, inverse = np.unique(keys, return_inverse=True)
            parent, token = np.divmod(unique, width)
            parents.append(parent)
            tokens.append(token)
            children.append(np.arange(num_nodes, num_nodes + len(unique)))
            node[active] = num_nodes + inverse.reshape(-1)
            num_nodes += len(unique)
        parents = np.concatenate(parents) if parents else _EMPTY
        tokens = np.concatenate(tokens) if tokens else _EMPTY
        children = np.concatenate(children) if children else _EMPTY
        root = parents == 0
        self._root_child = np.full(width + 1, -1, dtype=np.int64)  # index -1 (no token) stays -1
        self._root_child[tokens[root]] = children[root]
        self._width = np.uint64(width)
        self._edges = _IntTable(parents[~root].astype(np.uint64) * self._width + tokens[~root].astype(np.uint64),
                                children[~root])
        lengths = np.bincount(node, minlength=num_nodes)  # entries ending at each node
        self._node_offsets = np.zeros(num_nodes + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._node_offsets[1:])
        self._node_ids = np.argsort(node, kind="stable")  # entry ids grouped by node, ascending within
        self._is_terminal = lengths > 0
        self._has_child = np.zeros(num_nodes, dtype=bool)  # only these runs can grow
        self._has_child[parents[~root]] = True
        self._single = bool((lengths <= 1).all())  # no duplicate entries: a terminal node is one id

    def _set_multiplier(self, multiplier: int) -> None:
        self._mult = multiplier
        self._pow = self._inv_pow = np.ones(1, dtype=np.uint64)

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """B**i and B**-i modulo 2**64 for i < n (grown on demand)."""
        if len(self._pow) < n:
            size = max(n, 2 * len(self._pow))
            one = np.ones(1, dtype=np.uint64)
            self._pow = np.concatenate((one, np.cumprod(np.full(size - 1, self._mult, dtype=np.uint64))))
            inverse = pow(self._mult, -1, 1 << 64)
            self._inv_pow = np.concatenate((one, np.cumprod(np.full(size - 1, inverse, dtype=np.uint64))))
        return self._pow, self._inv_pow

    def _hashes(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Polynomial hash of each data[starts[i]:ends[i]] (tokens in order), arithmetic modulo 2**64.

        One prefix sum per block of about a megabyte, so the power tables stay small.
        """
        if len(data) <= _HASH_BLOCK or len(starts) <= 1:
            return self._hash_block(data, starts, ends)
        cuts = np.unique(np.searchsorted(starts, np.arange(0, len(data), _HASH_BLOCK)))
        cuts = np.append(cuts[cuts < len(starts)], len(starts))
        return np.concatenate([self._hash_block(data[starts[a]:ends[b - 1]], starts[a:b] - starts[a],
                                                ends[a:b] - starts[a]) for a, b in zip(cuts, cuts[1:])])

    def _hash_block(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        power, inv_power = self._powers(len(data) + 1)
        prefix = np.zeros(len(data) + 1, dtype=np.uint64)
        np.cumsum((data.astype(np.uint64) + np.uint64(1)) * power[:len(data)], out=prefix[1:])
        return (prefix[ends] - prefix[starts]) * inv_power[starts]

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, text: str) -> list[int]:
        """Sorted distinct ids of the entries that `text` matches."""
        return self.match_batch([text])[1].tolist()

    def match_many(self, texts: Sequence[str]) -> list[list[int]]:
        """`match` over many texts."""
        offsets, ids = self.match_batch(texts)
        flat = ids.tolist()
        bounds = offsets.tolist()
        return [flat[a:b] for a, b in zip(bounds, bounds[1:])]

    def match_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Matches of many texts in CSR form: `ids[offsets[i]:offsets[i + 1]]` are text i's sorted distinct ids.

        Returns (offsets int64 of length len(texts) + 1, ids int64).
        """
        texts = texts if isinstance(texts, list) else list(texts)
        return _stack_csr([self._match_chunk(texts[i:i + _BATCH]) for i in range(0, len(texts), _BATCH)])

    def _match_chunk(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(texts)
        sep = ""
        if n > 1:
            joined = None
            for sep in self._separators:
                joined = f" {sep} ".join(texts)
                if joined.count(sep) == n - 1:
                    break
            else:  # every usable separator occurs in the batch: one text at a time (still exact)
                return _stack_csr([self._match_chunk([text]) for text in texts])
        else:
            joined = texts[0]
        data = np.frombuffer(_respace(f" {joined} ").encode("utf-8", "surrogatepass"), dtype=np.uint8)
        spaces = np.flatnonzero(data == 32)
        starts, ends = spaces[:-1] + 1, spaces[1:]  # every token lies between two spaces
        tids = self._token_ids(data, starts, ends)
        if sep:
            is_sep = (ends - starts == 1) & (data[np.minimum(starts, len(data) - 1)] == ord(sep))
            tids[is_sep] = -1  # a run never crosses into the next text
            text_of = np.cumsum(is_sep)
        tids = np.append(tids, -1)  # a run can always look one token ahead
        pos, node = self._walk(tids)
        if self._single:
            entry = self._node_ids[self._node_offsets[node]]
        else:  # duplicate entry strings: a terminal node stands for several ids
            counts = self._node_offsets[node + 1] - self._node_offsets[node]
            pos = np.repeat(pos, counts)
            entry = self._node_ids[_segment_arange(self._node_offsets[node], counts)]
        text = text_of[pos] if sep else np.zeros_like(pos)
        pairs = np.sort(text * len(self.entries) + entry)  # (np.unique hashes first: several times slower)
        pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))] if len(pairs) else pairs
        text, entry = np.divmod(pairs, len(self.entries))
        return np.searchsorted(text, np.arange(n + 1)), entry

    def _token_ids(self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """The entry-token id of each text token, -1 when it is in no entry (hash lookup, then byte check)."""
        tids = self._tokens.get(self._hashes(data, starts, ends))
        hit = np.flatnonzero(tids >= 0)
        lengths = ends[hit] - starts[hit]
        vid = tids[hit]
        same = self._tok_len[vid] == lengths
        check = np.flatnonzero(same & (lengths > 0))
        if check.size:
            sizes = lengths[check]
            text_bytes = data[_segment_arange(starts[hit[check]], sizes)]
            token_bytes = self._tok_bytes[_segment_arange(self._tok_start[vid[check]], sizes)]
            differ = np.logical_or.reduceat(text_bytes != token_bytes, np.cumsum(sizes) - sizes)
            same[check[differ]] = False
        tids[hit[~same]] = -1
        return tids

    def _walk(self, tids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start position, trie node) of every complete entry found, for all start positions at once."""
        pos = np.flatnonzero(tids >= 0)
        node = self._root_child[tids[pos]]
        live = node >= 0
        pos, node = pos[live], node[live]
        hit_pos, hit_node = [], []
        level = 1
        while pos.size:
            terminal = self._is_terminal[node]
            hit_pos.append(pos[terminal])
            hit_node.append(node[terminal])
            grow = self._has_child[node]
            pos, node = pos[grow], node[grow]
            nxt = tids[pos + level]
            ok = nxt >= 0
            pos, node = pos[ok], node[ok]
            child = self._edges.get(node.astype(np.uint64) * self._width + nxt[ok].astype(np.uint64))
            found = child >= 0
            pos, node = pos[found], child[found]
            level += 1
        if not hit_pos:
            return _EMPTY, _EMPTY
        return np.concatenate(hit_pos), np.concatenate(hit_node)


class _IntTable:
    """A read-only open-addressing hash table from distinct uint64 keys to int64 values, queried in bulk."""

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        bits = max(4, int(2 * len(keys)).bit_length())  # load factor <= 1/2: ~1.5 probes per lookup
        self._mask = (1 << bits) - 1
        self._shift = np.uint64(64 - bits)
        # One row per slot, [key, value + 1] (0: empty): a probe touches one 16-byte row, one cache line.
        self._rows = np.zeros((1 << bits, 2), dtype=np.uint64)
        keys = np.asarray(keys, dtype=np.uint64)
        slots = self._home(keys)
        pending = np.arange(len(keys))
        while pending.size:  # linear probing, all pending keys one step at a time
            free = self._rows[slots[pending], 1] == 0
            taken, first = np.unique(slots[pending[free]], return_index=True)
            winners = pending[free][first]
            self._rows[taken, 0] = keys[winners]
            self._rows[taken, 1] = values[winners].astype(np.uint64) + np.uint64(1)
            placed = np.zeros(len(keys), dtype=bool)
            placed[winners] = True
            pending = pending[~placed[pending]]
            slots[pending] = (slots[pending] + 1) & self._mask

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * _MIX) >> self._shift).astype(np.int64)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, -1 when absent."""
        out = np.full(len(keys), -1, dtype=np.int64)
        idx = np.arange(len(keys))
        slots = self._home(keys)
        while idx.size:
            rows = np.take(self._rows, slots, axis=0)  # (much faster than rows[slots] on 2-D arrays)
            used = rows[:, 1] > 0
            hit = used & (rows[:, 0] == keys[idx])
            out[idx[hit]] = rows[hit, 1].astype(np.int64) - 1
            probe = used & ~hit
            idx, slots = idx[probe], (slots[probe] + 1) & self._mask
        return out


def _segment_arange(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """concatenate(arange(s, s + n) for s, n in zip(starts, sizes)), vectorised."""
    total = int(sizes.sum())
    offsets = np.cumsum(sizes) - sizes
    return np.repeat(starts - offsets, sizes) + np.arange(total)


def _stack_csr(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate CSR match blocks."""
    offsets, ids, done = [np.zeros(1, dtype=np.int64)], [], 0
    for off, part in parts:
        offsets.append(off[1:] + done)
        ids.append(part)
        done += len(part)
    return np.concatenate(offsets), (np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64))
