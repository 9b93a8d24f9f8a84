"""Embedded captioning scenes: rendered shapes with a true caption and a web-like alt-text.

Origin: written for percli (no published dataset). Scene ``index`` of a split is a pure function of
``(seed, split, index)``. It holds one to three shapes on a plain background, each in its own third
of the picture (left, middle, right), so everything the caption says can be read off the pixels:
the count, the background colour and, left to right, each shape's size (small / large, radii far
apart), fill colour, class and position, e.g.

    "two shapes on a blue background: a large red star on the left and a small yellow circle on the right."

The alt-text is what a web page would carry for such an image instead, a corrupted version of the
same content: objects dropped, size or colour left out, a wrong colour or shape, phrases shuffled
into keyword lists, filler ("IMG_2041.jpg", "stock photo", "click to enlarge"), or nothing at all.
A captioner that sees the image can repair it (the Altogether task); one that only copies the
alt-text cannot. ``train``, ``val`` and ``test`` draw from disjoint seed streams.

Shapes, colours and the signed-distance renderer are those of `percli.core.data.captioned` and
`percli.core.data.embedded`; the stripe and checkerboard textures are left out because at the
small size (radius 5.4 px at 64 px) they cannot be told apart from a square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from percli.core.data.captioned import COLOURS
from percli.core.data.embedded import _TEXTURES, CLASSES, _pixel_grid, _shape_sdf
from percli.core.data.paths import manifest_path
from percli.core.rundir import write_jsonl_atomic

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
SHAPE_CLASSES: tuple[str, ...] = tuple(c for c in CLASSES if c not in _TEXTURES)
POSITIONS: tuple[str, ...] = ("on the left", "in the middle", "on the right")
COUNT_WORDS: tuple[str, ...] = ("one shape", "two shapes", "three shapes")
_SCENE_STREAM = 31  # keeps scenes apart from the seed streams of the other embedded sets
# Radius / image side. The smallest large shape (a triangle, side 15.5 px at 64 px) is still wider
# than the widest small one (a square's diagonal, 12.3 px), so the size can be read off the pixels.
_LARGE, _SMALL = 0.14, 0.085
_FILLERS = ("stock photo", "click to enlarge", "free download", "image may contain:", "vector illustration",
            "royalty free", "see more", "thumbnail", "clipart", "wallpaper")


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 [H, W, 3]
    caption: str
    alt_text: str
    key: str


@dataclass(frozen=True)
class _Object:
    shape: str  # one of SHAPE_CLASSES (none has an underscore)
    colour: str
    large: bool
    column: int  # index into POSITIONS

    def phrase(self) -> str:
        return f"a {'large' if self.large else 'small'} {self.colour} {self.shape} {POSITIONS[self.column]}"


def scene_key(split: str, index: int, seed: int = 0) -> str:
    return f"scene-{split}-s{seed}-{index:06d}"


def make_scene(split: str, index: int, seed: int = 0, size: int = 64) -> Scene:
    """Scene ``index`` of ``split`` (see the module docstring); the same arguments give the same scene."""
    if split not in SPLITS:
        raise ValueError(f"scene split must be one of {', '.join(SPLITS)}, got {split!r}")
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    rng = np.random.default_rng([seed, _SCENE_STREAM, SPLITS[split], index])
    colours = list(COLOURS)
    background = colours[int(rng.integers(len(colours)))]
    fills = [c for c in colours if c != background]
    count = int(rng.choice(3, p=[0.3, 0.4, 0.3])) + 1
    columns = sorted(rng.choice(3, size=count, replace=False).tolist())
    objects = [_Object(shape=SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))],
                       colour=fills[int(rng.integers(len(fills)))], large=bool(rng.random() < 0.5), column=col)
               for col in columns]
    image = _render(objects, background, rng, size)
    phrases = [o.phrase() for o in objects]
    listed = phrases[0] if count == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    caption = f"{COUNT_WORDS[count - 1]} on {_article(background)} {background} background: {listed}."
    return Scene(image=image, caption=caption, alt_text=_alt_text(objects, background, rng),
                 key=scene_key(split, index, seed))


def _render(objects: list[_Object], background: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Flat background, each object in its column, light Gaussian noise -> uint8 [H, W, 3]."""
    x, y = _pixel_grid(size)
    pixels = np.broadcast_to(np.array(COLOURS[background], dtype=np.float32), (size, size, 3)).copy()
    column_width = size / 3
    for obj in objects:
        radius = size * (_LARGE if obj.large else _SMALL)
        # Centred in its column: a large square's corner reaches 1.13 radii, so two large neighbours
        # just miss each other; the free vertical position and rotation vary the pictures.
        cx = (obj.column + 0.5) * column_width
        cy = float(rng.uniform(radius * 1.15, size - radius * 1.15))
        angle = float(rng.uniform(0, 2 * math.pi))
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        u = (x - cx) * cos_a + (y - cy) * sin_a  # shape-local coordinates
        v = -(x - cx) * sin_a + (y - cy) * cos_a
        coverage = np.clip(0.5 - _shape_sdf(obj.shape, u, v, radius, rng), 0.0, 1.0)[..., None]
        pixels += (np.array(COLOURS[obj.colour], dtype=np.float32) - pixels) * coverage
    pixels += rng.normal(0.0, 0.03, size=pixels.shape).astype(np.float32)
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _other(options: list[str] | tuple[str, ...], value: str, rng: np.random.Generator) -> str:
    choices = [o for o in options if o != value]
    return choices[int(rng.integers(len(choices)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _alt_text(objects: list[_Object], background: str, rng: np.random.Generator) -> str:
    """A web-like alt-text for the scene: partial, sometimes wrong, padded with filler, or empty."""
    filename = f"{'IMG' if rng.random() < 0.5 else 'DSC'}_{int(rng.integers(1000, 10000))}.jpg"
    roll = rng.random()
    if roll < 0.08:
        return ""
    if roll < 0.14:
        return filename
    colours, shapes = list(COLOURS), list(SHAPE_CLASSES)
    style = int(rng.integers(5))
    sentence = style == 4  # a half-right description rather than keywords
    phrases = []
    for obj in objects:
        if rng.random() < 0.3:  # dropped
            continue
        words = ["large" if obj.large else "small"] if rng.random() < (0.5 if sentence else 0.3) else []
        if rng.random() < 0.7:
            words.append(obj.colour if rng.random() > 0.15 else _other(colours, obj.colour, rng))
        words.append(obj.shape if rng.random() > 0.12 else _other(shapes, obj.shape, rng))
        if sentence:
            words.insert(0, _article(words[0]))
            if rng.random() < 0.3:
                words.append(POSITIONS[obj.column])
        phrases.append(" ".join(words))
    if rng.random() < (0.6 if sentence else 0.4):
        shown = background if rng.random() > 0.15 else _other(colours, background, rng)
        phrases.append(f"on {_article(shown)} {shown} background" if sentence else f"{shown} background")
    if not phrases:  # everything dropped: what is left is the page's boilerplate
        return f"{_FILLERS[int(rng.integers(len(_FILLERS)))]} {filename}"
    if style == 0:  # keyword list, shuffled
        text = ", ".join(phrases[i] for i in rng.permutation(len(phrases)))
    elif style == 1:
        text = " and ".join(phrases)
    elif style == 2:
        text = " ".join(p.title() for p in phrases)
    elif style == 3:
        text = " with ".join(phrases)
    else:
        text = " and ".join(p for p in phrases if not p.startswith("on ")) + \
            "".join(f" {p}" for p in phrases if p.startswith("on "))
    if rng.random() < 0.35:
        filler = _FILLERS[int(rng.integers(len(_FILLERS)))]
        text = f"{filler} {text}" if filler.endswith(":") or rng.random() < 0.5 else f"{text} - {filler}"
    if rng.random() < 0.15:
        text = f"{text} {filename}"
    return text


class SceneDataset(Dataset):
    """``length`` scenes of ``split``; items ``{"image": uint8 [3, H, W], "caption", "alt_text", "key"}``."""

    def __init__(self, split: str, length: int, seed: int = 0, size: int = 64) -> None:
        if split not in SPLITS:
            raise ValueError(f"scene split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split, self.length, self.seed, self.size = split, int(length), seed, size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        scene = make_scene(self.split, index, self.seed, self.size)
        return {"image": torch.from_numpy(scene.image).permute(2, 0, 1).contiguous(), "caption": scene.caption,
                "alt_text": scene.alt_text, "key": scene.key}


def write_scene_folder(out_dir: str | Path, split: str, n: int, seed: int = 0, size: int = 64) -> Path:
    """Write scenes 0..n-1 as ``images/<key>.png`` and ``records.jsonl``; returns ``out_dir``.

    Each record is ``{"key", "image" (path relative to out_dir), "alt_text", "caption"}``. Every file
    is written to a temp name and renamed, so an interrupted call leaves no half-written file.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n):
        scene = make_scene(split, index, seed, size)
        relative = manifest_path(out_dir, out_dir / "images" / f"{scene.key}.png")
        tmp = out_dir / "images" / f".{scene.key}.png.tmp"
        Image.fromarray(scene.image).save(tmp, format="PNG")
        tmp.replace(out_dir / relative)
        records.append({"key": scene.key, "image": relative, "alt_text": scene.alt_text, "caption": scene.caption})
    write_jsonl_atomic(out_dir / "records.jsonl", records)
    return out_dir
