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
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 800, 500
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 40, 50
BEFORE, AFTER, THRESHOLD, AXIS = (31, 119, 180), (255, 127, 14), (214, 39, 40), (0, 0, 0)


def _log_scale(lo: float, hi: float, pixel_lo: float, pixel_hi: float):
    """A function mapping values in [lo, hi] (> 0) to pixels, logarithmically."""
    a, b = math.log10(lo), math.log10(hi)
    span = (b - a) or 1.0
    return lambda v: pixel_lo + (math.log10(v) - a) / span * (pixel_hi - pixel_lo)


def _polyline(draw: ImageDraw.ImageDraw, values: np.ndarray, x_of, y_of, color: tuple[int, int, int]) -> None:
    points = [(x_of(i + 1), y_of(float(v))) for i, v in enumerate(values)]
    if len(points) == 1:
        draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=color)
    else:
        draw.line(points, fill=color, width=2)


def _dashed_hline(draw: ImageDraw.ImageDraw, y: float, x0: float, x1: float, color: tuple[int, int, int]) -> None:
    x = x0
    while x < x1:
        draw.line([(x, y), (min(x + 8, x1), y)], fill=color, width=2)
        x += 14


def _decade_ticks(lo: float, hi: float) -> list[float]:
    return [10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            if lo <= 10.0 ** k <= hi]


def draw_entry_counts(counts: np.ndarray, t: float) -> Image.Image:
    """The rank plot (RGB, WIDTH x HEIGHT) of the non-zero entry counts before/after balancing at `t`."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    draw.text((left, 10), f"MetaCLIP entry counts (log-log), t = {t:g}", fill=AXIS, font=font)
    draw.text(((left + right) // 2 - 60, HEIGHT - 20), "entry rank (by count)", fill=AXIS, font=font)
    draw.text((5, top - 15), "texts matched", fill=AXIS, font=font)
    before = np.sort(np.asarray(counts, dtype=np.float64)[np.asarray(counts) > 0])[::-1]
    if before.size == 0:
        draw.text((left + 20, top + 20), "no entry was matched", fill=AXIS, font=font)
        return image
    after = np.minimum(before, t)
    y_hi = max(float(before[0]), t if math.isfinite(t) else 1.0) * 1.5
    x_of = _log_scale(1.0, max(float(before.size), 10.0), left, right)
    y_of = _log_scale(1.0, y_hi, bottom, top)
    for tick in _decade_ticks(1.0, max(float(before.size), 10.0)):
        draw.line([(x_of(tick), bottom), (x_of(tick), bottom + 5)], fill=AXIS)
        draw.text((x_of(tick) - 8, bottom + 8), f"{tick:g}", fill=AXIS, font=font)
    for tick in _decade_ticks(1.0, y_hi):
        draw.line([(left - 5, y_of(tick)), (left, y_of(tick))], fill=AXIS)
        draw.text((5, y_of(tick) - 6), f"{tick:g}", fill=AXIS, font=font)
    if math.isfinite(t) and t < y_hi:
        _dashed_hline(draw, y_of(t), left, right, THRESHOLD)
    _polyline(draw, before, x_of, y_of, BEFORE)
    # Drawn last: over the head, "after" lies exactly on the t line and must stay visible.
    _polyline(draw, after, x_of, y_of, AFTER)
    legend = [(BEFORE, "before: c_e"), (AFTER, "after: min(c_e, t)"), (THRESHOLD, "t")]
    for row, (color, label) in enumerate(legend):
        y = top + 10 + 16 * row
        draw.line([(right - 170, y + 6), (right - 145, y + 6)], fill=color, width=3)
        draw.text((right - 140, y), label, fill=AXIS, font=font)
    return image


def save_entry_counts_png(counts: np.ndarray, t: float, path: str | Path) -> Path:
    """Draw the plot and write it to `path` via a temp file and a rename (never a half-written PNG)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    draw_entry_counts(counts, t).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
