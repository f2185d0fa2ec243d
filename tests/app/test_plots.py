"""app/plots.py: figure builders put things where the data says."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image
from studio_helpers import REPO  # noqa: F401  (puts the repository on sys.path)

from app import plots, views
from efpn.explain.maps import level_colour

DET = {"boxes": np.array([[1, 2, 9, 10], [20, 20, 40, 44]], np.float32), "scores": np.array([0.9, 0.4]),
       "labels": np.array([0, 2]), "levels": np.array([0, 1])}
NAMES = ["disc", "square", "cross"]


def _rows() -> list[dict]:
    return views.detection_rows(DET, ["p2", "p3"], NAMES)


def test_detection_rows_and_downloads() -> None:
    rows = _rows()
    assert rows[0]["class"] == "disc" and rows[1]["level"] == "p3"
    assert rows[0]["size"] == 8.0 and rows[0]["bucket"] == "t" and rows[1]["bucket"] == "s"
    assert views.level_counts(rows, ["p2", "p3", "p4"]) == {"p2": 1, "p3": 1, "p4": 0}
    doc = json.loads(views.detections_json(DET, ["p2", "p3"], NAMES, "img.png", (50, 60), "ck", 0.3, 0.5))
    assert doc["width"] == 60 and [d["level"] for d in doc["detections"]] == ["p2", "p3"]
    assert doc["detections"][1]["class"] == "cross" and doc["detections"][0]["box"] == [1, 2, 9, 10]
    png = views.drawn_png(np.zeros((50, 60, 3), np.uint8), DET, ["p2", "p3"], NAMES)
    drawn = np.asarray(Image.open(io.BytesIO(png)))
    assert drawn.shape == (50, 60, 3) and drawn.max() > 0


def test_detections_figure_colours_by_level_and_hovers_size() -> None:
    fig = plots.detections_figure(np.zeros((50, 60, 3), np.uint8), _rows(), gt_boxes=np.array([[0, 0, 5, 5]]))
    img = fig.data[0]
    assert img.type == "image" and img.x0 == 0.5 and img.dx == 1.0  # pixel j covers [j, j+1)
    lines = [t for t in fig.data if t.type == "scatter" and t.mode == "lines"]
    assert {t.name for t in lines} == {"ground truth", "p2", "p3"}
    p3 = next(t for t in lines if t.name == "p3")
    assert p3.line.color == level_colour("p3") and list(p3.x[:5]) == [20, 40, 40, 20, 20]
    markers = [t for t in fig.data if t.type == "scatter" and t.mode == "markers" and t.customdata is not None]
    assert any("size 8.0 px" in s and "level p2" in s for t in markers for s in t.text)
    assert fig.layout.yaxis.range == (50, 0)


def test_large_images_are_sent_downscaled_in_original_coordinates() -> None:
    tr = plots.image_trace(np.zeros((100, 3000, 3), np.uint8), max_side=1000)
    assert tr.dx == 3.0 and tr.x0 == 1.5


def test_overlay_and_grids() -> None:
    fig = plots.heatmap_overlay_figure(np.zeros((32, 32, 3), np.uint8), np.ones((4, 4)), stride=8)
    hm = fig.data[1]
    assert hm.dx == 8 and hm.x0 == 4
    k = plots.kernel_grid_figure({"D": np.ones((2, 3, 3)), "S": None})
    assert len(k.data) == 2
    acc = {"levels": ["p3", "p4"], "positives_per_level": {"p3": 5, "p4": 1}, "fallback_per_level": {"p3": 2, "p4": 0},
           "per_level_bucket": {"p3": {"vt": 5}, "p4": {"t": 1}}}
    bar = plots.positives_bar_figure(acc)
    assert list(bar.data[0].y) == [3, 1] and list(bar.data[1].y) == [2, 0]
    assert plots.level_bucket_figure(acc).data[0].z[0][0] == 5


def test_gradient_reach_figure_shows_exact_zeros() -> None:
    with_cem = {"p5.output_conv.positive": 1e-3, "p5.output_conv.total": 2e-3, "loss.positive": 1.0}
    without = {"p5.output_conv.positive": 0.0, "p5.output_conv.total": 2e-3}
    fig = plots.gradient_reach_figure(with_cem, without, "positive")
    assert [t.text[0] for t in fig.data] == ["1.00e-03", "0"]
    assert fig.data[1].y[0] > 0  # drawn on the log axis
