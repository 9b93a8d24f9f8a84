"""The run directory every run writes: config.yaml, env.json, metrics.jsonl, summary.json.

`runs/<verb>-<method>-<UTC timestamp>/` unless the user names one. A non-empty run dir is
refused unless the user asks to `--resume` it or to `--overwrite` it, so a typo never clobbers
a finished run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".percli.lock"
"""The lock file inside a run dir: held (flock) by the process that writes the dir, for its lifetime."""

_HELD: dict[str, int] = {}  # realpath of a run dir -> the open lock file this process holds


class RunDirError(RuntimeError):
    """The run dir cannot be used as asked; the message says what to pass instead."""


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return f"PID {info['pid']} on {info.get('host', '?')} (since {info.get('since', '?')})"


def lock_run_dir(path: Path) -> None:
    """Hold `path`/.percli.lock until the process exits (or `unlock_run_dir`).

    An OS-level advisory lock (flock): the kernel releases it when the holder exits, however it
    ends, so a crashed run never leaves a stale lock behind. Re-entrant within one process.

    Raises:
        RunDirError: another live process holds the lock (named by PID and host), or the dir is not writable.
    """
    key = os.path.realpath(path)
    if key in _HELD:
        return
    lock = Path(path) / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot write in run dir {path}: {e.strerror}; choose a writable --run-dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunDirError(f"cannot lock run dir {path}: {e.strerror}") from None
        raise RunDirError(f"run dir {path} is in use by {_holder(lock)}; wait for that run to end, "
                          "or choose another --run-dir") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    _HELD[key] = fd


def unlock_run_dir(path: Path) -> None:
    """Release this process's lock on `path` (no-op when it holds none)."""
    fd = _HELD.pop(os.path.realpath(path), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock


def _entries(path: Path) -> list[Path]:
    """What a run dir holds besides its lock file."""
    return [p for p in path.iterdir() if p.name != LOCK_NAME] if path.is_dir() else []


def check_run_dir(path: Path, *, resume: bool, overwrite: bool, can_resume: bool = True,
                  flag: str = "--run-dir") -> None:
    """Everything `claim_run_dir` would refuse, checked without creating or changing anything
    (so config validation and --dry-run report it before a run dir exists)."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; pass one of them")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{flag} {path} is a file; choose a directory")
    if resume and not _entries(path):
        raise RunDirError(f"--resume: {path} holds no run to resume; drop --resume to start a new run")
    if _entries(path) and not (resume or overwrite):
        raise RunDirError(
            f"{flag} {path} is not empty; pass " + ("--resume to continue it, " if can_resume else "")
            + f"--overwrite to replace it, or {flag} to choose another")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise RunDirError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"{flag} {path}: {parent} is not writable; choose a writable directory")
    lock = path / LOCK_NAME
    if lock.is_file() and os.path.realpath(path) not in _HELD:
        try:
            with open(lock, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{flag} {path} is in use by {_holder(lock)}; wait for that run to end, "
                              f"or choose another {flag}") from None
        except OSError:
            pass


def claim_run_dir(path: Path, *, resume: bool, overwrite: bool, can_resume: bool = True,
                  flag: str = "--run-dir") -> Path:
    """Create (or reuse with --resume / empty with --overwrite) the run dir and hold its lock.

    The lock is taken before anything in the dir is judged or removed, so `--overwrite` or a second
    `--resume` beside a live run is refused instead of interleaving with it.
    """
    check_run_dir(path, resume=resume, overwrite=overwrite, can_resume=can_resume, flag=flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create {flag} {path}: {e.strerror}; choose a writable directory") from None
    lock_run_dir(path)
    entries = _entries(path)
    if entries and not resume:
        if not overwrite:  # appeared between the check and the lock
            raise RunDirError(f"{flag} {path} is not empty; pass --overwrite to replace it")
        for entry in entries:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return path


def default_run_dir(verb: str, method: str) -> Path:
    """runs/<verb>-<method>-<UTC time>, with -2, -3, ... when a run of the same second already has it
    (quick jobs such as `percli convert` in a loop)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path("runs") / "-".join(part.replace(" ", "-") for part in (verb, method, stamp) if part)
    path, count = base, 1
    while path.exists():
        count += 1
        path = base.with_name(f"{base.name}-{count}")
    return path




def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, default=str) + "\n")


def write_jsonl_atomic(path: Path, records: Any) -> None:
    """Records as JSON lines, atomically."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


def environment_report(world_size: int, device: str, mixed_precision: str) -> dict[str, Any]:
    """Versions and devices, so a run can be reproduced or compared later."""
    from importlib.metadata import PackageNotFoundError, version

    import accelerate
    import torch

    try:  # the installed distribution's version (core does not import the package root, the top-layer API)
        percli_version = version("percli")
    except PackageNotFoundError:
        percli_version = "unknown (not installed)"
    return {
        "percli": percli_version,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "device": device,
        "world_size": world_size,
        "mixed_precision": mixed_precision,
        "torch_threads": torch.get_num_threads(),
        "command": sys.argv,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so steps are not duplicated."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
