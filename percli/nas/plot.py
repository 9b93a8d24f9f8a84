"""search.png, drawn with PIL (matplotlib is not a dependency).

* random / evolution: each candidate's val accuracy (dots) against its evaluation index, the best
  so far (line) and the median of the history (dashed line);
* darts: per op, softmax(alpha) averaged over the cell's edges after each epoch; the dashed line is
  the uniform weight 1/|ops| the search starts from.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from percli.curation.plot import (
    AXIS,
    HEIGHT,
    MARGIN_BOTTOM,
    MARGIN_LEFT,
    MARGIN_RIGHT,
    MARGIN_TOP,
    WIDTH,
    _dashed_hline,
)

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]
Series = tuple[str, tuple[int, int, int], list[tuple[float, float]], str]  # label, color, (x, y) points, line|dots


def _linear(lo: float, hi: float, pixel_lo: float, pixel_hi: float):
    span = (hi - lo) or 1.0
    return lambda v: pixel_lo + (v - lo) / span * (pixel_hi - pixel_lo)


def draw_chart(title: str, x_label: str, series: list[Series], dashed: tuple[str, float] | None) -> Image.Image:
    """A linear-axes chart of `series`, with an optional labelled dashed horizontal line."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    draw.text((left, 10), title, fill=AXIS, font=font)
    draw.text(((left + right) // 2 - 40, HEIGHT - 20), x_label, fill=AXIS, font=font)
    xs = [x for *_, points, _ in series for x, _ in points]
    ys = [y for *_, points, _ in series for _, y in points] + ([dashed[1]] if dashed else [])
    if not xs:
        draw.text((left + 20, top + 20), "nothing evaluated yet", fill=AXIS, font=font)
        return image
    pad = 0.05 * ((max(ys) - min(ys)) or 1.0)
    y_lo, y_hi = min(ys) - pad, max(ys) + pad
    x_of, y_of = _linear(min(xs), max(max(xs), min(xs) + 1), left + 10, right - 10), _linear(y_lo, y_hi, bottom, top)
    for tick in np.linspace(y_lo, y_hi, 6):
        draw.line([(left - 5, y_of(tick)), (left, y_of(tick))], fill=AXIS)
        draw.text((5, y_of(tick) - 6), f"{tick:.3f}", fill=AXIS, font=font)
    for tick in sorted({round(v) for v in np.linspace(min(xs), max(xs), 6)}):
        draw.line([(x_of(tick), bottom), (x_of(tick), bottom + 5)], fill=AXIS)
        draw.text((x_of(tick) - 8, bottom + 8), f"{tick}", fill=AXIS, font=font)
    legend = []
    if dashed:
        _dashed_hline(draw, y_of(dashed[1]), left, right, PALETTE[-1])
        legend.append((PALETTE[-1], dashed[0]))
    for label, color, points, style in series:
        pixels = [(x_of(x), y_of(y)) for x, y in points]
        if style == "line" and len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        else:
            for px, py in pixels:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        legend.append((color, label))
    draw.rectangle([right - 195, top + 5, right - 5, top + 12 + 16 * len(legend)], fill="white", outline=AXIS)
    for row, (color, label) in enumerate(legend):
        y = top + 10 + 16 * row
        draw.line([(right - 190, y + 6), (right - 165, y + 6)], fill=color, width=3)
        draw.text((right - 160, y), label, fill=AXIS, font=font)
    return image


def draw_search(history: list[dict], strategy: str) -> Image.Image:
    """Val accuracy per evaluation, best so far, median (random / evolution)."""
    points = [(row["index"], row["accuracy"]) for row in history]
    best, running = [], float("-inf")
    for x, y in points:
        running = max(running, y)
        best.append((x, running))
    median = statistics.median(y for _, y in points) if points else 0.0
    return draw_chart(f"percli search-arch --strategy {strategy}: val accuracy per candidate", "evaluation",
                      [("candidate", PALETTE[0], points, "dots"), ("best so far", PALETTE[3], best, "line")],
                      ("median", median) if points else None)


def draw_alpha(epochs: list[dict], ops: tuple[str, ...]) -> Image.Image:
    """Per op, mean softmax(alpha) over edges after each epoch (darts)."""
    series = [(op, PALETTE[k % (len(PALETTE) - 1)],
               [(row["epoch"], float(np.mean([edge[k] for edge in row["alpha_softmax"]]))) for row in epochs], "line")
              for k, op in enumerate(ops)]
    return draw_chart("DARTS: softmax(alpha) per op, mean over edges", "epoch", series, ("uniform", 1 / len(ops)))


def save_png(image: Image.Image, path: Path) -> Path:
    """Write `image` via a temp file and a rename (never a half-written PNG)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
