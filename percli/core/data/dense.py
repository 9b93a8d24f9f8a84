"""Dense-prediction samples: an image with a per-pixel class mask and/or a depth map.

Two layouts, one reader (`DenseDataset`):

- a folder ``root/images/NAME.{png,jpg,...}`` with ``root/masks/NAME.png`` and/or ``root/depths/NAME.png``,
  matched by file stem; with ``root/train/`` and ``root/val/`` sub-folders of that layout each split reads
  its own (else the one folder serves both);
- a JSONL manifest, one ``{"image": PATH, "mask": PATH, "depth": PATH}`` per line (paths relative to the
  manifest's folder; ``mask`` or ``depth`` may be left out when the evaluation does not need it).

Masks are single-channel 8-bit PNGs (mode L or P) of class ids, ``255`` = ignore. Depths are single-channel
PNGs (16-bit) in units of ``1 / depth_scale`` metres (the default 1000: millimetres, as NYU-style
exports store them), ``0`` = invalid.

Bad input, never fatal: a sample whose mask or depth file the evaluation needs is missing (an image
without its partner, a mask or depth without an image) is dropped when the folder is listed and counted
in ``bad_records`` by file name; a file that cannot be decoded, a mask or depth whose size differs from
its image, or a mask holding a class id >= ``num_classes`` (other than the ignore index) raises
`BadSample` when read, so the engine skips it and lists it in ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from percli.core.data.images import IMAGE_EXTENSIONS, BadSample, load_rgb, to_float_image
from percli.core.data.paths import resolve_manifest_path
from percli.core.data.shards import BadRecords, read_records
from percli.core.dense_metrics import IGNORE_INDEX

DEPTH_SCALE = 1000.0
"""PNG depth units per metre: millimetres."""
TARGETS = ("mask", "depth")
_FOLDERS = {"image": "images", "mask": "masks", "depth": "depths"}


def _stems(folder: Path, extensions: Sequence[str]) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions}


def split_root(root: str | Path, split: str) -> Path:
    """The folder of `split`: ``root/<split>`` when it holds an ``images`` folder, else `root` itself."""
    root = Path(root).expanduser()
    return root / split if (root / split / "images").is_dir() else root


def list_dense_folder(root: str | Path, needs: Sequence[str], bad: BadRecords) -> list[dict[str, str]]:
    """Samples ``{"image", "mask"?, "depth"?}`` of a folder layout (one split), matched by stem, in name order.

    Args:
        root: The folder holding ``images/`` and ``masks/`` and/or ``depths/``.
        needs: The targets every sample must have (``mask``, ``depth``); a sample missing one is dropped
            and counted in `bad` under the file that has no partner.
        bad: Where dropped samples are counted.
    """
    root = Path(root)
    if not (root / "images").is_dir():
        raise ValueError(f"{root} has no images/ folder; a dense layout is root/images/ with root/masks/ and/or "
                         "root/depths/ (optionally under root/train/ and root/val/), or a .jsonl manifest")
    images = _stems(root / "images", IMAGE_EXTENSIONS)
    targets = {t: _stems(root / _FOLDERS[t], (".png",)) for t in TARGETS}
    for t in needs:
        if not targets[t]:
            raise ValueError(f"{root} has no {_FOLDERS[t]}/ PNGs; the evaluation needs them (or choose eval.task)")
    samples = []
    for stem, image in images.items():
        missing = [t for t in needs if stem not in targets[t]]
        if missing:
            bad.add(image, 0, f"no {' or '.join(_FOLDERS[t][:-1] for t in missing)} named {stem}.png", "sample")
            continue
        samples.append({"image": str(image), **{t: str(targets[t][stem]) for t in TARGETS if stem in targets[t]}})
    for t in needs:
        for stem, path in targets[t].items():
            if stem not in images:
                bad.add(path, 0, f"no image named {stem}", "sample")
    return samples


def read_dense_manifest(path: str | Path, needs: Sequence[str], bad: BadRecords) -> list[dict[str, str]]:
    """Samples of a JSONL manifest; a line that is not an object with string paths of ``image`` and the
    needed targets is counted in `bad` (its line number) and skipped."""
    base = Path(path).expanduser().parent
    samples = []
    for line, record, _ in read_records(path, None, bad):
        fields = ("image", *needs)
        absent = [k for k in fields if not isinstance(record.get(k), str) or not record[k]]
        if absent:
            bad.add(Path(path), line, f"no {' / '.join(absent)} path")
            continue
        samples.append({k: resolve_manifest_path(base, record[k]) for k in ("image", *TARGETS)
                        if isinstance(record.get(k), str) and record[k]})
    return samples


def read_mask(path: str, num_classes: int | None = None, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """uint8 class ids [H, W] of a mask PNG; `BadSample` if unreadable, not one channel, or holding a class
    id >= `num_classes` other than `ignore_index`."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise BadSample(path, f"mask mode {img.mode}: class ids must be one 8-bit channel (mode L or P)")
            mask = np.asarray(img, dtype=np.uint8).copy()  # P keeps the palette indices: the ids
    except BadSample:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many unrelated types for corrupt input
        raise BadSample(path, f"{type(e).__name__}: {e}") from e
    if num_classes is not None:
        ids = np.unique(mask)
        wrong = ids[(ids >= num_classes) & (ids != ignore_index)]
        if wrong.size:
            raise BadSample(path, f"class id {int(wrong[0])} >= data.num_classes={num_classes} "
                                  f"(and not the ignore index {ignore_index})")
    return mask


def read_depth(path: str, depth_scale: float = DEPTH_SCALE) -> np.ndarray:
    """float32 depth [H, W] in metres (0 = invalid) of a one-channel PNG; `BadSample` if unreadable."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("I;16", "I;16B", "I", "L"):
                raise BadSample(path, f"depth mode {img.mode}: depth must be one channel (16-bit PNG)")
            raw = np.asarray(img).astype(np.float32)
    except BadSample:
        raise
    except Exception as e:  # noqa: BLE001
        raise BadSample(path, f"{type(e).__name__}: {e}") from e
    if (raw < 0).any():
        raise BadSample(path, "negative depth values")
    return raw / depth_scale


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(path)  # 2-D uint8: mode L


def write_depth(path: str | Path, depth: np.ndarray, depth_scale: float = DEPTH_SCALE) -> None:
    """Depth in metres -> a 16-bit PNG in units of 1 / depth_scale m (0 stays 0 = invalid)."""
    units = np.clip(np.round(np.asarray(depth, dtype=np.float64) * depth_scale), 0, 65535).astype(np.uint16)
    Image.fromarray(units).save(path)


class DenseTransform:
    """Image, mask and depth to one square size (image bilinear with antialias, targets nearest, so class ids
    and depths stay exact), the image normalised; in training a random horizontal flip of all three."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], train: bool = False):
        self.size, self.train = size, train
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Image.Image, mask: np.ndarray | None, depth: np.ndarray | None) -> dict[str, Any]:
        s = self.size
        x = to_float_image(image)  # [3, H, W]
        h, w = x.shape[-2:]
        mask_t = torch.full((h, w), IGNORE_INDEX, dtype=torch.int64) if mask is None \
            else torch.from_numpy(mask.astype(np.int64))
        depth_t = torch.zeros((h, w)) if depth is None else torch.from_numpy(depth.astype(np.float32))
        if (h, w) != (s, s):
            x = F.interpolate(x[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
            mask_t = F.interpolate(mask_t[None, None].float(), size=(s, s), mode="nearest")[0, 0].long()
            depth_t = F.interpolate(depth_t[None, None], size=(s, s), mode="nearest")[0, 0]
        if self.train and torch.rand(()) < 0.5:  # global RNG: the engine reseeds it per sample
            x, mask_t, depth_t = x.flip(-1), mask_t.flip(-1), depth_t.flip(-1)
        return {"image": (x.clamp(0, 1) - self.mean) / self.std, "mask": mask_t, "depth": depth_t}


class DenseDataset(Dataset):
    """A folder layout or JSONL manifest of images with masks and/or depths (module docstring).

    Items: ``{"image": FloatTensor[3, S, S] (normalised), "mask": LongTensor[S, S] (255 = ignore; all 255
    when the sample has none), "depth": FloatTensor[S, S] (metres, 0 = invalid), "path": str}``.

    Args:
        source: The layout's root folder (or one split folder) or a .jsonl manifest.
        split: ``train`` or ``val``: the sub-folder read when the root has split sub-folders.
        needs: Targets every sample must carry (``mask``, ``depth``).
        transform: A `DenseTransform`.
        num_classes: Masks with another class id (not the ignore index) are bad samples; None: not checked.
        ignore_index: The mask value of unlabelled pixels.
        depth_scale: PNG depth units per metre.
    """

    def __init__(self, source: str | Path, split: str, needs: Sequence[str], transform: DenseTransform,
                 num_classes: int | None = None, ignore_index: int = IGNORE_INDEX,
                 depth_scale: float = DEPTH_SCALE):
        unknown = [t for t in needs if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown dense targets {unknown}; use {', '.join(TARGETS)}")
        path = Path(source).expanduser()
        self.source, self.transform = str(source), transform
        self.num_classes, self.ignore_index, self.depth_scale = num_classes, ignore_index, depth_scale
        self.bad_records = BadRecords()
        if path.is_file():
            self.samples = read_dense_manifest(path, needs, self.bad_records)
        else:
            self.samples = list_dense_folder(split_root(path, split), needs, self.bad_records)
        if not self.samples:
            raise ValueError(f"{source}: no usable sample for the {split} split ({self.bad_records.count} dropped, "
                             f"e.g. {self.bad_records.examples[:2]})")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = load_rgb(sample["image"])
        mask = read_mask(sample["mask"], self.num_classes, self.ignore_index) if "mask" in sample else None
        depth = read_depth(sample["depth"], self.depth_scale) if "depth" in sample else None
        for name, target in (("mask", mask), ("depth", depth)):
            if target is not None and target.shape != (image.height, image.width):
                raise BadSample(sample[name], f"{name} is {target.shape[1]}x{target.shape[0]}, its image "
                                              f"{image.width}x{image.height}")
        return {**self.transform(image, mask, depth), "path": sample["image"]}
