"""Caption every image and video of the inputs with a PerceptionLM, in batches, resumable after a crash.

Inputs (positional, several allowed): a folder (its records.jsonl when it has one, else every image and video
file under it, keyed by the path relative to the folder), single image/video files, or .jsonl/.parquet/.tar
shards (braces and globs expand; quote them). JSONL records give ``image`` (a path, or a list of paths: one
multi-image caption) or ``video`` relative to the file, and ``key``/``uuid``/``id`` (else ``<file>:<line>``);
Parquet rows an ``image`` column (path, encoded bytes or a {bytes, path} struct) or ``video`` (path or bytes);
tar samples an image member (jpg, jpeg, png, webp) or a video member (mp4, webm, mkv, avi, mov, ...).

Each record gets --prompt (``{media}`` becomes image, images or video: "Describe the image." by default) in the
checkpoint's chat template; prompts of different lengths (tile counts, videos) are generated together, left
padded, --batch-size at a time (images and videos of a chunk batched apart: less padding). The output is the one
`caption altogether` writes: parts/ (one file per --chunk-size records: the unit a --resume skips), then
captions.jsonl (or captions.parquet with --output-format parquet), one ``{key, path, media, caption, tokens,
stopped}`` per captioned record in input order, and summary.json; with --write-shards also shards/ (every input
record plus ``plm_caption``: JSONL field, Parquet column, tar member <key>.plm_caption.txt). Media that do not
decode and prompts longer than the context are counted, listed in bad_media.jsonl, and skipped; the batch goes on.
Sampling (--temperature > 0) is seeded per chunk, so a resumed run writes what an uninterrupted one would; a
--resume with other inputs, prompt, batching or generation settings is refused.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.data.images import IMAGE_EXTENSIONS
from percli.core.data.video import VIDEO_EXTENSIONS
from percli.recipes.plm_generate import Decoding, PLMModelSection, check_decoding, check_model_section

MEDIA_NOUN = {"image": "image", "multi_image": "images", "video": "video"}
SHARD_FIELD = "plm_caption"
UNSUPPORTED_FIELDS = ("bbox", "bbox_map", "start_time", "end_time")  # the processor refuses these, counted


@dataclass
class Config:
    inputs: list[str] = field(default_factory=list)
    """Folders of images/videos (or holding records.jsonl), media files, or .jsonl/.parquet/.tar shards."""
    prompt: str = "Describe the {media}."
    """The question asked of every record; {media} becomes image, images or video."""
    model: PLMModelSection = field(default_factory=PLMModelSection)
    generation: Decoding = field(default_factory=Decoding)
    batch_size: int = 8
    """Prompts generated at a time."""
    chunk_size: int = 256
    """Records per part file: the unit a --resume skips."""
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    """captions.jsonl or captions.parquet."""
    write_shards: bool = False
    """Also write each .jsonl/.parquet/.tar input with its captions (field plm_caption) into <output>/shards/."""


@dataclass
class MediaRecord:
    key: str
    name: str
    """The file, or <shard>#<key> for media held in a shard (shown in error lists, written as `path`)."""
    kind: str
    """image, multi_image or video."""
    ref: Any
    """A path, encoded bytes, (tar shard, offset, size), or a JSONL row with resolved paths."""


def _kind_of(name: str) -> str | None:
    suffix = Path(name).suffix.lower()
    return "image" if suffix in IMAGE_EXTENSIONS else "video" if suffix in VIDEO_EXTENSIONS else None


def resolve_inputs(sources: list[str]) -> list[Path]:
    """Input paths in order: a folder (or its records.jsonl), a media file, or the shards a pattern names."""
    from percli.core.data.shards import expand_inputs

    paths: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            paths.append(path / "records.jsonl" if (path / "records.jsonl").is_file() else path)
        elif path.is_file() and _kind_of(path.name):
            paths.append(path)
        else:
            paths += expand_inputs([source])  # FileNotFoundError / ValueError naming the input
    return paths


def _is_shard(path: Path) -> bool:
    return path.is_file() and _kind_of(path.name) is None


def validate(cfg: Config) -> None:
    if not cfg.inputs:
        raise ConfigError("inputs: not set; give folders of images/videos, media files or .jsonl/.parquet/.tar "
                          "shards")
    check_model_section(cfg.model)
    check_decoding(cfg.generation)
    for key, value in (("batch_size", cfg.batch_size), ("chunk_size", cfg.chunk_size)):
        if value < 1:
            raise ConfigError(f"{key}: got {value}; expected an integer >= 1")
    inputs = resolve_inputs(cfg.inputs)
    if cfg.write_shards:
        loose = [str(p) for p in inputs if not _is_shard(p)]
        if loose:
            raise ConfigError(f"write_shards: {loose[0]} is a folder or a media file, not a .jsonl/.parquet/.tar "
                              "shard; --write-shards writes shards only (captions.jsonl has every caption)")


# ----------------------------------------------------------------------------------------------- reading


def _folder_records(folder: Path) -> list[MediaRecord]:
    """Every image and video under `folder` (hidden ones left out), keyed by the path relative to it."""
    files = sorted(p for p in folder.rglob("*") if _kind_of(p.name) and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return [MediaRecord(p.relative_to(folder).as_posix(), str(p), _kind_of(p.name) or "", str(p)) for p in files]


def batch_keys(path: Path, batch: Any) -> list[str]:
    """The keys of a shard's records: ``key``, else uuid/id, else the place in the shard (tar: the sample key);
    `write_shards` finds each record's caption by it."""
    from percli.core.data.shards import record_key, shard_format

    fmt = shard_format(path)
    if fmt == "jsonl":
        return [record_key(r, f"{path.name}:{int(i) + 1}") for i, r in zip(batch.index, batch.items)]
    if fmt == "tar":
        return [sample.key for sample in batch.items]
    table = batch.items
    keys = table.column("key").to_pylist() if "key" in table.column_names else [None] * table.num_rows
    return [str(k) if k is not None else identity or f"{path.name}#row{int(i)}"
            for k, identity, i in zip(keys, batch.keys, batch.index)]


def _jsonl_record(path: Path, record: dict[str, Any], key: str) -> MediaRecord | str:
    """A record, or why it has no media."""
    from percli.core.data.paths import resolve_manifest_path

    image, video = record.get("image"), record.get("video")
    extra = {k: record.get(k) for k in UNSUPPORTED_FIELDS}
    if isinstance(image, str) and image:
        resolved = resolve_manifest_path(path.parent, image)
        return MediaRecord(key, resolved, "image", {"image": resolved, **extra})
    if isinstance(image, list) and image and all(isinstance(p, str) and p for p in image):
        resolved_list = [resolve_manifest_path(path.parent, p) for p in image]
        return MediaRecord(key, "; ".join(resolved_list), "multi_image", {"image": resolved_list, **extra})
    if isinstance(video, str) and video:
        resolved = resolve_manifest_path(path.parent, video)
        return MediaRecord(key, resolved, "video", {"video": resolved, **extra})
    return "no 'image' or 'video' path"


def _parquet_records(path: Path, batch: Any, keys: list[str], bad: Any) -> list[MediaRecord]:
    from percli.core.data.image_text import parquet_image

    table, records = batch.items, []
    columns = {c: table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
               for c in ("image", "video")}
    for row, key, image, video in zip(batch.index.tolist(), keys, columns["image"], columns["video"]):
        kind, ref = "image", parquet_image(image)
        if ref is None:
            kind, ref = "video", parquet_image(video)
        if ref is None:
            bad.add(path, row, "neither an 'image' nor a 'video' (path or bytes)", "row")
            continue
        name = str(path.parent / ref) if isinstance(ref, str) else f"{path}#{key}"
        records.append(MediaRecord(key, name, kind, name if isinstance(ref, str) else ref))
    return records


def _tar_records(path: Path, batch: Any, bad: Any) -> list[MediaRecord]:
    from percli.core.data.shards import split_member_name

    records = []
    for position, sample in zip(batch.index.tolist(), batch.items):
        member = next((m for m in sample.members if _kind_of("x." + split_member_name(m.name)[1])), None)
        if member is None:
            bad.add(path, position, "no image or video member", "sample")
            continue
        ext = split_member_name(member.name)[1]
        records.append(MediaRecord(sample.key, f"{path}#{sample.key}.{ext}", _kind_of("x." + ext) or "",
                                   (str(path), member.offset, len(member.data))))
    return records


def read_input(path: Path, bad: Any) -> list[MediaRecord]:
    """The records of one input, in order; records without media counted in `bad`."""
    from percli.core.data.shards import read_batches, shard_format

    if path.is_dir():
        return _folder_records(path)
    if _kind_of(path.name):
        return [MediaRecord(path.name, str(path), _kind_of(path.name) or "", str(path))]
    fmt, records = shard_format(path), []
    for batch in read_batches(path, None, bad):
        keys = batch_keys(path, batch)
        if fmt == "parquet":
            records += _parquet_records(path, batch, keys, bad)
        elif fmt == "tar":
            records += _tar_records(path, batch, bad)
        else:
            for line, record, key in zip(batch.index.tolist(), batch.items, keys):
                found = _jsonl_record(path, record, key)
                if isinstance(found, str):
                    bad.add(path, line + 1, found)
                else:
                    records.append(found)
    return records


def load_media(processor: Any, record: MediaRecord) -> Any:
    """[chunks, 3, S, S] of a record's media; `BadSample` when it does not decode."""
    from percli.core.data.image_text import open_image

    ref = record.ref
    if isinstance(ref, dict):
        return processor.load_media(ref)[0]
    if isinstance(ref, str):
        return processor.load_media({"image" if record.kind == "image" else "video": ref})[0]
    if record.kind == "image":
        return processor.transform_image(open_image(record.name, ref))
    if isinstance(ref, tuple):  # a tar member: read it by offset
        shard, offset, size = ref
        with open(shard, "rb") as f:
            f.seek(offset)
            ref = f.read(size)
    # video bytes: the decoders read files
    suffix = Path(record.name).suffix if _kind_of(record.name) == "video" else ".mp4"
    handle, tmp = tempfile.mkstemp(suffix=suffix, prefix=".plm-video-")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(ref)
        return processor.load_media({"video": tmp})[0]
    finally:
        os.unlink(tmp)


# ----------------------------------------------------------------------------------------------- captioning


def caption_chunk(model: Any, processor: Any, records: list[MediaRecord], prompt: str, batch_size: int,
                  decoding: Decoding, generator: Any) -> list[dict[str, Any]]:
    """Rows of one chunk in record order: captions, and ``{key, path, error}`` for media that do not decode or
    prompts that do not fit the context."""
    from percli.core.data.images import BadSample
    from percli.recipes.plm_generate import generate_answers, prompt_too_long

    rows: list[dict[str, Any]] = []
    ordered = sorted(records, key=lambda r: r.kind == "video")  # stable: images, then videos (similar lengths)
    for start in range(0, len(ordered), batch_size):
        prompts, media, good = [], [], []
        for record in ordered[start:start + batch_size]:
            try:
                chunks = load_media(processor, record)
                ids, image_pos = processor.prompt(prompt.replace("{media}", MEDIA_NOUN[record.kind]), chunks)
                problem = prompt_too_long(len(ids), model.max_seqlen, chunks)
                if problem:
                    raise BadSample(record.name, problem)
            except BadSample as e:
                rows.append({"key": record.key, "path": record.name, "error": str(e)})
                continue
            prompts.append((ids, image_pos))
            media.append(chunks)
            good.append(record)
        if not good:
            continue
        answers = generate_answers(model, processor, prompts, media, decoding, generator)
        rows += [{"key": r.key, "path": r.name, "media": r.kind, "caption": a.text, "tokens": a.tokens,
                  "stopped": a.stopped} for r, a in zip(good, answers)]
    order = {r.key: i for i, r in enumerate(records)}
    return sorted(rows, key=lambda row: order[row["key"]])


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.captioning.batch_caption import (
        caption_in_chunks,
        check_shard_names,
        write_captions,
        write_shards,
    )
    from percli.core.data.shards import AddedField, BadRecords
    from percli.recipes.plm_generate import load_model

    if ctx.world > 1:
        raise ValueError("caption plm runs as one process; start it without accelerate launch / torchrun")
    started = time.time()
    inputs = resolve_inputs(cfg.inputs)
    if cfg.write_shards:
        check_shard_names(inputs)
    model, processor, _ = load_model(cfg.model, ctx.log)
    m = cfg.model
    state = {"inputs": [str(p) for p in inputs], "prompt": cfg.prompt, "chunk_size": cfg.chunk_size,
             "batch_size": cfg.batch_size, "generation": asdict(cfg.generation), "checkpoint": m.checkpoint,
             "tokenizer": m.tokenizer, "dtype": m.dtype, "max_frames": m.max_frames, "max_tiles": m.max_tiles}
    bad = BadRecords()
    done = caption_in_chunks(
        inputs, ctx.run_dir, state, ctx.resume, lambda path: read_input(path, bad),
        lambda chunk, generator: caption_chunk(model, processor, chunk, cfg.prompt, cfg.batch_size, cfg.generation,
                                               generator),
        cfg.chunk_size, cfg.generation.seed, ctx.log, ctx.progress)
    captions = write_captions(ctx.run_dir / f"captions.{cfg.output_format}", done.captioned)
    write_captions(ctx.run_dir / "bad_media.jsonl", done.errors)
    shard_paths, shards_resumed = [], 0
    if cfg.write_shards:
        added = AddedField(SHARD_FIELD, lambda pa: pa.string(), f"{SHARD_FIELD}.txt", lambda text: text.encode())
        shard_paths, shards_resumed = write_shards(inputs, ctx.run_dir / "shards",
                                                   {r["key"]: r["caption"] for r in done.captioned}, ctx.log,
                                                   added, batch_keys, ("image", "video"))
    stopped = Counter(row["stopped"] for row in done.captioned)
    return {"status": "completed", "method": "caption-plm", "captioned": len(done.captioned),
            "bad_media": {"count": len(done.errors), "examples": done.errors[:10],
                          "all": str(ctx.run_dir / "bad_media.jsonl")},
            "bad_records": {"count": bad.count, "examples": bad.examples}, "duplicate_keys": bad.duplicate_keys,
            "stopped": dict(sorted(stopped.items())),
            "chunks": done.chunks, "chunks_resumed": done.resumed, "chunks_written": done.written,
            "captions": str(captions), "shards": shard_paths, "shards_resumed": shards_resumed,
            "output_dir": str(ctx.run_dir), **state, "elapsed_s": round(time.time() - started, 2)}
