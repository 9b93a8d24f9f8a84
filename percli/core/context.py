"""What a job's `run(cfg, ctx)` is given: where to write, whether it resumes, and its processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from percli.core.progress import Progress

_err = Console(stderr=True)


@dataclass
class RunContext:
    """A job's run: its run dir (created and locked by rank 0, holding config.yaml and env.json), the
    --resume flag, --overwrite (a job writing a file outside its run dir replaces an existing one only
    then), the processes (`accelerator` for engine jobs, else `rank`/`world` of core.dist)."""

    run_dir: Path
    resume: bool = False
    overwrite: bool = False
    rank: int = 0
    world: int = 1
    accelerator: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        """A progress line on stderr (rank 0 only); stdout stays for the summary."""
        if self.is_main:
            _err.print(message, highlight=False, soft_wrap=True)

    def progress(self, description: str, total: float, unit: str = "shards", **options: Any) -> Progress:
        """Progress of a loop over `total` units (rank 0 only): a live bar on a terminal, one plain line per
        `advance` in batch logs (see `percli.core.progress`). Use as a context manager."""
        return Progress(description, total, unit, enabled=self.is_main, **options)
