"""Video-text retrieval sets over per-second features: MSR-VTT, YouCook2 and VATEX manifests read into
:class:`VideoTextRetrievalSet`\\ s of captions and :class:`Segment`\\ s (whole videos, or YouCook2 clips cut from a
video's per-second features), and :class:`SegmentFeatures`, which reads the segments' features with the bad-input
rules of :mod:`percli.core.data.video_text` (unreadable files raise ``BadSample``; a segment whose video has no
feature file is dropped with its captions and counted).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from percli.core.data.caption_manifest import CaptionManifest, read_caption_manifest
from percli.core.data.images import BadSample
from percli.core.data.shards import BadRecords, read_records
from percli.core.data.video_text import bad_feature, list_feature_files, load_features, parse_seconds


@dataclass(frozen=True)
class Segment:
    """A retrieval candidate: a whole video (``start``/``end`` None) or a clip of it in seconds."""

    id: str
    video: str
    start: float | None = None
    end: float | None = None


@dataclass
class VideoTextRetrievalSet:
    """Captions and the segments they describe, aligned for :mod:`percli.core.retrieval_metrics`.

    Attributes:
        segments: The candidates, in first-appearance order.
        captions: Every kept caption, segment by segment.
        caption_item: [len(captions)] index into ``segments`` of each caption's segment.
        language: The captions' language.
        counts: Reading counts for ``summary.json`` (``rows``, ``bad_rows``, ``segments``, ``captions``, ...).
        bad_examples: The first bad rows.
    """

    segments: list[Segment]
    captions: list[str]
    caption_item: list[int]
    language: str = "en"
    counts: dict[str, int] = field(default_factory=dict)
    bad_examples: list[dict[str, Any]] = field(default_factory=list)

    def keep(self, videos: set[str] | Mapping[str, Any]) -> VideoTextRetrievalSet:
        """The segments of the given videos only, with their captions (counts: ``segments_without_features``)."""
        kept = [i for i, seg in enumerate(self.segments) if seg.video in videos]
        new_index = {old: new for new, old in enumerate(kept)}
        pairs = [(c, new_index[i]) for c, i in zip(self.captions, self.caption_item) if i in new_index]
        counts = {**self.counts, "segments_without_features": len(self.segments) - len(kept),
                  "segments": len(kept), "captions": len(pairs)}
        return VideoTextRetrievalSet([self.segments[i] for i in kept], [c for c, _ in pairs], [i for _, i in pairs],
                                     self.language, counts, self.bad_examples)


def _from_manifest(manifest: CaptionManifest, language: str) -> VideoTextRetrievalSet:
    return VideoTextRetrievalSet([Segment(video, video) for video in manifest.items], manifest.captions,
                                 manifest.caption_item, language, manifest.counts, manifest.bad_examples)


def read_msrvtt(path: str | Path) -> VideoTextRetrievalSet:
    """MSR-VTT captions of whole videos: the 1k-A test CSV (``MSRVTT_JSFUSION_test.csv``:
    ``key,vid_key,video_id,sentence``, one caption per video) or the train/val JSON (``{"videos": [...],
    "sentences": [{"video_id", "caption", ...}]}``, about 20 captions per video), through
    :func:`~percli.core.data.caption_manifest.read_caption_manifest` (its bad-row rules)."""
    return _from_manifest(read_caption_manifest(path, media_key="video_id"), "en")


VATEX_CAPTION_KEYS = {"en": "enCap", "zh": "chCap"}


def read_vatex(path: str | Path, languages: Sequence[str] = ("en", "zh")) -> dict[str, VideoTextRetrievalSet]:
    """VATEX captions per language: a JSON list of ``{"videoID", "enCap": [10 English], "chCap": [10 Chinese]}``,
    through :func:`~percli.core.data.caption_manifest.read_caption_manifest` (its bad-row rules).

    Args:
        path: The VATEX JSON file.
        languages: Which to read, of :data:`VATEX_CAPTION_KEYS` (the public test file has English only:
            ``("en",)``).

    Raises:
        ValueError: for an unknown language, or a file without that language's key.
    """
    unknown = [lang for lang in languages if lang not in VATEX_CAPTION_KEYS]
    if unknown or not languages:
        raise ValueError(f"VATEX languages {list(languages)}: choose from {', '.join(VATEX_CAPTION_KEYS)}")
    return {lang: _from_manifest(read_caption_manifest(path, media_key="videoID",
                                                       caption_keys=[VATEX_CAPTION_KEYS[lang]]), lang)
            for lang in languages}


YOUCOOK2_COLUMNS = ("video_id", "start", "end", "sentence")


def _youcook2_rows(path: Path, subset: str | None, bad: BadRecords) -> Iterator[tuple[int, dict[str, Any]]]:
    """(position, {video_id, start, end, sentence[, id]}) of the official JSON or of a CSV/TSV/JSONL."""
    name = path.name.lower()
    if name.endswith(".json"):
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
        database = data.get("database") if isinstance(data, dict) else None
        if not isinstance(database, dict):
            raise ValueError(f"{path}: expected YouCook2's {{\"database\": {{video_id: {{\"annotations\": [...]}}}}}}")
        position = 0
        for video, info in database.items():
            if not isinstance(info, dict) or (subset is not None and info.get("subset") != subset):
                continue
            for clip in info.get("annotations") or []:
                position += 1
                segment = clip.get("segment") if isinstance(clip, dict) else None
                if not (isinstance(segment, list) and len(segment) == 2):
                    bad.add(path, position, f"{video}: annotation without a [start, end] segment", "item")
                    continue
                yield position, {"video_id": video, "start": segment[0], "end": segment[1],
                                 "sentence": clip.get("sentence"), "id": f"{video}_{clip.get('id', position - 1)}"}
    elif name.endswith((".jsonl", ".jsonl.gz")):
        for line, record, _ in read_records(path, None, bad):
            yield line, record
    elif name.endswith((".csv", ".tsv")):
        text = path.read_bytes().decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if name.endswith(".tsv") else ",")
        missing = [c for c in YOUCOOK2_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: columns {missing} missing; expected {', '.join(YOUCOOK2_COLUMNS)}")
        for row in reader:
            if None in row or None in row.values():
                bad.add(path, reader.line_num, "cell count differs from the header (unquoted comma?)")
                continue
            yield reader.line_num, row
    else:
        raise ValueError(f"{path}: YouCook2 annotations must be .json (official), .csv, .tsv or .jsonl")


def _number(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return parse_seconds(value)


def read_youcook2(path: str | Path, subset: str | None = None, language: str = "en") -> VideoTextRetrievalSet:
    """YouCook2 clip captions: one segment per annotated clip, cut from its video's per-second features.

    Reads the official ``youcookii_annotations_trainval.json`` (``{"database": {video_id: {"subset",
    "annotations": [{"id", "segment": [start, end], "sentence"}]}}}``; ``subset`` "training" or
    "validation" keeps one; clip ids ``<video_id>_<annotation id>`` as MMPT names them) or a CSV / TSV /
    JSONL with ``video_id, start, end, sentence`` columns (clip ids ``<video_id>_<row>`` when there is no
    ``id``). Rows with a blank sentence, non-numeric or negative times or end <= start are bad rows; a clip
    listed twice (same video and times) keeps its captions under one segment.
    """
    path = Path(path)
    bad = BadRecords()
    segments: dict[tuple[str, float, float], int] = {}
    ordered: list[Segment] = []
    captions, caption_item = [], []
    clips_of: Counter[str] = Counter()
    rows = empty = 0
    before = bad.count
    for position, row in _youcook2_rows(path, subset, bad):
        rows += 1
        video, sentence = row.get("video_id"), row.get("sentence")
        start, end = _number(row.get("start")), _number(row.get("end"))
        if not isinstance(video, str) or not video:
            bad.add(path, position, "no video_id")
        elif not isinstance(sentence, str):
            bad.add(path, position, "sentence is not a text")
        elif start is None or end is None or not (math.isfinite(start) and math.isfinite(end)) or start < 0:
            bad.add(path, position, f"start {row.get('start')!r} / end {row.get('end')!r}: not seconds >= 0")
        elif end <= start:
            bad.add(path, position, f"end {end} is not after start {start}")
        elif not sentence.strip():
            empty += 1
        else:
            key = (video, start, end)
            if key not in segments:
                segments[key] = len(ordered)
                clip_id = row.get("id") if isinstance(row.get("id"), str) else f"{video}_{clips_of[video]}"
                clips_of[video] += 1
                ordered.append(Segment(clip_id, video, start, end))
            captions.append(sentence.strip())
            caption_item.append(segments[key])
    if not captions:
        raise ValueError(f"{path}: no usable clip caption ({rows} rows, {bad.count} bad, {empty} empty)"
                         + (f"; first bad row: {bad.examples[0]}" if bad.examples else ""))
    unread = bad.count - before - (rows - len(captions) - empty)  # rows the file layer refused before yielding
    counts = {"rows": rows + unread, "bad_rows": bad.count,
              "empty_captions": empty, "segments": len(ordered), "captions": len(captions)}
    return VideoTextRetrievalSet(ordered, captions, caption_item, language, counts, bad.examples)


class SegmentFeatures(Dataset):
    """The per-second features of retrieval segments: whole videos, or ``features[floor(start):ceil(end)]``
    (at least one row; MMPT cuts YouCook2's integer segments as ``feat[start:end]``).

    Args:
        retrieval: The segments (and captions) to read.
        features: Folder of ``<video_id>.npy`` / ``.safetensors`` files.
        feature_dim: Expected D.

    Segments whose video has no feature file are dropped when the set is built (``skipped``
    ``missing_features``; ``retrieval`` keeps only the rest, so captions and candidates stay aligned). Items:
    ``{"id": segment id, "features": float32 [t, D]}``; unreadable files raise ``BadSample`` with a
    :data:`READ_REASONS` reason, a clip that starts after the features end ``empty_features``.
    """

    def __init__(self, retrieval: VideoTextRetrievalSet, features: str | Path, *,
                 feature_dim: int | None = None) -> None:
        self.paths, doubled = list_feature_files(features)
        self.retrieval = retrieval.keep(self.paths)
        self.feature_dim = feature_dim
        self.skipped: Counter[str] = Counter()
        self.skipped["missing_features"] += len(retrieval.segments) - len(self.retrieval.segments)
        if doubled:
            self.skipped["duplicate_feature_file"] += doubled
        if not self.retrieval.segments:
            raise ValueError(f"no feature file in {features} for any of {len(retrieval.segments)} segment(s)")

    def __len__(self) -> int:
        return len(self.retrieval.segments)

    def __getitem__(self, index: int) -> dict[str, Any]:
        segment = self.retrieval.segments[index]
        path = self.paths[segment.video]
        try:
            features = load_features(path, self.feature_dim)
            if segment.start is not None and segment.end is not None:
                first = math.floor(segment.start)
                if first >= features.shape[0]:
                    raise bad_feature(path, "empty_features", f"clip {segment.id} starts at {segment.start} s, "
                                                              f"after the features end ({features.shape[0]} s)")
                features = features[first : max(math.ceil(segment.end), first + 1)]
        except BadSample as bad:
            self.skipped[bad.reason.split(":", 1)[0]] += 1
            raise
        return {"id": segment.id, "features": features}
