"""YouTube-8M features: video-level and frame-level TFRecords in the official layouts, and video-level NPZ or
Parquet tables.

Official layouts (google/youtube-8m ``readers.py``; the 2017 release named the id ``video_id``, read too):

* video level, one ``tf.train.Example`` per video: ``id`` (bytes), ``labels`` (int64 list), ``mean_rgb``
  (1024 floats), ``mean_audio`` (128 floats);
* frame level, one ``tf.train.SequenceExample`` per video: context ``id`` and ``labels``; feature lists
  ``rgb`` and ``audio``, one bytes feature per frame (1 Hz, at most 300) of uint8 codes, dequantised as the
  official ``utils.Dequantize``: ``code * (max - min) / 255 + (max - min) / 512 + min`` with max 2 and min -2
  (the half-bin offset puts a code at the centre of its bin).

Tables (video level, no pickles): NPZ with ``ids`` [N], ``labels`` ([N, C] multi-hot, or [N, L] class
indices padded with -1; a square [N, C] array of 0/1 is read as multi-hot), ``mean_rgb`` and ``mean_audio``
[N, size]; Parquet with columns ``id``, ``labels`` (list of ints), ``mean_rgb`` and ``mean_audio`` (lists
of floats). A test split without labels reads as videos with no label.

Items: ``{"index", "features": float32 [D]}`` (video level: the named features concatenated) or ``{"index",
"frames": float32 [max_frames, D], "num_frames"}`` (frame level, zero-padded), with ``"labels"`` float32
multi-hot [num_classes]. Damaged framing and unreadable table files are counted in ``bad_records`` when the
files are indexed; a record that fails its CRC, does not parse, has features of the wrong size or a label out
of range raises :class:`~percli.core.data.images.BadSample` (``file#offsetN`` / ``file#rowN``) when read, and
the engine skips and counts it.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from percli.core.data.images import BadSample
from percli.core.data.shards import BadRecords, expand_braces
from percli.core.data.tfrecord import (
    TFRecordError,
    decode_example,
    decode_sequence_example,
    encode_example,
    encode_sequence_example,
    index_records,
    read_record,
)

FEATURE_SIZES = {"rgb": 1024, "audio": 128}  # official widths (PCA'd Inception, VGGish)
MAX_QUANTIZED, MIN_QUANTIZED = 2.0, -2.0
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords")
TABLE_SUFFIXES = (".npz", ".parquet")


def yt8m_files(patterns: str) -> list[Path]:
    """The TFRecord/NPZ/Parquet files of space-separated `patterns` (braces and globs expand; a folder gives its
    files of those kinds, sorted), in order, without repeats.

    Raises:
        FileNotFoundError: a pattern matches nothing (or a folder holds no such file).
        ValueError: a file named by the user has another suffix.
    """
    suffixes = TFRECORD_SUFFIXES + TABLE_SUFFIXES
    found: list[Path] = []
    for pattern in patterns.split():
        matched = [Path(m) for name in expand_braces(pattern)
                   for m in (sorted(glob.glob(name)) if glob.has_magic(name) else [name])]
        files = [f for m in matched if m.exists()
                 for f in (sorted(p for p in m.iterdir() if p.suffix in suffixes) if m.is_dir() else [m])]
        if not files:
            raise FileNotFoundError(f"{pattern} matches no {'/'.join(suffixes)} file")
        wrong = [f for f in files if f.suffix not in suffixes]
        if wrong:
            raise ValueError(f"{wrong[0]}: not a YouTube-8M file; name it {' or '.join(suffixes)}")
        found += files
    return list(dict.fromkeys(found))


def dequantize(codes: np.ndarray, max_value: float = MAX_QUANTIZED, min_value: float = MIN_QUANTIZED) -> np.ndarray:
    """uint8 codes -> float32, the official ``Dequantize``."""
    span = max_value - min_value
    return (codes.astype(np.float32) * np.float32(span / 255.0) + np.float32(span / 512.0 + min_value))


def quantize(values: np.ndarray, max_value: float = MAX_QUANTIZED, min_value: float = MIN_QUANTIZED) -> np.ndarray:
    """float -> uint8 codes, the inverse of `dequantize` (values outside [min, max] are clipped)."""
    span = max_value - min_value
    codes = np.round((np.asarray(values, np.float64) - span / 512.0 - min_value) * 255.0 / span)
    return np.clip(codes, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class YT8MLayout:
    """What a YouTube-8M reader keeps of a record."""

    level: str = "video"
    """video (one mean vector per video) or frame (one vector per second)."""
    features: tuple[str, ...] = ("rgb", "audio")
    feature_sizes: tuple[int, ...] = (1024, 128)
    num_classes: int = 3862
    max_frames: int = 300

    @property
    def feature_dim(self) -> int:
        return sum(self.feature_sizes)


def video_example(video_id: str, labels: Sequence[int], features: Mapping[str, np.ndarray]) -> bytes:
    """A video-level record: `features` by short name (``rgb`` -> ``mean_rgb``)."""
    return encode_example({"id": video_id, "labels": np.asarray(labels, np.int64),
                           **{f"mean_{name}": np.asarray(v, np.float32) for name, v in features.items()}})


def frame_example(video_id: str, labels: Sequence[int], frames: Mapping[str, np.ndarray]) -> bytes:
    """A frame-level record: `frames` [T, size] float per feature name, quantised to one bytes value a frame."""
    lists = {name: [row.tobytes() for row in quantize(v)] for name, v in frames.items()}
    return encode_sequence_example({"id": video_id, "labels": np.asarray(labels, np.int64)}, lists)


def _video_id(features: Mapping[str, Any]) -> str:
    value = features.get("id", features.get("video_id", [b""]))
    return value[0].decode("utf-8", errors="replace") if isinstance(value, list) and value else ""


def parse_video_example(payload: bytes, layout: YT8MLayout) -> tuple[str, np.ndarray, np.ndarray]:
    """(id, labels, features [D]) of a video-level record; `TFRecordError` naming what is missing or wrong."""
    example = decode_example(payload)
    parts = []
    for name, size in zip(layout.features, layout.feature_sizes):
        value = example.get(f"mean_{name}")
        if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.size != size:
            got = "missing" if value is None else f"{getattr(value, 'size', len(value))} values"
            raise TFRecordError(f"mean_{name}: {got}, expected {size} floats")
        parts.append(value)
    return _video_id(example), _labels(example.get("labels")), np.concatenate(parts)


def parse_frame_example(payload: bytes, layout: YT8MLayout) -> tuple[str, np.ndarray, np.ndarray]:
    """(id, labels, frames [T, D], T <= max_frames) of a frame-level record, dequantised."""
    context, lists = decode_sequence_example(payload)
    parts, count = [], None
    for name, size in zip(layout.features, layout.feature_sizes):
        steps = lists.get(name)
        if steps is None:
            raise TFRecordError(f"feature list {name!r} missing (has {sorted(lists)})")
        if count is not None and len(steps) != count:
            raise TFRecordError(f"{name}: {len(steps)} frames, {layout.features[0]}: {count}")
        count = len(steps)
        rows = [s[0] if isinstance(s, list) and len(s) == 1 else b"" for s in steps[: layout.max_frames]]
        if any(len(r) != size for r in rows):
            raise TFRecordError(f"{name}: a frame is not one bytes value of {size} codes")
        codes = np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), size)
        parts.append(dequantize(codes))
    return _video_id(context), _labels(context.get("labels")), np.concatenate(parts, axis=1)


def _labels(value: Any) -> np.ndarray:
    if value is None:
        return np.empty(0, np.int64)
    if not isinstance(value, np.ndarray) or value.dtype != np.int64:
        raise TFRecordError("labels is not an int64 list")
    return value


def _table_labels(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Per-row class indices of an NPZ ``labels`` array (multi-hot [N, C] or -1-padded indices [N, L])."""
    if labels.ndim == 1:
        labels = labels[:, None]
    multi_hot = labels.dtype == bool or labels.dtype.kind == "f" or (
        labels.shape[1] == num_classes and labels.size and set(np.unique(labels)) <= {0, 1})
    if multi_hot:
        return [np.flatnonzero(row) for row in labels]
    return [row[row >= 0].astype(np.int64) for row in labels]


def _read_npz(path: Path, layout: YT8MLayout) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("labels", *(f"mean_{n}" for n in layout.features)) if k not in npz.files]
        if missing:
            raise ValueError(f"no {', '.join(missing)} array (has {', '.join(npz.files)})")
        features = np.concatenate([np.asarray(npz[f"mean_{n}"], np.float32).reshape(len(npz["labels"]), -1)
                                   for n in layout.features], axis=1)
        ids = [str(i) for i in npz["ids"]] if "ids" in npz.files else [f"{path.stem}#{i}" for i in range(len(features))]
        return ids, _table_labels(np.asarray(npz["labels"]), layout.num_classes), features


def _read_parquet(path: Path, layout: YT8MLayout) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = [k for k in ("labels", *(f"mean_{n}" for n in layout.features)) if k not in table.column_names]
    if missing:
        raise ValueError(f"no {', '.join(missing)} column (has {', '.join(table.column_names)})")
    features = np.concatenate([np.asarray(table.column(f"mean_{n}").to_pylist(), np.float32)
                               for n in layout.features], axis=1)
    ids = [str(i) for i in table.column("id").to_pylist()] if "id" in table.column_names else \
        [f"{path.stem}#{i}" for i in range(len(features))]
    return ids, [np.asarray(v or [], np.int64) for v in table.column("labels").to_pylist()], features


class YT8MDataset(Dataset):
    """YouTube-8M videos of TFRecord files (either level) or NPZ/Parquet tables (video level); see the module
    docstring. TFRecords are indexed by their headers (no payload read) and each record is verified when read.

    Args:
        files: The files, read in order (`expand_inputs` of the user's patterns).
        layout: Level, features, classes and frames kept.
    """

    def __init__(self, files: Sequence[str | Path], layout: YT8MLayout):
        self.layout, self.files = layout, [Path(f) for f in files]
        self.bad_records = BadRecords()
        self.tables: dict[int, tuple[list[str], list[np.ndarray], np.ndarray]] = {}
        where: list[tuple[int, int, int]] = []  # (file, offset or row, length or -1)
        for i, path in enumerate(self.files):
            if path.suffix in TABLE_SUFFIXES:
                if layout.level != "video":
                    raise ValueError(f"{path}: NPZ and Parquet tables hold video-level features; use "
                                     "data.level=video or frame-level TFRecords")
                try:
                    table = (_read_npz if path.suffix == ".npz" else _read_parquet)(path, layout)
                except Exception as e:  # noqa: BLE001 - numpy, zipfile and Arrow raise many types for bad files
                    self.bad_records.add(path, 0, f"unreadable table: {type(e).__name__}: {e}", where="row")
                    continue
                if table[2].shape[1] != layout.feature_dim:
                    self.bad_records.add(path, 0, f"features are {table[2].shape[1]}-d, expected "
                                         f"{layout.feature_dim} ({'+'.join(layout.features)})", where="row")
                    continue
                self.tables[i] = table
                where += [(i, row, -1) for row in range(len(table[2]))]
            else:
                where += [(i, offset, length) for offset, length in index_records(path, self.bad_records)]
        self.where = np.asarray(where, dtype=np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.where)

    def read(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        """(id, class indices, features [D] or frames [T, D]) of video `index`; BadSample when unusable."""
        file, position, length = (int(v) for v in self.where[index])
        path = self.files[file]
        if length < 0:
            ids, labels, features = self.tables[file]
            return ids[position], labels[position], features[position]
        try:
            with path.open("rb") as f:
                payload = read_record(f, position, length)
            parse = parse_video_example if self.layout.level == "video" else parse_frame_example
            return parse(payload, self.layout)
        except (ValueError, OSError) as e:  # TFRecordError, or a CRC-valid payload that is not the message
            raise BadSample(f"{path}#offset{position}", str(e)) from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        video_id, labels, values = self.read(index)
        file, position, length = (int(v) for v in self.where[index])
        outside = labels[(labels < 0) | (labels >= self.layout.num_classes)]
        if outside.size:
            where = f"row{position}" if length < 0 else f"offset{position}"
            raise BadSample(f"{self.files[file]}#{where}", f"label {int(outside[0])} outside the "
                            f"{self.layout.num_classes} classes (data.num_classes)")
        target = torch.zeros(self.layout.num_classes)
        target[torch.from_numpy(labels)] = 1.0
        item: dict[str, Any] = {"index": index, "labels": target}
        if self.layout.level == "video":
            item["features"] = torch.from_numpy(np.ascontiguousarray(values, np.float32))
        else:
            frames = torch.zeros(self.layout.max_frames, values.shape[1])
            frames[: len(values)] = torch.from_numpy(values)
            item["frames"], item["num_frames"] = frames, len(values)
        return item
