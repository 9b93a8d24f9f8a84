"""Small PNG charts drawn with PIL only (matplotlib is not a dependency).

A `Chart` is a white WIDTH x HEIGHT canvas with a framed plot area, a title and axis labels. Give it
scales with `axes` (`linear` here, or any value -> pixel function, e.g. a log scale), then draw
`series`, `dashed_hline` and a `legend` in data coordinates, and write it with `save_png`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 800, 500
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 40, 50
AXIS = (0, 0, 0)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]
DASH, GAP = 8, 6  # pixels

Color = tuple[int, int, int]
Scale = Callable[[float], float]


def linear(lo: float, hi: float, pixel_lo: float, pixel_hi: float) -> Scale:
    """Map [lo, hi] linearly onto [pixel_lo, pixel_hi] (a flat range maps as if it were 1 wide)."""
    span = (hi - lo) or 1.0
    return lambda v: pixel_lo + (v - lo) / span * (pixel_hi - pixel_lo)


def round_ticks(lo: float, hi: float, count: int = 6, min_step: float = 0.0) -> list[float]:
    """About `count` round numbers (1, 2 or 5 x 10^k apart, at least `min_step`) in [lo, hi]."""
    raw = (hi - lo) / count or 1.0
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    step = max(step, min_step)
    # round() drops the float noise of k * step (0.1 * 3 = 0.30000000000000004).
    return [round(k * step, 12) for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]


class Chart:
    """A framed plot area on a white canvas; draw in data coordinates once `axes` has set the scales."""

    def __init__(self, title: str, x_label: str, y_label: str = ""):
        self.image = Image.new("RGB", (WIDTH, HEIGHT), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.font = ImageFont.load_default()
        self.left, self.right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
        self.x_of: Scale = linear(0.0, 1.0, self.left, self.right)
        self.y_of: Scale = linear(0.0, 1.0, self.bottom, self.top)
        self.draw.rectangle([self.left, self.top, self.right, self.bottom], outline=AXIS)
        self.text((self.left, 10), title)
        self.text(((self.left + self.right - self._width(x_label)) / 2, HEIGHT - 20), x_label)
        self.text((5, self.top - 15), y_label)

    def _width(self, text: str) -> float:
        return self.draw.textlength(text, font=self.font)

    def text(self, xy: tuple[float, float], text: str) -> None:
        self.draw.text(xy, text, fill=AXIS, font=self.font)

    def note(self, text: str) -> None:
        """A message inside the plot area, e.g. that there is nothing to draw."""
        self.text((self.left + 20, self.top + 20), text)

    def axes(self, x_of: Scale, y_of: Scale, x_ticks: Sequence[float], y_ticks: Sequence[float]) -> None:
        """Set the value -> pixel scales and draw labelled tick marks on the bottom and left edges."""
        self.x_of, self.y_of = x_of, y_of
        for tick in x_ticks:
            x, label = x_of(tick), f"{tick:g}"
            self.draw.line([(x, self.bottom), (x, self.bottom + 5)], fill=AXIS)
            self.text((x - self._width(label) / 2, self.bottom + 8), label)
        for tick in y_ticks:
            y, label = y_of(tick), f"{tick:g}"
            self.draw.line([(self.left - 5, y), (self.left, y)], fill=AXIS)
            self.text((self.left - 8 - self._width(label), y - 6), label)

    def dashed_hline(self, value: float, color: Color) -> None:
        """A dashed horizontal line across the plot area at y = value."""
        y, x = self.y_of(value), self.left
        while x < self.right:
            self.draw.line([(x, y), (min(x + DASH, self.right), y)], fill=color, width=2)
            x += DASH + GAP

    def series(self, points: Sequence[tuple[float, float]], color: Color, style: str = "line",
               errors: Sequence[float] | None = None) -> None:
        """`points` (x, y) as a "line", "dots" or "line+dots"; `errors` adds a +-error bar at each point.

        A line through a single point is drawn as a dot, so that it stays visible.
        """
        pixels = [(self.x_of(x), self.y_of(y)) for x, y in points]
        if "line" in style and len(pixels) > 1:
            self.draw.line(pixels, fill=color, width=2)
        if errors is not None:
            for (px, _), (_, y), error in zip(pixels, points, errors, strict=True):
                self.draw.line([(px, self.y_of(y - error)), (px, self.y_of(y + error))], fill=color)
        if "dots" in style or len(pixels) == 1:
            for px, py in pixels:
                self.draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)

    def legend(self, entries: Sequence[tuple[Color, str]], corner: str = "top") -> None:
        """A boxed legend of (color, label) rows in the top or bottom right corner of the plot area."""
        width = 45 + max((self._width(label) for _, label in entries), default=0)
        x = self.right - 5 - width
        y0 = self.top + 5 if corner == "top" else self.bottom - 12 - 16 * len(entries)
        self.draw.rectangle([x, y0, self.right - 5, y0 + 7 + 16 * len(entries)], fill="white", outline=AXIS)
        for row, (color, label) in enumerate(entries):
            y = y0 + 5 + 16 * row
            self.draw.line([(x + 5, y + 6), (x + 30, y + 6)], fill=color, width=3)
            self.text((x + 35, y), label)


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` to `path` via a temp file and a rename (never a half-written PNG)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
