"""Batch captioning of image shards with a trained Altogether captioner, resumable after a crash.

Inputs are read shard by shard and cut into chunks of ``chunk_size`` consecutive records. Each
chunk is captioned and written to ``parts/<shard>-<chunk>.jsonl`` under a temp name, then renamed,
so a chunk file exists completely or not at all. ``--resume`` skips the chunks whose file exists;
sampling is seeded per chunk, so a resumed run writes what an uninterrupted one would. When every
chunk is done, the parts are joined in input order into ``captions.jsonl`` (atomic), one line
``{"key", "alt_text", "altogether"}`` per readable image. Images that do not decode are listed in the
chunk file with their error, counted and left out of ``captions.jsonl``.

Inputs: a folder holding ``records.jsonl`` (as `percli.captioning.scenes.write_scene_folder`
writes), JSONL records (``image`` path relative to the file, the alt-text field — a list of alt-texts
is joined by "; " as in training —, ``key``/``uuid``/``id`` or else ``<file>:<line>`` as key), Parquet
(``image`` column) or WebDataset tar shards (the image member; the alt-text member or ``.json``
field; the sample key). A record with a missing or empty alt-text is captioned from the image alone
(the captioner is trained with prompt dropout for this); the summary counts them as
``without_alt_text``. So is a record whose alt-text is invalid (neither a string nor a list of strings,
e.g. a number or a dict; or a tar member that is not UTF-8), which the summary also counts in
``invalid_alt_text`` (with the file and position of the first few). A tar sample whose key an earlier
sample of its shard had is skipped (the first wins) and counted in ``duplicate_keys``.

``--write-shards`` then writes ``shards/<input file name>`` per input, in its format, holding every
record of the input in order, unchanged, plus the caption: JSONL field / Parquet string column
``altogether`` (null where the image did not decode or the record was bad), tar member
``<key>.altogether.txt`` (none then). JSONL and Parquet ``image`` paths are made absolute so they still
resolve from ``shards/``. Each shard is written to a temp name and renamed; a resume skips the shards written.

The chunking, resume, parts and shard writing are not Altogether's own: `caption_in_chunks` runs any captioner
over records that have a ``key`` (`percli caption plm` uses it too), `write_captions` joins the result and
`write_shards` takes the added field, the record keys and the media fields to make absolute.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from percli.captioning.triples import _TRIPLE_READERS, alt_texts
from percli.core.checkpoint import latest_checkpoint, read_weights
from percli.core.data.image_text import PAIR_INDEXERS, open_image, parquet_image, parquet_image_name
from percli.core.data.images import BadSample
from percli.core.data.paths import resolve_manifest_path
from percli.core.data.shards import (
    AddedField,
    BadRecords,
    Batch,
    expand_inputs,
    open_writer,
    read_batches,
    read_records,
    record_key,
    shard_format,
)
from percli.core.data.transforms import ImagePreprocess
from percli.core.progress import ProgressFactory, plain_progress
from percli.core.rundir import write_json_atomic, write_jsonl_atomic, write_text_atomic
from percli.models.altogether import AltogetherCaptioner, build_captioner

STATE_FILE = "state.json"  # what the run was started with; --resume must match it
CAPTION_FIELD = AddedField("altogether", lambda pa: pa.string(), "altogether.txt", lambda text: text.encode("utf-8"))


@dataclass
class Record:
    key: str
    name: str  # shown in error lists
    image: Any  # what `open_image` reads: a path, bytes, or (tar shard, offset, size)
    alt_text: str


@dataclass
class GenerationOptions:
    """How captions are decoded (the official inference: nucleus sampling, temperature 0.2, top-p 0.7)."""

    strategy: Literal["sample", "greedy", "beam"] = "sample"
    temperature: float = 0.2
    top_p: float = 0.7
    num_beams: int = 4
    max_new_tokens: int | None = None
    """None: the checkpoint's max_target_len."""
    seed: int = 0
    """Seed of the sampling, combined with each chunk's position (so a resume is reproducible)."""


def caption_transform(preprocess: dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    """The captioner's image preprocessing (as `finetune altogether` trains it): the encoder's input size,
    resized without a crop (the official fine-tuning preprocessing), normalised."""
    return ImagePreprocess.of(preprocess).squashed().eval_transform()


def resolve_inputs(sources: list[str]) -> list[Path]:
    """Shard paths; a folder stands for its records.jsonl."""
    paths = []
    for source in sources:
        folder = Path(source)
        if folder.is_dir():
            if not (folder / "records.jsonl").is_file():
                raise FileNotFoundError(f"{folder} has no records.jsonl; pass a folder written by the scene writer "
                                        "or the .jsonl/.parquet/.tar shards themselves")
            paths.append(folder / "records.jsonl")
        else:
            paths += expand_inputs([source])
    return paths


def read_shard(path: Path, alt_field: str, bad: BadRecords, invalid_alt: BadRecords) -> list[Record]:
    """Records of one shard, in order; unusable ones counted in `bad`, invalid alt-texts in `invalid_alt`."""
    fmt = shard_format(path)
    if fmt == "parquet":
        return [Record(name.split("#", 1)[-1], name, ref, text)
                for name, ref, text in PAIR_INDEXERS[fmt](path, "image", alt_field, bad, allow_empty_text=True)]
    records = []
    fallback = "txt" if fmt == "tar" else alt_field  # a tar sample without `alt_field`: its .txt (img2dataset's)
    for position, where, image, alt, alt_txt, key in _TRIPLE_READERS[fmt](path, ("image", alt_field, fallback), bad):
        if image is None:
            bad.add(path, position, "no image member" if fmt == "tar" else "no or empty 'image' field", where)
            continue
        alts, problem = alt_texts(alt_txt if alt is None else alt, alt_field)
        if problem:
            invalid_alt.add(path, position, problem, where)
        records.append(Record(key, image if isinstance(image, str) else f"{path}#{key}", image, "; ".join(alts)))
    return records


def _batch_keys(path: Path, batch: Batch) -> list[str]:
    """The keys `read_shard` gives the records of a batch read with `text_field=None`."""
    fmt = shard_format(path)
    if fmt == "jsonl":
        return [record_key(r, f"{path.name}:{int(i) + 1}") for i, r in zip(batch.index, batch.items)]
    if fmt == "tar":
        return [sample.key for sample in batch.items]
    # Parquet: the name the image-text indexer gives the row, as `read_shard` keys it
    images = batch.items.column("image").to_pylist() if "image" in batch.items.column_names else []
    return [parquet_image_name(path, row, parquet_image(cell) or b"").split("#", 1)[-1]
            for row, cell in zip(batch.index.tolist(), images or [None] * len(batch.index))]


def _absolute_paths(path: Path, batch: Batch, media_fields: Sequence[str] = ("image",)) -> Any:
    """The batch's records with relative media paths (`media_fields`) made absolute, so they resolve from
    shards/ too.

    JSONL records are dicts; Parquet rows a pyarrow table whose string media columns are rewritten (an
    image given as bytes or a {bytes, path} struct is left as it is). Tar samples carry their media.
    """
    fmt = shard_format(path)
    if fmt == "jsonl":
        def absolute(record: dict[str, Any]) -> dict[str, Any]:
            return {**record, **{f: os.path.abspath(resolve_manifest_path(path.parent, record[f]))
                                 for f in media_fields if isinstance(record.get(f), str) and record[f]}}

        return [absolute(r) for r in batch.items]
    table = batch.items
    if fmt != "parquet":
        return table
    import pyarrow as pa

    for name in media_fields:
        if name not in table.column_names or str(table.schema.field(name).type) != "string":
            continue
        paths = [os.path.abspath(resolve_manifest_path(path.parent, p)) if p else p
                 for p in table.column(name).to_pylist()]
        table = table.set_column(table.column_names.index(name), name, pa.array(paths, type=pa.string()))
    return table


def check_shard_names(inputs: list[Path]) -> None:
    """--write-shards writes one file per input name: refuse inputs that share one."""
    names = [p.name for p in inputs]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash:
        raise ValueError(f"--write-shards: several inputs are named {clash}, and shards/ holds one file per input "
                         "name; rename them or caption them in separate runs")


def write_shards(inputs: list[Path], folder: Path, captions: dict[str, Any], log: Callable[[str], None],
                 added: AddedField = CAPTION_FIELD,
                 keys_of: Callable[[Path, Batch], list[str]] = _batch_keys,
                 media_fields: Sequence[str] = ("image",)) -> tuple[list[str], int]:
    """Every input record plus its caption (`added`, looked up by `keys_of` the record) into
    `folder/<input name>` (module docstring); returns (shard paths, how many were already written)."""
    folder.mkdir(exist_ok=True)
    written, resumed = [], 0
    for path in inputs:
        target = folder / path.name
        written.append(str(target))
        if target.is_file():
            resumed += 1
            continue
        with open_writer(target, path, "same", added) as writer:
            for batch in read_batches(path, None, BadRecords()):
                keys = keys_of(path, batch)
                batch.items = _absolute_paths(path, batch, media_fields)
                writer.write(batch, np.arange(len(keys)), [captions.get(k) for k in keys])
            writer.commit()
        log(f"{target} written")
    return written, resumed


def load_captioner(checkpoint: str | Path) -> tuple[AltogetherCaptioner, dict[str, Any]]:
    """A captioner from a `finetune altogether` run dir, one of its checkpoint dirs or a .safetensors file."""
    path = Path(checkpoint)
    if (path / "checkpoints").is_dir():
        found = latest_checkpoint(path / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"{path}/checkpoints holds no checkpoint; did the run save one?")
        path = found
    state, meta = read_weights(path)
    if meta.get("task") != "altogether":
        raise ValueError(f"{path} is a {meta.get('task') or 'non-percli'} checkpoint, not an Altogether captioner; "
                         "train one with `percli finetune altogether`")
    model = build_captioner(meta)
    model.load_state_dict(state)
    return model.eval(), meta


def _chunks(records: list[Any], size: int) -> Iterator[tuple[int, list[Any]]]:
    for start in range(0, len(records), size):
        yield start // size, records[start:start + size]


@dataclass
class ChunkedRun:
    """What `caption_in_chunks` did: the rows of every chunk in input order (captions, and ``{key, error}``
    for the records that could not be captioned), how many chunks (part files) there are and how many of them
    were resumed / written."""

    captioned: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    chunks: int = 0
    resumed: int = 0
    written: int = 0


def check_resume_state(out_dir: Path, state: dict[str, Any], resume: bool) -> None:
    """Refuse a --resume whose settings (`state`: inputs, chunking, generation, ...) differ from the interrupted
    run's state.json; then record `state` there."""
    state_path = out_dir / STATE_FILE
    if resume and state_path.is_file():
        saved = json.loads(state_path.read_text())
        changed = sorted(k for k in state if saved.get(k) != state[k])
        if changed:
            raise ValueError(f"--resume: {', '.join(changed)} differ from the interrupted run's ({state_path}); "
                             "pass the same arguments, or start a new --output")
    write_json_atomic(state_path, state)


def chunk_seed(seed: int, shard_index: int, chunk_index: int) -> int:
    """The sampling seed of one chunk: a resumed run draws what an uninterrupted one drew."""
    return seed * 1_000_003 + shard_index * 100_003 + chunk_index


def caption_in_chunks(inputs: Sequence[Path], out_dir: Path, state: dict[str, Any], resume: bool,
                      read: Callable[[Path], list[Any]], caption: Callable[[list[Any], torch.Generator], list[dict]],
                      chunk_size: int, seed: int, log: Callable[[str], None] = lambda _msg: None,
                      progress: ProgressFactory | None = None) -> ChunkedRun:
    """Caption every record of the inputs into ``out_dir/parts``, resumably (see the module docstring).

    Args:
        inputs: The shards (or anything `read` takes), in order.
        out_dir: The run dir; holds state.json and parts/.
        state: The run's settings; a --resume with other settings is refused (`check_resume_state`).
        resume: Skip the chunks whose part file exists.
        read: One input's records, in order; each has a ``key`` unique over all inputs.
        caption: Rows of one chunk of records, in their order, given the chunk's seeded generator: the
            caption rows, and ``{"key", "error"}`` for a record that could not be captioned.
        chunk_size: Records per part file.
        seed: The sampling seed, combined with each chunk's position (`chunk_seed`).
        log / progress: one progress line per chunk through `progress`, else into `log`.
    """
    check_resume_state(out_dir, state, resume)
    parts = out_dir / "parts"
    parts.mkdir(exist_ok=True)
    run, files, seen = ChunkedRun(), [], set()
    with (progress or plain_progress(log))("caption", len(inputs), "shards") as bar:
        for shard_index, path in enumerate(inputs):
            records = read(path)
            for record in records:
                if record.key in seen:
                    raise ValueError(f"{path}: key {record.key!r} occurs twice in the inputs; give every record a "
                                     "unique 'key' (or uuid/id) field")
                seen.add(record.key)
            num_chunks = -(-len(records) // chunk_size)
            if not records:
                bar.advance(skipped=True)
            for chunk_index, chunk in _chunks(records, chunk_size):
                part = parts / f"{shard_index:05d}-{chunk_index:06d}.jsonl"
                files.append(part)
                if part.is_file():
                    run.resumed += 1
                    bar.advance(1 / num_chunks, skipped=True)
                    continue
                generator = torch.Generator().manual_seed(chunk_seed(seed, shard_index, chunk_index))
                write_jsonl_atomic(part, caption(chunk, generator))
                run.written += 1
                bar.advance(1 / num_chunks, records=len(chunk),
                            note=f"{path.name}: chunk {chunk_index + 1}/{num_chunks} written")
    for part in files:
        for _, row, _ in read_records(part, None):
            (run.errors if "error" in row else run.captioned).append(row)
    run.chunks = len(files)
    return run


def write_captions(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The captions as JSON lines, or a Parquet table when `path` ends with .parquet (atomic either way)."""
    if path.suffix != ".parquet":
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.Table.from_pylist(rows) if rows else pa.table({})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table.select(columns) if rows else table, tmp)
    os.replace(tmp, path)
    return path


def caption_chunk(model: AltogetherCaptioner, records: list[Record], transform: Callable, batch_size: int,
                  options: GenerationOptions, generator: torch.Generator, device: torch.device,
                  dtype: torch.dtype) -> list[dict[str, Any]]:
    """Rows for one chunk: captions of the readable images, {key, error} for the others."""
    rows: list[dict[str, Any]] = []
    for start in range(0, len(records), batch_size):
        images, good = [], []
        for record in records[start:start + batch_size]:
            try:
                images.append(transform(open_image(record.name, record.image)))
                good.append(record)
            except BadSample as e:
                rows.append({"key": record.key, "error": str(e)})
        if not good:
            continue
        captions = model.generate(torch.stack(images).to(device, dtype), [r.alt_text for r in good],
                                  strategy=options.strategy, temperature=options.temperature, top_p=options.top_p,
                                  num_beams=options.num_beams, max_new_tokens=options.max_new_tokens,
                                  generator=generator)
        rows += [{"key": r.key, "alt_text": r.alt_text, "altogether": c} for r, c in zip(good, captions)]
    order = {r.key: i for i, r in enumerate(records)}
    return sorted(rows, key=lambda row: order[row["key"]])


def caption_shards(model: AltogetherCaptioner, transform: Callable, inputs: list[Path], out_dir: Path,
                   alt_field: str, batch_size: int, chunk_size: int, options: GenerationOptions, resume: bool,
                   device: torch.device, dtype: torch.dtype, log: Callable[[str], None] = lambda _msg: None,
                   run_meta: dict[str, Any] | None = None, shards: bool = False,
                   progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Caption every input record into out_dir (and shards/ with `shards`; see the module docstring); one
    progress line per chunk (shards done, records/s, ETA) through `progress`, else into `log`."""
    if shards:
        check_shard_names(inputs)
    state = {"inputs": [str(p) for p in inputs], "alt_field": alt_field, "chunk_size": chunk_size,
             "generation": asdict(options), **(run_meta or {})}
    bad, invalid_alt = BadRecords(), BadRecords()
    run = caption_in_chunks(
        inputs, out_dir, state, resume, lambda path: read_shard(path, alt_field, bad, invalid_alt),
        lambda chunk, generator: caption_chunk(model, chunk, transform, batch_size, options, generator, device, dtype),
        chunk_size, options.seed, log, progress)
    captioned = run.captioned
    write_captions(out_dir / "captions.jsonl", captioned)
    shard_paths, shards_resumed = [], 0
    if shards:
        by_key = {r["key"]: r["altogether"] for r in captioned}  # failed images and bad records: None
        shard_paths, shards_resumed = write_shards(inputs, out_dir / "shards", by_key, log)
    return {"method": "caption-altogether", "captioned": len(captioned),
            "without_alt_text": sum(1 for row in captioned if not row["alt_text"].strip()),
            "bad_images": {"count": len(run.errors), "examples": run.errors[:10]},
            "bad_records": {"count": bad.count, "examples": bad.examples},
            "invalid_alt_text": {"count": invalid_alt.count, "examples": invalid_alt.examples},
            "duplicate_keys": bad.duplicate_keys,
            "chunks": run.chunks, "chunks_resumed": run.resumed, "chunks_written": run.written,
            "captions": str(out_dir / "captions.jsonl"), "shards": shard_paths, "shards_resumed": shards_resumed,
            "output_dir": str(out_dir), **state}
