"""A PNG of the entry-count distribution before and after MetaCLIP balancing, drawn with PIL only.

matplotlib is not a dependency, so this draws a log-log rank plot by hand: x is an entry's rank
(1 = most matched), y its count.

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

import numpy as np
from PIL import Image

from percli.core.chart import PALETTE, Chart, save_png

BEFORE, AFTER, THRESHOLD = PALETTE[0], PALETTE[1], PALETTE[3]


def _log_scale(lo: float, hi: float, pixel_lo: float, pixel_hi: float):
    """A function mapping values in [lo, hi] (> 0) to pixels, logarithmically."""
    a, b = math.log10(lo), math.log10(hi)
    span = (b - a) or 1.0
    return lambda v: pixel_lo + (math.log10(v) - a) / span * (pixel_hi - pixel_lo)


def _decade_ticks(lo: float, hi: float) -> list[float]:
    return [10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            if lo <= 10.0 ** k <= hi]


def draw_entry_counts(counts: np.ndarray, t: float) -> Image.Image:
    """The rank plot (RGB, WIDTH x HEIGHT) of the non-zero entry counts before/after balancing at `t`."""
    chart = Chart(f"MetaCLIP entry counts (log-log), t = {t:g}", "entry rank (by count)", "texts matched")
    before = np.sort(np.asarray(counts, dtype=np.float64)[np.asarray(counts) > 0])[::-1]
    if before.size == 0:
        chart.note("no entry was matched")
        return chart.image
    after = np.minimum(before, t)
    x_hi = max(float(before.size), 10.0)
    y_hi = max(float(before[0]), t if math.isfinite(t) else 1.0) * 1.5
    chart.axes(_log_scale(1.0, x_hi, chart.left, chart.right), _log_scale(1.0, y_hi, chart.bottom, chart.top),
               _decade_ticks(1.0, x_hi), _decade_ticks(1.0, y_hi))
    if math.isfinite(t) and t < y_hi:
        chart.dashed_hline(t, THRESHOLD)
    ranks = np.arange(1, before.size + 1)
    chart.series(list(zip(ranks, before, strict=True)), BEFORE)
    # Drawn last: over the head, "after" lies exactly on the t line and must stay visible.
    chart.series(list(zip(ranks, after, strict=True)), AFTER)
    chart.legend([(BEFORE, "before: c_e"), (AFTER, "after: min(c_e, t)"), (THRESHOLD, "t")])
    return chart.image


def save_entry_counts_png(counts: np.ndarray, t: float, path: str | Path) -> Path:
    """Draw the plot and write it to `path` atomically."""
    return save_png(draw_entry_counts(counts, t), path)
