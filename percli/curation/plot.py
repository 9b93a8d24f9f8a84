"""A PNG of the entry-count distribution before and after MetaCLIP balancing, drawn with `percli.core.chart`.

A log-log rank plot: x is an entry's rank (1 = most matched), y its count.

* before: c_e, the number of texts matching entry e, sorted in descending order;
* after: min(c_e, t), the per-entry balancing target. Each text matching e is kept with probability
  at least p_e = min(1, t / c_e), so min(c_e, t) = c_e * p_e is a lower bound on the expected number
  of kept texts that match e (texts also survive through their other entries). It is exact for texts
  that match only e. The same sort order as "before" is used, so head entries show as the flat part.
* a horizontal line at t.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from percli.core import chart

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BEFORE, AFTER, THRESHOLD = chart.PALETTE[0], chart.PALETTE[1], chart.PALETTE[3]


def entry_counts_figure(counts: np.ndarray, t: float) -> Figure:
    """The rank plot (chart.WIDTH x chart.HEIGHT) of the non-zero entry counts before/after balancing at `t`."""
    fig, ax = chart.line_chart(f"MetaCLIP entry counts (log-log), t = {t:g}", "entry rank (by count)",
                               "texts matched (count)")
    before = np.sort(np.asarray(counts, dtype=np.float64)[np.asarray(counts) > 0])[::-1]
    if before.size == 0:
        chart.note(ax, "no entry was matched")
        return fig
    ax.set_xscale("log")
    ax.set_yscale("log")
    ranks = np.arange(1, before.size + 1)
    ax.set_xlim(1.0, max(float(before.size), 10.0))
    ax.set_ylim(1.0, max(float(before[0]), t if math.isfinite(t) else 1.0) * 1.5)
    if math.isfinite(t):
        ax.axhline(t, color=THRESHOLD, linestyle="--", label="t")
    ax.plot(ranks, before, color=BEFORE, label="before: c_e", marker="o" if before.size == 1 else None)
    # Drawn last: over the head, "after" lies exactly on the t line and must stay visible.
    ax.plot(ranks, np.minimum(before, t), color=AFTER, label="after: min(c_e, t)",
            marker="o" if before.size == 1 else None)
    chart.legend_outside(ax)
    return fig


def save_entry_counts_png(counts: np.ndarray, t: float, path: str | Path) -> Path:
    """Draw the plot and write it to `path` atomically."""
    return chart.save_png(entry_counts_figure(counts, t), path)
