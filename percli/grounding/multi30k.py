"""Multi30K-style grounded captions: caption files, region features per image, and a dataset grouping both.

Origin: written for percli. Reads the layout of Multi30K (Elliott et al., 2016), the real one as well as the
embedded corpus of :func:`percli.grounding.scenes.write_multi30k`:

    <split>.<lang>            one caption per line (UTF-8)
    <split>.<lang>.ids        the image id of each caption line (monolingual splits), else
    <split>_images.txt        the image file of each line, shared by every language (Multi30K task 1:
                              ``1000092795.jpg``); the extension is stripped to get the id
    features/<id>.npy         float [R, D] region features of the image (no pickle)

Bad input is counted in a :class:`~percli.core.data.shards.BadRecords` and skipped: an empty caption line, an
image whose feature file is missing, truncated, empty, not a ``.npy`` array, of a non-numeric dtype (object
arrays are never unpickled), of another shape than [R, D] or of another width than the others. A caption file
whose line count differs from its id file is an error, since every later caption would be paired with the
wrong image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from percli.core.data.images import BadSample
from percli.core.data.shards import BadRecords

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_LAYOUT = ("expected the Multi30K layout: <split>.<lang> (one caption per line) with <split>.<lang>.ids or "
           "<split>_images.txt (the image of each line), and features/<id>.npy")


def _image_id(name: str) -> str:
    """``1000092795.jpg`` -> ``1000092795``; ids without an image extension are kept as they are."""
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in _IMAGE_EXTENSIONS else name


def _lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, without line ends (a final newline opens no extra line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}): Multi30K files are UTF-8, one caption per line") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_captions(root: str | Path, split: str, language: str,
                  bad: BadRecords | None = None) -> list[tuple[str, str]]:
    """The (image id, caption) pairs of ``<root>/<split>.<language>``, in file order.

    Args:
        root: The corpus folder.
        split: E.g. ``"train"``, ``"val"``, ``"test"`` or ``"mono"``.
        language: E.g. ``"en"``.
        bad: Counts the skipped lines (empty caption or image id); None: skipped silently.

    Raises:
        ValueError: The caption file or both id files are missing, or the caption and id files have different
            line counts.
    """
    root = Path(root)
    captions_path = root / f"{split}.{language}"
    ids_path = root / f"{split}.{language}.ids"
    if not ids_path.is_file():
        ids_path = root / f"{split}_images.txt"
    for path in (captions_path, ids_path):
        if not path.is_file():
            raise ValueError(f"{path} is missing: {_LAYOUT}")
    captions, ids = _lines(captions_path), _lines(ids_path)
    if len(captions) != len(ids):
        raise ValueError(f"{captions_path} has {len(captions)} lines but {ids_path} has {len(ids)}: every caption "
                         "line needs the image id on the same line of the id file")
    pairs = []
    for line, (image, text) in enumerate(zip(ids, captions), start=1):
        image, text = image.strip(), text.strip()
        if not text or not image:
            if bad is not None:
                bad.add(ids_path if text else captions_path, line, "empty image id" if text else "empty caption")
            continue
        pairs.append((_image_id(image), text))
    return pairs


class FeatureStore:
    """Region features of images, read from ``<folder>/<id>.npy`` or from one ``.npz`` archive of id -> array.

    Args:
        folder: The folder of ``.npy`` files (the corpus' ``features/``), or a ``.npz`` file.
        dim: Feature width D every image must have; None: learnt from the first good file.

    Every failure is a :class:`~percli.core.data.images.BadSample` naming the file and the reason.
    """

    def __init__(self, folder: str | Path, dim: int | None = None) -> None:
        self.folder = Path(folder)
        self.dim = dim
        self._npz = np.load(self.folder, allow_pickle=False) if self.folder.suffix == ".npz" else None
        if self._npz is None and not self.folder.is_dir():
            raise ValueError(f"feature folder {self.folder} does not exist: {_LAYOUT}")

    def path(self, image_id: str) -> Path:
        """Where the features of ``image_id`` are read from."""
        return self.folder if self._npz is not None else self.folder / f"{image_id}.npy"

    def _validate(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if dtype.kind not in "fiu":
            raise BadSample(path, f"dtype {dtype} is not numeric")
        if len(shape) != 2 or shape[0] == 0:
            raise BadSample(path, f"shape {tuple(shape)} is not [R, D] with R >= 1")
        if self.dim is not None and shape[1] != self.dim:
            raise BadSample(path, f"width {shape[1]}, expected {self.dim}")
        self.dim = shape[1]

    def _checked_path(self, image_id: str) -> Path:
        if not image_id or "/" in image_id or "\\" in image_id or image_id in (".", ".."):
            raise BadSample(self.folder / str(image_id), "bad image id")
        path = self.path(image_id)
        if self._npz is None and not path.is_file():
            raise BadSample(path, "no feature file")
        if self._npz is not None and image_id not in self._npz.files:
            raise BadSample(path, f"no features for {image_id!r} in the archive")
        return path

    def check(self, image_id: str) -> None:
        """Validate the features of ``image_id`` from the ``.npy`` header and file size, without reading them.

        Raises:
            BadSample: Missing, truncated, not an array, wrong dtype, shape or width.
        """
        path = self._checked_path(image_id)
        if self._npz is not None:  # members of an archive are only checked by reading them
            self.get(image_id)
            return
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(f)
                data_start = f.tell()
        except (ValueError, OSError, EOFError) as e:
            raise BadSample(path, f"not a .npy array: {e}") from None
        self._validate(path, shape, dtype)
        expected = data_start + int(np.prod(shape)) * dtype.itemsize
        if path.stat().st_size < expected:
            raise BadSample(path, f"truncated: {path.stat().st_size} bytes, the header promises {expected}")

    def get(self, image_id: str) -> torch.Tensor:
        """The features of ``image_id``: float32 [R, D].

        Raises:
            BadSample: Missing, unreadable, truncated, wrong dtype, shape or width, or non-finite values.
        """
        path = self._checked_path(image_id)
        try:
            array = self._npz[image_id] if self._npz is not None else np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # truncated, pickled/object data, not an array at all
            raise BadSample(path, f"unreadable: {e}") from None
        if not isinstance(array, np.ndarray):  # e.g. a zip archive named .npy
            raise BadSample(path, f"not an array but {type(array).__name__}")
        self._validate(path, array.shape, array.dtype)
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise BadSample(path, "non-finite values")
        return torch.from_numpy(np.ascontiguousarray(array))


class GroundedCaptions(Dataset):
    """The images of one split with their captions in several languages and their region features.

    Captions are grouped by image (an image may have several captions per language, as in Multi30K task 2); a
    language without a caption for an image is absent from its item (the monolingual splits give each image
    one language). Every image's features are checked eagerly at construction, from the ``.npy`` header and
    file size only (cheap even for Multi30K's 31k images); the images that fail are counted in ``bad`` and
    dropped. The arrays themselves are read in ``__getitem__``, which raises ``BadSample`` should a file break
    later (the engine skips such a sample).

    Args:
        root: The corpus folder.
        split: Split name (``<split>.<lang>`` files).
        languages: One language or several; each needs its caption file.
        features: A FeatureStore, a features folder or ``.npz`` file; default ``<root>/features``.
        max_regions: Keep at most this many (the first) regions of each image; None keeps all.
        bad: Counts skipped caption lines and dropped images; a fresh BadRecords when None (``self.bad``).

    Items: ``{"image_id": str, "regions": float32 [R, D], "captions": {lang: [str, ...]}}``.
    """

    def __init__(self, root: str | Path, split: str, languages: str | Sequence[str],
                 features: FeatureStore | str | Path | None = None, max_regions: int | None = None,
                 bad: BadRecords | None = None) -> None:
        self.root, self.split = Path(root), split
        self.languages = (languages,) if isinstance(languages, str) else tuple(languages)
        if not self.languages:
            raise ValueError("GroundedCaptions needs at least one language")
        if max_regions is not None and max_regions < 1:
            raise ValueError(f"max_regions must be >= 1 or None, got {max_regions}")
        self.max_regions = max_regions
        self.bad = bad if bad is not None else BadRecords()
        self.features = features if isinstance(features, FeatureStore) else \
            FeatureStore(self.root / "features" if features is None else features)
        grouped: dict[str, dict[str, list[str]]] = {}  # image id -> language -> captions, first-seen order
        for language in self.languages:
            for image_id, text in read_captions(self.root, split, language, self.bad):
                grouped.setdefault(image_id, {}).setdefault(language, []).append(text)
        self.items: list[tuple[str, dict[str, list[str]]]] = []
        for position, (image_id, captions) in enumerate(grouped.items()):
            try:
                self.features.check(image_id)
            except BadSample as e:
                self.bad.add(Path(e.path), position, e.reason, where="image")
                continue
            self.items.append((image_id, captions))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def bad_records(self) -> BadRecords:
        """What was skipped while reading (the engine reports a dataset's ``bad_records``)."""
        return self.bad

    @property
    def feature_dim(self) -> int | None:
        """D of the features (known once an image passed its check)."""
        return self.features.dim

    def captions_of(self, index: int) -> dict[str, list[str]]:
        """The captions of item `index` by language, without reading its features."""
        return self.items[index][1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, captions = self.items[index]
        regions = self.features.get(image_id)
        if self.max_regions is not None:
            regions = regions[: self.max_regions]
        return {"image_id": image_id, "regions": regions, "captions": {k: list(v) for k, v in captions.items()}}


def collate_regions(items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the regions of GroundedCaptions items (the rest of each item stays with the caller).

    Returns:
        regions float [B, Rmax, D], right-padded with zeros to the batch's most regions, and a mask
        bool [B, Rmax] (True = a real region).
    """
    if not items:
        raise ValueError("collate_regions got an empty batch")
    counts = [item["regions"].shape[0] for item in items]
    dim = items[0]["regions"].shape[1]
    regions = torch.zeros(len(items), max(counts), dim, dtype=items[0]["regions"].dtype)
    mask = torch.zeros(len(items), max(counts), dtype=torch.bool)
    for i, (item, count) in enumerate(zip(items, counts)):
        regions[i, :count] = item["regions"]  # [R, D] into [Rmax, D]
        mask[i, :count] = True
    return regions, mask
