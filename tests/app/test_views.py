"""app/views.py: detections as rows and the downloads."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from studio_helpers import REPO  # noqa: F401  (puts the repository on sys.path)

from app import dataset_rows, views

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


# ----------------------------------------------------------------------------------------------- attribution

PLAN = [("clean", {"forward_backward": 0, "forward": 1}),
        ("integrated_gradients", {"forward_backward": 8, "forward": 0}),
        ("occlusion", {"forward_backward": 0, "forward": 50}),
        ("deletion", {"forward_backward": 0, "forward": 20})]


def test_estimates_multiply_measured_pass_times() -> None:
    """An estimate is passes x the time one pass took when measured; a kind never measured gives no estimate."""
    ms = {"forward_backward": 400.0, "forward": 100.0}
    assert views.estimate_seconds({"forward_backward": 8, "forward": 71}, ms) == pytest.approx(3.2 + 7.1)
    assert views.estimate_seconds({"forward_backward": 0, "forward": 10}, {"forward": 50.0}) == pytest.approx(0.5)
    assert views.estimate_seconds({"forward_backward": 4}, {"forward": 50.0}) is None
    assert views.estimate_text({"forward_backward": 8, "forward": 71}, ms) == \
        "8 forward+backward × 0.40 s + 71 forward × 0.10 s"


def test_progress_text_names_the_running_part() -> None:
    assert views.plan_images(PLAN) == 79
    assert views.progress_text(0, PLAN).startswith("Clean score: pass 0 of 1 · 0/79 passes")
    assert views.progress_text(4, PLAN).startswith("Integrated Gradients: step 3 of 8 · 4/79 passes")
    assert views.progress_text(9, PLAN).startswith("Occlusion: occluded image 0 of 50")
    assert views.progress_text(79, PLAN).startswith("Deletion curves: masked image 20 of 20")
    assert views.progress_text(20, PLAN, elapsed_s=10.0).endswith("about 30 s left")  # 0.5 s a pass so far
    # with the measured times per kind, the 8 forward+backward steps done weigh 4x a forward pass each: after the
    # clean score and IG (1 x 0.1 + 8 x 0.4 = 3.3 s estimated, 6.6 s taken) the 70 forward passes left (7 s
    # estimated) take 14 s at that pace, where counting passes alike said 6.6 / 9 x 70 = 51 s
    ms = {"forward_backward": 400.0, "forward": 100.0}
    assert views.progress_text(9, PLAN, elapsed_s=6.6, pass_ms=ms).endswith("about 14 s left")
    assert views.progress_text(9, PLAN, elapsed_s=6.6).endswith("about 51 s left")


def test_faithfulness_rows_put_each_value_beside_its_random_baseline() -> None:
    mass = {"box_area": 0.0002, "gradcam": 0.3, "integrated_gradients": 0.012}
    aucs = {"gradcam": 0.412, "integrated_gradients": 1.03, "random": 0.65}
    rows = views.faithfulness_rows(mass, aucs, ["gradcam", "integrated_gradients", "occlusion"])
    assert rows[0] == {"map": "LayerGradCAM, all levels", "in box · random": "30 % · 0.02 %",
                       "deletion AUC · random": "0.412 · 0.650"}
    assert rows[1]["in box · random"] == "1.2 % · 0.02 %"
    assert rows[2]["deletion AUC · random"] == "– · 0.650"  # not computed: no value, the baseline still shown
    assert [views.percent(v) for v in (0, 0.5, 0.034, 0.00021)] == ["0 %", "50 %", "3.4 %", "0.021 %"]


def test_object_differences_lists_what_one_checkpoint_finds_and_the_other_misses() -> None:
    gt = np.array([[10, 10, 16, 16], [40, 40, 60, 60], [80, 80, 84, 84]], np.float32)
    labels = np.array([0, 1, 0])
    a = {"boxes": np.array([[10, 10, 16, 16], [40, 40, 60, 60]], np.float32), "scores": np.array([0.9, 0.8]),
         "labels": np.array([0, 1])}
    b = {"boxes": np.array([[40, 40, 60, 60], [80, 80, 84, 84]], np.float32), "scores": np.array([0.7, 0.6]),
         "labels": np.array([1, 0])}
    rows = views.object_differences(gt, labels, ["ship", "boat"], {"A": a, "B": b}, 0.5, True)
    assert [(r["object"], r["found by"], r["missed by"]) for r in rows] == [(0, "A", "B"), (2, "B", "A")]
    assert rows[0]["class"] == "ship" and rows[0]["bucket"] == "vt" and rows[0]["score"] == 0.9
    # a wrong class finds nothing when matching is class-aware, and does when it is not
    b_wrong = {**b, "labels": np.array([1, 1])}
    aware = views.object_differences(gt, labels, ["ship", "boat"], {"A": a, "B": b_wrong}, 0.5, True)
    agnostic = views.object_differences(gt, labels, ["ship", "boat"], {"A": a, "B": b_wrong}, 0.5, False)
    assert [r["object"] for r in aware] == [0] and [r["object"] for r in agnostic] == [0, 2]
    with pytest.raises(ValueError, match="two checkpoints"):
        views.object_differences(gt, labels, ["ship"], {"A": a}, 0.5, True)


def test_download_names_are_plain_file_names() -> None:
    assert views.download_stem("upload ../../etc/evil.png") == "evil"
    assert views.download_stem("upload my photo.JPG") == "upload_my_photo"
    assert views.download_stem("sample 000000.png") == "sample_000000"
    assert views.download_stem("upload ..png") == "upload" and views.download_stem("upload 你好") == "upload"
    assert views.download_stem("...") == "image"


def test_the_main_cause_of_an_image_with_tied_causes_is_always_the_same() -> None:
    """One under_threshold and one gated_out miss: the earlier stage of the rule (gated_out) is named, every time
    (the choice followed Python's set order, which changes between processes)."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from efpn.data.records import ImageRecord

    rec = ImageRecord(image_id=1, path=None, width=64, height=64, boxes=np.array([[1, 1, 5, 5], [9, 9, 14, 14]]),
                      labels=np.zeros(2))
    misses = [SimpleNamespace(cause=c, bucket="vt") for c in ("under_threshold", "gated_out")]
    diag = SimpleNamespace(misses=misses, matching=SimpleNamespace(found=torch.zeros(2, dtype=torch.bool)))
    assert dataset_rows.dataset_image_rows([rec], {1: diag})[0]["main cause"] == "gated_out"
