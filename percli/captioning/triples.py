"""(image, alt-text, caption) triples for Altogether training and their two-stage prompt/target rule.

Stage ``pt`` (pre-training on alt-texts): the target is the image's longest distinct alt-text, the
prompt a random other one ("" when there is only one). Stage ``ft`` (fine-tuning on re-aligned
captions): the target is the caption, the prompt the alt-texts joined by "; ". In both stages the
prompt is replaced by "" with probability ``prompt_dropout`` (0.5 officially), so the model also
captions images that come without alt-text.

Sources: the embedded scenes (`percli.captioning.scenes`) or JSONL records
``{"image": path relative to the file, alt_field: str or [str], caption_field: str}``
(e.g. Altogether-FT: ``img_path``, ``alt``, ``round3``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from percli.captioning.scenes import SceneDataset, make_scene
from percli.core.data.image_text import _open_image
from percli.curation.formats import BadRecords, expand_inputs, read_records


def alt_texts(value: Any) -> list[str]:
    """The distinct non-empty alt-texts of a record field (a string or a list of strings), in order."""
    texts = [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


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
        prompt, target = prompt_and_target(alt_texts(item["alt_text"]), item["caption"], self.stage,
                                           self.prompt_dropout)
        return {**item, "image": self.transform(item["image"]), "prompt": prompt, "target": target}


class RecordTriples(Dataset):
    """JSONL records (see the module docstring); records without an image or target are counted in ``bad_records``."""

    def __init__(self, source: str, transform: Callable[[Any], torch.Tensor], stage: str, prompt_dropout: float,
                 image_field: str = "image", alt_field: str = "alt_text", caption_field: str = "caption"):
        self.transform, self.stage, self.prompt_dropout = transform, stage, prompt_dropout
        self.bad_records = BadRecords()
        self.items: list[tuple[str, list[str], str, str]] = []  # (image path, alt-texts, caption, key)
        for path in expand_inputs(source.split()):
            if not path.name.endswith((".jsonl", ".jsonl.gz")):
                raise ValueError(f"{path}: Altogether training reads JSONL records; convert other shards first")
            for line, record, image in read_records(path, image_field, self.bad_records):
                alts, caption = alt_texts(record.get(alt_field)), record.get(caption_field)
                caption = caption.strip() if isinstance(caption, str) else ""
                if not image:
                    self.bad_records.add(path, line, f"empty {image_field!r}")
                elif not (alts if stage == "pt" else caption):
                    self.bad_records.add(path, line, f"no {alt_field if stage == 'pt' else caption_field!r} text")
                else:
                    key = str(record.get("key", record.get("uuid", f"{path.name}:{line}")))
                    self.items.append((str(path.parent / image), alts, caption, key))
        if not self.items:
            raise ValueError(f"{source}: no usable record ({self.bad_records.count} malformed, e.g. "
                             f"{self.bad_records.examples[:2]}); check data.image_field/alt_field/caption_field")

    def __len__(self) -> int:
        return len(self.items)

    def texts(self) -> list[str]:
        return [t for _, alts, caption, _ in self.items for t in [*alts, caption]]

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, alts, caption, key = self.items[index]
        prompt, target = prompt_and_target(alts, caption, self.stage, self.prompt_dropout)
        return {"image": self.transform(_open_image(path, path)), "prompt": prompt, "target": target,
                "alt_text": "; ".join(alts), "caption": caption, "key": key}
