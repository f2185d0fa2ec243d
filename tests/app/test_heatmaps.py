"""app/heatmaps.py: map pictures, kernel grids and thumbnails."""

from __future__ import annotations

import re

import numpy as np
import pytest
from studio_helpers import REPO  # noqa: F401  (puts the repository on sys.path)

from app import heatmaps


def _cells(page: str) -> list[tuple[str, str]]:
    """(background, written value) of every kernel cell in a kernel HTML fragment."""
    return re.findall(r'<td style="background:(rgb\([0-9,]+\));[^>]*>([^<]*)</td>', page)


def test_kernel_grid_skips_missing_rows_and_shares_a_scale_per_kind() -> None:
    d = np.stack([np.full((3, 3), 0.1), np.full((3, 3), 0.2)])  # group 0's weights are half group 1's
    page = heatmaps.kernel_grid_html({"D": d, "S": None}, first_group=4)
    assert page.count("<table") == 2 and "D · g4" in page and "D · g5" in page and "S ·" not in page
    cells = _cells(page)
    assert [v for _, v in cells] == ["0.100"] * 9 + ["0.200"] * 9
    assert cells[0][0] != cells[9][0]  # one scale: 0.1 is lighter than 0.2
    assert heatmaps.kernel_grid_html({"D": None}).count("no kernels") == 1


def test_kernel_panels_write_every_weight_on_its_colour_with_a_key() -> None:
    d = np.full((3, 3), 1 / 9)
    diff = np.array([[0.1, -0.2, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.05]])
    page = heatmaps.kernel_panels_html({"D": d, "K": None, "inside − outside": diff},
                                       diverging=("inside − outside",), title="Kernels at <here>")
    assert page.count("<table") == 2 and "&lt;here&gt;" in page  # names are escaped
    cells = _cells(page)
    white, lut = (247, 251, 255), heatmaps.colour_lut("RdBu_r")
    assert all(v == "0.111" for _, v in cells[:9])  # uniform D: every cell the scale's top, dark blue
    assert cells[0][0] == "rgb({},{},{})".format(*heatmaps.colour_lut("Blues")[255])
    zero = "rgb({},{},{})".format(*lut[128])  # diverging: 0 in the middle of the scale, white
    assert cells[9 + 2] == (zero, "0.000") and cells[9 + 1][0] == "rgb({},{},{})".format(*lut[0])  # -0.2: full blue
    assert "−0.200 blue" in page and "+0.200 red" in page and "0.111 dark blue" in page  # each panel's own key
    assert 'title="D row 0, col 0: 0.1111"' in page
    assert white == tuple(heatmaps.colour_lut("Blues")[0])  # the sequential scale starts at (near) white


def test_thumbnails_keep_cells_square_and_ranges_fixed() -> None:
    small = heatmaps.thumbnail(np.arange(12, dtype=np.float32).reshape(3, 4), side=40)
    assert small.shape == (30, 40, 3) and small.dtype == np.uint8  # x10, nearest
    gate = heatmaps.colorize(np.array([[0.0, 1.0]]), "Inferno", zmin=0.0, zmax=1.0)
    lut = heatmaps.colour_lut("Inferno")
    np.testing.assert_array_equal(gate[0], lut[[0, 255]])
    assert heatmaps.thumbnail(np.zeros((400, 200, 3), np.uint8), side=100).shape == (100, 50, 3)


def test_mark_box_rings_a_tiny_box_and_keeps_its_inside() -> None:
    """A 4 px box of a 120 x 160 map, on a 240 x 320 picture of it: ringed at least 21 px wide, white inside black,
    and the pixels of the box itself left as they were."""
    picture = np.full((240, 320, 3), 128, np.uint8)
    out = heatmaps.mark_box(picture, (78.0, 58.0, 82.0, 62.0), (120, 160))
    assert out is not picture and (picture == 128).all()
    changed = np.argwhere((out != 128).any(axis=2))
    (top, left), (bottom, right) = changed.min(axis=0), changed.max(axis=0)
    assert right - left >= 21 and bottom - top >= 21
    assert (top + bottom) / 2 == pytest.approx(120, abs=1) and (left + right) / 2 == pytest.approx(160, abs=1)
    assert (out[116:124, 156:164] == 128).all()  # the box (x2 on the picture) is not painted over
    assert (out[top, left] == 0).all() and (out[top + 2, left + 2:right - 2] == 255).any()
