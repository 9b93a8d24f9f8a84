"""Readers of the evaluation files of retrieval and sound event detection: caption manifests and strong labels.

Caption manifests (:func:`read_caption_manifest`), by suffix:

* ``.csv`` / ``.tsv``: a header row, then one row per item or per caption. AudioCaps
  (``audiocap_id,youtube_id,start_time,caption``: one caption per row, rows grouped by ``youtube_id``) and
  Clotho (``file_name,caption_1,...,caption_5``: every caption of an item in one row) both read as is.
* ``.jsonl`` / ``.jsonl.gz`` (read by :func:`percli.core.data.shards.read_records`) and ``.json`` (a list
  of objects, or MSR-VTT's ``{"sentences": [...]}``): ``{"video": ..., "caption": "..."}`` per caption or
  ``{"audio": ..., "captions": [...]}`` per item (VALOR, MSR-VTT, percli's ``captions.jsonl``).

The media column is the first of :data:`MEDIA_KEYS` in the header (or the first object), the captions
the first present of ``caption``, ``captions``, ``caption_<N>`` (all of them, by N), ``text``,
``sentence``; ``media_key=`` / ``caption_keys=`` choose them instead. Rows sharing a media value are one
item (items keep first-appearance order). Values of a path column (:data:`PATH_KEYS`, or a
``media_key`` outside :data:`ID_KEYS`) are resolved against the manifest's folder; ids (``youtube_id``,
``video_id``, ``id``, VATEX's ``videoID``) are kept verbatim for the caller to map onto files.

Bad input is counted, never fatal (unless nothing usable is left): a row without a media value, without
any of the caption columns (JSON), with a caption that is neither text nor a list of texts, or with
fewer/more cells than the header (a truncated line; an unquoted comma in a caption) is a bad row,
listed with its line (JSONL, CSV) or item index (JSON) in ``bad_examples`` as
:class:`~percli.core.data.shards.BadRecords` does. Blank captions are dropped, a caption repeated for the
same item is kept once, an item left without captions is dropped; each is counted in ``counts``.

Strong labels (:func:`read_strong_labels`): tab-separated ``file, onset, offset, label`` rows in seconds,
the AudioSet-Strong layout (``segment_id start_time_seconds end_time_seconds label``) or DESED's
(``filename onset offset event_label``), with or without a header. DESED rows with neither onset nor
offset (a weak label or a clip without events) are skipped and counted; a row with an onset that is not
a number, a negative onset, an offset <= onset, a missing column or commas instead of tabs is a bad
row; an exact repeat of an event is kept once. Text is UTF-8, with or without a byte-order mark, LF or CRLF line ends.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percli.core.data.paths import resolve_manifest_path
from percli.core.data.shards import BadRecords, read_records

PATH_KEYS = ("path", "file", "file_name", "audio", "video")
ID_KEYS = ("youtube_id", "video_id", "id", "videoID")  # videoID: VATEX
MEDIA_KEYS = PATH_KEYS + ID_KEYS
CAPTION_KEYS = ("caption", "captions", "caption_<N>", "text", "sentence")  # "caption_<N>": every numbered one
_NUMBERED_CAPTION = re.compile(r"caption_(\d+)")
STRONG_LABEL_HEADERS = {  # column -> the header names each layout gives it
    "file": ("segment_id", "filename", "file", "file_name"),
    "onset": ("start_time_seconds", "onset", "start_time", "start"),
    "offset": ("end_time_seconds", "offset", "end_time", "end"),
    "label": ("label", "event_label"),
}
Records = Iterator[tuple[str, int, dict[str, Any]]]  # (where: "line" | "item", position, record)


def _decode(path: Path) -> str:
    """The file's text (UTF-8, a byte-order mark dropped); a clear error for other encodings."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start} cannot be decoded): save it as UTF-8") from None


# ---------------------------------------------------------------------------------------------
# Caption manifests


@dataclass
class CaptionManifest:
    """Items and their captions, aligned for retrieval.

    Attributes:
        items: Each item's media path (relative ones joined onto ``media_root``, by default the manifest's
            folder) or, from an id column, its id.
        captions: Every kept caption, item by item, in reading order.
        caption_item: [len(captions)] index into ``items`` of each caption's item.
        extras: Column -> one value per item (its first row's), for the ``extra_keys`` asked for.
        counts: ``rows``, ``bad_rows``, ``empty_captions``, ``duplicate_captions``,
            ``items_without_captions``, ``items``, ``captions`` (for ``summary.json``).
        bad_examples: The first bad rows, ``{"file", "line" | "item", "reason"}``.
        media_key: The column the items were read from.
    """

    items: list[str]
    captions: list[str]
    caption_item: list[int]
    extras: dict[str, list[Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    bad_examples: list[dict[str, Any]] = field(default_factory=list)
    media_key: str = ""


def _csv_rows(path: Path, bad: BadRecords) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    """Header and (line, row) pairs of a CSV/TSV; rows whose cell count differs from the header's are bad."""
    text = _decode(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    header = next(reader, None)
    while header is not None and not any(cell.strip() for cell in header):  # blank lines before the header
        header = next(reader, None)
    if header is None:
        raise ValueError(f"{path} is empty: a caption manifest needs a header row and at least one caption")
    header = [cell.strip() for cell in header]

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                why = "truncated row?" if len(cells) < len(header) else "an unquoted delimiter inside a caption?"
                bad.add(path, reader.line_num, f"{len(cells)} cells for {len(header)} header columns ({why})")
                continue
            yield reader.line_num, dict(zip(header, cells))

    return header, rows()


def _json_records(path: Path, bad: BadRecords) -> list[tuple[str, int, dict[str, Any]]]:
    """(where, position, object) of a JSON list, JSONL or JSONL.gz manifest; non-objects are counted bad."""
    if path.name.lower().endswith((".jsonl", ".jsonl.gz")):
        return [("line", line, record) for line, record, _ in read_records(path, None, bad)]
    try:
        data = json.loads(_decode(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); a manifest "
                         "with one object per line must be named .jsonl") from None
    if isinstance(data, dict) and isinstance(data.get("sentences"), list):
        data = data["sentences"]  # MSR-VTT's train_val_videodatainfo.json
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of objects (or MSR-VTT's {{\"sentences\": [...]}}), "
                         f"got a {type(data).__name__}")
    out = []
    for index, record in enumerate(data):
        if isinstance(record, dict):
            out.append(("item", index, record))
        else:
            bad.add(path, index, f"not a JSON object ({type(record).__name__})", where="item")
    return out


def _choose_media_key(path: Path, columns: Sequence[str], media_key: str | None) -> str:
    if media_key is not None:
        if media_key not in columns:
            raise ValueError(f"{path}: media_key {media_key!r} is not a column; columns: {', '.join(columns)}")
        return media_key
    for key in MEDIA_KEYS:
        if key in columns:
            return key
    raise ValueError(f"{path}: no media column among {', '.join(columns) or 'none'}; expected one of "
                     f"{', '.join(MEDIA_KEYS)}, or name it with media_key=")


def _choose_caption_keys(path: Path, columns: Sequence[str], caption_keys: Sequence[str] | None) -> list[str]:
    if caption_keys is not None:
        missing = [key for key in caption_keys if key not in columns]
        if missing or not caption_keys:
            raise ValueError(f"{path}: caption_keys {list(caption_keys)} are not all columns (missing "
                             f"{missing}); columns: {', '.join(columns)}")
        return list(caption_keys)
    numbered = sorted((int(m.group(1)), c) for c in columns if (m := _NUMBERED_CAPTION.fullmatch(c)))
    for key in CAPTION_KEYS:
        if key == "caption_<N>" and numbered:
            return [c for _, c in numbered]
        if key in columns:
            return [key]
    raise ValueError(f"{path}: no caption column among {', '.join(columns) or 'none'}; expected one of "
                     f"{', '.join(CAPTION_KEYS)}, or name them with caption_keys=")


def _cell_captions(value: Any) -> list[str] | None:
    """The captions a cell holds (a text, a list of texts, or null for none); None when it is neither."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) or v is None for v in value):
        return [v or "" for v in value]
    return None


def _open_manifest(path: Path, bad: BadRecords) -> tuple[Sequence[str], Records]:
    """The columns (CSV header, or the first JSON object's keys) and the records of a manifest, by suffix."""
    name = path.name.lower()
    if name.endswith((".csv", ".tsv")):
        header, rows = _csv_rows(path, bad)
        return header, (("line", line, row) for line, row in rows)
    if name.endswith((".json", ".jsonl", ".jsonl.gz")):
        records = _json_records(path, bad)
        if not records:
            raise ValueError(f"{path} holds no JSON object ({bad.count} bad line(s)): nothing to evaluate")
        return list(records[0][2]), iter(records)
    raise ValueError(f"{path}: unknown manifest type; use .csv, .tsv, .json, .jsonl or .jsonl.gz")


def _group_by_item(path: Path, records: Records, media_key: str, caption_keys: Sequence[str],
                   extra_keys: Sequence[str], bad: BadRecords,
                   counts: dict[str, int]) -> dict[str, tuple[dict[str, None], dict[str, Any]]]:
    """Media value -> (its captions as an ordered set, its extra values), in first-appearance order;
    bad rows go to `bad`, blank and repeated captions and good rows to `counts`."""
    items: dict[str, tuple[dict[str, None], dict[str, Any]]] = {}
    for where, position, record in records:
        media = record.get(media_key)
        if isinstance(media, int) and not isinstance(media, bool):
            media = str(media)  # numeric ids in JSON
        if not isinstance(media, str) or not media.strip():
            bad.add(path, position, f"no {media_key!r} value", where=where)
            continue
        if not any(key in record for key in caption_keys):
            bad.add(path, position, f"none of the caption columns {list(caption_keys)}", where=where)
            continue
        cells = [_cell_captions(record.get(key)) for key in caption_keys]
        if any(cell is None for cell in cells):
            bad.add(path, position, f"a caption in {list(caption_keys)} is not a text or a list of texts",
                    where=where)
            continue
        counts["good_rows"] += 1
        kept, _ = items.setdefault(media.strip(), ({}, {key: record.get(key) for key in extra_keys}))
        for caption in (c.strip() for cell in cells for c in cell):
            if not caption:
                counts["empty_captions"] += 1
            elif caption in kept:
                counts["duplicate_captions"] += 1
            else:
                kept[caption] = None
    return items


def read_caption_manifest(path: str | Path, media_key: str | None = None, caption_keys: Sequence[str] | None = None,
                          extra_keys: Sequence[str] = (), media_root: str | Path | None = None) -> CaptionManifest:
    """Read a caption manifest (layouts, detection and bad-input rules in the module docstring).

    Args:
        path: ``.csv``, ``.tsv``, ``.json``, ``.jsonl`` or ``.jsonl.gz`` file.
        media_key: Column holding the item (path or id); detected when None.
        caption_keys: Columns holding captions (each a text or, in JSON, a list of texts); detected when None.
        extra_keys: Further per-item columns to keep in ``extras`` (e.g. AudioCaps' ``start_time``).
        media_root: Folder relative media paths are joined onto; the manifest's folder when None (Clotho's
            CSVs sit beside, not inside, their audio folder).

    Raises:
        ValueError: for an unknown suffix, an empty or undecodable file, missing columns, or no usable caption.
    """
    path = Path(path)
    bad = BadRecords()
    columns, records = _open_manifest(path, bad)
    media_key = _choose_media_key(path, columns, media_key)
    caption_keys = _choose_caption_keys(path, columns, caption_keys)
    missing_extras = [key for key in extra_keys if key not in columns]
    if missing_extras:
        raise ValueError(f"{path}: extra_keys {missing_extras} are not columns; columns: {', '.join(columns)}")
    counts = dict.fromkeys(("good_rows", "empty_captions", "duplicate_captions", "items_without_captions"), 0)
    grouped = _group_by_item(path, records, media_key, caption_keys, extra_keys, bad, counts)
    manifest = CaptionManifest(items=[], captions=[], caption_item=[], extras={key: [] for key in extra_keys},
                               media_key=media_key)
    base = path.parent if media_root is None else Path(media_root)
    for media, (captions, extras) in grouped.items():
        if not captions:
            counts["items_without_captions"] += 1
            continue
        manifest.caption_item += [len(manifest.items)] * len(captions)
        manifest.captions += list(captions)
        manifest.items.append(media if media_key in ID_KEYS else resolve_manifest_path(base, media))
        for key in extra_keys:
            manifest.extras[key].append(extras[key])
    manifest.counts = {"rows": counts.pop("good_rows") + bad.count, "bad_rows": bad.count, **counts,
                       "items": len(manifest.items), "captions": len(manifest.captions)}
    manifest.bad_examples = bad.examples
    if not manifest.captions:
        first = f"; first bad row: {bad.examples[0]}" if bad.examples else ""
        raise ValueError(f"{path}: no usable caption ({manifest.counts['rows']} rows, {bad.count} bad, "
                         f"{counts['empty_captions']} empty captions){first}")
    return manifest


# ---------------------------------------------------------------------------------------------
# Strong labels


@dataclass(frozen=True)
class Event:
    """One labelled sound event: ``file`` (clip name or segment id), ``onset`` <= ``offset`` in seconds, ``label``."""

    file: str
    onset: float
    offset: float
    label: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.onset) and math.isfinite(self.offset) and 0 <= self.onset <= self.offset):
            raise ValueError(f"event {self.label!r} in {self.file!r} needs 0 <= onset <= offset (finite seconds), "
                             f"got onset {self.onset} and offset {self.offset}")


@dataclass
class StrongLabels:
    """Events of a strong-label file.

    Attributes:
        events: Kept events, in file order.
        files: Every file the labels name, in first-appearance order, including files whose rows carry
            no event (DESED's empty rows): they are scored too, as clips without events.
        counts: ``rows``, ``bad_rows``, ``untimed_rows`` (no onset/offset), ``duplicate_events``, ``events``.
        bad_examples: The first bad rows, ``{"file", "line", "reason"}``.
    """

    events: list[Event]
    files: list[str]
    counts: dict[str, int]
    bad_examples: list[dict[str, Any]]


def _is_header(cells: list[str]) -> bool:
    """Whether a first line is a header: its onset cell holds text that is not a number."""
    if len(cells) < 2 or not cells[1].strip():
        return False
    try:
        float(cells[1])
    except ValueError:
        return True
    return False


def _header_positions(path: Path, cells: list[str]) -> dict[str, int]:
    """Column -> position in a header row, by the names of :data:`STRONG_LABEL_HEADERS`."""
    names = [cell.strip().lower() for cell in cells]
    positions = {}
    for column, aliases in STRONG_LABEL_HEADERS.items():
        found = [i for i, name in enumerate(names) if name in aliases]
        if not found:
            raise ValueError(f"{path}: line 1 looks like a header but names no {column} column "
                             f"({', '.join(aliases)}); got {cells}. Expected AudioSet-Strong "
                             "(segment_id, start_time_seconds, end_time_seconds, label) or DESED "
                             "(filename, onset, offset, event_label) columns, tab-separated")
        positions[column] = found[0]
    return positions


def read_strong_labels(path: str | Path) -> StrongLabels:
    """Read an AudioSet-Strong or DESED strong-label TSV (rules in the module docstring).

    Raises:
        ValueError: for an empty or undecodable file, an unrecognised header, or a file without any event.
    """
    path = Path(path)
    bad = BadRecords()
    lines = [(number, line) for number, line in enumerate(_decode(path).splitlines(), start=1) if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty: expected tab-separated file, onset, offset, label rows")
    first = lines[0][1].split("\t")
    if _is_header(first):
        columns, lines = _header_positions(path, first), lines[1:]
    else:
        columns = {"file": 0, "onset": 1, "offset": 2, "label": 3}
    width = max(columns.values()) + 1
    counts = dict.fromkeys(("rows", "bad_rows", "untimed_rows", "duplicate_events"), 0)
    events: dict[Event, None] = {}  # ordered set
    files: dict[str, None] = {}
    for number, line in lines:
        counts["rows"] += 1
        cells = [cell.strip() for cell in line.split("\t")]
        if len(cells) == 1 and "," in cells[0]:
            bad.add(path, number, "no tab but commas: strong labels must be tab-separated")
            continue
        cells += [""] * (width - len(cells))  # a clip without events may come with its trailing tabs left off
        file, onset, offset, label = (cells[columns[c]] for c in ("file", "onset", "offset", "label"))
        if not file:
            bad.add(path, number, "no file name")
            continue
        if not onset and not offset:
            files[file] = None
            counts["untimed_rows"] += 1
            continue
        reason = _event_row_problem(onset, offset, label, len(line.split("\t")), width)
        if reason is not None:
            bad.add(path, number, reason)
            continue
        files[file] = None
        event = Event(file, float(onset), float(offset), label)
        if event in events:
            counts["duplicate_events"] += 1
        events[event] = None
    counts["bad_rows"], counts["events"] = bad.count, len(events)
    if not events:
        first = f"; first bad row: {bad.examples[0]}" if bad.examples else ""
        raise ValueError(f"{path}: no event with an onset and offset ({counts['rows']} rows, {bad.count} bad){first}")
    return StrongLabels(list(events), list(files), counts, bad.examples)


def _event_row_problem(onset: str, offset: str, label: str, cell_count: int, width: int) -> str | None:
    """Why a timed row is not an event (None when it is one)."""
    if cell_count < width:
        return f"{cell_count} tab-separated cells, expected {width} (truncated line, or not tab-separated?)"
    try:
        start, end = float(onset), float(offset)
    except ValueError:
        return f"onset {onset!r} or offset {offset!r} is not a number of seconds"
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        return f"onset {onset} / offset {offset} must be finite and onset >= 0"
    if end <= start:
        return f"offset {offset} is not after onset {onset}"
    if not label:
        return "no label"
    return None
