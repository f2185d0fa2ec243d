"""app/views.py: detections as rows and the downloads."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image
from studio_helpers import REPO  # noqa: F401  (puts the repository on sys.path)

from app import views

DET = {"boxes": np.array([[1, 2, 9, 10], [20, 20, 40, 44]], np.float32), "scores": np.array([0.9, 0.4]),
       "labels": np.array([0, 2]), "levels": np.array([0, 1])}
NAMES = ["disc", "square", "cross"]


def rows() -> list[dict]:
    return views.detection_rows(DET, ["p2", "p3"], NAMES)


def test_detection_rows_and_downloads() -> None:
    r = rows()
    assert r[0]["class"] == "disc" and r[1]["level"] == "p3"
    assert r[0]["size"] == 8.0 and r[0]["bucket"] == "t" and r[1]["bucket"] == "s"
    assert views.level_counts(r, ["p2", "p3", "p4"]) == {"p2": 1, "p3": 1, "p4": 0}
    doc = json.loads(views.detections_json(DET, ["p2", "p3"], NAMES, "img.png", (50, 60), "ck", 0.3, 0.5))
    assert doc["width"] == 60 and [d["level"] for d in doc["detections"]] == ["p2", "p3"]
    assert doc["detections"][1]["class"] == "cross" and doc["detections"][0]["box"] == [1, 2, 9, 10]
    png = views.drawn_png(np.zeros((50, 60, 3), np.uint8), DET, ["p2", "p3"], NAMES)
    drawn = np.asarray(Image.open(io.BytesIO(png)))
    assert drawn.shape == (50, 60, 3) and drawn.max() > 0


def test_sizes_and_buckets_follow_the_vocabulary() -> None:
    det = {"boxes": np.array([[0, 0, 7.9, 8], [0, 0, 16, 16], [5, 5, 4, 9], [0, 0, 64, 64]], np.float32),
           "scores": np.ones(4), "labels": np.zeros(4), "levels": np.zeros(4)}
    r = views.detection_rows(det, ["p2"], NAMES)
    assert [x["bucket"] for x in r] == ["vt", "s", "vt", "l"]  # 16 px is 'small'; a degenerate box has size 0
    assert r[2]["size"] == 0.0
