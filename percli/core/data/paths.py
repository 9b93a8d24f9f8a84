"""Paths inside manifests: written relative to the manifest's folder, read back against it.

A manifest that holds cwd-relative paths breaks as soon as it is read from another directory (the
VoiceCraft embedded corpus once doubled its folder that way). Every writer of an embedded data set
stores `manifest_path` values and every manifest reader resolves them with `resolve_manifest_path`,
so a data folder can be moved or read from any working directory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

COMPLETE_MARKER = ".complete"


def manifest_path(folder: str | Path, path: str | Path) -> str:
    """How a manifest in `folder` stores the file `path` (absolute, or relative to the current directory,
    as the writer opened it, e.g. ``folder / "utt_0000.wav"``): relative to `folder` with POSIX
    separators when the file lies under it, else absolute."""
    base = os.path.abspath(Path(folder).expanduser())
    full = os.path.abspath(Path(path).expanduser())
    if os.path.commonpath([base, full]) == base:
        return Path(os.path.relpath(full, base)).as_posix()
    return full


def resolve_manifest_path(base: str | Path, path: str) -> str:
    """A path read from a manifest in folder ``base``: ``~`` expanded, absolute kept, relative joined onto ``base``."""
    resolved = Path(path).expanduser()
    return str(resolved if resolved.is_absolute() else Path(base) / resolved)


def build_once(root: str | Path, wanted: Mapping[str, Any], write: Callable[[Path], None], what: str) -> Path:
    """A generated data folder, built once: reused when its ``.complete`` marker holds `wanted`, else `write`
    fills a folder beside `root` that is renamed into place with the marker (an interrupted build leaves no
    half folder). `root` must be new, empty or an earlier build (another marker: rebuilt). Not safe for two
    processes building the same folder at once.

    Returns:
        `root`, resolved.
    """
    root = Path(root).expanduser().resolve()
    marker = root / COMPLETE_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == dict(wanted):
        return root
    if root.exists() and not marker.is_file() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root} is not an empty folder and holds no {what} ({COMPLETE_MARKER} is missing): "
                         "choose a new or empty folder")
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    (tmp / COMPLETE_MARKER).write_text(json.dumps(dict(wanted)))
    if marker.is_file() and json.loads(marker.read_text()) == dict(wanted):  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return root
    shutil.rmtree(root, ignore_errors=True)  # empty, or an older build of ours (checked above)
    tmp.rename(root)
    return root
