"""A PNG of active-learning curves (test accuracy vs labelled-set size), drawn with `percli.core.chart`.

One line per strategy through its mean accuracy, with a +-1 std bar over the seeds at every round.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from percli.core.chart import PALETTE, Chart, linear, round_ticks, save_png


def draw_learning_curves(curves: dict[str, dict], title: str) -> Image.Image:
    """curves: {strategy: {"labels": [...], "mean": [...], "std": [...]}} -> RGB image WIDTH x HEIGHT."""
    chart = Chart(title, "labelled points", "test accuracy")
    labels = [n for c in curves.values() for n in c["labels"]]
    if not labels:
        chart.note("no curve to draw")
        return chart.image
    lows = [m - s for c in curves.values() for m, s in zip(c["mean"], c["std"], strict=True)]
    highs = [m + s for c in curves.values() for m, s in zip(c["mean"], c["std"], strict=True)]
    y_lo, y_hi = max(0.0, min(lows) - 0.02), min(1.0, max(highs) + 0.02)
    chart.axes(linear(min(labels), max(labels), chart.left + 10, chart.right - 10),
               linear(y_lo, y_hi, chart.bottom, chart.top),
               round_ticks(min(labels), max(labels)), round_ticks(y_lo, y_hi))
    legend = []
    for row, (name, curve) in enumerate(curves.items()):
        color = PALETTE[row % len(PALETTE)]
        chart.series(list(zip(curve["labels"], curve["mean"], strict=True)), color, "line+dots", curve["std"])
        legend.append((color, name))
    chart.legend(legend, corner="bottom")  # curves rise to the top left
    return chart.image


def save_learning_curves_png(curves: dict[str, dict], path: str | Path, title: str = "active learning") -> Path:
    """Draw the curves and write them to `path` atomically."""
    return save_png(draw_learning_curves(curves, title), path)
