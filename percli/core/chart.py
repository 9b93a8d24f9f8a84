"""PNG charts and picture grids drawn with matplotlib on its off-screen Agg canvas.

Every figure is a `matplotlib.figure.Figure` with a `FigureCanvasAgg` attached: pyplot is never
imported, so no GUI backend, display or global figure list is touched (a notebook's own backend is
left alone too). The builders return the Figure, so tests read titles, labels and legends through
matplotlib's API; `save_png` writes it at the figure's fixed pixel size (no tight-bbox cropping), to a
temp name then renamed.

* `line_chart`: a framed plot with title, axis labels (with units) and a grid; `legend_outside` puts
  the legend to the right of the plot area, never over the data;
* `image_grid`: columns of images, one labelled row per kind (input / masked / reconstruction);
* `spectrogram_grid`: the same for log-mel spectrograms, with time (s) and mel-bin axes and one
  shared colour bar.

matplotlib is imported inside the functions, so `percli --help` imports none of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend

WIDTH, HEIGHT = 800, 500  # pixels of a line chart (figure inches x DPI)
DPI = 100
# matplotlib's default colour cycle (tab10), by name, so callers can pick a fixed colour per role.
PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
IMAGE_CELL = 2.0  # inches (200 px) per picture in an image grid
SPECTROGRAM_CELL = (4.0, 1.6)  # inches per spectrogram panel (time is the long side)
MASKED_GREY = 0.5  # the colour of removed patches in image grids (MAE's figures show them grey)


def figure(width: int = WIDTH, height: int = HEIGHT) -> Figure:
    """An empty `width` x `height` pixel Figure on an Agg canvas, with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def line_chart(title: str, x_label: str, y_label: str, width: int = WIDTH, height: int = HEIGHT) -> tuple[Figure, Axes]:
    """A Figure with one titled, labelled Axes and a light grid; draw on the Axes with its own methods."""
    fig = figure(width, height)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(True, alpha=0.3)
    return fig, ax


def legend_outside(ax: Axes) -> Legend:
    """The legend of `ax`'s labelled artists to the right of its plot area (constrained layout makes room)."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def note(ax: Axes, text: str) -> None:
    """A message in the middle of the plot area, e.g. that there is nothing to draw."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center")


def image_grid(rows: Sequence[tuple[str, np.ndarray]], title: str) -> Figure:
    """One row per (label, images [N, H, W, 3] in [0, 1]); the label is the row's y label.

    The figure is N x IMAGE_CELL inches wide and len(rows) x IMAGE_CELL high (plus the title), so its
    size depends only on the number of pictures.
    """
    n = len(rows[0][1])
    fig = figure(round(n * IMAGE_CELL * DPI + 60), round(len(rows) * IMAGE_CELL * DPI + 40))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.imshow(images[c], vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label)
    fig.suptitle(title)
    return fig


def spectrogram_grid(rows: Sequence[tuple[str, np.ndarray]], title: str, seconds_per_frame: float,
                     value_label: str) -> Figure:
    """One row per (label, spectrograms [N, frames, mel bins]), one column per clip, one shared colour bar.

    Time runs right in seconds (frame k starts at k * seconds_per_frame), mel bins up from 0. NaN marks
    removed patches, drawn white. All panels share one colour scale, so rows compare directly. The
    row label is the left title of its first panel; the top row names the clips.
    """
    import numpy as np

    n = len(rows[0][1])
    cell_w, cell_h = SPECTROGRAM_CELL
    fig = figure(round((n * cell_w + 1.6) * DPI), round((len(rows) * cell_h + 0.8) * DPI))
    axes = fig.subplots(len(rows), n, squeeze=False, sharex=True, sharey=True)
    finite = np.concatenate([s[np.isfinite(s)] for _, s in rows])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cmap = _viridis_with_white_gaps()
    image = None
    for r, (label, spectrograms) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            frames, bins = spectrograms[c].shape
            image = ax.imshow(spectrograms[c].T, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                              extent=(0.0, frames * seconds_per_frame, 0.0, bins), interpolation="nearest")
            if r == 0:
                ax.set_title(f"clip {c + 1}")
            if r == len(rows) - 1:
                ax.set_xlabel("time (s)")
        axes[r, 0].set_title(label, loc="left", fontweight="bold")
        axes[r, 0].set_ylabel("mel bin")
    fig.colorbar(image, ax=axes, label=value_label, shrink=0.9)
    fig.suptitle(title)
    return fig


def _viridis_with_white_gaps():
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="white")


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG at its own size and DPI via a temp file and a rename (never a half-written PNG)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
