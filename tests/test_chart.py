import numpy as np
import pytest
from PIL import Image

from percli.core import chart as chart_module
from percli.core.chart import HEIGHT, PALETTE, WIDTH, Chart, linear, round_ticks, save_png


@pytest.mark.parametrize("lo,hi,expected", [
    (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0.61, 0.93, [0.65, 0.7, 0.75, 0.8, 0.85, 0.9]),
    (10.0, 130.0, [20.0, 40.0, 60.0, 80.0, 100.0, 120.0]),
    (1.0, 3.0, [1.0, 2.0, 3.0]),  # min_step=1 below: integer axes get no 1.5
])
def test_round_ticks_are_round_numbers_inside_the_range(lo, hi, expected):
    ticks = round_ticks(lo, hi, min_step=1.0 if hi == 3.0 else 0.0)
    assert ticks == expected
    assert all(lo <= t <= hi for t in ticks)
    assert all(len(f"{t:g}") <= 4 for t in ticks)  # no 0.30000000000000004


def test_linear_maps_ends_and_inverts_for_image_rows():
    y_of = linear(0.0, 1.0, 450, 40)
    assert y_of(0.0) == 450 and y_of(1.0) == 40 and y_of(0.5) == 245
    assert linear(3.0, 3.0, 0, 10)(3.0) == 0  # a flat range does not divide by zero


def test_dashed_hline_is_drawn_at_the_value_row_and_has_gaps():
    chart = Chart("t", "x", "y")
    chart.axes(linear(0, 1, chart.left, chart.right), linear(0.0, 1.0, chart.bottom, chart.top), [], [])
    chart.dashed_hline(0.5, PALETTE[3])
    pixels = np.asarray(chart.image)
    row = round(chart.y_of(0.5))
    red = (pixels[:, chart.left:chart.right] == PALETTE[3]).all(axis=2)
    assert set(np.nonzero(red.any(axis=1))[0]) <= {row - 1, row, row + 1}
    on_row = red[np.nonzero(red.any(axis=1))[0][0]]
    assert 0.4 < on_row.mean() < 0.8  # dashes with gaps, not a solid line


def test_series_draws_error_bars_beyond_the_points():
    chart = Chart("t", "x")
    chart.axes(linear(0, 2, chart.left, chart.right), linear(0.0, 1.0, chart.bottom, chart.top), [0, 1, 2], [0, 1])
    chart.series([(1.0, 0.5)], PALETTE[2], "line+dots", errors=[0.25])
    green = (np.asarray(chart.image) == PALETTE[2]).all(axis=2)
    rows = np.nonzero(green.any(axis=1))[0]
    assert abs(rows.min() - chart.y_of(0.75)) <= 1 and abs(rows.max() - chart.y_of(0.25)) <= 1


def test_save_png_is_atomic_and_has_the_chart_size(tmp_path, monkeypatch):
    chart = Chart("title", "x")
    chart.legend([(PALETTE[0], "a"), (PALETTE[1], "bb")])
    path = save_png(chart.image, tmp_path / "chart.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(chart_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_png(Chart("other", "x").image, tmp_path / "chart.png")
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]  # no temp left, old PNG intact
    with Image.open(path) as image:
        image.verify()
