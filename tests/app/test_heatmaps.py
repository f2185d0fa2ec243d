"""app/heatmaps.py: map pictures, kernel grids and thumbnails."""

from __future__ import annotations

import numpy as np
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
