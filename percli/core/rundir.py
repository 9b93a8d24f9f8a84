"""The run directory every run writes: config.yaml, env.json, metrics.jsonl, summary.json.

`runs/<verb>-<method>-<UTC timestamp>/` unless the user names one. A non-empty run dir is
refused unless the user asks to `--resume` it or to `--overwrite` it, so a typo never clobbers
a finished run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any


class RunDirError(RuntimeError):
    """The run dir cannot be used as asked; the message says what to pass instead."""


def default_run_dir(verb: str, method: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path("runs") / f"{verb}-{method}-{stamp}"


def prepare_output_dir(output: Path | None, verb: str, method: str, *, overwrite: bool, resume: bool = False,
                       can_resume: bool = False, rank: int = 0, world: int = 1) -> tuple[Path, str | None]:
    """The output dir of a data job (default runs/<verb>-<method>-<UTC time>), created by rank 0.

    Only rank 0 checks, empties (--overwrite) and creates it, so processes never race on rmtree;
    the default name holds a timestamp, so the others take rank 0's choice (broadcast when
    world > 1). Returns (dir, error message or None); every process gets the same pair.
    """
    chosen: list = [None, None]
    if rank == 0:
        out_dir = output or default_run_dir(verb, method)
        problem = None
        if resume and overwrite:
            problem = "--resume and --overwrite contradict each other; pass one of them"
        elif out_dir.exists() and not out_dir.is_dir():
            problem = f"--output {out_dir} is a file; choose a directory"
        elif out_dir.is_dir() and any(out_dir.iterdir()) and not resume:
            if overwrite:
                shutil.rmtree(out_dir)
            else:
                problem = (f"output dir {out_dir} is not empty; pass --overwrite to replace it, "
                           + ("--resume to continue it, " if can_resume else "") + "or --output to choose another")
        if problem is None:
            out_dir.mkdir(parents=True, exist_ok=True)
        chosen = [str(out_dir), problem]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0]), chosen[1]


def prepare_run_dir(path: Path, *, resume: bool, overwrite: bool) -> Path:
    """Create or validate the run dir according to --resume / --overwrite."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; pass one of them")
    non_empty = path.is_dir() and any(path.iterdir())
    if resume:
        if not non_empty:
            raise RunDirError(f"--resume: {path} holds no run to resume; drop --resume to start a new run")
    elif non_empty:
        if not overwrite:
            raise RunDirError(
                f"run dir {path} is not empty; pass --resume to continue it, --overwrite to replace it, "
                "or --run-dir to choose another"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
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
    import accelerate
    import torch

    import percli

    return {
        "percli": percli.__version__,
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
