"""Image-text pairs from JSONL, Parquet and WebDataset tar shards (the layouts `percli curate` reads and writes).

* JSONL: ``{"image": path, "text": ...}`` per line; a relative path is relative to the JSONL's folder.
* Parquet: column ``text`` and column ``image`` holding a path, raw encoded bytes or an
  ``{"bytes": ...}`` struct (the Hugging Face image feature). Parquet bytes are held in memory: use
  tar shards for sets larger than RAM.
* WebDataset tar: a sample's image is its ``.jpg``/``.jpeg``/``.png``/``.webp`` member; its text
  follows `percli.core.data.shards.sample_text` (member ``.<text_field>``, else field `text_field`
  of its ``.json``), then falls back to a ``.txt`` member (img2dataset's caption file).

`source` is one pattern or several separated by spaces, brace-expanded and globbed
(``/data/shards/{00000..00099}.tar``), so `percli curate metaclip` output plugs straight in.
Records without a usable text are counted at indexing time (``bad_records``); images that do not
decode raise `BadSample` when read, so the engine counts and skips them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from percli.core.data.images import BadSample, to_float_image
from percli.core.data.shards import (
    BadRecords,
    expand_inputs,
    read_batches,
    read_records,
    sample_text,
    shard_format,
    split_member_name,
)

TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# An image is a file path, bytes in memory, or (tar shard, data offset, size).
ImageRef = str | bytes | tuple[str, int, int]
Pair = tuple[str, ImageRef, str]  # (name shown in bad-input lists, image, text)


def _usable(text: Any) -> bool:
    return isinstance(text, str) and bool(text.strip())


def _index_jsonl(path: Path, image_field: str, text_field: str, bad: BadRecords,
                 allow_empty_text: bool = False) -> list[Pair]:
    pairs: list[Pair] = []
    for line_no, record, text in read_records(path, text_field, bad):
        image = record.get(image_field)
        if not isinstance(image, str) or not image:
            bad.add(path, line_no, f"no string {image_field!r} field")
        elif not _usable(text) and not allow_empty_text:
            bad.add(path, line_no, f"empty {text_field!r}")
        else:
            image = str(path.parent / image)  # an absolute `image` stays absolute
            pairs.append((image, image, text))
    return pairs


def parquet_image(cell: Any) -> str | bytes | None:
    """A Parquet image cell (encoded bytes, a path, or a {bytes, path} struct) as bytes or a path; None if neither."""
    if isinstance(cell, dict):
        cell = cell.get("bytes") or cell.get("path")
    return cell if isinstance(cell, (str, bytes)) and cell else None


def parquet_image_name(path: Path, row: int, image: str | bytes) -> str:
    """How a Parquet row's image is named: its path resolved beside the file, or ``<file>#row<N>`` for bytes."""
    return str(path.parent / image) if isinstance(image, str) else f"{path}#row{row}"


def _index_parquet(path: Path, image_field: str, text_field: str, bad: BadRecords,
                   allow_empty_text: bool = False) -> list[Pair]:
    """The shard's rows through the one Parquet reader (`read_batches`: unreadable row groups counted)."""
    pairs: list[Pair] = []
    for batch in read_batches(path, None, bad):
        table = batch.items
        missing = [c for c in (image_field, text_field) if c not in table.column_names]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {table.column_names}); "
                             "set data.image_field / data.text_field")
        images, texts = table.column(image_field).to_pylist(), table.column(text_field).to_pylist()
        for row, cell, text in zip(batch.index.tolist(), images, texts):
            image = parquet_image(cell)
            if image is None:
                bad.add(path, row, f"{image_field!r} is neither a path nor image bytes", "row")
            elif not _usable(text) and not allow_empty_text:
                bad.add(path, row, f"{text_field!r} is missing or empty", "row")
            else:
                name = parquet_image_name(path, row, image)
                pairs.append((name, name if isinstance(image, str) else image, text if _usable(text) else ""))
    return pairs


def _index_tar(path: Path, image_field: str, text_field: str, bad: BadRecords,
               allow_empty_text: bool = False) -> list[Pair]:
    """The shard's samples through the one tar reader (`read_batches`: bounded on corrupt headers, the first
    of samples with a repeated key kept); images are kept as (shard, offset, size) references.

    `allow_empty_text`: a sample without a (non-empty) text is kept with text "" instead of counted as bad.
    """
    del image_field  # tar images are found by extension
    pairs: list[Pair] = []
    for batch in read_batches(path, None, bad):
        for position, sample in zip(batch.index.tolist(), batch.items):
            text, reason = sample_text(sample, text_field)
            if text is None:  # WebDataset's usual caption member is `.txt`, whatever the JSON field is called
                text = sample_text(sample, "txt")[0]
            image = next(((str(path), m.offset, len(m.data)) for m in sample.members
                          if split_member_name(m.name)[1].lower() in TAR_IMAGE_EXTENSIONS), None)
            if image is None:
                bad.add(path, position, f"no image member ({', '.join(TAR_IMAGE_EXTENSIONS)})", "sample")
            elif not _usable(text) and not allow_empty_text:
                bad.add(path, position, reason or "empty text", "sample")
            else:
                pairs.append((f"{path}#{sample.key}", image, text if _usable(text) else ""))
    return pairs


PAIR_INDEXERS = {"jsonl": _index_jsonl, "parquet": _index_parquet, "tar": _index_tar}


def open_image(name: str, ref: ImageRef) -> Image.Image:
    """Decode an image reference to RGB; raises BadSample naming it (tar: `shard#key`, Parquet: `shard#rowN`)."""
    source: Any = ref
    if isinstance(ref, tuple):
        shard, offset, size = ref
        with open(shard, "rb") as f:
            f.seek(offset)
            source = io.BytesIO(f.read(size))
    elif isinstance(ref, bytes):
        source = io.BytesIO(ref)
    try:
        with Image.open(source) as img:
            return img.convert("RGB")  # convert() forces the full decode
    except Exception as e:  # noqa: BLE001 - PIL raises many unrelated types for corrupt input
        raise BadSample(name, f"{type(e).__name__}: {e}") from e


class ImageTextDataset(Dataset):
    """Image-text pairs of one or more shards (see the module docstring).

    Args:
        source: Shard patterns, space-separated (`.jsonl`, `.jsonl.gz`, `.parquet`, `.tar`).
        transform: PIL image -> FloatTensor[3, H, W]; without it, floats in [0, 1] at the image's size.
        tokenize: Texts -> token ids [N, L]; when given, items carry ``"text"`` = ids [L].
        image_field: JSONL key / Parquet column of the image.
        text_field: JSONL key / Parquet column / tar member extension or .json field of the text.

    Items: ``{"image", "caption": str, "label": -1, "path": str}`` (+ ``"text"``).
    """

    def __init__(self, source: str, transform: Callable[[Any], torch.Tensor] | None = None,
                 tokenize: Callable[[list[str]], torch.Tensor] | None = None, image_field: str = "image",
                 text_field: str = "text") -> None:
        self.transform, self.tokenize = transform, tokenize
        self.bad_records = BadRecords()
        self.pairs: list[Pair] = []
        for path in expand_inputs(source.split()):
            self.pairs += PAIR_INDEXERS[shard_format(path)](path, image_field, text_field, self.bad_records)
        if not self.pairs:
            raise ValueError(f"{source}: no usable image-text pair ({self.bad_records.count} malformed records, "
                             f"e.g. {self.bad_records.examples[:2]}); check data.image_field / data.text_field")
        self.classes: list[str] = []

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, ref, caption = self.pairs[index]
        img = open_image(name, ref)
        item = {"image": self.transform(img) if self.transform is not None else to_float_image(img),
                "caption": caption, "label": -1, "path": name}
        if self.tokenize is not None:
            item["text"] = self.tokenize([caption])[0]
        return item
