"""search.png, drawn with matplotlib through `percli.core.chart`.

* random / evolution: each candidate's val accuracy (dots) against its evaluation index, the best
  so far (line) and the median of the history (dashed line);
* darts: per op, softmax(alpha) averaged over the cell's edges after each epoch; the dashed line is
  the uniform weight 1/|ops| the search starts from.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

import numpy as np

from percli.core import chart
from percli.core.chart import save_png as save_png  # re-exported: search_arch writes search.png with it

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Series = tuple[str, str, list[tuple[float, float]], str]  # label, colour, (x, y) points, line|steps|dots


def draw_chart(title: str, x_label: str, y_label: str, series: list[Series],
               dashed: tuple[str, float] | None) -> Figure:
    """A linear-axes chart of `series`, with an optional labelled dashed horizontal line; integer x ticks."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = chart.line_chart(title, x_label, y_label)
    if not any(points for _, _, points, _ in series):
        chart.note(ax, "nothing evaluated yet")
        return fig
    if dashed:
        ax.axhline(dashed[1], color=chart.PALETTE[-1], linestyle="--", label=dashed[0])
    for label, colour, points, style in series:
        xs, ys = zip(*points, strict=True) if points else ((), ())
        # A line through a single point gets a marker too, so that it stays visible.
        marker = "o" if style == "dots" or len(points) == 1 else None
        ax.plot(xs, ys, color=colour, marker=marker, markersize=4, linestyle="none" if style == "dots" else "-",
                drawstyle="steps-post" if style == "steps" else "default", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    chart.legend_outside(ax)
    return fig


def draw_search(history: list[dict], strategy: str) -> Figure:
    """Val accuracy per evaluation, best so far, median (random / evolution)."""
    points = [(row["index"], row["accuracy"]) for row in history]
    best, running = [], float("-inf")
    for x, y in points:
        running = max(running, y)
        best.append((x, running))
    median = statistics.median(y for _, y in points) if points else 0.0
    series = [("candidate", chart.PALETTE[0], points, "dots"), ("best so far", chart.PALETTE[3], best, "steps")]
    return draw_chart(f"percli search-arch --strategy {strategy}: val accuracy per candidate", "evaluation (index)",
                      "val accuracy (fraction)", series, ("median", median) if points else None)


def draw_alpha(epochs: list[dict], ops: tuple[str, ...]) -> Figure:
    """Per op, mean softmax(alpha) over edges after each epoch (darts)."""
    series = [(op, chart.PALETTE[k % (len(chart.PALETTE) - 1)],
               [(row["epoch"], float(np.mean([edge[k] for edge in row["alpha_softmax"]]))) for row in epochs], "line")
              for k, op in enumerate(ops)]
    return draw_chart("DARTS: softmax(alpha) per op, mean over edges", "epoch", "op weight (softmax of alpha)", series,
                      ("uniform", 1 / len(ops)))
