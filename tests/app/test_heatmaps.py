"""app/heatmaps.py: map pictures, kernel grids and thumbnails."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from studio_helpers import REPO  # noqa: F401  (puts the repository on sys.path)

from app import heatmaps


def test_kernel_grid_skips_missing_rows() -> None:
    k = heatmaps.kernel_grid_figure({"D": np.ones((2, 3, 3)), "S": None})
    assert len(k.data) == 2


def _sent(fig: go.Figure) -> dict:
    """What reaches the browser: the figure's JSON, parsed (key order aside; an empty title, which a rebuilt figure
    drops, left out)."""
    sent = json.loads(pio.to_json(fig, validate=False))
    if sent["layout"].get("title") == {}:
        del sent["layout"]["title"]
    return sent


def _checked(fig: go.Figure) -> dict:
    """The figure rebuilt through plotly's checked setters (what ``make_subplots`` and ``go.Heatmap`` build)."""
    return _sent(go.Figure(fig.to_dict()))


@pytest.mark.parametrize("groups", [1, 8])
def test_grids_built_from_dicts_are_the_figures_plotly_checks(groups: int) -> None:
    """The kernel and map grids skip plotly's per-property checks for speed: every property they write is one
    plotly accepts and stores unchanged, and their layouts are make_subplots' (titles, domains, axes)."""
    rng = np.random.default_rng(0)
    d, k = rng.random((groups, 3, 3)), rng.random((groups, 3, 3)) - 0.2
    figs = [
        heatmaps.kernel_grid_figure({"D": d, "K": k, "S": None}, title="T"),
        heatmaps.kernel_grid_figure({"D": d}),
        heatmaps.kernel_panels_figure({"D": d[0], "K": k[0], "diff": d[0] - k[0]}, diverging=("diff",), title="x"),
        heatmaps.maps_grid_figure({"a": d[0], "b<br>c": d[0] > 0.5, "rgb": np.zeros((3, 3, 3), np.uint8)},
                                  zmin=0.0, zmax=1.0, mark=(1, 2), colorbar_title="M"),
    ]
    for fig in figs:
        assert _sent(fig) == _checked(fig)
    grid = figs[0]
    assert len(grid.layout.annotations) == 2 * groups and grid.layout.annotations[0].font.size == 10
    assert grid.data[-1].xaxis == f"x{2 * groups}" and grid.layout.title.text == "T"
    assert [s.xref for s in figs[3].layout.shapes] == ["x", "x", "x2", "x2", "x3", "x3"]


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
