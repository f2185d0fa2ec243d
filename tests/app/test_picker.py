"""The Kernels page's pixel picker (app/picker.py): its window, its picture and what it sends to the browser."""

from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from app import picker
from app.heatmaps import colour_lut


def _decode(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    raw = np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(raw, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_window_is_centred_and_kept_inside_the_image() -> None:
    assert picker.window((480, 640), (320, 240), 1) == (0, 0, 640, 480)
    assert picker.window((480, 640), (320, 240), 4) == (240, 180, 400, 300)
    assert picker.window((480, 640), (5, 470), 4) == (0, 360, 160, 480)  # shifted in at the bottom-left corner
    assert picker.window((480, 640), (639, 0), 8) == (560, 0, 640, 60)
    with pytest.raises(ValueError, match="zoom"):
        picker.window((10, 10), (5, 5), 0)


def test_picture_blends_each_pixel_with_its_cells_colour() -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    values = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])  # 2 x 3 cells of 8 px
    cmap = picker.CellMap(values, 8.0, "v", "v", colorscale="Viridis", alpha=1.0)
    pic = picker.picture(rgb, (0, 0, 24, 16), cmap)
    lut = colour_lut("Viridis")
    assert pic.shape == (16, 24, 3)
    assert (pic[0, 0] == lut[0]).all() and (pic[15, 23] == lut[255]).all()  # lowest and highest cells
    assert (pic[9, 12] == lut[round(4 / 5 * 255)]).all()  # row 1, col 1 = 4 on a 0..5 scale
    half = picker.picture(np.full((16, 24, 3), 200, np.uint8), (8, 8, 16, 16), picker.CellMap(values, 8.0, "v", "v",
                                                                                                alpha=0.5))
    assert half.shape == (8, 8, 3)
    assert np.allclose(half[0, 0], np.rint(0.5 * 200 + 0.5 * lut[round(4 / 5 * 255)].astype(float)), atol=1)
    assert (picker.picture(rgb + 7, (0, 0, 24, 16)) == 7).all()  # no map: the image as it is


def test_a_constant_map_and_a_large_image_are_drawn() -> None:
    pic = picker.picture(np.zeros((3000, 2000, 3), np.uint8), (0, 0, 2000, 3000),
                         picker.CellMap(np.ones((94, 63)), 32.0, "v", "v"), max_side=1024)
    assert max(pic.shape[:2]) == 1024 and pic.shape[2] == 3


def test_payload_carries_the_window_marks_readout_and_key() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    values = np.arange(60 * 80, dtype=np.float32).reshape(60, 80)
    cmap = picker.CellMap(values, 8.0, "entropy", "entropy, dark = low")
    data = picker.payload(rgb, (100.0, 50.0), 4, cmap, cell=(6, 12), box=(90, 40, 110, 60), alt="img")
    json.dumps(data)
    assert data["window"] == [20, 0, 180, 120]
    assert _decode(data["src"]).shape == (120, 160, 3)
    assert data["marker"] == [100.0, 50.0] and data["box"] == [90.0, 40.0, 110.0, 60.0]
    assert data["cell"] == [96.0, 48.0, 8.0]  # col 12, row 6 of 8 px cells: its top-left corner and side
    assert data["grid"] == 8.0  # 4x: 20 cells across, outlined
    m = data["map"]
    assert (m["rows"], m["cols"], m["cell"]) == (60, 80, 8.0) and len(m["values"]) == 60 * 80
    assert m["values"][6 * 80 + 12] == pytest.approx(6 * 80 + 12)  # row-major, as the readout indexes it
    assert data["key"]["lo"] == "0" and data["key"]["hi"] == "4.8e+03" and "rgb(" in data["key"]["stops"]
    whole = picker.payload(rgb, (100.0, 50.0), 1, None, cell=(6, 12), cell_px=8.0)
    assert "grid" not in whole and "map" not in whole and "key" not in whole and whole["box"] is None
    assert whole["window"] == [0, 0, 640, 480] and whole["cell"] == [96.0, 48.0, 8.0]


def test_a_map_with_missing_values_stays_valid_json() -> None:
    values = np.array([[np.nan, 1.0], [2.0, np.inf]])
    data = picker.payload(np.zeros((16, 16, 3), np.uint8), (3.0, 3.0), 1, picker.CellMap(values, 8.0, "v", "v"))
    json.dumps(data, allow_nan=False)
    assert data["map"]["values"] == [None, 1.0, 2.0, None]
    assert (data["key"]["lo"], data["key"]["hi"]) == ("1", "2")
