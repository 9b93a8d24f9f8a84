"""Progress on stderr that fits both a terminal and a batch log.

On a terminal (or in a notebook) a rich live bar redraws in place. When stderr is not a terminal
(SLURM, `nohup`, CI logs) a live bar prints nothing until it ends, so there progress is plain
lines instead: the training engine prints one every `train.log_every` steps, data jobs one per
shard or chunk done, each with the count done, the rate and an ETA, e.g.

    train 20/100 steps | loss 0.4312 | lr 2.5e-04 | samples/s 812.4 | eta 0:01:38
    match 3/10 shards | records 30,000 | records/s 4,210 | eta 0:00:17 | a.jsonl -> matches/a.npz

Jobs get one through `RunContext.progress(...)`; the engine builds its own.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console


def stderr_is_live() -> bool:
    """True where a live bar can redraw in place: stderr is a terminal (rich honours FORCE_COLOR /
    TTY_COMPATIBLE) or a Jupyter notebook."""
    console = Console(stderr=True)
    return console.is_terminal or console.is_jupyter


def _write_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def format_eta(seconds: float | None) -> str:
    return "?" if seconds is None else str(datetime.timedelta(seconds=round(seconds)))


class Progress:
    """Progress of one loop over `total` units (steps, shards).

    Args:
        description: what runs ("train", "match").
        total: units in the whole loop.
        unit: their name, plural ("steps", "shards").
        completed: units already done before this session (a resumed run); they count as done but not
            towards the rate and ETA.
        enabled: False prints nothing (ranks other than 0).
        live: a redrawn bar (True) or plain lines (False); None: a bar exactly when `stderr_is_live()`.
        out: where plain lines go (stderr by default; library functions pass their `log` callable).
    """

    def __init__(self, description: str, total: float, unit: str = "steps", *, completed: float = 0,
                 enabled: bool = True, live: bool | None = None, out: Callable[[str], None] | None = None):
        self.description, self.total, self.unit = description, total, unit
        self.completed, self.enabled = completed, enabled
        self.live = enabled and (stderr_is_live() if live is None else live)
        self.out = out or _write_stderr
        self.records = 0
        self._base, self._t0 = completed, time.time()  # rate and ETA count this session only
        self._bar: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=Console(stderr=True),
                transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.completed, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def eta(self) -> float | None:
        """Seconds left at this session's pace; None before the first unit."""
        done = self.completed - self._base
        if done <= 0:
            return None
        return max(self.total - self.completed, 0) * (time.time() - self._t0) / done

    def line(self, fields: dict[str, str] | None = None, note: str = "") -> str:
        """The plain progress line: count, `fields` ("label value"), ETA, and an optional note."""
        done = int(self.completed + 1e-6)  # fractions of a unit (chunks of a shard) add up to whole ones
        parts = [f"{self.description} {done}/{int(self.total)} {self.unit}"]
        parts += [f"{k} {v}" for k, v in (fields or {}).items()]
        parts.append(f"eta {format_eta(self.eta())}")
        if note:
            parts.append(note)
        return " | ".join(parts)

    def update(self, completed: float, fields: dict[str, str] | None = None, *, line: bool = False,
               note: str = "") -> None:
        """Set the units done. A live bar redraws with `fields` (a note is printed above it); plain output
        prints one line only when `line` (or a note) is given, so the caller decides how often."""
        self.completed = completed
        if not self.enabled:
            return
        if self._bar is not None:
            if note:
                self._bar.console.print(note, markup=False, highlight=False, soft_wrap=True)
            info = " ".join(f"{k} {v}" for k, v in (fields or {}).items())
            self._bar.update(self._task, completed=completed, info=info)
        elif line or note:
            self.out(self.line(fields, note))

    def advance(self, amount: float = 1, *, records: int = 0, note: str = "", skipped: bool = False) -> None:
        """A data job's unit done (or `amount` of one): adds `records` and prints one line with the
        records so far and records/s. `skipped` units (already done, --resume) count as done but not
        towards the rate and ETA, and print a line only with a note."""
        if skipped:
            self._base += amount
        self.records += records
        elapsed = max(time.time() - self._t0, 1e-9)
        fields = {"records": f"{self.records:,}", "records/s": f"{self.records / elapsed:,.1f}"}
        self.update(self.completed + amount, fields, line=not skipped, note=note)


ProgressFactory = Callable[..., Progress]
"""`(description, total, unit, **options) -> Progress`: what `RunContext.progress` is, and what library
functions take to report progress."""


def plain_progress(log: Callable[[str], None] | None) -> ProgressFactory:
    """A factory of plain-line progress into `log` (nothing when None): the default of library functions
    called without a RunContext."""

    def make(description: str, total: float, unit: str = "steps", **options: Any) -> Progress:
        return Progress(description, total, unit, enabled=log is not None, live=False, out=log, **options)

    return make
