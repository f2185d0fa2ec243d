"""app/heatmaps.py: map pictures, kernel grids and thumbnails."""

from __future__ import annotations

import numpy as np
import pytest
from studio_helpers import REPO  # noqa: F401  (puts the repository on sys.path)

from app import heatmaps


def test_kernel_grid_skips_missing_rows() -> None:
    k = heatmaps.kernel_grid_figure({"D": np.ones((2, 3, 3)), "S": None})
    assert len(k.data) == 2


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
