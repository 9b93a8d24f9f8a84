"""Video-text data over pre-extracted per-second video features: HowTo100M / Multi-HowTo100M captions,
VideoCLIP's temporally overlapping clip sampler, and the MSR-VTT / YouCook2 / VATEX retrieval manifests.

Layout (:class:`HowToVideoText`): one caption file per language, ``{video_id: {"text": [...], "start": [...],
"end": [...]}}`` as JSON (HowTo100M's ``caption.json``, Multi-HowTo100M's ``how2_<lang>.json``) or as JSONL
(one ``{"video_id": ..., "text", "start", "end"}`` or ``{video_id: {...}}`` object per line, ``.jsonl.gz`` too),
times in seconds; and a folder of video features, one file per video: ``<video_id>.npy`` (read with
``allow_pickle=False``: an object array or a pickle is refused, never unpickled) or ``<video_id>.safetensors``
holding a ``features`` tensor. Features are ``[T, D]``, one row per second of video (S3D at 1 token/s, as
VideoCLIP uses), any float dtype (read as float32).

Bad input is counted by reason and skipped, never a crash (unless nothing usable is left), in two passes
as :class:`~percli.core.data.av_clips.AVClipDataset` does:

- when the caption files are read (up front, no feature is loaded), per caption -- the caption is dropped,
  its video kept: ``empty_caption`` (blank text), ``malformed_caption`` (text not a string),
  ``malformed_time`` (a start or end that is not a number), ``out_of_range_time`` (negative or not finite),
  ``reversed_time`` (end <= start); per video and language -- listed in ``bad_records``
  (:class:`~percli.core.data.shards.BadRecords`, which the engine writes to ``summary.json``):
  ``malformed_record`` (not an object with ``text``/``start``/``end`` lists), ``length_mismatch`` (lists
  of different lengths: no caption can be trusted), ``no_caption`` (none left), ``duplicate_id`` (an id
  seen before in the same file: the first one is kept; also in ``bad_records.duplicate_keys``); per video:
  ``missing_features`` (no feature file in the folder, found with one directory listing);
- when an item is read (lazily), the item raises :class:`~percli.core.data.images.BadSample` whose reason
  starts with one of :data:`READ_REASONS` (the engine skips and lists it): ``missing_file``, ``empty_file``
  (zero bytes), ``unreadable_features`` (truncated or corrupt file, no ``features`` tensor),
  ``pickled_features`` (an object-dtype ``.npy`` or a pickle), ``bad_dtype`` (not floating point),
  ``bad_rank`` (not 2-D), ``empty_features`` (zero rows or columns), ``nonfinite_features`` (NaN or inf:
  one bad row would poison a batch's contrastive loss, so the video is skipped), ``wrong_dim`` (D differs
  from ``feature_dim``), ``no_caption`` (every caption starts after the features end). A caption that starts
  after the last feature row is dropped (``out_of_range_time``); one that ends after it is cut at the end.

``skipped`` counts what this process saw (with DataLoader workers each worker counts its own; use
:func:`~percli.core.data.av_clips.skipped_by_reason` on the engine's ``bad_inputs`` instead).

Retrieval manifests are read by :mod:`percli.core.data.video_retrieval` (MSR-VTT, YouCook2, VATEX) into a
:class:`VideoTextRetrievalSet`: captions and the segments they describe (whole videos, or YouCook2 clips cut
from a video's per-second features); :class:`SegmentFeatures` reads their features with the same rules.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from percli.core.data.images import BadSample
from percli.core.data.loader import mix_seed
from percli.core.data.shards import BadRecords, read_records

FEATURE_SUFFIXES = (".npy", ".safetensors")  # the first wins when a folder holds both for one id
SAFETENSORS_KEY = "features"
READ_REASONS = ("missing_file", "empty_file", "unreadable_features", "pickled_features", "bad_dtype", "bad_rank",
                "empty_features", "nonfinite_features", "wrong_dim", "no_caption")
"""Why an item is skipped when it is read (the first word of its ``BadSample`` reason)."""
CAPTION_SUFFIXES = (".json", ".jsonl", ".jsonl.gz")
_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_PROTOCOL_2_PLUS = b"\x80"
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


# ---------------------------------------------------------------------------------------------
# Captions with times


@dataclass(frozen=True)
class TimedCaptions:
    """The captions of one video in one language, sorted by start time (ties keep file order).

    Attributes:
        text: Caption texts (stripped, non-empty).
        start: Start of each caption in seconds (>= 0).
        end: End of each caption in seconds (> its start).
    """

    text: tuple[str, ...]
    start: tuple[float, ...]
    end: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.text)

    def span(self, first: int, last: int) -> tuple[float, float]:
        """Seconds from the start of caption ``first`` to the latest end of captions ``first..last``."""
        return self.start[first], max(self.end[first : last + 1])

    def until(self, seconds: float) -> tuple[TimedCaptions, int]:
        """The captions that start before ``seconds``, their ends cut there, and how many were dropped."""
        keep = [i for i, s in enumerate(self.start) if s < seconds]
        cut = TimedCaptions(tuple(self.text[i] for i in keep), tuple(self.start[i] for i in keep),
                            tuple(min(self.end[i], seconds) for i in keep))
        return cut, len(self) - len(keep)


def parse_seconds(value: Any) -> float | None:
    """A time as float seconds; None for anything that is not a JSON number (bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse_timed_captions(entry: Any, skipped: Counter[str]) -> tuple[TimedCaptions | None, str]:
    """The usable captions of one ``{"text": [...], "start": [...], "end": [...]}`` entry.

    Dropped captions are counted in ``skipped`` by reason (module docstring).

    Returns:
        ``(captions, "")``, or ``(None, "reason: detail")`` when the entry is unusable as a whole.
    """
    if not isinstance(entry, Mapping):
        return None, f"malformed_record: not a JSON object but a {type(entry).__name__}"
    lists = [entry.get(key) for key in ("text", "start", "end")]
    if not all(isinstance(value, list) for value in lists):
        return None, 'malformed_record: "text", "start" and "end" must all be lists'
    texts, starts, ends = lists
    if not len(texts) == len(starts) == len(ends):
        return None, f"length_mismatch: {len(texts)} texts, {len(starts)} starts, {len(ends)} ends"
    kept = []
    for order, (text, start, end) in enumerate(zip(texts, starts, ends)):
        s, e = parse_seconds(start), parse_seconds(end)
        if not isinstance(text, str):
            skipped["malformed_caption"] += 1
        elif not text.strip():
            skipped["empty_caption"] += 1
        elif s is None or e is None:
            skipped["malformed_time"] += 1
        elif not (math.isfinite(s) and math.isfinite(e)) or s < 0:
            skipped["out_of_range_time"] += 1
        elif e <= s:
            skipped["reversed_time"] += 1
        else:
            kept.append((s, order, e, text.strip()))
    if not kept:
        return None, f"no_caption: none of {len(texts)} caption(s) is usable"
    kept.sort()  # by start, then file order
    return TimedCaptions(tuple(c[3] for c in kept), tuple(c[0] for c in kept), tuple(c[2] for c in kept)), ""


class _Repeats(dict):
    """A JSON object that had repeated keys: the first value of each kept, the repeats listed."""

    repeated: list[str]


def _first_key_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` keeping the first value of a repeated key (``json.loads`` keeps the last, silently);
    only an object with repeats pays for a list of them."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    out = _Repeats()
    out.repeated = []
    for key, value in pairs:
        if key in out:
            out.repeated.append(key)
        else:
            out[key] = value
    return out


def _caption_entries(path: Path, bad: BadRecords) -> Iterator[tuple[str, int, str | None, Any]]:
    """(where, position, video id or None, entry) of a caption file; unreadable JSONL lines go to ``bad``;
    a repeated id of a JSON object is yielded again (the caller counts it)."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        for line, record, _ in read_records(path, None, bad):
            video = record.get("video_id", record.get("id"))
            if isinstance(video, str) and "text" in record:
                yield "line", line, video, record
            elif len(record) == 1:  # {video_id: {...}}
                (video, entry), = record.items()
                yield "line", line, video, entry
            else:
                yield "line", line, None, record
        return
    if not name.endswith(".json"):
        raise ValueError(f"{path}: caption files must be {', '.join(CAPTION_SUFFIXES)}; never a pickle")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"), object_pairs_hook=_first_key_wins)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not UTF-8 JSON ({e}); a file with one object per line must be named "
                         ".jsonl") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold one JSON object {{video_id: {{\"text\", \"start\", \"end\"}}}}, "
                         f"got a {type(data).__name__}")
    for position, (video, entry) in enumerate(data.items()):
        yield "item", position, video, entry
    for position, video in enumerate(getattr(data, "repeated", []), start=len(data)):
        yield "item", position, video, None  # a repeated key: counted, its value already dropped


def read_howto_captions(path: str | Path, bad: BadRecords | None = None,
                        skipped: Counter[str] | None = None) -> dict[str, TimedCaptions]:
    """Read one HowTo100M-layout caption file (module docstring) into ``video_id -> TimedCaptions``.

    Args:
        path: ``.json``, ``.jsonl`` or ``.jsonl.gz``.
        bad: Collects dropped videos (and repeated ids in ``duplicate_keys``); a new one when None.
        skipped: Counts dropped captions and videos by reason; a new one when None.

    Raises:
        ValueError: for another suffix, a file that is not JSON, or a JSON value that is not an object.
    """
    path = Path(path)
    bad = bad if bad is not None else BadRecords()
    skipped = skipped if skipped is not None else Counter()
    before = bad.count
    videos: dict[str, TimedCaptions] = {}
    seen: set[str] = set()
    dropped = 0
    for where, position, video, entry in _caption_entries(path, bad):
        if not isinstance(video, str) or not video:
            reason = "malformed_record: no video id"
        elif video in seen:
            skipped["duplicate_id"] += 1
            bad.duplicate_keys += 1
            continue
        else:
            seen.add(video)
            captions, reason = parse_timed_captions(entry, skipped)
            if captions is not None:
                videos[video] = captions
                continue
        skipped[reason.split(":", 1)[0]] += 1
        bad.add(path, position, f"{video}: {reason}" if isinstance(video, str) else reason, where)
        dropped += 1
    rejected = bad.count - before - dropped  # JSONL lines read_records refused (not UTF-8 JSON objects)
    if rejected:
        skipped["malformed_record"] += rejected
    return videos


def find_caption_files(folder: str | Path) -> dict[str, Path]:
    """Language -> caption file of a folder: ``how2_<lang>.json`` / ``.jsonl`` / ``.jsonl.gz`` (Multi-HowTo100M's
    names), or ``"en"`` for HowTo100M's lone ``caption.json``. Other files are ignored."""
    found: dict[str, Path] = {}
    for path in sorted(Path(folder).iterdir()):
        suffix = next((s for s in CAPTION_SUFFIXES[::-1] if path.name.endswith(s)), None)
        if suffix is None or not path.is_file():
            continue
        stem = path.name[: -len(suffix)]
        if stem.startswith("how2_") and len(stem) > len("how2_"):
            found.setdefault(stem[len("how2_"):], path)
        elif stem == "caption":
            found.setdefault("en", path)
    if not found:
        raise ValueError(f"{folder} holds no caption file: expected how2_<lang>.json (Multi-HowTo100M) or "
                         "caption.json (HowTo100M), or pass {language: file}")
    return found


# ---------------------------------------------------------------------------------------------
# Feature files


def list_feature_files(folder: str | Path) -> tuple[dict[str, Path], int]:
    """Video id -> feature file of a flat folder (one directory listing), and how many ids had both a
    ``.npy`` and a ``.safetensors`` file (the ``.npy`` is used)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"feature folder {folder} does not exist: expected <video_id>.npy or "
                         "<video_id>.safetensors files, one per video")
    found: dict[str, Path] = {}
    doubled = 0
    with os.scandir(folder) as entries:
        names = sorted(entry.name for entry in entries if not entry.is_dir())
    for suffix in FEATURE_SUFFIXES:
        for name in names:
            if name.endswith(suffix):
                video = name[: -len(suffix)]
                if video in found:
                    doubled += 1
                else:
                    found[video] = folder / name
    return found, doubled


def bad_feature(path: str | Path, reason: str, detail: str) -> BadSample:
    return BadSample(path, f"{reason}: {detail}")


def _read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array, refusing pickles and object arrays before anything is unpickled."""
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
        if head != _NPY_MAGIC:
            if head.startswith(_PICKLE_PROTOCOL_2_PLUS):
                raise bad_feature(path, "pickled_features",
                                  "a pickle, not a .npy array: refused (percli never unpickles)")
            raise bad_feature(path, "unreadable_features", "not a .npy file (no NUMPY magic)")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            read_header = _NPY_HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f"format version {version}; expected 1.0 or 2.0")
            _, _, dtype = read_header(f)  # the header only: no data is read, nothing unpickled
        except (ValueError, OSError, SyntaxError) as e:
            raise bad_feature(path, "unreadable_features", f"bad .npy header: {e}") from None
    if dtype.hasobject:
        raise bad_feature(path, "pickled_features", f"object dtype {dtype}: refused (percli never unpickles)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise bad_feature(path, "unreadable_features", f"{type(e).__name__}: {e} (truncated file?)") from None


def _read_safetensors(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for every corruption
        raise bad_feature(path, "unreadable_features", f"{type(e).__name__}: {e}") from None
    if SAFETENSORS_KEY not in tensors:
        raise bad_feature(path, "unreadable_features",
                          f"no {SAFETENSORS_KEY!r} tensor (has: {', '.join(sorted(tensors))})")
    return tensors[SAFETENSORS_KEY]


def load_features(path: str | Path, feature_dim: int | None = None) -> torch.Tensor:
    """Per-second video features of one file as float32 [T, D].

    Args:
        path: ``<id>.npy`` or ``<id>.safetensors`` (a ``features`` tensor).
        feature_dim: Expected D; any when None.

    Raises:
        BadSample: with a :data:`READ_REASONS` reason (module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise bad_feature(path, "missing_file", "no such file")
    if path.stat().st_size == 0:
        raise bad_feature(path, "empty_file", "the file has zero bytes")
    if path.name.endswith(".safetensors"):
        tensor = _read_safetensors(path)
    elif path.name.endswith(".npy"):
        array = _read_npy(path)
        if not (np.issubdtype(array.dtype, np.floating)):
            raise bad_feature(path, "bad_dtype", f"{array.dtype} features; expected floating point")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        raise bad_feature(path, "unreadable_features", f"unknown suffix; expected {' or '.join(FEATURE_SUFFIXES)}")
    if not tensor.is_floating_point():
        raise bad_feature(path, "bad_dtype", f"{tensor.dtype} features; expected floating point")
    if tensor.dim() != 2:
        raise bad_feature(path, "bad_rank", f"shape {tuple(tensor.shape)}; expected [T, D] (one row per second)")
    if 0 in tensor.shape:
        raise bad_feature(path, "empty_features", f"shape {tuple(tensor.shape)}")
    if feature_dim is not None and tensor.shape[1] != feature_dim:
        raise bad_feature(path, "wrong_dim", f"D = {tensor.shape[1]}, expected {feature_dim}")
    tensor = tensor.float()
    if not bool(torch.isfinite(tensor).all()):
        rows = int((~torch.isfinite(tensor)).any(dim=1).sum())
        raise bad_feature(path, "nonfinite_features", f"{rows} of {tensor.shape[0]} row(s) hold NaN or inf")
    return tensor


# ---------------------------------------------------------------------------------------------
# HowTo100M / Multi-HowTo100M


class HowToVideoText(Dataset):
    """Videos with per-second features and timed captions in one or more languages (module docstring).

    Args:
        captions: A caption file (its language: ``language``), ``{language: caption file}``, or a folder of
            ``how2_<lang>.json`` files (:func:`find_caption_files`).
        features: Folder of ``<video_id>.npy`` / ``.safetensors`` files; ``<captions folder>/features`` when
            None and ``captions`` is a folder.
        feature_dim: Expected D of every file (others raise ``wrong_dim``); any when None.
        language: The language of a single caption file.

    Items: ``{"id": str, "features": float32 [T, D], "captions": {language: TimedCaptions}}`` with the
    languages that have captions for the video (at least one), each cut to the features' T seconds.

    Attributes:
        videos: Usable video ids, in first-appearance order (languages in sorted order).
        languages: The languages read.
        skipped: Count per reason of what was dropped while indexing and skipped while reading.
        bad_records: Dropped caption entries (count, first examples) and repeated ids.
    """

    def __init__(self, captions: str | Path | Mapping[str, str | Path], features: str | Path | None = None, *,
                 feature_dim: int | None = None, language: str = "en") -> None:
        if isinstance(captions, Mapping):
            files = {lang: Path(p) for lang, p in captions.items()}
        elif Path(captions).is_dir():
            files = find_caption_files(captions)
            features = Path(captions) / "features" if features is None else features
        else:
            files = {language: Path(captions)}
        if features is None:
            raise ValueError("give the feature folder (features=...) when captions is a file")
        if not files:
            raise ValueError("no caption file given")
        self.feature_dim = feature_dim
        self.languages = tuple(sorted(files))
        self.skipped: Counter[str] = Counter()
        self.bad_records = BadRecords()
        per_language = {lang: read_howto_captions(files[lang], self.bad_records, self.skipped)
                        for lang in self.languages}
        paths, doubled = list_feature_files(features)
        if doubled:
            self.skipped["duplicate_feature_file"] += doubled
        self.videos: list[str] = []
        self.feature_paths: dict[str, Path] = {}
        self.captions: dict[str, dict[str, TimedCaptions]] = {}
        for lang in self.languages:
            for video, timed in per_language[lang].items():
                if video not in self.captions:
                    if video not in paths:
                        self.skipped["missing_features"] += 1
                        self.captions[video] = {}  # remembered, so other languages do not count it again
                        continue
                    self.videos.append(video)
                    self.feature_paths[video] = paths[video]
                    self.captions[video] = {}
                if video in self.feature_paths:
                    self.captions[video][lang] = timed
        if not self.videos:
            raise ValueError(f"no usable video in {', '.join(map(str, files.values()))} with features in "
                             f"{features} ({dict(self.skipped)} skipped; first: {self.bad_records.examples[:1]})")

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video = self.videos[index]
        try:
            features = load_features(self.feature_paths[video], self.feature_dim)
            captions = {}
            for lang, timed in self.captions[video].items():
                cut, dropped = timed.until(float(features.shape[0]))
                self.skipped["out_of_range_time"] += dropped
                if len(cut):
                    captions[lang] = cut
            if not captions:
                raise bad_feature(self.feature_paths[video], "no_caption",
                           f"every caption starts after the features end ({features.shape[0]} s)")
        except BadSample as bad:
            self.skipped[bad.reason.split(":", 1)[0]] += 1
            raise
        return {"id": video, "features": features, "captions": captions}


# ---------------------------------------------------------------------------------------------
# VideoCLIP's temporally overlapping clips


def whitespace_token_length(text: str) -> int:
    """Tokens of a caption as whitespace-separated words (pass a tokenizer's length for BERT word pieces)."""
    return len(text.split())


@dataclass(frozen=True)
class OverlapSampling:
    """How overlapping video/text clips are drawn (VideoCLIP's pretraining values; all ranges inclusive).

    Attributes:
        min_text_len: Least drawn text length in tokens (MMPT ``sampled_min_len``).
        max_text_len: Most drawn text length in tokens (MMPT ``sampled_max_len``).
        min_video_len: Least drawn video clip length in seconds (MMPT ``sampled_video_min_len``).
        max_video_len: Most drawn video clip length in seconds (MMPT ``sampled_video_max_len``).
        clips_per_video: Clip pairs drawn per video (MMPT ``clip_per_video``).
        max_text_span_s: A text clip stops growing once it spans this many seconds (MMPT's text sampler
            stops at 256).
    """

    min_text_len: int = 8
    max_text_len: int = 64
    min_video_len: int = 3
    max_video_len: int = 32
    clips_per_video: int = 16
    max_text_span_s: float = 256.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_text_len <= self.max_text_len:
            raise ValueError(f"text lengths {self.min_text_len}..{self.max_text_len}: need 1 <= min <= max")
        if not 1 <= self.min_video_len <= self.max_video_len:
            raise ValueError(f"video lengths {self.min_video_len}..{self.max_video_len}: need 1 <= min <= max")
        if self.clips_per_video < 1 or self.max_text_span_s <= 0:
            raise ValueError(f"clips_per_video={self.clips_per_video}, max_text_span_s={self.max_text_span_s}: "
                             "both must be positive")


@dataclass(frozen=True)
class SampledClip:
    """One video/text clip pair.

    Attributes:
        first_caption: Index of the text clip's first caption.
        last_caption: Index of its last caption (inclusive; the captions in between are all in the clip).
        text_start: Start of the text clip in seconds (its first caption's start).
        text_end: End of the text clip in seconds (the latest end of its captions).
        video_start: First feature row (second) of the video clip.
        video_end: One past its last row: the clip is ``features[video_start:video_end]``.
        target_text_len: The drawn text length in tokens.
        text_len: The text clip's length in tokens.
    """

    first_caption: int
    last_caption: int
    text_start: float
    text_end: float
    video_start: int
    video_end: int
    target_text_len: int
    text_len: int

    @property
    def caption_indices(self) -> range:
        return range(self.first_caption, self.last_caption + 1)


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] (both inclusive, as Python's ``random.randint``)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def sample_overlapping_clip(captions: TimedCaptions, num_seconds: int, generator: torch.Generator,
                            sampling: OverlapSampling = OverlapSampling(),
                            token_length: Callable[[str], int] = whitespace_token_length) -> SampledClip:
    """Draw one temporally overlapping video/text clip pair (VideoCLIP, Xu et al. 2021, section 3.1).

    Follows MMPT's ``OverlappedAligner`` (``TextClipSamplingProcessor`` + ``VideoClipSamplingProcessor``,
    examples/MMPT/mmpt/processors/how2processor.py) in:

    1. a centre caption drawn uniformly among the video's captions;
    2. a target text length ``U{min_text_len..max_text_len}`` tokens (inclusive, ``random.randint``);
    3. growing the text clip one neighbouring caption at a time -- to the right or left with probability
       1/2 when both exist, else to the side that has one -- while it is shorter than the target, has
       captions left, and spans less than ``max_text_span_s`` (MMPT: 256 s). It may therefore pass the
       target by less than one caption (growth stops at the first length >= target);
    4. a centre second drawn uniformly in ``{floor(s)..ceil(e)}`` of the text span [s, e], clamped to
       ``[0, num_seconds - 1]``;
    5. a video clip length ``U{min_video_len..max_video_len}`` seconds, at most the whole video.

    Where it departs (choices made here):

    - the video clip is placed centred on the centre second (``[c - L // 2, c - L // 2 + L)``), then
      shifted into the video; MMPT grows it from ``c`` one second at a time to a random side, so ``c``
      lands anywhere in the clip (or just outside it: all steps to the left give ``[c - L, c)``);
    - the placement is also clamped to the starts whose clip overlaps [s, e], so every video clip
      overlaps its text clip. MMPT's can miss it by a second when ``c = ceil(e)`` and the clip grows to the
      right. With a centred clip the clamp only binds for one-second clips (and at the video's ends);
    - the text span ends at the latest end of its captions (MMPT: the last caption's end);
    - no truncation: MMPT's aligner then cuts text to ``max_len - max_video_len - 3`` = 61 tokens and video
      to 32 s; here the tokenizer truncates and :class:`OverlappedClips` pads to ``max_video_len``;
    - MMPT's ``keep_prob`` caption skipping is left out (VideoCLIP runs with its default 1.0: no skips).

    Args:
        captions: The video's captions (non-empty, sorted by start, each starting before ``num_seconds``).
        num_seconds: T, the video's feature rows (one per second).
        generator: Source of every random draw (same state, same clip).
        sampling: Length ranges.
        token_length: Tokens of one caption text (e.g. a tokenizer's length without special tokens).

    Returns:
        The clip pair: caption range, text span, video rows, drawn and actual text lengths.
    """
    count = len(captions)
    if count == 0 or num_seconds < 1:
        raise ValueError(f"cannot sample a clip from {count} caption(s) over {num_seconds} s")
    if captions.start[-1] >= num_seconds:
        raise ValueError(f"a caption starts at {captions.start[-1]} s, after the video's {num_seconds} s "
                         "(TimedCaptions.until cuts them)")
    lengths: dict[int, int] = {}

    def tokens(i: int) -> int:
        if i not in lengths:
            lengths[i] = token_length(captions.text[i])
        return lengths[i]

    first = last = _randint(0, count - 1, generator)
    target = _randint(sampling.min_text_len, sampling.max_text_len, generator)
    text_len = tokens(first)
    span_s, span_e = captions.span(first, last)
    while text_len < target and span_e - span_s < sampling.max_text_span_s and (first > 0 or last < count - 1):
        right = last < count - 1 and (first == 0 or bool(torch.rand((), generator=generator) < 0.5))
        if right:
            last += 1
            text_len += tokens(last)
        else:
            first -= 1
            text_len += tokens(first)
        span_s, span_e = captions.span(first, last)

    low, high = math.floor(span_s), math.ceil(span_e)
    centre = min(max(_randint(low, high, generator), 0), num_seconds - 1)
    length = min(_randint(sampling.min_video_len, sampling.max_video_len, generator), num_seconds)
    # Starts whose clip [start, start + length) lies in the video and overlaps [span_s, span_e]:
    # start < span_e and start + length > span_s. Non-empty because span_s < num_seconds and span_e > span_s >= 0.
    lowest = max(0, low - length + 1)
    highest = min(num_seconds - length, high - 1)
    start = min(max(centre - length // 2, lowest), highest)
    return SampledClip(first, last, span_s, span_e, start, start + length, target, text_len)


def sample_overlapping_clips(captions: TimedCaptions, num_seconds: int, generator: torch.Generator,
                             sampling: OverlapSampling = OverlapSampling(),
                             token_length: Callable[[str], int] = whitespace_token_length) -> list[SampledClip]:
    """``sampling.clips_per_video`` independent draws of :func:`sample_overlapping_clip` (MMPT: 16 per video)."""
    return [sample_overlapping_clip(captions, num_seconds, generator, sampling, token_length)
            for _ in range(sampling.clips_per_video)]


class OverlappedClips(Dataset):
    """Per video, ``clips_per_video`` overlapping video/text clip pairs of a video-text dataset.

    Args:
        videos: A dataset with :class:`HowToVideoText` items (or
            :class:`~percli.core.data.embedded_video_text.EmbeddedVideoText`).
        language: Whose captions make the text clips; a video without captions in it raises
            ``BadSample("no_caption: ...")``.
        sampling: Length ranges and clips per video.
        token_length: Tokens of a caption.
        seed: None: each item draws a generator seed from torch's global RNG, which the engine reseeds per
            (seed, epoch, index) (:class:`~percli.core.data.loader.SeededSamples`), so draws are reproducible
            and change every epoch. An int: item ``i`` always draws the same clips (evaluation).

    Items: ``{"id": str, "video": float32 [K, max_video_len, D] (zero-padded), "video_mask": bool
    [K, max_video_len], "text": [K] str (the clip's captions joined by spaces), "clips": [K] SampledClip}``.
    """

    def __init__(self, videos: Dataset, *, language: str = "en", sampling: OverlapSampling = OverlapSampling(),
                 token_length: Callable[[str], int] = whitespace_token_length, seed: int | None = None) -> None:
        self.videos, self.language, self.sampling = videos, language, sampling
        self.token_length, self.seed = token_length, seed
        self.skipped: Counter[str] = getattr(videos, "skipped", None) or Counter()  # shared with the base's

    def __len__(self) -> int:
        return len(self.videos)  # type: ignore[arg-type]

    @property
    def bad_records(self) -> BadRecords | None:
        return getattr(self.videos, "bad_records", None)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.videos[index]
        features, captions = item["features"], item["captions"].get(self.language)
        if captions is None:
            self.skipped["no_caption"] += 1
            raise bad_feature(item["id"], "no_caption", f"no {self.language!r} caption")
        seed = int(torch.randint(0, 2**62, ())) if self.seed is None else mix_seed(self.seed, index)
        clips, video, mask = overlapped_clip_batch(captions, features, torch.Generator().manual_seed(seed),
                                                   self.sampling, self.token_length)
        return {"id": item["id"], "video": video, "video_mask": mask, "text": clip_texts(captions, clips),
                "clips": clips}


def overlapped_clip_batch(captions: TimedCaptions, features: torch.Tensor, generator: torch.Generator,
                          sampling: OverlapSampling, token_length: Callable[[str], int]
                          ) -> tuple[list[SampledClip], torch.Tensor, torch.Tensor]:
    """A video's overlapping clips (`sample_overlapping_clips` on `captions`) and their features, each padded to
    ``sampling.max_video_len``: (clips, video [K, max_video_len, D], mask [K, max_video_len])."""
    clips = sample_overlapping_clips(captions, features.shape[0], generator, sampling, token_length)
    video = features.new_zeros(len(clips), sampling.max_video_len, features.shape[1])
    mask = torch.zeros(len(clips), sampling.max_video_len, dtype=torch.bool)
    for k, clip in enumerate(clips):
        rows = features[clip.video_start : clip.video_end]
        video[k, : len(rows)], mask[k, : len(rows)] = rows, True
    return clips, video, mask


def clip_texts(captions: TimedCaptions, clips: Sequence[SampledClip]) -> list[str]:
    """Each clip's text: its captions joined by spaces."""
    return [" ".join(captions.text[clip.first_caption : clip.last_caption + 1]) for clip in clips]


def collate_video_text_clips(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch :class:`OverlappedClips` items into B * K clip pairs.

    Returns:
        ``{"id": [B], "video": float32 [B*K, L, D], "video_mask": bool [B*K, L], "text": [B*K] str,
        "video_index": long [B*K] (the item each clip came from: clips of one video are each other's
        hardest negatives), "clips": [B*K] SampledClip}``.
    """
    if not items:
        raise ValueError("collate_video_text_clips got an empty batch")
    return {
        "id": [item["id"] for item in items],
        "video": torch.cat([item["video"] for item in items]),
        "video_mask": torch.cat([item["video_mask"] for item in items]),
        "text": [text for item in items for text in item["text"]],
        "video_index": torch.cat([torch.full((len(item["text"]),), b, dtype=torch.long)
                                  for b, item in enumerate(items)]),
        "clips": [clip for item in items for clip in item["clips"]],
    }
