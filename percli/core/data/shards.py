"""Record shards: JSONL (optionally gzipped), Parquet and WebDataset tar, read and written in one place.

The format of a shard is read from its name: `.jsonl`, `.jsonl.gz`, `.parquet`, `.tar`.

* JSONL: one JSON object per line; the text is field `text_field`. A record's position is its
  0-based line number.
* Parquet: one row per record; the text is column `text_field`. A record's position is its row.
* WebDataset tar: a sample is a run of consecutive members sharing a key, the member name up to
  the first dot of its basename (`dir/000123.jpg` and `dir/000123.json` are sample `dir/000123`).
  The text is the member `<key>.<text_field>` when the sample has one (`--text-field txt`), else
  field `text_field` of the member `<key>.json` (`--text-field text`, MetaCLIP's own shards:
  `--text-field caption` for the usual img2dataset output). A record's position is its sample index.
  Keys are unique within a shard: when a later sample repeats the key of an earlier one (`a.jpg a.txt
  b.jpg a.jpg a.txt`), the first sample wins and the later one is skipped whole and counted in
  `duplicate_keys` (it keeps its place in the sample numbering).

Readers yield `Batch`es of the usable records and count the malformed ones in `BadRecords`
without stopping: bad JSON, a missing or non-string text, an unreadable Parquet row group (all its
rows), a truncated or corrupt tar (one bad record: the sample being read when the archive breaks off,
with the byte offset of the broken header; the rest of the shard is skipped). With `text_field=None`
they yield every record that parses, text or not (texts ""). Writers write kept records in the
input's format to a temp name and rename it on `commit()`, each with one added value described by
an `AddedField` (default `METACLIP_ENTRIES`):

* JSONL: the record plus `"metaclip_entries": [ids]`;
* Parquet: the same schema plus a `metaclip_entries` list<int64> column;
* tar: the kept samples' members with their bytes unchanged, plus `<key>.metaclip.json`
  = `{"metaclip_entries": [ids]}` (no member for a None value);
* index (any input): one line `{"index": position, "key": uuid/id/tar key or null, "entries": [ids]}`
  per kept record, for users who keep their shards where they are.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

FORMATS = {".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".parquet": "parquet", ".tar": "tar"}
BATCH_SIZE = 4096  # records matched, balanced and written at a time
BAD_EXAMPLES_KEPT = 10
ENTRIES_FIELD = "metaclip_entries"
KEY_FIELDS = ("uuid", "id")  # a record's identity (and its keep coin) when present


# ---------------------------------------------------------------------------------------------
# Input lists: brace expansion and globs


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: `a{1,2}b` -> a1b a2b; `{08..10}` -> 08 09 10 (zero-padding kept).

    Nested groups expand too; a group with neither a top-level comma nor a `lo..hi` range stays literal.
    """
    depth, start = 0, 0
    for i, ch in enumerate(pattern):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                alternatives = _brace_alternatives(pattern[start + 1:i])
                if alternatives is not None:
                    head, tail = pattern[:start], pattern[i + 1:]
                    return [out for alt in alternatives for out in expand_braces(head + alt + tail)]
    return [pattern]


def _brace_alternatives(body: str) -> list[str] | None:
    parts, depth, last = [], 0, 0
    for i, ch in enumerate(body):
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append(body[last:i])
            last = i + 1
    if parts:
        return [*parts, body[last:]]
    bounds = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if bounds is None:
        return None
    lo_text, hi_text = bounds.groups()
    lo, hi = int(lo_text), int(hi_text)
    # As bash: pad to the wider bound when either is written with a leading zero.
    padded = any(len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0") for s in (lo_text, hi_text))
    width = max(len(lo_text), len(hi_text)) if padded else 0
    step = 1 if hi >= lo else -1
    return [f"{n:0{width}d}" for n in range(lo, hi + step, step)]


def expand_inputs(patterns: Sequence[str | Path]) -> list[Path]:
    """The shard files named by `patterns` (brace-expanded, then globbed), in order, without repeats.

    Raises:
        FileNotFoundError: a pattern matches nothing, or a brace-expanded name does not exist.
        ValueError: a file has no known shard extension.
    """
    paths: list[Path] = []
    for pattern in map(str, patterns):
        found: list[str] = []
        for name in expand_braces(pattern):
            if glob.has_magic(name):
                found += sorted(glob.glob(name))
            elif os.path.isfile(name):
                found.append(name)
            else:
                raise FileNotFoundError(f"input {name}" + (f" (from {pattern})" if name != pattern else "")
                                        + " does not exist")
        if not found:
            raise FileNotFoundError(f"input {pattern} matches no file")
        paths += map(Path, found)
    for path in paths:
        shard_format(path)
    return list(dict.fromkeys(paths))


def shard_suffix(path: str | Path) -> str:
    """The format extension of a shard name (`.jsonl.gz` counts as one)."""
    name = Path(path).name
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    known = ", ".join(FORMATS)
    raise ValueError(f"input {path}: unknown shard format; name it with one of the extensions {known}")


def shard_format(path: str | Path) -> str:
    """'jsonl', 'parquet' or 'tar'."""
    return FORMATS[shard_suffix(path)]


# ---------------------------------------------------------------------------------------------
# Reading


class BadRecords:
    """Counts malformed input records and remembers the first few, for the summary.

    `duplicate_keys` counts the tar samples skipped because an earlier sample of their shard had the
    same key (see `_tar_samples`); they are not bad records.
    """

    def __init__(self, keep: int = BAD_EXAMPLES_KEPT):
        self.count = 0
        self.examples: list[dict[str, Any]] = []
        self.duplicate_keys = 0
        self._keep = keep

    def add(self, path: Path, position: int, reason: str, where: str = "line", n: int = 1,
            offset: int | None = None) -> None:
        """Count `n` bad records at `position` ("line" for JSONL (1-based), "row" or "sample" (0-based));
        `offset`: the byte in the file where a corrupt tar header starts."""
        self.count += n
        if len(self.examples) < self._keep:
            example = {"file": str(path), where: position, "reason": reason}
            self.examples.append(example if offset is None else {**example, "offset": offset})


@dataclass
class Batch:
    """Usable records of one shard, aligned: `index[i]`, `texts[i]`, `keys[i]` and item i of `items`.

    `keys` are the records' identities (uuid/id field, or tar sample key; None without one). `items`
    is what the writer needs: records (JSONL), an Arrow table (Parquet), `Sample`s (tar).
    """

    index: np.ndarray
    texts: list[str]
    keys: list[str | None]
    items: Any


def record_identity(record: dict[str, Any]) -> str | None:
    """A record's uuid or id field as a string; None when it has neither (or only a list/object)."""
    for field in KEY_FIELDS:
        value = record.get(field)
        if value is not None and not isinstance(value, (dict, list)):
            return str(value)
    return None


def record_key(record: dict[str, Any], fallback: str) -> str:
    """A record's ``key`` field, else its uuid/id (`record_identity`), else `fallback` (its place in the shard)."""
    key = record.get("key")
    return str(key) if key is not None else record_identity(record) or fallback


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def read_records(path: str | Path, text_field: str | None = "text",
                 bad: BadRecords | None = None) -> Iterator[tuple[int, dict[str, Any], str]]:
    """Yield (line number, record, text) for each usable line of a JSONL file (`.gz` too).

    Lines that are not UTF-8 JSON objects with a string `text_field` are skipped and counted in
    `bad`; blank lines are skipped silently. `text_field=None`: every JSON object, text "".
    """
    path = Path(path)
    with _open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            reason = None
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                reason = "not UTF-8"
            except json.JSONDecodeError as e:
                reason = f"bad JSON: {e.msg}"
            else:
                if not isinstance(record, dict):
                    reason = "not a JSON object"
                elif text_field is None:
                    pass
                elif text_field not in record:
                    reason = f"no {text_field!r} field"
                elif not isinstance(record[text_field], str):
                    reason = f"{text_field!r} is not a string"
            if reason is not None:
                if bad is not None:
                    bad.add(path, line_no, reason)
                continue
            yield line_no, record, "" if text_field is None else record[text_field]


def _read_jsonl(path: Path, text_field: str | None, bad: BadRecords, batch_size: int) -> Iterator[Batch]:
    index: list[int] = []
    records: list[dict[str, Any]] = []
    texts: list[str] = []
    for line_no, record, text in read_records(path, text_field, bad):
        index.append(line_no - 1)
        records.append(record)
        texts.append(text)
        if len(records) == batch_size:
            yield Batch(np.asarray(index, dtype=np.int64), texts, [record_identity(r) for r in records], records)
            index, records, texts = [], [], []
    if records:
        yield Batch(np.asarray(index, dtype=np.int64), texts, [record_identity(r) for r in records], records)


def _read_parquet(path: Path, text_field: str | None, bad: BadRecords, batch_size: int) -> Iterator[Batch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"input {path} is not a readable Parquet file ({e})") from None
    names = parquet.schema_arrow.names
    key_field = next((f for f in KEY_FIELDS if f in names), None)
    first_row = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        try:
            table = parquet.read_row_group(group)
        except (OSError, pa.ArrowException) as e:
            bad.add(path, first_row, f"unreadable row group {group} ({rows} rows): {e}", "row", rows)
            first_row += rows
            continue
        if text_field is not None and text_field not in names:
            bad.add(path, first_row, f"no {text_field!r} column", "row", rows)
            first_row += rows
            continue
        for start in range(0, rows, batch_size):
            chunk = table.slice(start, batch_size)
            texts = [""] * chunk.num_rows if text_field is None else chunk.column(text_field).to_pylist()
            usable = [i for i, text in enumerate(texts) if isinstance(text, str)]
            for i in sorted(set(range(len(texts))) - set(usable)):
                reason = f"{text_field!r} is null" if texts[i] is None else f"{text_field!r} is not a string"
                bad.add(path, first_row + start + i, reason, "row")
            if not usable:
                continue
            kept = chunk.take(pa.array(usable, type=pa.int64()))
            if key_field is None:
                keys: list[str | None] = [None] * len(usable)
            else:
                keys = [record_identity({key_field: v}) for v in kept.column(key_field).to_pylist()]
            index = first_row + start + np.asarray(usable, dtype=np.int64)
            yield Batch(index, [texts[i] for i in usable], keys, kept)
        first_row += rows


@dataclass
class Member:
    """One tar member: its name, its content and its raw bytes (headers, content, padding) as archived;
    `offset` is where its content starts in the file."""

    name: str
    data: bytes
    raw: bytes
    mtime: int
    offset: int = 0


@dataclass
class Sample:
    """One WebDataset sample: its key and its members, in archive order."""

    key: str
    members: list[Member]


def split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) of a WebDataset member: the split is at the first dot of the basename."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def sample_value(sample: Sample, field: str) -> tuple[Any, str | None]:
    """Field `field` of a sample: member ``<key>.<field>`` as UTF-8 text, else field `field` of the ``.json``
    member (any JSON value: a string, or e.g. a list of alt-texts).

    Returns (value, None); (None, None) when the sample has neither (or the field is null); (None, why)
    when the member that would hold it is unreadable (not UTF-8, bad JSON).
    """
    by_ext = {split_member_name(m.name)[1]: m.data for m in sample.members}
    if field in by_ext:
        try:
            return by_ext[field].decode("utf-8"), None
        except UnicodeDecodeError:
            return None, f"member .{field} is not UTF-8"
    if "json" not in by_ext:
        return None, None
    try:
        record = json.loads(by_ext["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"bad .json member: {e}"
    return (record.get(field) if isinstance(record, dict) else None), None


def sample_text(sample: Sample, text_field: str) -> tuple[str | None, str | None]:
    """(text, None), or (None, reason it is unusable); see the module docstring for the rule."""
    value, problem = sample_value(sample, text_field)
    if isinstance(value, str):
        return value, None
    if problem is not None:
        return None, problem
    if value is None:
        return None, f"no .{text_field} member and no {text_field!r} in the .json member"
    return None, f"{text_field!r} in the .json member is not a string"


BLOCK = 512
FILE_TYPES = (b"0", b"\0", b"7")  # regular files; directories, links and devices carry no sample data
EXTENSION_TYPES = (b"x", b"g", b"L", b"K")  # PAX (per member, global), GNU long name, GNU long link name


class TarFormatError(ValueError):
    """A truncated or corrupt tar archive; `offset` is the byte where the broken header starts, `name` the
    broken member's name when its header could still be read (its data is what is missing)."""

    def __init__(self, message: str, offset: int, name: str | None = None):
        super().__init__(message)
        self.offset, self.name = offset, name


def _tar_number(field: bytes, offset: int) -> int:
    if field[:1] == b"\x80":  # GNU base-256, for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    if not re.fullmatch(rb"[0-7]*", digits):
        raise TarFormatError(f"bad number field {field!r}", offset)
    return int(digits, 8) if digits else 0


def _tar_string(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


_PAX_LENGTH = re.compile(rb"(\d{1,20}) ")


def _pax_records(data: bytes, offset: int) -> dict[bytes, bytes]:
    """The records of a PAX extended header, each "<length> <key>=<value>\\n" (length counts the whole record)."""
    records, pos = {}, 0
    while pos < len(data) and data[pos]:  # NUL padding may follow the last record
        found = _PAX_LENGTH.match(data, pos)
        length = int(found.group(1)) if found else 0
        record_end = pos + length - 1  # where its newline is
        key, equals, value = data[found.end():record_end].partition(b"=") if found else (b"", b"", b"")
        # At least "5 k=" and a newline: each record moves on, so no length (0, negative, overlong) can loop.
        if length < 5 or record_end >= len(data) or data[record_end] != 0x0A or not key or not equals:
            raise TarFormatError(f"bad PAX record at byte {pos} of an extended header", offset)
        records[key] = value
        pos += length
    return records


def _tar_members(f: IO[bytes]) -> Iterator[Member]:
    """The regular-file members of a tar stream with their raw bytes.

    Python's tarfile parses a header in ~40 us; this reads POSIX ustar, PAX (`path`, `size`) and GNU
    long-name headers in a few, and keeps every member's bytes so a writer can copy them unchanged.
    Every header moves on by at least one block or raises `TarFormatError` (naming its offset): a
    corrupt archive never makes it loop, and sizes are checked against the file before reading.
    """
    offset = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(offset)
    pending, start = b"", offset  # extension headers (PAX, GNU long name) of the next member, where they start
    pax: dict[bytes, bytes] = {}
    long_name: str | None = None
    while True:
        header = f.read(BLOCK)
        if not header or header == bytes(BLOCK):  # end of archive (zero blocks, or a clean end without them)
            if pending:
                raise TarFormatError("the archive ends after an extended header, before its member", start)
            return
        if len(header) < BLOCK:
            raise TarFormatError("unexpected end of data in a header", offset)
        checksum = sum(header[:148]) + 8 * 32 + sum(header[156:])
        if checksum != _tar_number(header[148:156], offset):
            raise TarFormatError("header checksum mismatch", offset)
        kind = header[156:157]
        size = _tar_number(header[124:136], offset)
        if b"size" in pax and kind not in EXTENSION_TYPES:  # a PAX size (decimal) overrides the header's
            if not re.fullmatch(rb"\d{1,20}", pax[b"size"]):
                raise TarFormatError(f"bad PAX size {pax[b'size']!r}", offset)
            size = int(pax[b"size"])
        data_offset = offset + BLOCK
        name = None
        if kind not in EXTENSION_TYPES:
            name = _tar_string(header[:100])
            if header[257:263] == b"ustar\0" and header[345]:  # POSIX prefix field
                name = f"{_tar_string(header[345:500])}/{name}"
            name = long_name or name
        if size > end - data_offset:
            raise TarFormatError(f"a member of {size} bytes runs past the end of the file", offset, name)
        body = f.read(-(-size // BLOCK) * BLOCK)  # the last member's padding may be missing
        data = body[:size]
        if kind in EXTENSION_TYPES:
            start = start if pending else offset
            pending += header + body
            if kind == b"x":
                pax = _pax_records(data, offset)
                long_name = pax[b"path"].decode("utf-8", "surrogateescape") if b"path" in pax else long_name
            elif kind == b"L":
                long_name = _tar_string(data)
            offset = data_offset + len(body)
            continue
        raw, pending, pax, long_name = pending + header + body, b"", {}, None
        if kind in FILE_TYPES:
            yield Member(name, data, raw, _tar_number(header[136:148], offset), data_offset)
        offset = data_offset + len(body)


def _utf8(name: str) -> bool:
    """Whether a name decoded with surrogateescape was valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _tar_samples(path: Path, bad: BadRecords) -> Iterator[tuple[int, Sample]]:
    """(position, sample) in archive order, a sample being a run of consecutive members sharing a key.

    A later sample whose key an earlier sample of the shard already had is skipped (the first wins) and
    counted in `bad.duplicate_keys`; it keeps its position, so positions are places in the archive. A
    sample whose key is not UTF-8 is a bad record. A truncated or corrupt archive ends the shard: the
    sample being read is one bad record naming the byte offset of the broken header (a sample whose
    members were all read is kept when the broken member's header names another key).
    """
    current: Sample | None = None
    position, seen, skipping = 0, set(), False
    try:
        with path.open("rb") as f:
            for member in _tar_members(f):
                key, _ = split_member_name(member.name)
                if current is not None and key != current.key:
                    if not skipping:
                        yield position, current
                    position += 1
                    current = None
                if current is None:
                    current, skipping = Sample(key, []), key in seen
                    if skipping:
                        bad.duplicate_keys += 1
                    elif not _utf8(key):  # it could not be written to JSON outputs (index, captions)
                        bad.add(path, position, f"member name {key!r} is not UTF-8", "sample",
                                offset=member.offset - BLOCK)
                        skipping = True
                    seen.add(key)
                if not skipping:
                    current.members.append(member)
    except TarFormatError as e:
        if current is not None and e.name is not None and split_member_name(e.name)[0] != current.key:
            if not skipping:  # complete: the broken member starts the next sample
                yield position, current
            position += 1
        bad.add(path, position, f"truncated or corrupt tar at byte {e.offset} ({e}); the rest of the shard "
                "is skipped", "sample", offset=e.offset)
        return
    if current is not None and not skipping:
        yield position, current


def _read_tar(path: Path, text_field: str | None, bad: BadRecords, batch_size: int) -> Iterator[Batch]:
    index: list[int] = []
    samples: list[Sample] = []
    texts: list[str] = []
    for position, sample in _tar_samples(path, bad):
        text, reason = ("", None) if text_field is None else sample_text(sample, text_field)
        if text is None:
            bad.add(path, position, reason, "sample")
            continue
        index.append(position)
        samples.append(sample)
        texts.append(text)
        if len(samples) == batch_size:
            yield Batch(np.asarray(index, dtype=np.int64), texts, [s.key for s in samples], samples)
            index, samples, texts = [], [], []
    if samples:
        yield Batch(np.asarray(index, dtype=np.int64), texts, [s.key for s in samples], samples)


_READERS = {"jsonl": _read_jsonl, "parquet": _read_parquet, "tar": _read_tar}


def read_batches(path: str | Path, text_field: str | None, bad: BadRecords,
                 batch_size: int = BATCH_SIZE) -> Iterator[Batch]:
    """The usable records of one shard, `batch_size` at a time; malformed ones are counted in `bad`.

    `text_field=None` yields every record that parses, whether or not it has a text.
    """
    path = Path(path)
    return _READERS[shard_format(path)](path, text_field, bad, batch_size)


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class AddedField:
    """The value a writer adds to each record: JSONL field / Parquet column `name` of Arrow type
    `arrow_type(pyarrow)`, tar member `<key>.<tar_extension>` holding `tar_payload(value)`."""

    name: str
    arrow_type: Callable[[Any], Any]
    tar_extension: str
    tar_payload: Callable[[Any], bytes]


METACLIP_ENTRIES = AddedField(ENTRIES_FIELD, lambda pa: pa.list_(pa.int64()), "metaclip.json",
                              lambda ids: json.dumps({ENTRIES_FIELD: ids}).encode())


class ShardWriter:
    """Writes kept records to a temp file beside `target`; `commit()` renames it into place.

    Used as a context manager: leaving the block by an exception removes the temp file.
    """

    def __init__(self, target: Path, field: AddedField = METACLIP_ENTRIES):
        self.target, self.field = target, field
        self.tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")

    def write(self, batch: Batch, kept: np.ndarray, entries: list[Any]) -> None:
        """Write the records at positions `kept` of `batch`, each with its value of the added field
        (MetaCLIP: its matched entry ids)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self.close()
        os.replace(self.tmp, self.target)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.close()
            self.tmp.unlink(missing_ok=True)


class _JsonlWriter(ShardWriter):
    def __init__(self, target: Path, gz: bool, field: AddedField = METACLIP_ENTRIES):
        super().__init__(target, field)
        self._raw = self.tmp.open("wb")
        # mtime=0 and no file name in the gzip header: the same records always give the same bytes.
        binary = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0) if gz else self._raw
        self._out = io.TextIOWrapper(binary, encoding="utf-8")

    def write(self, batch: Batch, kept: np.ndarray, entries: list[Any]) -> None:
        for pos, value in zip(kept.tolist(), entries):
            record = dict(batch.items[pos])
            record[self.field.name] = value
            self._out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._out.close()
        self._raw.close()  # GzipFile leaves a file object it was given open


class _IndexWriter(_JsonlWriter):
    def write(self, batch: Batch, kept: np.ndarray, entries: list[list[int]]) -> None:
        for pos, ids in zip(kept.tolist(), entries):
            line = {"index": int(batch.index[pos]), "key": batch.keys[pos], "entries": ids}
            self._out.write(json.dumps(line, ensure_ascii=False) + "\n")


class _ParquetWriter(ShardWriter):
    def __init__(self, target: Path, source: Path, field: AddedField = METACLIP_ENTRIES):
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(target, field)
        schema = pq.read_schema(source)
        if field.name in schema.names:  # a pool curated (captioned) before: its old values are replaced
            schema = schema.remove(schema.get_field_index(field.name))
        self._type = field.arrow_type(pa)
        self._schema = schema.append(pa.field(field.name, self._type))
        self._out = pq.ParquetWriter(self.tmp, self._schema)

    def write(self, batch: Batch, kept: np.ndarray, entries: list[Any]) -> None:
        import pyarrow as pa

        table = batch.items.take(pa.array(kept, type=pa.int64()))
        if self.field.name in table.column_names:
            table = table.drop_columns([self.field.name])
        table = table.append_column(self.field.name, pa.array(entries, type=self._type))
        self._out.write_table(table.cast(self._schema))

    def close(self) -> None:
        if self._out.is_open:
            self._out.close()


class _TarWriter(ShardWriter):
    def __init__(self, target: Path, field: AddedField = METACLIP_ENTRIES):
        super().__init__(target, field)
        self._out = self.tmp.open("wb")

    def write(self, batch: Batch, kept: np.ndarray, entries: list[Any]) -> None:
        for pos, value in zip(kept.tolist(), entries):
            sample: Sample = batch.items[pos]
            for member in sample.members:
                self._out.write(member.raw)  # headers and content as in the input
            if value is None:
                continue
            payload = self.field.tar_payload(value)
            info = tarfile.TarInfo(f"{sample.key}.{self.field.tar_extension}")
            info.size, info.mode, info.mtime = len(payload), 0o644, sample.members[0].mtime
            self._out.write(info.tobuf(tarfile.PAX_FORMAT) + payload + bytes(-len(payload) % BLOCK))

    def close(self) -> None:
        if not self._out.closed:
            self._out.write(bytes(2 * BLOCK))  # end-of-archive marker
        self._out.close()


OUTPUT_FORMATS = ("same", "index")


def output_suffix(path: Path, output_format: str) -> str:
    """The extension of a shard's curated file: the input's, or `.index.jsonl`."""
    return ".index.jsonl" if output_format == "index" else shard_suffix(path)


def open_writer(target: Path, source: Path, output_format: str,
                field: AddedField = METACLIP_ENTRIES) -> ShardWriter:
    """A writer of kept records of shard `source` into `target`, in the input's format (adding `field`)
    or as a MetaCLIP index."""
    if output_format == "index":
        return _IndexWriter(target, gz=False)
    fmt = shard_format(source)
    if fmt == "jsonl":
        return _JsonlWriter(target, gz=source.name.endswith(".gz"), field=field)
    if fmt == "parquet":
        return _ParquetWriter(target, source, field)
    return _TarWriter(target, field)
