"""(image, alt-text, caption) triples for Altogether training and their two-stage prompt/target rule.

Stage ``pt`` (pre-training on alt-texts): the target is the image's longest distinct alt-text, the
prompt a random other one ("" when there is only one). Stage ``ft`` (fine-tuning on re-aligned
captions): the target is the caption, the prompt the alt-texts joined by "; ". In both stages the
prompt is replaced by "" with probability ``prompt_dropout`` (0.5 officially), so the model also
captions images that come without alt-text.

Sources: the embedded scenes (`percli.captioning.scenes`) or record shards, read with the shared
readers of `percli.core.data.shards`:

* JSONL: ``{image_field: path relative to the file, alt_field: str or [str], caption_field: str}``
  (e.g. Altogether-FT: ``img_path``, ``alt``, ``round3``);
* Parquet: column ``image_field`` holding encoded bytes, an ``{"bytes": ...}`` struct or a path
  relative to the file; columns ``alt_field`` (string or list of strings) and ``caption_field``;
* WebDataset tar: the image member (``.jpg``/``.jpeg``/``.png``/``.webp``); the alt-text and the
  caption are members ``<key>.<alt_field>`` / ``<key>.<caption_field>``, else those fields of the
  sample's ``.json`` member (the caption `percli caption altogether --write-shards` adds is the
  member ``<key>.altogether.txt``: ``data.caption_field=altogether.txt``).

Parquet images are held in memory (encoded) after indexing; tar images are read from the shard by
offset. A record without an image or target is counted in ``bad_records``; an image that does not
decode raises `BadSample` when read, so the engine counts and skips it (``bad_inputs``). An alt-text
that is neither a string nor a list of strings (a number, a dict, a list holding a number), or a tar
alt-text member that is not UTF-8, is counted in ``invalid_alt_text`` and the record used as one
without alt-text (in stage ``pt`` it then has no target: a bad record).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from percli.captioning.scenes import SceneDataset, make_scene
from percli.core.data.image_text import TAR_IMAGE_EXTENSIONS, ImageRef, open_image, parquet_image
from percli.core.data.shards import (
    BadRecords,
    Sample,
    expand_inputs,
    read_batches,
    read_records,
    record_key,
    sample_value,
    shard_format,
    split_member_name,
)

# One record as read: (position, "line"/"row"/"sample", image or None, alt-text value, caption value, key)
RawTriple = tuple[int, str, ImageRef | None, Any, Any, str]


@dataclass(frozen=True)
class Unreadable:
    """A tar sample's field whose member could not be read (not UTF-8, bad JSON), and why."""

    reason: str


def alt_texts(value: Any, field: str = "alt_text") -> tuple[list[str], str | None]:
    """The distinct non-empty alt-texts of a record's `field` value, in order, and why the value is invalid.

    A string or a list of strings (nulls in it skipped) is used; null gives none. Any other value (a
    number, a dict, a list holding a non-string) or an `Unreadable` one gives none and the reason, for
    ``invalid_alt_text``.
    """
    if isinstance(value, Unreadable):
        return [], value.reason
    texts = [value] if isinstance(value, str) else [] if value is None else value
    if not isinstance(texts, list) or not all(t is None or isinstance(t, str) for t in texts):
        return [], f"{field!r} is not a string or a list of strings (it is a {type(value).__name__})"
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip())), None


def prompt_and_target(alts: list[str], caption: str, stage: str, prompt_dropout: float) -> tuple[str, str]:
    """The official prompt/target of one example; random draws use torch's global RNG (seeded per sample)."""
    if stage == "pt":
        target = max(alts, key=len) if alts else ""
        others = [a for a in alts if a != target]
        prompt = others[int(torch.randint(len(others), ()))] if others else ""
    elif stage == "ft":
        target, prompt = caption, "; ".join(alts)
    else:
        raise ValueError(f"data.stage {stage!r}: use 'pt' (alt-text targets) or 'ft' (caption targets)")
    if float(torch.rand(())) < prompt_dropout:
        prompt = ""
    return prompt, target


class SceneTriples(Dataset):
    """Embedded scenes as training items ``{"image", "prompt", "target", "alt_text", "caption", "key"}``."""

    def __init__(self, split: str, length: int, transform: Callable[[torch.Tensor], torch.Tensor], stage: str,
                 prompt_dropout: float, seed: int = 0, size: int = 64):
        self.scenes = SceneDataset(split, length, seed, size)
        self.transform, self.stage, self.prompt_dropout = transform, stage, prompt_dropout

    def __len__(self) -> int:
        return len(self.scenes)

    def texts(self) -> list[str]:
        """Every alt-text and caption (for the vocabulary)."""
        s = self.scenes
        scenes = [make_scene(s.split, i, s.seed, s.size) for i in range(len(s))]
        return [scene.alt_text for scene in scenes] + [scene.caption for scene in scenes]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.scenes[index]
        prompt, target = prompt_and_target(alt_texts(item["alt_text"])[0], item["caption"], self.stage,
                                           self.prompt_dropout)
        return {**item, "image": self.transform(item["image"]), "prompt": prompt, "target": target}


def _jsonl_triples(path: Path, fields: tuple[str, str, str], bad: BadRecords) -> Iterator[RawTriple]:
    image_field, alt_field, caption_field = fields
    for line, record, image in read_records(path, image_field, bad):
        key = record_key(record, f"{path.name}:{line}")
        yield line, "line", str(path.parent / image) if image else None, record.get(alt_field), \
            record.get(caption_field), key


def _parquet_triples(path: Path, fields: tuple[str, str, str], bad: BadRecords) -> Iterator[RawTriple]:
    image_field, alt_field, caption_field = fields
    for batch in read_batches(path, None, bad):
        table = batch.items
        if image_field not in table.column_names:
            raise ValueError(f"{path}: no column {image_field!r} (columns: {table.column_names}); set data.image_field")
        columns = [table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
                   for c in (image_field, alt_field, caption_field, "key")]
        for row, identity, image, alt, caption, key in zip(batch.index.tolist(), batch.keys, *columns):
            image = parquet_image(image)
            if isinstance(image, str):
                image = str(path.parent / image)
            key = str(key) if key is not None else identity or f"{path.name}#row{row}"
            yield row, "row", image, alt, caption, key


def _tar_field(sample: Sample, field: str) -> Any:
    """`sample_value` of the field, or `Unreadable` when its member is."""
    value, problem = sample_value(sample, field)
    return Unreadable(problem) if problem else value


def _tar_triples(path: Path, fields: tuple[str, str, str], bad: BadRecords) -> Iterator[RawTriple]:
    _, alt_field, caption_field = fields  # the image is the member with an image extension, read by offset
    for batch in read_batches(path, None, bad):
        for position, sample in zip(batch.index.tolist(), batch.items):
            image = next(((str(path), m.offset, len(m.data)) for m in sample.members
                          if split_member_name(m.name)[1].lower() in TAR_IMAGE_EXTENSIONS), None)
            yield position, "sample", image, _tar_field(sample, alt_field), _tar_field(sample, caption_field), \
                sample.key


_TRIPLE_READERS = {"jsonl": _jsonl_triples, "parquet": _parquet_triples, "tar": _tar_triples}


class RecordTriples(Dataset):
    """Record shards (see the module docstring); records without an image or target are counted in ``bad_records``,
    invalid alt-texts in ``invalid_alt_text``."""

    def __init__(self, source: str, transform: Callable[[Any], torch.Tensor], stage: str, prompt_dropout: float,
                 image_field: str = "image", alt_field: str = "alt_text", caption_field: str = "caption"):
        self.transform, self.stage, self.prompt_dropout = transform, stage, prompt_dropout
        self.bad_records = BadRecords()
        self.invalid_alt_text = BadRecords()
        self.items: list[tuple[str, ImageRef, list[str], str, str]] = []  # (name, image, alt-texts, caption, key)
        fields = (image_field, alt_field, caption_field)
        for path in expand_inputs(source.split()):
            for position, where, image, alt, caption, key in _TRIPLE_READERS[shard_format(path)](path, fields,
                                                                                                self.bad_records):
                alts, problem = alt_texts(alt, alt_field)
                if problem:
                    self.invalid_alt_text.add(path, position, problem, where)
                caption = caption.strip() if isinstance(caption, str) else ""
                if image is None:
                    self.bad_records.add(path, position, f"no or empty {image_field!r}", where)
                elif not (alts if stage == "pt" else caption):
                    self.bad_records.add(path, position, f"no {alt_field if stage == 'pt' else caption_field!r} text",
                                         where)
                else:
                    name = image if isinstance(image, str) else f"{path}#{key}"
                    self.items.append((name, image, alts, caption, key))
        if not self.items:
            raise ValueError(f"{source}: no usable record ({self.bad_records.count} malformed, e.g. "
                             f"{self.bad_records.examples[:2]}); check data.image_field/alt_field/caption_field")

    def __len__(self) -> int:
        return len(self.items)

    def texts(self) -> list[str]:
        return [t for _, _, alts, caption, _ in self.items for t in [*alts, caption]]

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, image, alts, caption, key = self.items[index]
        prompt, target = prompt_and_target(alts, caption, self.stage, self.prompt_dropout)
        return {"image": self.transform(open_image(name, image)), "prompt": prompt, "target": target,
                "alt_text": "; ".join(alts), "caption": caption, "key": key}
