"""search.png, drawn with PIL (matplotlib is not a dependency).

* random / evolution: each candidate's val accuracy (dots) against its evaluation index, the best
  so far (line) and the median of the history (dashed line);
* darts: per op, softmax(alpha) averaged over the cell's edges after each epoch; the dashed line is
  the uniform weight 1/|ops| the search starts from.
"""

from __future__ import annotations

import statistics

import numpy as np
from PIL import Image

from percli.core.chart import PALETTE, Chart, linear, round_ticks
from percli.core.chart import save_png as save_png  # re-exported: search_arch writes search.png with it

Series = tuple[str, tuple[int, int, int], list[tuple[float, float]], str]  # label, color, (x, y) points, line|dots


def draw_chart(title: str, x_label: str, series: list[Series], dashed: tuple[str, float] | None) -> Image.Image:
    """A linear-axes chart of `series`, with an optional labelled dashed horizontal line."""
    chart = Chart(title, x_label)
    xs = [x for *_, points, _ in series for x, _ in points]
    ys = [y for *_, points, _ in series for _, y in points] + ([dashed[1]] if dashed else [])
    if not xs:
        chart.note("nothing evaluated yet")
        return chart.image
    pad = 0.05 * ((max(ys) - min(ys)) or 1.0)
    y_lo, y_hi = min(ys) - pad, max(ys) + pad
    chart.axes(linear(min(xs), max(max(xs), min(xs) + 1), chart.left + 10, chart.right - 10),
               linear(y_lo, y_hi, chart.bottom, chart.top),
               round_ticks(min(xs), max(xs), min_step=1), round_ticks(y_lo, y_hi))
    legend = []
    if dashed:
        chart.dashed_hline(dashed[1], PALETTE[-1])
        legend.append((PALETTE[-1], dashed[0]))
    for label, color, points, style in series:
        chart.series(points, color, style)
        legend.append((color, label))
    chart.legend(legend)
    return chart.image


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
