"""Embedded dense scenes: generated toy worlds with exact per-pixel classes and depths.

Origin: written for percli. Each scene is a pure function of ``(seed, split, index)`` (a NumPy
``SeedSequence`` of the three drives every choice), rendered on demand with NumPy, like the embedded
shapes set (`percli.core.data.embedded`), whose shapes it reuses as objects.

A pinhole camera (focal length = image width, 1.5 m above the ground, looking at the horizon) sees:

- ``sky`` above a random horizon row: a vertical colour gradient, depth invalid (0);
- ``ground``: a plane whose depth at row y is ``f * 1.5 / (y - horizon)`` (capped at `MAX_DEPTH`), drawn
  as a checkerboard laid on the ground in metres, so its tiles shrink towards the horizon;
- one to three objects standing on the ground (``disc``, ``square``, ``triangle``: the circle, square and
  triangle of the shapes set) at 2-6 m, their size in pixels falling with their distance, each filled
  with a random colour and its own texture (the disc shaded as a sphere, with a sphere's depth; the square
  striped; the triangle plain), drawn far to near so nearer objects hide farther ones.

Every pixel then fades towards a haze colour with its distance (aerial perspective), so depth can be
read from the image: from the horizon, the tile size, object sizes and the haze. Labels: the class of the
surface seen at each pixel (``CLASSES`` order); depth in metres along the optical axis.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from percli.core.data.dense import DenseTransform, write_depth, write_mask

CLASSES: tuple[str, ...] = ("sky", "ground", "disc", "square", "triangle")
MAX_DEPTH = 10.0
"""Farthest ground depth in metres (the haze hides what lies beyond)."""
CAMERA_HEIGHT = 1.5
_SPLIT_STREAMS = {"train": 0, "val": 1}
_OBJECT_CLASSES = (2, 3, 4)


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each [size, size] float32."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(coords, coords, indexing="xy")


def _object_sdf(cls: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of an object centred at (u, v) = 0; v grows downwards."""
    if cls == 2:
        return np.hypot(u, v) - radius
    if cls == 3:
        return np.maximum(np.abs(u), np.abs(v)) - 0.85 * radius
    # Upright triangle: its base on v = radius (the ground), apex at v = -radius.
    slope = math.hypot(2.0, 1.0)
    return np.maximum.reduce([v - radius, (2 * u - v - radius) / slope, (-2 * u - v - radius) / slope])


def render_scene(rng: np.random.Generator, size: int = 32) -> dict[str, Any]:
    """One scene (module docstring).

    Returns:
        ``image`` uint8 [S, S, 3], ``mask`` uint8 [S, S] (class ids), ``depth`` float32 [S, S] (metres, 0 on the
        sky), and ``objects``: (class, centre x, centre y, radius px, depth m) of each object, far to near.
    """
    x, y = _pixel_grid(size)
    f = float(size)
    horizon = size * float(rng.uniform(0.28, 0.45))
    haze = rng.uniform(0.6, 0.95, size=3)

    # Sky and ground.
    below = y > horizon + 0.5
    ground_depth = np.where(below, f * CAMERA_HEIGHT / np.maximum(y - horizon, 1e-3), MAX_DEPTH)
    ground_depth = np.minimum(ground_depth, MAX_DEPTH).astype(np.float32)
    depth = np.where(below, ground_depth, 0.0).astype(np.float32)
    mask = np.where(below, 1, 0).astype(np.uint8)
    tile = float(rng.uniform(0.5, 1.0))  # metres
    world_x = (x - size / 2) * ground_depth / f
    checker = (np.floor(world_x / tile) + np.floor(ground_depth / tile)) % 2
    ground_a, ground_b = rng.uniform(0.1, 0.6, size=(2, 3))
    sky_top = rng.uniform(0.2, 0.7, size=3) * np.array([0.6, 0.8, 1.0])
    rows = np.clip(y / max(horizon, 1.0), 0.0, 1.0)[..., None]
    sky = sky_top + (haze - sky_top) * rows
    ground = np.where(checker[..., None] > 0, ground_a, ground_b)
    colour = np.where(below[..., None], ground, sky)

    # Objects, far to near (the painter's algorithm).
    z_near = f * CAMERA_HEIGHT / max(size - horizon, 1.0)  # an object nearer than this stands below the image
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.choice(_OBJECT_CLASSES))
        z = float(rng.uniform(max(2.0, z_near), 6.0))
        radius = float(rng.uniform(0.5, 0.9)) * f / z  # world radius 0.5-0.9 m
        base = horizon + f * CAMERA_HEIGHT / z  # the row where it touches the ground
        cx = float(rng.uniform(radius * 0.5, size - radius * 0.5))
        objects.append((cls, cx, base - radius, radius, z, rng.uniform(0.0, 1.0, size=3), float(rng.uniform(0, 6.3))))
    objects.sort(key=lambda o: -o[4])
    for cls, cx, cy, radius, z, fill, phase in objects:
        u, v = x - cx, y - cy
        inside = _object_sdf(cls, u, v, radius) < 0
        if cls == 2:  # a sphere: nearer at its centre, lit from the upper left
            bulge = np.sqrt(np.clip(1.0 - (u ** 2 + v ** 2) / radius ** 2, 0.0, 1.0))
            obj_depth = z - radius * z / f * bulge
            light = np.clip(0.35 + 0.65 * (bulge * 0.7 + (-u - v) / (radius * 2.0) * 0.5), 0.15, 1.0)
            obj_colour = fill * light[..., None]
        elif cls == 3:  # a flat board with horizontal stripes
            obj_depth = np.full_like(x, z)
            stripes = np.sin(2 * math.pi * v / max(radius * 0.6, 1.5) + phase) > 0
            obj_colour = np.where(stripes[..., None], fill, fill * 0.35)
        else:  # a flat plain board
            obj_depth = np.full_like(x, z)
            obj_colour = np.broadcast_to(fill, colour.shape)
        mask = np.where(inside, cls, mask).astype(np.uint8)
        depth = np.where(inside, obj_depth, depth).astype(np.float32)
        colour = np.where(inside[..., None], obj_colour, colour)

    # Haze with distance (the sky is already haze at the horizon), then pixel noise.
    fade = 1.0 - np.exp(-np.where(mask > 0, depth, 0.0) / 7.0)
    colour = colour + (haze - colour) * fade[..., None]
    colour = colour + (rng.random(colour.shape, dtype=np.float32) - 0.5) * 0.06
    image = (np.clip(colour, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return {"image": image, "mask": mask, "depth": depth,
            "objects": [(cls, cx, cy, radius, z) for cls, cx, cy, radius, z, _, _ in objects]}


class EmbeddedScenes(Dataset):
    """The embedded dense scenes (module docstring), as `DenseDataset` items.

    Args:
        split: ``train`` or ``val`` (disjoint seed streams).
        num_images: Dataset length.
        image_size: Side of the square scenes in pixels.
        transform: A `DenseTransform` (its size should be `image_size`: the scenes are drawn at that size).
        seed: Base seed.
    """

    classes = list(CLASSES)

    def __init__(self, split: str, num_images: int, image_size: int = 32, transform: DenseTransform | None = None,
                 seed: int = 0):
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"embedded scenes split must be one of {', '.join(_SPLIT_STREAMS)}, got {split!r}")
        if image_size < 8 or num_images < 1:
            raise ValueError(f"embedded scenes need image_size >= 8 and num_images >= 1 (got {image_size}, "
                             f"{num_images})")
        self.split, self.num_images, self.image_size, self.seed = split, num_images, image_size, seed
        self.transform = transform
        self.source = "embedded"

    def __len__(self) -> int:
        return self.num_images

    def scene(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} scenes")
        return render_scene(np.random.default_rng([self.seed, _SPLIT_STREAMS[self.split], index]), self.image_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self.scene(index)
        transform = self.transform or DenseTransform(self.image_size, (0.0,) * 3, (1.0,) * 3)
        item = transform(Image.fromarray(scene["image"]), scene["mask"], scene["depth"])
        return {**item, "path": f"embedded://scenes/{self.split}/seed{self.seed}/{index}"}


def write_scenes(root: str | Path, train: int = 400, val: int = 100, image_size: int = 32, seed: int = 0) -> Path:
    """Write the embedded scenes as a dense folder layout: ``root/{train,val}/images/NNNNN.png`` (RGB),
    ``masks/NNNNN.png`` (class ids) and ``depths/NNNNN.png`` (16-bit millimetres), readable by `DenseDataset`
    (data.source=ROOT with data.num_classes=5). Returns `root`."""
    root = Path(root).expanduser()
    for split, count in (("train", train), ("val", val)):
        scenes = EmbeddedScenes(split, count, image_size, seed=seed) if count else None
        folders = {name: root / split / name for name in ("images", "masks", "depths")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            scene = scenes.scene(i)
            Image.fromarray(scene["image"]).save(folders["images"] / f"{i:05d}.png")
            write_mask(folders["masks"] / f"{i:05d}.png", scene["mask"])
            write_depth(folders["depths"] / f"{i:05d}.png", scene["depth"])
    return root
