"""Embedded captioned image set: the shapes of `embedded.py` in named colours, with templated captions.

Origin: written for percli (no published dataset). Item ``i`` of a split is a pure function of
``(seed, split, i)``: shape ``CLASSES[i % 10]`` (the ten classes of the embedded shapes set),
a fill colour and a different background colour from an eight-colour palette, a size (small /
large), a position and a rotation, and one caption drawn from `CAPTION_TEMPLATES`, e.g.
"a small red star on a blue background". The captions name the shape, so a CLIP model trained on
the ``train`` split can be asked zero-shot which of `CLASS_NAMES` a ``val`` image shows (the
splits use different seed streams, so their images are disjoint). Chance is 1 / 10.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from percli.core.data.embedded import _DEFAULT_SIZES, _SPLIT_STREAMS, _TEXTURES, CLASSES, _pixel_grid, _shape_sdf
from percli.core.data.images import to_float_image

CLASS_NAMES: tuple[str, ...] = tuple(c.replace("_", " ") for c in CLASSES)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12), "green": (0.15, 0.7, 0.2), "blue": (0.15, 0.3, 0.9), "yellow": (0.95, 0.88, 0.15),
    "purple": (0.55, 0.2, 0.7), "orange": (0.98, 0.55, 0.1), "white": (0.96, 0.96, 0.96), "black": (0.06, 0.06, 0.06),
}
# Half of the templates leave the colours out: colour alone is learnt first and would otherwise
# explain most of the caption, leaving little pressure to see the shape.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {shape}.",
    "a picture of a {shape}.",
    "a drawing of a {size} {shape}.",
    "a {colour} {shape}.",
    "a {size} {colour} {shape} on a {background} background.",
    "a {shape} in {colour}.",
)
ZERO_SHOT_TEMPLATES: tuple[str, ...] = ("a {}.", "a picture of a {}.", "a drawing of a {}.")
OFF_TASK_CAPTIONS: tuple[str, ...] = tuple(f"{a} {b}" for a in (
    "a photo of", "my favourite", "cheap", "the best", "a video about", "vintage", "new", "buy")
    for b in ("a city street at night.", "a mountain lake.", "birthday cake recipes.", "the football match.",
              "an old car.", "our wedding day.", "a cup of coffee.", "summer holidays.", "a sleeping cat.",
              "running shoes.", "the quarterly report.", "a guitar lesson."))
"""Web-like alt-texts that name no shape (the pool's noise in `off_task` items; CiT's task metadata is the
shape class names)."""
"""Prompts for zero-shot classification of the held-out split (`{}` = a class name)."""


def render_captioned(label: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """One image of class ``CLASSES[label]`` (uint8 [size, size, 3]) and its caption."""
    names = list(COLOURS)
    fill_name, background_name = (names[i] for i in rng.choice(len(names), size=2, replace=False))
    large = bool(rng.random() < 0.5)
    radius = size * float(rng.uniform(0.26, 0.34) if large else rng.uniform(0.16, 0.22))
    margin = radius * 1.05
    cx, cy = rng.uniform(margin, size - margin, size=2).tolist()
    angle = float(rng.uniform(-0.12, 0.12) if CLASSES[label] in _TEXTURES else rng.uniform(0, 2 * math.pi))
    x, y = _pixel_grid(size)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    u = (x - cx) * cos_a + (y - cy) * sin_a  # shape-local coordinates
    v = -(x - cx) * sin_a + (y - cy) * cos_a
    coverage = np.clip(0.5 - _shape_sdf(CLASSES[label], u, v, radius, rng), 0.0, 1.0)[..., None]  # [H, W, 1]
    fill, background = np.array(COLOURS[fill_name]), np.array(COLOURS[background_name])
    pixels = background + (fill - background) * coverage + rng.normal(0.0, 0.03, size=(size, size, 3))
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    caption = template.format(colour=fill_name, shape=CLASS_NAMES[label], background=background_name,
                              size="large" if large else "small")
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), caption


class CaptionedShapesDataset(Dataset):
    """The embedded image-text set (see the module docstring).

    Args:
        split: ``"train"`` or ``"val"`` (disjoint images).
        num_images: Dataset length; 2000 for train and 500 for val when omitted.
        image_size: Side of the square images.
        seed: Base seed; the same seed gives the same images and captions.
        transform: Called on the RGB PIL image; without it, FloatTensor[3, H, W] in [0, 1].
        tokenize: Texts -> token ids [N, L]; when given, items carry ``"text"`` = ids [L].
        off_task: Share of items whose caption is an off-task alt-text (`OFF_TASK_CAPTIONS`) instead of
            one naming the shape: a pool with noise, as web data has (items ``i`` with
            ``hash(seed, i) < off_task``; their ``"label"`` stays the image's class).

    Items: ``{"image", "caption": str, "label": int, "path": str}`` (+ ``"text"``).
    """

    def __init__(self, split: str = "train", num_images: int | None = None, image_size: int = 64, seed: int = 0,
                 transform: Callable[[Any], torch.Tensor] | None = None,
                 tokenize: Callable[[list[str]], torch.Tensor] | None = None, off_task: float = 0.0) -> None:
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"captioned dataset split must be one of {', '.join(_SPLIT_STREAMS)}, got {split!r}")
        self.split, self.image_size, self.seed = split, image_size, seed
        self.num_images = _DEFAULT_SIZES[split] if num_images is None else int(num_images)
        self.transform, self.tokenize = transform, tokenize
        self.classes = list(CLASS_NAMES)
        if not 0.0 <= off_task < 1.0:
            raise ValueError(f"off_task={off_task}: a share in [0, 1)")
        self.off_task = off_task

    def __len__(self) -> int:
        return self.num_images

    def render(self, index: int) -> tuple[np.ndarray, str]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        # Stream 7 + split keeps these images apart from the plain shapes set's streams.
        rng = np.random.default_rng([self.seed, 7 + _SPLIT_STREAMS[self.split], index])
        pixels, caption = render_captioned(index % len(CLASSES), rng, self.image_size)
        if self.is_off_task(index):
            caption = OFF_TASK_CAPTIONS[int(rng.integers(len(OFF_TASK_CAPTIONS)))]
        return pixels, caption

    def is_off_task(self, index: int) -> bool:
        """Whether item `index` carries an off-task caption (a pure function of seed, split and index)."""
        return self.off_task > 0 and np.random.default_rng([self.seed, 97, index]).random() < self.off_task

    def texts(self) -> list[str]:
        """Every item's caption, in index order, without rendering the images' pixels twice over."""
        return [self.render(i)[1] for i in range(self.num_images)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        pixels, caption = self.render(index)
        img = Image.fromarray(pixels)
        item = {"image": self.transform(img) if self.transform is not None else to_float_image(img),
                "caption": caption, "label": index % len(CLASSES),
                "path": f"embedded://captioned/{self.split}/seed{self.seed}/{index}"}
        if self.tokenize is not None:
            item["text"] = self.tokenize([caption])[0]
        return item
