"""The PerceptionLM release's conversation data: JSONL lines of media and turns, read and checked.

One JSON object per line, as perception_models' ``apps/plm`` reads it (``docs/training.md``,
``core/data/preprocessor.py``, ``core/data/conversation.py``)::

    {"image": "relative/or/absolute.jpg", "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"},
                                                             {"from": "assistant", "value": "A dog."}]}

* media: ``"image"`` (a path, or a list of paths for several images), ``"video"`` (a path; optional
  ``"start_time"`` / ``"end_time"`` in seconds), or neither (a text-only sample). Relative paths are joined
  onto the release's ``root_dir`` (``root=`` here; the JSONL's folder when omitted).
* turns: ``"from"`` is ``human`` or ``assistant`` (LLaVA's ``user`` / ``gpt`` are read as those), ``"value"``
  the text; a line without ``"conversations"`` but with a ``"text"`` is a caption, read as an empty human turn
  and the text as the answer (the release's rule).
* placeholders: ``<image>`` / ``<video>`` in the human turns say where the media goes. For one image or a video
  the release drops them from the first turn and places the media itself, so there may be at most one, in
  the first turn; several images need exactly one ``<image>`` per image (they stay where they are).
* other fields pass through in :attr:`ConversationRecord.fields` (``bbox`` with ``width`` / ``height``,
  ``bbox_map``, ids, and the embedded data's ``question_type`` / ``answer``).

Checks are stricter than the release, whose loader drops a bad sample only when it fails mid-batch: a line
that would fail or mistrain is skipped here and counted by reason (:data:`SKIP_REASONS`), and never stops a
run. The turns must alternate human, assistant, ... and end with an assistant turn (the release ignores a
leading assistant turn and a trailing question; here both are ``roles_not_alternating``). A record whose
``id`` / ``uuid`` repeats a kept record's is ``duplicate_id``: predictions and scores are keyed by it.
Media files are checked for existence only; decoding them is the processor's job, which raises
:class:`~percli.core.data.images.BadSample` for an unreadable one.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percli.core.data.paths import resolve_manifest_path
from percli.core.data.shards import BadRecords, read_records, record_identity

HUMAN, ASSISTANT = "human", "assistant"
ROLE_ALIASES = {"human": HUMAN, "user": HUMAN, "assistant": ASSISTANT, "gpt": ASSISTANT}
MEDIA_TYPES = ("image", "multi_image", "video", "text")
PLACEHOLDER_TAGS = ("<image>", "<video>")
SKIP_REASONS: tuple[str, ...] = (
    "malformed_line",  # not UTF-8, not JSON (a truncated line), or not a JSON object
    "bad_media_field",  # "image" / "video" of the wrong type or empty
    "image_and_video",  # both keys on one line
    "no_conversations",  # no (or an empty / non-list) "conversations" and no "text"
    "bad_turn",  # a turn that is not {"from": known role, "value": text}
    "no_assistant_turn",
    "roles_not_alternating",  # not human, assistant, human, assistant, ... ending with an assistant turn
    "placeholder_mismatch",  # <image>/<video> tags that do not fit the media (module docstring)
    "bad_times",  # a video's start_time / end_time not seconds >= 0 with end > start
    "bbox_without_size",  # "bbox" without positive "width" and "height" (the release asserts both)
    "duplicate_id",
    "missing_media",  # a media file that does not exist
)
_NUMBER = (int, float)


class ConversationError(ValueError):
    """A conversation the release format cannot train on.

    Attributes:
        reason: One of :data:`SKIP_REASONS` (what ``counts`` tallies).
        detail: What exactly is wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class ConversationRecord:
    """One usable line.

    Attributes:
        id: The line's ``id`` / ``uuid`` as text, else ``<file stem>:<line>``.
        line: Line number in the file (1-based).
        media_type: ``"image"``, ``"multi_image"``, ``"video"`` or ``"text"``.
        media: Resolved paths (one, several for ``multi_image``, none for ``text``).
        conversations: The turns, ``[{"from": "human" | "assistant", "value": str}, ...]``, roles normalised.
        start_time: Seconds where a video's clip starts (None: its start).
        end_time: Seconds where it ends (None: its end).
        fields: The line's other fields.
    """

    id: str
    line: int
    media_type: str
    media: tuple[str, ...]
    conversations: list[dict[str, str]]
    start_time: float | None = None
    end_time: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def answers(self) -> list[str]:
        """The assistant turns' texts."""
        return [turn["value"] for turn in self.conversations if turn["from"] == ASSISTANT]

    def to_row(self) -> dict[str, Any]:
        """The record as a release line again (paths resolved, roles normalised)."""
        row: dict[str, Any] = dict(self.fields)
        if self.media_type in ("image", "multi_image"):
            row["image"] = self.media[0] if self.media_type == "image" else list(self.media)
        elif self.media_type == "video":
            row["video"] = self.media[0]
            times = {"start_time": self.start_time, "end_time": self.end_time}
            row.update({key: value for key, value in times.items() if value is not None})
        row["conversations"] = [dict(turn) for turn in self.conversations]
        return row


@dataclass
class ConversationManifest:
    """The usable records of a conversation JSONL and what was skipped.

    Attributes:
        path: The JSONL file.
        root: Folder relative media paths were joined onto.
        records: Usable records in file order.
        counts: For ``summary.json``: ``lines`` (non-blank), ``records``, ``bad_records``, one count per
            :data:`SKIP_REASONS` entry, kept records per :data:`MEDIA_TYPES` entry, and ``from_text_field``.
        bad_examples: The first skipped lines, ``{"file", "line", "reason"}`` (reason ``"<key>: <detail>"``).
    """

    path: str
    root: str
    records: list[ConversationRecord]
    counts: dict[str, int]
    bad_examples: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ConversationRecord:
        return self.records[index]

    def __iter__(self) -> Iterator[ConversationRecord]:
        return iter(self.records)

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped lines per reason (only the reasons that occurred)."""
        return {reason: self.counts[reason] for reason in SKIP_REASONS if self.counts[reason]}


# -------------------------------------------------------------------------------------------- checks


def _tags(text: str) -> Counter[str]:
    return Counter({tag: text.count(tag) for tag in PLACEHOLDER_TAGS if tag in text})


def normalize_conversations(turns: Any, media_type: str = "image", num_media: int = 1) -> list[dict[str, str]]:
    """Checked turns with normalised roles (for lines of a file, and for in-memory items alike).

    Args:
        turns: The ``"conversations"`` value.
        media_type: One of :data:`MEDIA_TYPES`.
        num_media: Images of a ``multi_image`` sample.

    Returns:
        ``[{"from": "human" | "assistant", "value": str}, ...]``; an assistant value that is a number becomes
        its text (the release ``str()``s assistant values).

    Raises:
        ConversationError: With the :data:`SKIP_REASONS` reason.
    """
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"media_type must be one of {', '.join(MEDIA_TYPES)}, got {media_type!r}")
    if not isinstance(turns, list) or not turns:
        raise ConversationError("no_conversations", f"conversations must be a non-empty list, got {turns!r:.80}")
    checked = []
    for position, turn in enumerate(turns):
        role = ROLE_ALIASES.get(turn.get("from")) if isinstance(turn, dict) and isinstance(turn.get("from"), str) \
            else None
        if role is None:
            raise ConversationError("bad_turn", f"turn {position}: want {{\"from\": one of "
                                                f"{'/'.join(ROLE_ALIASES)}, \"value\": text}}, got {turn!r:.80}")
        value = turn.get("value")
        if role == ASSISTANT and isinstance(value, _NUMBER) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ConversationError("bad_turn", f"turn {position} ({role}): value must be text, got {value!r:.80}")
        checked.append({"from": role, "value": value})
    roles = [turn["from"] for turn in checked]
    if ASSISTANT not in roles:
        raise ConversationError("no_assistant_turn", f"{len(roles)} human turn(s) and no answer")
    expected = [(HUMAN, ASSISTANT)[i % 2] for i in range(len(roles))]
    if roles != expected or roles[-1] != ASSISTANT:
        raise ConversationError("roles_not_alternating", f"roles {roles}: want human, assistant, ... ending with "
                                                         "an assistant turn")
    _check_placeholders(checked, media_type, num_media)
    return checked


def _check_placeholders(turns: list[dict[str, str]], media_type: str, num_media: int) -> None:
    per_turn = [_tags(turn["value"]) for turn in turns]
    in_answers = sum((c for c, t in zip(per_turn, turns) if t["from"] == ASSISTANT), Counter())
    if in_answers:
        raise ConversationError("placeholder_mismatch", f"{dict(in_answers)} in an assistant turn")
    total = sum(per_turn, Counter())
    if media_type == "text" and total:
        raise ConversationError("placeholder_mismatch", f"{dict(total)} in a sample without media")
    if media_type in ("image", "video") and (sum(total.values()) > 1 or sum(per_turn[0].values()) < sum(
            total.values())):
        raise ConversationError("placeholder_mismatch", f"{dict(total)} for one {media_type}: want at most one "
                                                        "placeholder, in the first turn")
    if media_type == "multi_image" and (total["<image>"] != num_media or total["<video>"]):
        raise ConversationError("placeholder_mismatch", f"{dict(total)} for {num_media} images: want one <image> "
                                                        "per image")


def _media_paths(row: dict[str, Any]) -> tuple[str, list[str]]:
    """(media type, paths as written) of a line."""
    if "image" in row and "video" in row:
        raise ConversationError("image_and_video", "a line holds an image or a video, not both")
    if "video" in row:
        video = row["video"]
        if not isinstance(video, str) or not video:
            raise ConversationError("bad_media_field", f'"video" must be a path, got {video!r:.80}')
        return "video", [video]
    if "image" not in row:
        return "text", []
    image = row["image"]
    if isinstance(image, str) and image:
        return "image", [image]
    if isinstance(image, list) and image and all(isinstance(p, str) and p for p in image):
        return ("image" if len(image) == 1 else "multi_image"), list(image)
    raise ConversationError("bad_media_field", f'"image" must be a path or a list of paths, got {image!r:.80}')


def _seconds(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, _NUMBER) or not math.isfinite(value) or value < 0:
        raise ConversationError("bad_times", f"{key} {value!r:.40} is not seconds >= 0")
    return float(value)


def _check_bbox(row: dict[str, Any]) -> None:
    if "bbox" not in row:
        return
    sizes = [row.get(key) for key in ("width", "height")]
    if not all(isinstance(s, _NUMBER) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ConversationError("bbox_without_size", f"bbox needs positive width and height, got {sizes}")


def _record(row: dict[str, Any], line: int, stem: str, root: str) -> tuple[ConversationRecord, bool]:
    """The record of one JSON object (without the id and file checks) and whether its turns came from "text"."""
    media_type, written = _media_paths(row)
    from_text = "conversations" not in row and isinstance(row.get("text"), str)
    turns = [{"from": HUMAN, "value": ""}, {"from": ASSISTANT, "value": row["text"]}] if from_text \
        else row.get("conversations")
    conversations = normalize_conversations(turns, media_type, len(written))
    start = end = None
    if media_type == "video":
        start, end = _seconds(row, "start_time"), _seconds(row, "end_time")
        if start is not None and end is not None and end <= start:
            raise ConversationError("bad_times", f"end_time {end} is not after start_time {start}")
    _check_bbox(row)
    identity = record_identity(row)
    taken = {"image", "video", "conversations"} | ({"start_time", "end_time"} if media_type == "video" else set())
    fields = {k: v for k, v in row.items() if k not in taken}
    paths = tuple(resolve_manifest_path(root, p) for p in written)
    return ConversationRecord(identity if identity is not None else f"{stem}:{line}", line, media_type, paths,
                              conversations, start, end, fields), from_text


# -------------------------------------------------------------------------------------------- reader


def read_conversations(path: str | Path, root: str | Path | None = None, *, check_media: bool = True,
                       media_types: Sequence[str] = MEDIA_TYPES) -> ConversationManifest:
    """Read a release-format conversation JSONL (``.jsonl`` or ``.jsonl.gz``), skipping and counting bad lines.

    Args:
        path: The file.
        root: Folder relative media paths are joined onto (the release's ``root_dir``); the file's folder when
            omitted.
        check_media: Skip records whose media files do not exist (``missing_media``); one ``stat`` per file.
        media_types: Keep only these media types (others are left out uncounted, as a filter and not as bad
            input).

    Returns:
        The records, ``counts`` and ``bad_examples``.

    Raises:
        ValueError: If the file does not exist, or no line is usable (an empty file included), with the counts
            and the first skipped line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"conversation file {path} does not exist")
    unknown = [m for m in media_types if m not in MEDIA_TYPES]
    if unknown:
        raise ValueError(f"media_types {unknown}: choose from {', '.join(MEDIA_TYPES)}")
    base = str(Path(root).expanduser() if root is not None else path.parent)
    bad = BadRecords()
    counts = Counter({key: 0 for key in SKIP_REASONS + MEDIA_TYPES + ("from_text_field",)})
    seen: set[str] = set()
    records: list[ConversationRecord] = []
    filtered = 0
    stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
    for line, row, _ in read_records(path, None, bad):
        try:
            record, from_text = _record(row, line, stem, base)
            if record.id in seen:
                raise ConversationError("duplicate_id", f"id {record.id!r} is taken by an earlier line")
            missing = [p for p in record.media if check_media and not os.path.isfile(p)]
            if missing:
                raise ConversationError("missing_media", f"{missing[0]} does not exist")
        except ConversationError as error:
            counts[error.reason] += 1
            bad.add(path, line, str(error))
            continue
        if record.media_type not in media_types:
            filtered += 1
            continue
        seen.add(record.id)
        records.append(record)
        counts[record.media_type] += 1
        counts["from_text_field"] += from_text
    counts["malformed_line"] = bad.count - sum(counts[reason] for reason in SKIP_REASONS[1:])
    for example in bad.examples:  # read_records words its own reasons: name their key as the others do
        if not example["reason"].startswith(SKIP_REASONS):
            example["reason"] = f"malformed_line: {example['reason']}"
    counts.update(records=len(records), bad_records=bad.count, lines=len(records) + bad.count + filtered)
    if filtered:
        counts["filtered_media_type"] = filtered
    if not records:
        raise ValueError(f"{path}: no usable conversation ({counts['lines']} line(s), {bad.count} skipped"
                         + (f"; first: line {bad.examples[0]['line']}: {bad.examples[0]['reason']}" if bad.examples
                            else "") + ")")
    return ConversationManifest(str(path), base, records, dict(counts), bad.examples)
