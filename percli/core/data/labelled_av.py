"""Labelled audio-video clips for classification: a JSONL/CSV manifest, AudioSet's segments CSV or VGGSound's CSV.

Layouts (``format``; ``auto`` tells them apart by the suffix and the first row):

- ``manifest``: a ``.jsonl`` of ``{"id", "video", "audio", "labels"}`` objects, or a ``.csv`` whose header names
  the same columns. ``video`` is the clip (its own audio track is read unless ``audio`` names a separate file;
  an audio-only set may give ``audio`` alone), ``id`` defaults to the path, ``labels`` is a list or one string
  of labels separated by ``;`` (not ``,``: AudioSet's display names hold commas); ``label`` is read as one
  label. Relative paths resolve against the manifest's folder.
- ``audioset``: AudioSet's segments CSV (``balanced_train_segments.csv``, ``eval_segments.csv``): ``#`` comment
  lines, then ``YTID, start_seconds, end_seconds, "/m/a,/m/b"`` rows; multi-label.
- ``vggsound``: ``vggsound.csv``, no header: ``youtube_id,start_seconds,label,split`` rows (a label holding a
  comma is quoted); the rows of ``split`` are read (every row when there is no split column); single-label.

The two CSV layouts name clips by id: the clip is the file under ``media_dir`` (default: the CSV's folder,
sub-folders included) named ``<id>_<start:06d>`` (VGGSound's), ``<id>_<start>`` or ``<id>``, with a video suffix
(or an audio one, which serves the audio modality alone).

Classes: ``labels`` when given (the training set's, for held-out data), else a ``label_csv``
(``index,mid,display_name``, AudioSet's ``class_labels_indices.csv``, which is used when it lies beside an
AudioSet CSV; a label may be its MID or its display name), else the labels read, sorted.

Lines skipped when the source is indexed are counted by reason in ``skipped`` and listed in ``bad_records``
(which the engine writes to ``summary.json``): ``malformed_record`` (not an object, no path, a short row, labels
of the wrong type), ``no_label``, ``unknown_label`` (a label outside the classes) and ``missing_file`` (an
id-named clip that is not under ``media_dir``). Clips that exist but do not decode raise
:class:`~percli.core.data.images.BadSample` when read, with :class:`~percli.core.data.av_clips.AVClipDataset`'s
reasons (``no_audio_track``, ``corrupt_video``, ``empty_file``, ...): the engine skips and counts them.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from percli.core.data.audio import AUDIO_EXTENSIONS, read_label_csv
from percli.core.data.av_clips import MODALITIES, AVClipDataset
from percli.core.data.paths import resolve_manifest_path
from percli.core.data.shards import BadRecords, read_records
from percli.core.data.video import VIDEO_EXTENSIONS

FORMATS = ("manifest", "audioset", "vggsound")
LABEL_SEPARATOR = ";"
AUDIOSET_CLASS_CSV = "class_labels_indices.csv"
NO_LABEL = "no_label: the clip has no label"

Entry = dict[str, Any]  # {"id", "video", "audio", "labels": [str]}, or the reason ("code: detail") it is dropped


@dataclass(frozen=True)
class LabelSet:
    """Class names in index order and every spelling of a label (name, AudioSet MID) -> its index."""

    classes: tuple[str, ...]
    index: Mapping[str, int]

    @classmethod
    def from_csv(cls, path: str | Path) -> LabelSet:
        by_mid, names = read_label_csv(path)
        return cls(tuple(names), {**{name: i for i, name in enumerate(names)}, **by_mid})

    @classmethod
    def sorted_from(cls, labels: Iterable[str]) -> LabelSet:
        names = sorted(set(labels))
        return cls(tuple(names), {name: i for i, name in enumerate(names)})


def detect_format(path: str | Path) -> str:
    """``manifest`` (a .jsonl, or a .csv whose header names a ``video`` or ``audio`` column), ``audioset`` (rows
    ``id, start, end, labels``) or ``vggsound`` (rows ``id, start, label[, split]``)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return "manifest"
    if path.suffix != ".csv":
        raise ValueError(f"{path}: not a .jsonl or .csv manifest")
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.reader(f, skipinitialspace=True):
            if not row or row[0].startswith("#"):
                continue
            if {"video", "audio"} & {cell.strip().lower() for cell in row}:
                return "manifest"
            if len(row) >= 4 and _is_number(row[1]) and _is_number(row[2]):
                return "audioset"
            if len(row) >= 3 and _is_number(row[1]):
                return "vggsound"
            break
    raise ValueError(f"{path}: neither a manifest (header with a `video` column), an AudioSet segments CSV "
                     "(YTID, start, end, labels) nor a VGGSound CSV (youtube_id, start, label, split)")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _labels_of(value: Any) -> list[str] | None:
    """A manifest's labels as stripped strings (None: not a list or a string); blank ones dropped."""
    if isinstance(value, str):
        value = value.split(LABEL_SEPARATOR)
    if not isinstance(value, list) or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        return None
    return [str(v).strip() for v in value if str(v).strip()]


def _manifest_entry(obj: Any, base: Path, modalities: Sequence[str]) -> Entry | str:
    if not isinstance(obj, Mapping):
        return "malformed_record: not an object"
    paths = {}
    for field in ("video", "audio"):
        value = obj.get(field) or None
        if value is not None and not isinstance(value, str):
            return f'malformed_record: "{field}" must be a path, got {value!r}'
        paths[field] = resolve_manifest_path(base, value) if value else None
    if paths["video"] is None and paths["audio"] is None:
        return 'malformed_record: neither "video" nor "audio" is given'
    if paths["video"] is None and "video" in modalities:
        return 'malformed_record: video requested but "video" is missing'
    labels = _labels_of(obj["labels"] if "labels" in obj else obj.get("label", []))
    if labels is None:
        return 'malformed_record: "labels" must be a list of labels or a string of `;`-separated labels'
    clip_id = obj.get("id") or obj.get("video") or obj.get("audio")
    return {"id": str(clip_id), **paths, "labels": labels}


def _read_manifest(path: Path, bad: BadRecords, modalities: Sequence[str]) -> Iterator[tuple[int, Entry | str]]:
    if path.suffix == ".jsonl":
        for line, obj, _ in read_records(path, None, bad):  # lines that are no JSON object: counted in `bad`
            yield line, _manifest_entry(obj, path.parent, modalities)
        return
    with path.open(encoding="utf-8", newline="") as f:
        for line, obj in enumerate(csv.DictReader(f), start=2):  # the header is line 1
            cells = {k.strip().lower(): (v or "").strip() for k, v in obj.items() if isinstance(k, str)}
            yield line, _manifest_entry(cells, path.parent, modalities)


def _csv_rows(path: Path, **reader: Any) -> Iterator[tuple[int, list[str]]]:
    with path.open(encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.reader(f, **reader), start=1):
            if row and not row[0].lstrip().startswith("#"):
                yield line, [cell.strip() for cell in row]


def _id_names(ytid: str, start: str) -> list[str]:
    """File stems a clip of (youtube id, start seconds) is stored as, in the order they are tried."""
    seconds = int(float(start))
    return [f"{ytid}_{seconds:06d}", f"{ytid}_{seconds}", f"{ytid}_{start}", ytid]


def _media_index(folder: Path) -> dict[str, dict[str, str]]:
    """Stem -> {"video": path, "audio": path} of every media file under `folder` (first of a stem kept)."""
    found: dict[str, dict[str, str]] = {}
    for path in sorted(folder.rglob("*")):
        suffix = path.suffix.lower()
        kind = "video" if suffix in VIDEO_EXTENSIONS else "audio" if suffix in AUDIO_EXTENSIONS else None
        if kind is not None and path.is_file():
            found.setdefault(path.stem, {}).setdefault(kind, str(path))
    return found


def _id_entry(media: dict[str, dict[str, str]], ytid: str, start: str, labels: list[str],
              modalities: Sequence[str]) -> Entry | str:
    if not labels:
        return NO_LABEL
    for stem in _id_names(ytid, start):
        files = media.get(stem, {})
        if "video" in files or ("audio" in files and "video" not in modalities):
            return {"id": stem, "video": files.get("video"), "audio": files.get("audio"), "labels": labels}
    wanted = "video" if "video" in modalities else "video or audio"
    return f"missing_file: no {wanted} file named {ytid}_<start> or {ytid} under the media folder"


def _read_audioset(path: Path, media: dict[str, dict[str, str]], modalities: Sequence[str]
                   ) -> Iterator[tuple[int, Entry | str]]:
    for line, row in _csv_rows(path, skipinitialspace=True):  # AudioSet writes `id, 30.000, 40.000, "/m/a,/m/b"`
        if len(row) < 4 or not _is_number(row[1]):
            yield line, f"malformed_record: expected YTID, start_seconds, end_seconds, labels; got {row[:4]}"
            continue
        labels = [t.strip() for cell in row[3:] for t in cell.split(",") if t.strip()]
        yield line, _id_entry(media, row[0], row[1], labels, modalities)


def _read_vggsound(path: Path, media: dict[str, dict[str, str]], modalities: Sequence[str], split: str,
                   splits: set[str]) -> Iterator[tuple[int, Entry | str]]:
    """Rows of `split` (a row without a split column belongs to every split); the split names seen go to `splits`."""
    for line, row in _csv_rows(path):
        if len(row) < 3 or not _is_number(row[1]):
            yield line, f"malformed_record: expected youtube_id, start_seconds, label, split; got {row[:4]}"
            continue
        has_split = len(row) >= 4 and row[-1] in ("train", "test")
        if has_split:
            splits.add(row[-1])
        if has_split and row[-1] != split:
            continue
        label = ",".join(row[2:-1] if has_split else row[2:]).strip()  # an unquoted comma splits the label
        yield line, _id_entry(media, row[0], row[1], [label] if label else [], modalities)


class LabelledAVClips(Dataset):
    """Labelled audio-video clips of a manifest, an AudioSet segments CSV or a VGGSound CSV (see the module
    docstring).

    Args:
        source: The .jsonl or .csv file.
        format: ``auto``, ``manifest``, ``audioset`` or ``vggsound``.
        modalities: What to decode, a non-empty subset of ``("audio", "video")``.
        labels: The classes (held-out data takes the training set's); else from `label_csv` or the data.
        label_csv: ``index,mid,display_name`` CSV of the classes.
        media_dir: Where the clips of an id-named CSV lie (default: the CSV's folder); sub-folders searched.
        split: The VGGSound rows to read (``train`` or ``test``; rows without a split column are always read).
        multilabel: Several labels per clip allowed; None: AudioSet yes, VGGSound no, a manifest when any of
            its clips has several.
        sample_rate: Audio rate in Hz.
        fps: Frames per second decoded (spread over the clip; see :class:`AVClipDataset`).

    Attributes:
        labels: The :class:`LabelSet`; ``classes`` its names.
        multilabel: Whether clips may carry several labels.
        several_labels: How many clips carry several labels.
        skipped: Count per reason of the lines dropped when the source was indexed (repeated ids as
            ``duplicate_id``); clips that fail to decode are counted by the engine (``BadSample``).
        bad_records: The dropped lines (count and first examples) and repeated ids.
        format: The layout read.
        splits: The split names a VGGSound CSV's rows carry (empty without a split column).

    Items: ``{"id", "waveform": float32 [1, T], "frames": uint8 [N, 3, H, W]`` (the requested modalities)
    ``, "target": float32 [classes]`` (multi-hot) ``, "label": int`` (the first class)``}``.
    """

    def __init__(self, source: str | Path, *, format: str = "auto", modalities: Sequence[str] = MODALITIES,
                 labels: LabelSet | None = None, label_csv: str | Path | None = None,
                 media_dir: str | Path | None = None, split: str = "train", multilabel: bool | None = None,
                 sample_rate: int = 16000, fps: float | None = None) -> None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"{source}: no such manifest file")
        self.format = detect_format(path) if format == "auto" else format
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {format!r}: expected auto or one of {', '.join(FORMATS)}")
        if self.format == "audioset" and label_csv is None and (path.parent / AUDIOSET_CLASS_CSV).is_file():
            label_csv = path.parent / AUDIOSET_CLASS_CSV
        self.skipped: Counter[str] = Counter()
        self.bad_records = BadRecords()
        self.splits: set[str] = set()
        entries = self._entries(path, modalities, media_dir, split)
        self.labels = labels or (LabelSet.from_csv(label_csv) if label_csv else
                                 LabelSet.sorted_from(label for e in entries.values() for label in e["labels"]))
        self.classes = list(self.labels.classes)
        self.targets = self._targets(path, entries)
        if not self.targets:
            raise ValueError(f"{path}: no usable clip ({dict(self.skipped)} skipped; first: "
                             f"{self.bad_records.examples[:2]}); see the {self.format} layout in "
                             "percli.core.data.labelled_av")
        self.several_labels = sum(len(t) > 1 for t in self.targets.values())
        self.multilabel = (self.format == "audioset" or self.several_labels > 0) if multilabel is None else multilabel
        if self.several_labels and not self.multilabel:
            raise ValueError(f"{path}: single-label, but {self.several_labels} clip(s) carry several labels")
        records = [{**entries[position], "captions": []} for position in self.targets]
        self.clips = AVClipDataset(records, modalities=modalities, require_captions=False, sample_rate=sample_rate,
                                   fps=fps)
        self.bad_records.duplicate_keys += self.clips.bad_records.duplicate_keys
        self.skipped.update(self.clips.skipped)
        by_id: dict[str, list[int]] = {}
        for position, target in self.targets.items():
            by_id.setdefault(entries[position]["id"], target)  # a repeated id: the first line is kept
        self.clip_labels = [by_id[record.id] for record in self.clips.records]

    def _drop(self, path: Path, position: int, reason: str) -> None:
        self.skipped[reason.split(":", 1)[0]] += 1
        self.bad_records.add(path, position, reason)

    def _entries(self, path: Path, modalities: Sequence[str], media_dir: str | Path | None, split: str
                 ) -> dict[int, Entry]:
        """Usable entries by line; dropped ones counted."""
        if self.format == "manifest":
            lines = _read_manifest(path, self.bad_records, modalities)
        else:
            folder = Path(media_dir).expanduser() if media_dir else path.parent
            if not folder.is_dir():
                raise ValueError(f"media_dir {str(folder)!r} is not a folder")
            media = _media_index(folder)
            lines = (_read_audioset(path, media, modalities) if self.format == "audioset" else
                     _read_vggsound(path, media, modalities, split, self.splits))
        before, entries = self.bad_records.count, {}
        for position, entry in lines:
            if isinstance(entry, str):
                self._drop(path, position, entry)
            elif not entry["labels"]:
                self._drop(path, position, NO_LABEL)
            else:
                entries[position] = entry
        rejected = self.bad_records.count - before - sum(self.skipped.values())  # lines read_records rejected
        if rejected:
            self.skipped["malformed_record"] += rejected
        return entries

    def _targets(self, path: Path, entries: dict[int, Entry]) -> dict[int, list[int]]:
        """Class indices by line; lines with a label outside the classes dropped."""
        targets = {}
        for position, entry in entries.items():
            unknown = [label for label in entry["labels"] if label not in self.labels.index]
            if unknown:
                self._drop(path, position, f"unknown_label: {unknown[0]!r} is not one of the "
                                           f"{len(self.classes)} classes")
                continue
            targets[position] = sorted({self.labels.index[label] for label in entry["labels"]})
        return targets

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.clips[index]  # BadSample for a clip that does not decode
        item.pop("captions", None)
        labels = self.clip_labels[index]
        target = torch.zeros(len(self.classes))
        target[labels] = 1.0
        return {**item, "target": target, "label": labels[0]}
