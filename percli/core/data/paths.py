"""Paths inside manifests: written relative to the manifest's folder, read back against it.

A manifest that holds cwd-relative paths breaks as soon as it is read from another directory (the
VoiceCraft embedded corpus once doubled its folder that way). Every writer of an embedded data set
stores `manifest_path` values and every manifest reader resolves them with `resolve_manifest_path`,
so a data folder can be moved or read from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path


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
