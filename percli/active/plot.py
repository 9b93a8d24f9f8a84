"""A PNG of active-learning curves (test accuracy vs labelled-set size), drawn with PIL only.

One line per strategy through its mean accuracy, with a +-1 std bar over the seeds at every
round; the canvas and axis style are those of `percli.curation.plot`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from percli.curation.plot import AXIS, HEIGHT, MARGIN_BOTTOM, MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, WIDTH

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def _linear(lo: float, hi: float, pixel_lo: float, pixel_hi: float):
    span = (hi - lo) or 1.0
    return lambda v: pixel_lo + (v - lo) / span * (pixel_hi - pixel_lo)


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About `count` round numbers (1, 2 or 5 x 10^k apart) between lo and hi."""
    raw = (hi - lo) / count or 1.0
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    return [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]


def draw_learning_curves(curves: dict[str, dict], title: str) -> Image.Image:
    """curves: {strategy: {"labels": [...], "mean": [...], "std": [...]}} -> RGB image WIDTH x HEIGHT."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    draw.text((left, 10), title, fill=AXIS, font=font)
    draw.text(((left + right) // 2 - 50, HEIGHT - 20), "labelled points", fill=AXIS, font=font)
    draw.text((5, top - 15), "test accuracy", fill=AXIS, font=font)
    labels = [n for c in curves.values() for n in c["labels"]]
    lows = [m - s for c in curves.values() for m, s in zip(c["mean"], c["std"], strict=True)]
    highs = [m + s for c in curves.values() for m, s in zip(c["mean"], c["std"], strict=True)]
    if not labels:
        draw.text((left + 20, top + 20), "no curve to draw", fill=AXIS, font=font)
        return image
    y_lo, y_hi = max(0.0, min(lows) - 0.02), min(1.0, max(highs) + 0.02)
    x_of = _linear(min(labels), max(labels), left + 10, right - 10)
    y_of = _linear(y_lo, y_hi, bottom, top)
    for tick in _ticks(min(labels), max(labels)):
        draw.line([(x_of(tick), bottom), (x_of(tick), bottom + 5)], fill=AXIS)
        draw.text((x_of(tick) - 8, bottom + 8), f"{tick:g}", fill=AXIS, font=font)
    for tick in _ticks(y_lo, y_hi):
        draw.line([(left - 5, y_of(tick)), (left, y_of(tick))], fill=AXIS)
        draw.text((5, y_of(tick) - 6), f"{tick:.2f}", fill=AXIS, font=font)
    for row, (name, curve) in enumerate(curves.items()):
        color = PALETTE[row % len(PALETTE)]
        points = [(x_of(n), y_of(m)) for n, m in zip(curve["labels"], curve["mean"], strict=True)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for (x, y), m, s in zip(points, curve["mean"], curve["std"], strict=True):
            draw.line([(x, y_of(m - s)), (x, y_of(m + s))], fill=color)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        y = bottom - 20 - 16 * (len(curves) - 1 - row)  # legend bottom right: curves rise to the top left
        draw.line([(right - 150, y + 6), (right - 125, y + 6)], fill=color, width=3)
        draw.text((right - 120, y), name, fill=AXIS, font=font)
    return image


def save_learning_curves_png(curves: dict[str, dict], path: str | Path, title: str = "active learning") -> Path:
    """Draw the curves and write them to `path` via a temp file and a rename (never a half-written PNG)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    draw_learning_curves(curves, title).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
