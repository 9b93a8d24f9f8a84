"""Captioned audio-video clips: a JSONL manifest (or records) read into waveforms, frames and captions.

The manifest is the ``captions.jsonl`` that :func:`percli.core.data.av_events.make_av_events` writes, one
``{"id", "video", "audio", "captions": [str, ...]}`` object per line; paths relative to the manifest's
folder. ``audio`` may be omitted or null: the audio track of ``video`` is read instead. Items are
``{"id": str, "waveform": float32 [1, T], "frames": uint8 [N, 3, H, W], "captions": [str]}``, without
``waveform`` or ``frames`` when that modality is not requested; :func:`collate_av_clips` pads them into a
batch with validity masks.

Bad input is skipped and counted by reason in ``AVClipDataset.skipped`` (a ``Counter``), in two passes:

- when the manifest is read (up front, no decoding): a line that is not a JSON object with a string
  ``id``, the paths the modalities need and a list of ``captions`` (``malformed_record``), an ``id``
  seen before (``duplicate_id``: the first one is kept), a caption that is empty or blank
  (``empty_caption``) or not a string (``malformed_caption``) -- the caption is dropped, the clip kept
  -- and a clip left without captions when captions are required (``no_caption``: dropped). Dropped
  lines are also listed in ``bad_records`` (:class:`~percli.core.data.shards.BadRecords`, which the
  engine writes to ``summary.json``; repeated ids go to its ``duplicate_keys``);
- when an item is read (lazily, so a large set costs no scan): a missing file (``missing_file``), a
  zero-byte file (``empty_file``), a video no decoder can open or read (``corrupt_video``), a video
  container without an audio stream when audio is requested (``no_audio_track``), audio that decodes
  to all zeros (``silent_audio``), shorter than ``min_audio_seconds`` (``short_audio``, e.g. one
  sample) or that does not decode (``unreadable_audio``). The item raises
  :class:`~percli.core.data.images.BadSample` with the reason as the first word of its message, the
  engine's contract: the engine skips it and lists it in ``summary.json`` (``bad_inputs``).

``skipped`` counts what this process saw: read it after iterating the dataset in the main process.
With DataLoader workers each worker counts its own; count the ``BadSample`` reasons the loop collected
instead with :func:`skipped_by_reason`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from percli.core.data.audio import AUDIO_EXTENSIONS, load_audio
from percli.core.data.images import BadSample
from percli.core.data.paths import resolve_manifest_path
from percli.core.data.shards import BadRecords, read_records
from percli.core.data.video import BACKENDS, read_clip

MODALITIES = ("audio", "video")
MANIFEST_NAME = "captions.jsonl"
READ_REASONS = ("missing_file", "empty_file", "corrupt_video", "no_audio_track", "silent_audio", "short_audio",
                "unreadable_audio")
"""Why an item is skipped when it is read (the first word of its ``BadSample`` reason)."""


@dataclass(frozen=True)
class AVRecord:
    """One usable manifest entry: its id, resolved paths (None when absent) and non-empty captions."""

    id: str
    video: str | None
    audio: str | None
    captions: tuple[str, ...]


def _bad(path: str, reason: str, detail: str) -> BadSample:
    return BadSample(path, f"{reason}: {detail}")


def skipped_by_reason(bad_inputs: Iterable[Mapping[str, str]]) -> Counter[str]:
    """Count skipped items by reason from ``{"path", "reason"}`` entries (the engine's ``bad_inputs``,
    or the markers of :class:`~percli.core.data.loader.SeededSamples`); reasons not written by this
    reader count as ``other``."""
    counts: Counter[str] = Counter()
    for entry in bad_inputs:
        reason = str(entry.get("reason", "")).split(":", 1)[0]
        counts[reason if reason in READ_REASONS else "other"] += 1
    return counts


class AVClipDataset(Dataset):
    """Captioned audio-video clips from a manifest or from records (see the module docstring).

    Args:
        source: A ``captions.jsonl`` manifest, a folder holding one, or records (dicts with the manifest's
            fields; relative paths are taken from the current directory).
        sample_rate: Output audio rate in Hz (files are resampled, stereo averaged to mono).
        num_frames: Frames per item, spread evenly from the first to the last frame of the video.
        fps: Instead of ``num_frames``: every frame at this rate (``round(duration * fps)`` frames spread
            over the video, repeating frames when it exceeds the video's own rate). With neither, every
            frame at the video's own rate.
        frame_size: Resize frames to this side (int) or ``(height, width)``; the video's size when omitted.
        modalities: What to decode, a non-empty subset of ``("audio", "video")``.
        require_captions: Drop clips that have no non-empty caption.
        min_audio_seconds: Shorter audio is skipped (``short_audio``).
        backend: Video reader (``"auto"``, ``"decord"``, ``"pyav"``; see :func:`~percli.core.data.video.read_clip`).
        caption_key: The manifest field holding the captions (a list of strings), e.g. LLM-rewritten captions
            beside ``captions``.

    Attributes:
        records: The usable entries, in manifest order.
        skipped: Count per reason of what was dropped while indexing and skipped while reading.
        bad_records: Dropped manifest lines (count and first examples) and repeated ids.
    """

    def __init__(
        self,
        source: str | Path | Sequence[Mapping[str, Any]],
        *,
        sample_rate: int = 16000,
        num_frames: int | None = None,
        fps: float | None = None,
        frame_size: int | tuple[int, int] | None = None,
        modalities: Sequence[str] = MODALITIES,
        require_captions: bool = True,
        min_audio_seconds: float = 0.1,
        backend: str = "auto",
        caption_key: str = "captions",
    ) -> None:
        self.modalities = tuple(modalities)
        if not self.modalities or set(self.modalities) - set(MODALITIES):
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}")
        if num_frames is not None and fps is not None:
            raise ValueError(f"give num_frames ({num_frames}) or fps ({fps}), not both")
        if (num_frames is not None and num_frames < 1) or (fps is not None and fps <= 0):
            raise ValueError(f"num_frames must be >= 1 and fps > 0, got num_frames={num_frames}, fps={fps}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if backend not in BACKENDS:  # a missing decord is reported by read_clip on the first item
            raise ValueError(f"unknown video backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.sample_rate, self.num_frames, self.fps, self.backend = int(sample_rate), num_frames, fps, backend
        self.frame_size = (frame_size, frame_size) if isinstance(frame_size, int) else frame_size
        self.require_captions, self.caption_key = require_captions, caption_key
        self.min_audio_samples = max(1, round(min_audio_seconds * self.sample_rate))
        self.skipped: Counter[str] = Counter()
        self.bad_records = BadRecords()
        self.records = self._index(source)

    # ------------------------------------------------------------------------------------- indexing

    def _index(self, source: str | Path | Sequence[Mapping[str, Any]]) -> list[AVRecord]:
        if isinstance(source, (str, Path)):
            manifest = Path(source).expanduser()
            if manifest.is_dir():
                manifest = manifest / MANIFEST_NAME
            if not manifest.is_file():
                raise ValueError(f"AV clip source {str(source)!r} is not a {MANIFEST_NAME} manifest or a folder "
                                 "holding one (make_av_events writes it)")
            entries = ((line, obj) for line, obj, _ in read_records(manifest, None, self.bad_records))
            where, base, name = "line", manifest.parent, manifest
        else:
            entries = enumerate(source)
            where, base, name = "record", Path(), Path("<records>")
        records, seen, dropped = [], set(), 0
        for position, obj in entries:
            record, reason = self._record(obj, base)
            if record is not None and record.id in seen:
                self.skipped["duplicate_id"] += 1
                self.bad_records.duplicate_keys += 1
                continue
            if record is None:
                self.skipped[reason.split(":", 1)[0]] += 1
                self.bad_records.add(name, position, reason, where)
                dropped += 1
                continue
            seen.add(record.id)
            records.append(record)
        if self.bad_records.count > dropped:  # lines read_records rejected (not UTF-8 JSON objects)
            self.skipped["malformed_record"] += self.bad_records.count - dropped
        if not records:
            raise ValueError(f"{name}: no usable clip ({dict(self.skipped)} skipped; first: "
                             f"{self.bad_records.examples[:1]}); each {where} needs an \"id\", the paths of "
                             f"{' and '.join(self.modalities)} and non-empty \"captions\"")
        return records

    def _record(self, obj: Any, base: Path) -> tuple[AVRecord | None, str]:
        """The usable entry of one manifest object, or None and why it is dropped (``reason: detail``)."""
        if not isinstance(obj, Mapping):
            return None, f"malformed_record: not a JSON object but a {type(obj).__name__}"
        if not isinstance(obj.get("id"), str) or not obj["id"]:
            return None, 'malformed_record: missing or non-string "id"'
        paths = {}
        for field in ("video", "audio"):
            value = obj.get(field)
            if value is not None and (not isinstance(value, str) or not value):
                return None, f'malformed_record: "{field}" must be a path or null, got {value!r}'
            paths[field] = resolve_manifest_path(base, value) if value else None
        if "video" in self.modalities and paths["video"] is None:
            return None, 'malformed_record: video requested but "video" is missing'
        if "audio" in self.modalities and paths["audio"] is None and paths["video"] is None:
            return None, 'malformed_record: audio requested but neither "audio" nor "video" is given'
        captions = obj.get(self.caption_key, [])
        if not isinstance(captions, list):
            return None, (f'malformed_record: "{self.caption_key}" must be a list of strings, got '
                          f'{type(captions).__name__}')
        kept = []
        for caption in captions:
            if not isinstance(caption, str):
                self.skipped["malformed_caption"] += 1
            elif not caption.strip():
                self.skipped["empty_caption"] += 1
            else:
                kept.append(caption.strip())
        if self.require_captions and not kept:
            return None, "no_caption: no non-empty caption left"
        return AVRecord(obj["id"], paths["video"], paths["audio"], tuple(kept)), ""

    # -------------------------------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        item: dict[str, Any] = {"id": record.id, "captions": list(record.captions)}
        try:
            if "audio" in self.modalities:
                item["waveform"] = self._waveform(record.audio or record.video)
            if "video" in self.modalities:
                item["frames"] = self._frames(record.video)
        except BadSample as bad:
            self.skipped[bad.reason.split(":", 1)[0]] += 1
            raise
        return item

    @staticmethod
    def _check_file(path: str) -> None:
        file = Path(path)
        if not file.is_file():
            raise _bad(path, "missing_file", "no such file")
        if file.stat().st_size == 0:
            raise _bad(path, "empty_file", "the file has zero bytes")

    @staticmethod
    def _probe(path: str) -> av.container.InputContainer:
        try:
            return av.open(path)
        except Exception as e:  # noqa: BLE001 - FFmpeg raises many error types for bad input
            raise _bad(path, "corrupt_video", f"cannot open: {type(e).__name__}: {e}") from e

    def _waveform(self, path: str) -> torch.Tensor:
        """float32 [1, T] at ``sample_rate``, or :class:`BadSample` with a :data:`READ_REASONS` reason."""
        self._check_file(path)
        if Path(path).suffix.lower() not in AUDIO_EXTENSIONS:  # the audio track of a video container
            with self._probe(path) as container:
                if not container.streams.audio:
                    raise _bad(path, "no_audio_track", "the video has no audio stream")
        try:
            wave = load_audio(path, self.sample_rate)
        except BadSample as bad:
            # load_audio words these two cases "silent ..." and "no audio samples"; any other is a decode error.
            reason = bad.reason
            code = ("silent_audio" if reason.startswith("silent") else
                    "short_audio" if reason.startswith("no audio samples") else "unreadable_audio")
            raise _bad(path, code, reason) from None
        if wave.shape[-1] < self.min_audio_samples:
            raise _bad(path, "short_audio", f"{wave.shape[-1]} sample(s) at {self.sample_rate} Hz, fewer than "
                                            f"{self.min_audio_samples}")
        return wave.float()

    def _frame_count(self, path: str) -> int:
        """Frames to read: ``num_frames``, or the video's duration times ``fps`` (its own rate by default)."""
        if self.num_frames is not None:
            return self.num_frames
        with self._probe(path) as container:
            if not container.streams.video:
                raise _bad(path, "corrupt_video", "no video stream")
            stream = container.streams.video[0]
            rate = float(self.fps or stream.average_rate or stream.guessed_rate or 0.0)
            if stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / av.time_base
            if self.fps is None and stream.frames > 0:
                return stream.frames
        if seconds <= 0 or rate <= 0:
            raise _bad(path, "corrupt_video", "the container gives no duration or frame rate")
        return max(1, round(seconds * rate))

    def _frames(self, path: str) -> torch.Tensor:
        """uint8 [N, 3, H, W], or :class:`BadSample` with a :data:`READ_REASONS` reason."""
        self._check_file(path)
        count = self._frame_count(path)
        try:
            frames = read_clip(path, count, 0, train=False, backend=self.backend)  # [N, 3, H, W]
        except BadSample as bad:
            raise _bad(path, "corrupt_video", bad.reason) from None
        if self.frame_size is not None and tuple(frames.shape[-2:]) != tuple(self.frame_size):
            frames = TF.resize(frames, list(self.frame_size), antialias=True)
        return frames


def collate_av_clips(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch items of :class:`AVClipDataset` (or :class:`~percli.core.data.av_events.EmbeddedAVEvents`).

    Waveforms and frames are right-padded with zeros to the longest item.

    Returns:
        ``{"id": [B], "captions": [B][str], "waveform": float32 [B, 1, T], "audio_mask": bool [B, T],
        "frames": uint8 [B, N, 3, H, W], "video_mask": bool [B, N]}`` (True = real sample or frame), the
        audio or video entries only when the items carry them; any other key as a list.

    Raises:
        ValueError: On an empty batch, items with different keys, or frames of different sizes.
    """
    if not items:
        raise ValueError("collate_av_clips got an empty batch")
    keys = set(items[0])
    if any(set(item) != keys for item in items):
        raise ValueError(f"items carry different keys: {sorted({k for item in items for k in item} - keys)} in some "
                         "only; build them with the same modalities")
    batch: dict[str, Any] = {k: [item[k] for item in items] for k in items[0] if k not in ("waveform", "frames")}
    if "waveform" in keys:
        lengths = [item["waveform"].shape[-1] for item in items]
        waveform = torch.zeros(len(items), 1, max(lengths), dtype=torch.float32)  # [B, 1, T]
        for b, item in enumerate(items):
            waveform[b, :, : lengths[b]] = item["waveform"]
        batch["waveform"] = waveform
        batch["audio_mask"] = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]  # [B, T]
    if "frames" in keys:
        sizes = {tuple(item["frames"].shape[1:]) for item in items}
        if len(sizes) > 1:
            raise ValueError(f"frames of different sizes in one batch {sorted(sizes)}: set frame_size on the dataset")
        counts = [item["frames"].shape[0] for item in items]
        frames = torch.zeros(len(items), max(counts), *sizes.pop(), dtype=torch.uint8)  # [B, N, 3, H, W]
        for b, item in enumerate(items):
            frames[b, : counts[b]] = item["frames"]
        batch["frames"] = frames
        batch["video_mask"] = torch.arange(max(counts))[None] < torch.tensor(counts)[:, None]  # [B, N]
    return batch
