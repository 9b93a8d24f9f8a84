"""A PNG of active-learning curves (test accuracy vs labelled-set size), drawn with `percli.core.chart`.

One line per strategy through its mean accuracy, with a +-1 std bar over the seeds at every round.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from percli.core import chart

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def learning_curves_figure(curves: dict[str, dict], title: str) -> Figure:
    """curves: {strategy: {"labels": [...], "mean": [...], "std": [...]}} -> a chart.WIDTH x chart.HEIGHT Figure."""
    fig, ax = chart.line_chart(title, "labelled points (count)", "test accuracy (fraction)")
    if not any(c["labels"] for c in curves.values()):
        chart.note(ax, "no curve to draw")
        return fig
    for row, (name, curve) in enumerate(curves.items()):
        ax.errorbar(curve["labels"], curve["mean"], yerr=curve["std"], color=chart.PALETTE[row % len(chart.PALETTE)],
                    marker="o", markersize=4, capsize=3, label=name)
    chart.legend_outside(ax)
    return fig


def save_learning_curves_png(curves: dict[str, dict], path: str | Path, title: str = "active learning") -> Path:
    """Draw the curves and write them to `path` atomically."""
    return chart.save_png(learning_curves_figure(curves, title), path)
