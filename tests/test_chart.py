"""Every chart percli writes, read back through matplotlib's API and as a PNG."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from percli.active.plot import learning_curves_figure
from percli.core import chart
from percli.curation.plot import entry_counts_figure
from percli.models import create_model
from percli.nas.plot import draw_alpha, draw_search
from percli.recipes.audio_common import spectrogram_reconstruction_figure
from percli.recipes.reconstruction import reconstruction_figure
from tests.conftest import subprocess_env

CURVES = {"random": {"labels": [10, 20, 30], "mean": [0.5, 0.6, 0.7], "std": [0.0, 0.01, 0.0]},
          "margin": {"labels": [10, 20, 30], "mean": [0.5, 0.7, 0.9], "std": [0.0, 0.02, 0.01]}}
HISTORY = [{"index": i, "accuracy": a} for i, a in enumerate([0.6, 0.55, 0.8, 0.7])]
EPOCHS = [{"epoch": e, "alpha_softmax": [[0.5 + 0.1 * e, 0.5 - 0.1 * e]] * 3} for e in (1, 2, 3)]

# builder, its empty-data form, title, x label, y label, legend entries
LINE_CHARTS = {
    "learning curves": (lambda: learning_curves_figure(CURVES, "active learning on digits"),
                        lambda: learning_curves_figure({"random": {"labels": [], "mean": [], "std": []}}, "empty"),
                        "active learning on digits", "labelled points (count)", "test accuracy (fraction)",
                        ["random", "margin"]),
    "search": (lambda: draw_search(HISTORY, "evolution"), lambda: draw_search([], "random"),
               "percli search-arch --strategy evolution: val accuracy per candidate", "evaluation (index)",
               "val accuracy (fraction)", ["median", "candidate", "best so far"]),
    "darts alpha": (lambda: draw_alpha(EPOCHS, ("skip", "conv")), lambda: draw_alpha([], ("skip", "conv")),
                    "DARTS: softmax(alpha) per op, mean over edges", "epoch", "op weight (softmax of alpha)",
                    ["uniform", "skip", "conv"]),
    "entry counts": (lambda: entry_counts_figure(np.array([50, 7, 0, 3, 30], dtype=np.uint64), 20.0),
                     lambda: entry_counts_figure(np.zeros(3, dtype=np.uint64), 5.0),
                     "MetaCLIP entry counts (log-log), t = 20", "entry rank (by count)", "texts matched (count)",
                     ["t", "before: c_e", "after: min(c_e, t)"]),
}


def _assert_png(fig, path, size) -> None:
    chart.save_png(fig, path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        image.verify()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def _inside(inner, outer) -> bool:
    return (outer.x0 - 1 <= inner.x0 and inner.x1 <= outer.x1 + 1
            and outer.y0 - 1 <= inner.y0 and inner.y1 <= outer.y1 + 1)


@pytest.mark.parametrize("kind", LINE_CHARTS)
def test_line_charts_have_labelled_axes_and_a_legend_outside_the_data(kind, tmp_path):
    build, build_empty, title, x_label, y_label, entries = LINE_CHARTS[kind]
    fig = build()
    (ax,) = fig.axes
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (title, x_label, y_label)
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == entries
    fig.canvas.draw()  # lay out, so that the extents below are final
    box, data = legend.get_window_extent(), ax.get_window_extent()
    assert not box.overlaps(data), f"{kind}: the legend covers the plot area"
    assert _inside(box, fig.bbox) and _inside(ax.title.get_window_extent(), fig.bbox)  # nothing cut off
    _assert_png(fig, tmp_path / "chart.png", (chart.WIDTH, chart.HEIGHT))

    empty = build_empty()  # nothing to draw: the same labelled frame with a note instead of a legend
    assert empty.axes[0].get_xlabel() == x_label and empty.axes[0].get_legend() is None
    assert len(empty.axes[0].texts) == 1
    _assert_png(empty, tmp_path / "chart.png", (chart.WIDTH, chart.HEIGHT))


def test_line_charts_plot_the_values_they_are_given():
    (ax,) = learning_curves_figure(CURVES, "t").axes
    bars = ax.containers  # one errorbar (data line, caps, +-std bars) per strategy
    assert [b.get_label() for b in bars] == list(CURVES)
    assert [list(b.lines[0].get_ydata()) for b in bars] == [c["mean"] for c in CURVES.values()]
    low, high = np.asarray(bars[1].lines[2][0].get_segments()[1])[:, 1]  # margin's bar at 20 labels
    assert (low, high) == (pytest.approx(0.68), pytest.approx(0.72))
    (ax,) = draw_search(HISTORY, "random").axes
    best = next(line for line in ax.get_lines() if line.get_label() == "best so far")
    assert list(best.get_ydata()) == [0.6, 0.6, 0.8, 0.8] and best.get_drawstyle() == "steps-post"
    (ax,) = entry_counts_figure(np.array([50, 7, 0, 3, 30], dtype=np.uint64), 20.0).axes
    assert ax.get_xscale() == ax.get_yscale() == "log"
    after = next(line for line in ax.get_lines() if line.get_label().startswith("after"))
    assert list(after.get_ydata()) == [20.0, 20.0, 7.0, 3.0]


def test_image_reconstruction_grid_labels_its_rows(tmp_path):
    torch.manual_seed(0)
    model = create_model("mae_hiera_tiny_224", input_size=(64, 64), embed_dim=8, num_heads=1, stages=(1, 1, 1, 1),
                         q_pool=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1)
    images = torch.randn(3, 3, 64, 64)
    fig = reconstruction_figure(model, images, 0.6, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert model.training  # the model's mode is restored
    axes = np.array(fig.axes).reshape(3, 3)  # rows x pictures
    assert [row[0].get_ylabel() for row in axes] == ["input", "masked", "reconstruction"]
    assert "mask ratio 0.6" in fig.get_suptitle()
    shown = [ax.get_images()[0].get_array() for ax in axes[:, 0]]
    assert all(a.shape == (64, 64, 3) for a in shown)
    assert (np.asarray(shown[1]) == chart.MASKED_GREY).all(axis=-1).mean() > 0.3  # removed units are grey
    _assert_png(fig, tmp_path / "reconstructions.png", (3 * 200 + 60, 3 * 200 + 40))


def test_spectrogram_grid_has_time_and_mel_axes_and_a_colour_bar(tmp_path):
    torch.manual_seed(0)
    model = create_model("audiomae_mae_vit_small_patch16", img_size=(128, 64), embed_dim=32, depth=2, num_heads=2,
                         decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, decoder_mode=1,
                         local_decoder_depth=2, local_decoder_heads=2, norm_pix_loss=True)
    fbank = torch.randn(2, 1, 128, 64)  # clips x 1 x frames x mel bins
    fig = spectrogram_reconstruction_figure(model, fbank, 0.8)
    panels = [ax for ax in fig.axes if ax.get_images()]
    colour_bars = [ax for ax in fig.axes if ax not in panels]
    assert len(panels) == 3 * 2 and len(colour_bars) == 1
    assert colour_bars[0].get_ylabel() == "log-mel fbank, normalised"
    grid = np.array(panels).reshape(3, 2)
    assert [row[0].get_title(loc="left") for row in grid] == ["input", "masked", "reconstruction"]
    assert [ax.get_title() for ax in grid[0]] == ["clip 1", "clip 2"]
    assert all(row[0].get_ylabel() == "mel bin" for row in grid)
    assert all(ax.get_xlabel() == "time (s)" for ax in grid[-1])
    left, right, bottom, top = grid[0, 0].get_images()[0].get_extent()
    assert (left, right, bottom, top) == (0.0, pytest.approx(1.28), 0.0, 64.0)  # 128 frames of 10 ms, 64 mel bins
    masked = np.ma.getdata(grid[1, 0].get_images()[0].get_array())
    assert 0.5 < np.isnan(masked).mean() < 1.0  # removed patches are blank, the visible ones drawn
    _assert_png(fig, tmp_path / "reconstructions.png", (round((2 * 4.0 + 1.6) * 100), round((3 * 1.6 + 0.8) * 100)))


def test_save_png_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = chart.save_png(chart.line_chart("old", "x", "y")[0], tmp_path / "chart.png")
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(chart.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        chart.save_png(chart.line_chart("new", "x", "y")[0], path)
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"] and path.read_bytes() == before


def test_charts_use_no_display_and_help_imports_no_matplotlib():
    code = ("import io, runpy, sys\n"
            "import percli.active.plot, percli.core.chart, percli.curation.plot, percli.nas.plot\n"
            "sys.argv = ['percli', '--help']\n"
            "try:\n    runpy.run_module('percli.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported by --help'\n"
            "percli.core.chart.line_chart('t', 'x', 'y')[0].savefig(io.BytesIO(), format='png')\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot (a display backend) imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                            timeout=120)
    assert result.returncode == 0, result.stderr
