"""Readers of the PLM-VideoBench annotation files (Cho et al., 2025; hub data set ``facebook/PLM-VideoBench``).

The five tasks ship as JSONL (``fgqa/plm_fgqa_test.jsonl``, ``rtloc/plm_rtloc_test.jsonl``, ...) and as Parquet
(the hub's ``datasets`` configs); both read here, plus a ``.json`` list of the same objects. Field names are
the ones lmms-eval's task code reads (``lmms_eval/tasks/plm_videobench/*/*_utils.py``) and the hub card lists:

* ``fgqa``: ``uid``, ``qa_uid`` (the question group scored by MBAcc), ``video``, ``question``, ``answer`` (the
  text of the right option), ``options`` (``{"option_0": text, "option_1": text, ...}``; a list of texts is
  accepted too), optional ``answer_index`` and ``metadata`` (source video, times, question type). As in
  lmms-eval, the right option is the one whose text equals ``answer`` (the last one, should two be equal);
  a file without ``qa_uid`` is grouped by the part of ``uid`` before its first ``_``, as the benchmark's
  standalone script (hub ``scripts/evaluate_plm.py``) does. Options that are null (a Parquet struct column
  wider than the question) are dropped from the end.
* ``sgqa``: ``uid``, ``video``, ``question``, ``answer`` (optional ``domain``).
* ``rcap`` and ``rtloc``: ``uid``, ``video``, ``masklet_id``, ``total_frames``, ``caption``, ``start_frame``,
  ``end_frame`` (frames of the 6 fps SA-V video; the metrics rescale them to the 32 sampled frames).
* ``rdcap``: ``uid``, ``video``, ``masklet_id``, ``total_frames``, ``dense_captions`` (a non-empty list of
  ``{"start_frame", "end_frame", "caption"}``).
* region boxes (``metadata/metadata_test.jsonl``, read by :func:`read_region_boxes`): ``video``,
  ``masklet_id`` and ``bbox`` (``{"<frame>": [x1, y1, x2, y2] or null}``), the red rectangle drawn on the
  sampled frames of RCap/RTLoc/RDCap.

A benchmark file is read whole or not at all: a line that is not a JSON object, a missing or mistyped field,
an answer that is none of the options or a repeated ``uid`` raises :class:`AnnotationError` naming the file
and the line (JSONL, 1-based), row (Parquet, 0-based) or item (JSON list, 0-based). Skipping such records
would silently change the benchmark's denominator. Uids are kept as strings (the hub stores the region
tasks' uids as int32), so predictions can be keyed by ``str(uid)``. Fields beyond the ones above are kept in
each sample's ``extra``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percli.core.data.shards import BadRecords, read_batches, read_records

TASKS = ("fgqa", "sgqa", "rcap", "rtloc", "rdcap")


class AnnotationError(ValueError):
    """A PLM-VideoBench annotation file that does not have the released layout (the message names the place)."""


@dataclass(frozen=True)
class FGQASample:
    uid: str
    qa_uid: str  # MBAcc group: every question of a group must be right for the group to count
    video: str
    question: str
    options: tuple[str, ...]  # option i is letter chr(ord("A") + i)
    answer_index: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def answer(self) -> str:
        return self.options[self.answer_index]


@dataclass(frozen=True)
class SGQASample:
    uid: str
    video: str
    question: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class RegionSample:
    """One RCap or RTLoc question: the event `caption` of masklet `masklet_id`, frames [start_frame, end_frame]
    of a `total_frames`-frame video."""

    uid: str
    video: str
    masklet_id: int
    total_frames: int
    caption: str
    start_frame: int
    end_frame: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class DenseCaption:
    start_frame: int
    end_frame: int
    caption: str


@dataclass(frozen=True)
class RDCapSample:
    uid: str
    video: str
    masklet_id: int
    total_frames: int
    events: tuple[DenseCaption, ...]  # the ground-truth dense captions, in the file's order
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


# ---------------------------------------------------------------------------------------------
# Records of a file, each with its place for error messages


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(place, record) for every record of a .jsonl(.gz), .parquet or .json file; any bad one raises."""
    name = path.name.lower()
    if not path.is_file():
        raise AnnotationError(f"{path}: no such file")
    bad = BadRecords(keep=1)
    if name.endswith((".jsonl", ".jsonl.gz")):
        for line_no, record, _ in read_records(path, None, bad):
            yield f"{path} line {line_no}", record
    elif name.endswith(".parquet"):
        try:
            batches = list(read_batches(path, None, bad))
        except ValueError as e:
            raise AnnotationError(str(e)) from None
        for batch in batches:
            for row, record in zip(batch.index.tolist(), batch.items.to_pylist()):
                yield f"{path} row {row}", record
    elif name.endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AnnotationError(f"{path} is not UTF-8 JSON ({e}); a file of one object per line must be "
                                  "named .jsonl") from None
        if not isinstance(data, list):
            raise AnnotationError(f"{path} must hold a JSON list of objects, got a {type(data).__name__}")
        for index, record in enumerate(data):
            if not isinstance(record, dict):
                raise AnnotationError(f"{path} item {index}: not a JSON object ({type(record).__name__})")
            yield f"{path} item {index}", record
    else:
        raise AnnotationError(f"{path}: unknown annotation format; use .jsonl, .jsonl.gz, .parquet or .json")
    if bad.count:
        example = bad.examples[0]
        where = next(k for k in ("line", "row", "sample") if k in example)
        raise AnnotationError(f"{example['file']} {where} {example[where]}: {example['reason']} "
                              f"({bad.count} bad record(s) in all)")


def _text(record: dict[str, Any], key: str, place: str, allow_empty: bool = False) -> str:
    value = record.get(key)
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        got = "missing" if key not in record else f"{type(value).__name__} {value!r}"[:80]
        raise AnnotationError(f"{place}: field {key!r} must be a non-empty string, got {got}")
    return value


def _whole(record: dict[str, Any], key: str, place: str, minimum: int = 0) -> int:
    """A non-negative (or >= `minimum`) integer field; integral floats (5.0) are accepted."""
    value = record.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        got = "missing" if key not in record else repr(value)[:80]
        raise AnnotationError(f"{place}: field {key!r} must be an integer >= {minimum}, got {got}")
    return value


def _uid(record: dict[str, Any], place: str) -> str:
    value = record.get("uid")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise AnnotationError(f"{place}: field 'uid' must be a string or an integer, got {value!r}"[:200])
    return str(value)


def _extra(record: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in known}


# ---------------------------------------------------------------------------------------------
# One parser per task


_FGQA_FIELDS = ("uid", "qa_uid", "video", "question", "answer", "options")


def _fgqa_options(value: Any, place: str) -> tuple[str, ...]:
    if isinstance(value, list):
        texts = list(value)
    elif isinstance(value, dict):
        by_index = {}
        for key, text in value.items():
            suffix = str(key).rsplit("_", 1)[-1]
            if not suffix.isdigit():
                raise AnnotationError(f"{place}: option key {key!r} is not option_<N>")
            by_index[int(suffix)] = text
        if sorted(by_index) != list(range(len(by_index))):
            raise AnnotationError(f"{place}: option keys must be option_0..option_<N-1>, got {sorted(value)}")
        texts = [by_index[i] for i in range(len(by_index))]
    else:
        raise AnnotationError(f"{place}: field 'options' must be an object of option_<N> texts or a list, "
                              f"got {type(value).__name__}")
    while texts and texts[-1] is None:  # a Parquet struct wider than this question
        texts.pop()
    if len(texts) < 2 or not all(isinstance(t, str) for t in texts):
        raise AnnotationError(f"{place}: 'options' must hold at least two option texts, got {texts!r}"[:300])
    if len(texts) > 26:
        raise AnnotationError(f"{place}: {len(texts)} options; option letters only go up to Z")
    return tuple(texts)


def _fgqa(record: dict[str, Any], place: str) -> FGQASample:
    uid = _uid(record, place)
    options = _fgqa_options(record.get("options"), place)
    answer = _text(record, "answer", place)
    matches = [i for i, text in enumerate(options) if text == answer]
    if not matches:
        raise AnnotationError(f"{place}: the answer {answer!r} is none of the options {list(options)}"[:300])
    group = record.get("qa_uid")
    if group is None:
        group = uid.split("_")[0]
    elif isinstance(group, bool) or not isinstance(group, (str, int)):
        raise AnnotationError(f"{place}: field 'qa_uid' must be a string, got {group!r}"[:200])
    return FGQASample(uid, str(group), _text(record, "video", place), _text(record, "question", place), options,
                      matches[-1], _extra(record, _FGQA_FIELDS))


_SGQA_FIELDS = ("uid", "video", "question", "answer")


def _sgqa(record: dict[str, Any], place: str) -> SGQASample:
    return SGQASample(_uid(record, place), _text(record, "video", place), _text(record, "question", place),
                      _text(record, "answer", place), _extra(record, _SGQA_FIELDS))


_REGION_FIELDS = ("uid", "video", "masklet_id", "total_frames", "caption", "start_frame", "end_frame")


def _region(record: dict[str, Any], place: str) -> RegionSample:
    return RegionSample(_uid(record, place), _text(record, "video", place), _whole(record, "masklet_id", place),
                        _whole(record, "total_frames", place, minimum=1), _text(record, "caption", place),
                        _whole(record, "start_frame", place), _whole(record, "end_frame", place),
                        _extra(record, _REGION_FIELDS))


_RDCAP_FIELDS = ("uid", "video", "masklet_id", "total_frames", "dense_captions")


def _rdcap(record: dict[str, Any], place: str) -> RDCapSample:
    captions = record.get("dense_captions")
    if not isinstance(captions, list) or not captions:
        # An empty list would make SODA's recall divide by zero ground-truth events.
        raise AnnotationError(f"{place}: field 'dense_captions' must be a non-empty list of "
                              "{start_frame, end_frame, caption} objects")
    events = []
    for i, entry in enumerate(captions):
        where = f"{place} dense_captions[{i}]"
        if not isinstance(entry, dict):
            raise AnnotationError(f"{where}: not an object")
        events.append(DenseCaption(_whole(entry, "start_frame", where), _whole(entry, "end_frame", where),
                                   _text(entry, "caption", where)))
    return RDCapSample(_uid(record, place), _text(record, "video", place), _whole(record, "masklet_id", place),
                       _whole(record, "total_frames", place, minimum=1), tuple(events),
                       _extra(record, _RDCAP_FIELDS))


_PARSERS: dict[str, Callable[[dict[str, Any], str], Any]] = {
    "fgqa": _fgqa, "sgqa": _sgqa, "rcap": _region, "rtloc": _region, "rdcap": _rdcap,
}


def read_plm_videobench(task: str, path: str | Path) -> list:
    """The samples of one task's annotation file, in file order.

    Args:
        task: ``fgqa``, ``sgqa``, ``rcap``, ``rtloc`` or ``rdcap``.
        path: A ``.jsonl`` / ``.jsonl.gz``, ``.parquet`` or ``.json`` file of that task (layouts in the module
            docstring).

    Returns:
        :class:`FGQASample`, :class:`SGQASample`, :class:`RegionSample` (rcap, rtloc) or :class:`RDCapSample`
        objects.

    Raises:
        AnnotationError: on an unknown task, an unreadable file, a bad record (naming its line or row), a
            repeated uid, or a file without any record.
    """
    if task not in _PARSERS:
        raise AnnotationError(f"unknown PLM-VideoBench task {task!r}; choose one of {', '.join(TASKS)}")
    path = Path(path)
    samples, seen = [], {}
    for place, record in _records(path):
        sample = _PARSERS[task](record, place)
        if sample.uid in seen:
            raise AnnotationError(f"{place}: uid {sample.uid!r} repeats the one at {seen[sample.uid]}")
        seen[sample.uid] = place
        samples.append(sample)
    if not samples:
        raise AnnotationError(f"{path} holds no {task} record")
    return samples


def read_fgqa(path: str | Path) -> list[FGQASample]:
    return read_plm_videobench("fgqa", path)


def read_sgqa(path: str | Path) -> list[SGQASample]:
    return read_plm_videobench("sgqa", path)


def read_rcap(path: str | Path) -> list[RegionSample]:
    return read_plm_videobench("rcap", path)


def read_rtloc(path: str | Path) -> list[RegionSample]:
    return read_plm_videobench("rtloc", path)


def read_rdcap(path: str | Path) -> list[RDCapSample]:
    return read_plm_videobench("rdcap", path)


Box = tuple[float, float, float, float]


def _box(value: Any, where: str) -> Box | None:
    if not value:  # lmms-eval draws nothing for an empty or null box
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise AnnotationError(f"{where}: a box must be [x1, y1, x2, y2] numbers or null, got {value!r}"[:200])
    return tuple(float(v) for v in value)


def read_region_boxes(path: str | Path) -> dict[tuple[str, int], dict[int, Box | None]]:
    """The region metadata of RCap/RTLoc/RDCap: (video, masklet_id) -> {frame index: box or None}.

    Frames are indices into the 6 fps video (lmms-eval draws a frame's box when the frame is sampled).

    Raises:
        AnnotationError: on a bad record (naming its line or row), a frame key that is not an integer, or a
            (video, masklet_id) pair given twice.
    """
    boxes: dict[tuple[str, int], dict[int, Box | None]] = {}
    for place, record in _records(Path(path)):
        key = (_text(record, "video", place), _whole(record, "masklet_id", place))
        raw = record.get("bbox")
        if not isinstance(raw, dict):
            raise AnnotationError(f"{place}: field 'bbox' must be an object of frame -> [x1, y1, x2, y2]")
        frames = {}
        for frame, value in raw.items():
            if not str(frame).isdigit():
                raise AnnotationError(f"{place}: bbox frame key {frame!r} is not a frame index")
            frames[int(frame)] = _box(value, f"{place} bbox[{frame!r}]")
        if key in boxes:
            raise AnnotationError(f"{place}: video {key[0]!r} masklet {key[1]} is given twice")
        boxes[key] = frames
    return boxes
