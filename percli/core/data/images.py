"""Image datasets read from a folder or a JSONL manifest, plus the sample listing they share with video.

Both datasets return ``{"image": FloatTensor[C, H, W], "label": int, "path": str}`` and raise
:class:`BadSample` for a file that cannot be decoded, so the engine can count and skip it.

``BadSample`` and the folder/manifest listing live here rather than in their own modules because the
video reader is their only other user; ``percli.core.data`` re-exports them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from percli.core.data.paths import resolve_manifest_path
from percli.core.data.shards import BadRecords, read_records

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

Sample = tuple[str, int]

MAX_INFERRED_CLASSES = 100_000
"""Integer labels imply ``max_label + 1`` classes; beyond this many (ImageNet-22k has 21,841) a label is
taken for a typo rather than a class index, and the class list must be given explicitly."""


class BadSample(Exception):
    """A data file that is corrupt, unreadable or undecodable.

    The engine catches it, skips the sample and lists it in ``summary.json``.

    Attributes:
        path: The offending file.
        reason: Why it could not be used (usually the decoder's error message).
    """

    def __init__(self, path: str | Path, reason: str = "") -> None:
        # Both values go to ``args`` so the exception survives pickling between DataLoader workers.
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.reason else self.path


def _files_under(folder: Path, extensions: tuple[str, ...], *, recursive: bool) -> list[str]:
    # os.walk reads file types from the directory listing: no stat per file, which matters for
    # ImageNet-sized folders on network file systems.
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [
            os.path.join(dirpath, f)
            for f in filenames
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions
        ]
        if not recursive:
            break
    return sorted(found)


def list_folder(root: str | Path, extensions: Iterable[str], classes: list[str] | None = None,
                require_labels: bool = False) -> tuple[list[Sample], list[str]]:
    """List the samples of a folder of class sub-folders, or of a flat (unlabeled) folder.

    Sub-folders that contain at least one matching file (searched recursively) become classes,
    named after the folder and numbered in sorted order. If there are none, the matching files
    directly in ``root`` form an unlabeled set (label -1). Hidden files and folders are skipped.

    Args:
        root: The folder.
        extensions: File suffixes to keep (lower case, with the dot); other files are ignored.
        classes: Class names in label order (e.g. the training set's, for a validation folder that
            holds only some of them); a sub-folder that is not among them is an error.
        require_labels: Refuse a flat (unlabeled) folder.

    Returns:
        ``(samples, classes)`` with samples as ``(path, label)`` pairs in a deterministic order.

    Raises:
        ValueError: If ``root`` is not a folder or holds no matching file.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    extensions = tuple(e.lower() for e in extensions)
    class_files = {
        d.name: files
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".") and (files := _files_under(d, extensions, recursive=True))
    }
    if class_files:
        if classes is None:
            classes = list(class_files)
        index = {name: i for i, name in enumerate(classes)}
        unknown = [name for name in class_files if name not in index]
        if unknown:
            raise ValueError(f"{root}: sub-folder(s) {', '.join(map(repr, unknown[:5]))} are not among the "
                             f"{len(classes)} classes of the training data/checkpoint; remove them or label the "
                             "data like the training set")
        samples = [(p, index[name]) for name, files in class_files.items() for p in files]
        return samples, list(classes)
    if require_labels:
        raise ValueError(f"{root} holds no class sub-folders: classification needs labelled data "
                         "(one sub-folder per class, or a manifest with labels)")
    samples = [(p, -1) for p in _files_under(root, extensions, recursive=False)]
    if not samples:
        raise ValueError(
            f"no files with extensions {', '.join(extensions)} found in {root}: expected class "
            "sub-folders of such files, or such files directly in the folder (unlabeled)"
        )
    return samples, []


def inferred_classes(where: str, top: int) -> list[str]:
    """Class names ``"0" .. str(top)`` for integer labels whose largest is `top` (at most MAX_INFERRED_CLASSES)."""
    if top >= MAX_INFERRED_CLASSES:
        raise ValueError(f"{where}: label {top} implies {top + 1} classes (more than {MAX_INFERRED_CLASSES}); "
                         "labels are class indices 0..C-1: fix the line or use class names")
    return [str(i) for i in range(top + 1)]


def read_manifest(manifest: str | Path, classes: list[str] | None = None, require_labels: bool = False,
                  bad: BadRecords | None = None) -> tuple[list[Sample], list[str]]:
    """Read a JSONL manifest with one ``{"path": ..., "label": ...}`` object per line.

    ``label`` is a class index, a class name, or absent/null for unlabeled (-1). Relative paths are
    resolved against the manifest's folder. Blank lines are skipped; a malformed line (not a JSON
    object, no string "path", a label that is neither an index >= -1 nor a name) is counted in `bad`
    with its line number and skipped, as every record reader does. File existence is not checked
    here (manifests can be huge); a missing file raises :class:`BadSample` when loaded.

    Args:
        manifest: The ``.jsonl`` file.
        classes: Class names in label order. If omitted they are inferred: the sorted set of names
            when labels are names, or ``"0" .. str(max_label)`` when labels are integers (at most
            ``MAX_INFERRED_CLASSES``).
        require_labels: Refuse unlabeled lines (classification data).
        bad: Where malformed lines are counted (a new counter when omitted).

    Returns:
        ``(samples, classes)``.

    Raises:
        ValueError: On labels that do not fit the classes, naming the file and line number, or when no
            line is usable.
    """
    manifest = Path(manifest)
    base = manifest.parent
    bad = bad if bad is not None else BadRecords()
    entries: list[tuple[int, str, int | str | None]] = []
    for lineno, obj, _ in read_records(manifest, None, bad):
        path, label, problem = _manifest_entry(obj)
        if problem:
            bad.add(manifest, lineno, problem)
        else:
            entries.append((lineno, path, label))

    names = sorted({lab for _, _, lab in entries if isinstance(lab, str)})
    has_ints = any(isinstance(lab, int) for _, _, lab in entries)
    if classes is None:
        if names and has_ints:
            raise ValueError(f"{manifest}: labels mix class names and integers; use one kind or pass `classes`")
        if names:
            classes = names
        elif has_ints:
            lineno, top = max(((n, lab) for n, _, lab in entries if isinstance(lab, int)), key=lambda e: e[1])
            classes = inferred_classes(f"{manifest}:{lineno}", top)
        else:
            classes = []
    index = {name: i for i, name in enumerate(classes)}

    samples: list[Sample] = []
    for lineno, path, label in entries:
        if isinstance(label, str):
            if label not in index:
                raise ValueError(f"{manifest}:{lineno}: unknown class name {label!r}")
            label = index[label]
        elif label is None:
            if require_labels:
                raise ValueError(f"{manifest}:{lineno}: no label (classification needs a class index or name on "
                                 "every line)")
            label = -1
        elif label >= len(classes):
            raise ValueError(f"{manifest}:{lineno}: label {label} out of range for {len(classes)} classes")
        samples.append((resolve_manifest_path(base, path), label))
    if not samples:
        raise ValueError(f"{manifest}: manifest has no usable entries ({bad.count} malformed line(s), e.g. "
                         f"{bad.examples[:2]})")
    return samples, list(classes)


def _manifest_entry(obj: dict[str, Any]) -> tuple[str, int | str | None, str | None]:
    """(path, label or None, None) of a manifest object, or (.., .., why it is unusable)."""
    path = obj.get("path")
    if not isinstance(path, str) or not path:
        return "", None, 'missing or non-string "path"'
    label = obj.get("label")
    # bool is an int subclass; a true/false label is almost certainly a bug in the manifest.
    if isinstance(label, bool) or not (label is None or isinstance(label, int | str)):
        return path, None, f'"label" must be an integer, a class name or null, got {label!r}'
    if isinstance(label, int) and label < -1:
        return path, None, f"negative label {label} (use -1 or null for unlabeled)"
    return path, None if label == -1 else label, None


def load_rgb(path: str) -> Image.Image:
    """Decode an image file to an RGB PIL image.

    Raises:
        BadSample: If the file is missing, unreadable or not a decodable image.
    """
    try:
        with Image.open(path) as img:
            # convert() forces the full decode, so truncated files fail here and not in a transform.
            return img.convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises many unrelated types for corrupt input
        raise BadSample(path, f"{type(e).__name__}: {e}") from e


def to_float_image(img: Image.Image) -> torch.Tensor:
    """PIL image -> FloatTensor[C, H, W] in [0, 1] (the output when no transform is given)."""
    return TF.to_dtype(TF.to_image(img), torch.float32, scale=True)


class _ImageSamples(Dataset):
    """Shared ``__getitem__`` for datasets that hold ``(path, label)`` samples of image files."""

    samples: list[Sample]
    classes: list[str]
    transform: Callable[[Any], torch.Tensor] | None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        img = load_rgb(path)
        image = self.transform(img) if self.transform is not None else to_float_image(img)
        return {"image": image, "label": label, "path": path}


class ImageFolderDataset(_ImageSamples):
    """Images in class sub-folders (``root/<class>/**/<img>``) or a flat folder (unlabeled, label -1).

    Args:
        root: The folder.
        transform: Called on the RGB PIL image; must return FloatTensor[C, H, W]. Without it the
            image is returned as floats in [0, 1] at its own size.
        extensions: Recognised image suffixes; other files are ignored.
        classes, require_labels: As for :func:`list_folder`.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Any], torch.Tensor] | None = None,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
        classes: list[str] | None = None,
        require_labels: bool = False,
    ) -> None:
        self.root = str(root)
        self.transform = transform
        self.samples, self.classes = list_folder(root, extensions, classes, require_labels)


class JsonlImageDataset(_ImageSamples):
    """Images listed in a JSONL manifest (see :func:`read_manifest` for the line format).

    Args:
        manifest: The ``.jsonl`` file.
        transform: As for :class:`ImageFolderDataset`.
        classes: Class names in label order; inferred from the labels when omitted.
        require_labels: Refuse unlabeled lines.
    """

    def __init__(
        self,
        manifest: str | Path,
        transform: Callable[[Any], torch.Tensor] | None = None,
        classes: list[str] | None = None,
        require_labels: bool = False,
    ) -> None:
        self.manifest = str(manifest)
        self.transform = transform
        self.bad_records = BadRecords()
        self.samples, self.classes = read_manifest(manifest, classes, require_labels, self.bad_records)
