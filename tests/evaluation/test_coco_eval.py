"""Golden numbers for COCO-style evaluation with AI-TOD splits, checked against pycocotools run directly."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from efpn.evaluation import EvalResult, evaluate_detections
from efpn.evaluation import coco as ev

CLASSES = ["car", "person"]


@dataclass
class Rec:
    """Stand-in for efpn.data.records.ImageRecord: only the attributes evaluation reads."""

    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    ignore: np.ndarray | None = None


def rec(image_id: int, boxes: list, labels: list, crowd: list | None = None, size: int = 200) -> Rec:
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    c = np.zeros(len(b), bool) if crowd is None else np.asarray(crowd, bool)
    return Rec(image_id, size, size, b, np.asarray(labels, np.int64), c)


def pred(boxes: list, scores: list, labels: list) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


#  a fixture in COCO form (xywh, category ids 1..2): mixed sizes, false positives, a crowd box, an empty image
GT_ANNS = [  # (image_id, category_id, [x, y, w, h], iscrowd)
    (1, 1, [10, 10, 6, 5], 0),  # car, vt
    (1, 1, [50, 50, 12, 10], 0),  # car, t
    (1, 2, [100, 100, 20, 24], 0),  # person, s
    (1, 2, [150, 150, 40, 40], 1),  # person crowd
    (1, 1, [0, 120, 50, 40], 0),  # car, m
    (2, 2, [20, 20, 4, 7], 0),  # person, vt
    (2, 1, [100, 100, 80, 70], 0),  # car, l
    (2, 1, [40, 150, 14, 14], 0),  # car, t (missed)
]
DT_ANNS = [  # (image_id, category_id, [x, y, w, h], score)
    (1, 1, [11, 10, 6, 5], 0.91),  # vt car, shifted 1 px
    (1, 1, [50, 50, 12, 10], 0.90),  # t car, exact
    (1, 2, [101, 102, 20, 24], 0.80),  # s person, close
    (1, 2, [155, 160, 20, 20], 0.70),  # inside the crowd box: ignored
    (1, 1, [120, 10, 10, 10], 0.95),  # FP car
    (1, 1, [4, 124, 50, 40], 0.60),  # m car, IoU ~0.74
    (1, 1, [51, 51, 12, 10], 0.50),  # duplicate of the t car: FP
    (2, 2, [21, 21, 4, 7], 0.30),  # vt person, offset
    (2, 1, [102, 101, 80, 70], 0.85),  # l car, good
    (2, 2, [60, 60, 30, 30], 0.40),  # FP person
    (3, 1, [5, 5, 20, 20], 0.20),  # FP car on an empty image
]


def fixture_records() -> list[Rec]:
    out = []
    for image_id in (1, 2, 3):
        anns = [a for a in GT_ANNS if a[0] == image_id]
        boxes = [[x, y, x + w, y + h] for _, _, (x, y, w, h), _ in anns]
        out.append(rec(image_id, boxes, [a[1] - 1 for a in anns], [a[3] for a in anns]))
    return out


def fixture_predictions() -> dict[int, dict[str, torch.Tensor]]:
    out = {}
    for image_id in (1, 2, 3):
        dts = [d for d in DT_ANNS if d[0] == image_id]
        boxes = [[x, y, x + w, y + h] for _, _, (x, y, w, h), _ in dts]
        out[image_id] = pred(boxes, [d[3] for d in dts], [d[1] - 1 for d in dts])
    return out


def direct_pycocotools() -> np.ndarray:
    """COCOeval as its README runs it (standard areas, maxDets 1/10/100) on the fixture; returns stats."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {
        "images": [{"id": i, "width": 200, "height": 200} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}],
        "annotations": [
            {"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": z}
            for n, (i, c, b, z) in enumerate(GT_ANNS)
        ],
    }
    dts = [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in DT_ANNS]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        e = COCOeval(coco_gt, coco_gt.loadRes(dts), iouType="bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats)


@pytest.fixture(scope="module")
def fixture_results() -> dict[str, EvalResult]:
    recs, preds = fixture_records(), fixture_predictions()
    return {b: evaluate_detections(recs, preds, CLASSES, backend=b) for b in ("pycocotools", "faster_coco_eval")}


def all_values(result: EvalResult) -> list[float | None]:
    vals = [v for m in result.by_max_dets.values() for v in m.values()]
    return vals + list(result.per_class.values()) + list(result.per_class_ap50.values())


# --------------------------------------------------------------------------------------------- golden numbers


def test_perfect_predictions_give_ap_one_on_every_split_with_gt() -> None:
    recs = [r for r in fixture_records()]
    preds = {
        r.image_id: pred(r.boxes[~r.iscrowd].tolist(), [1.0] * int((~r.iscrowd).sum()), r.labels[~r.iscrowd].tolist())
        for r in recs
    }
    result = evaluate_detections(recs, preds, CLASSES)
    assert result.num_gt == {"all": 7, "vt": 2, "t": 2, "s": 1, "m": 2, "l": 1}
    for md in (100, 1500):
        for key, value in result.by_max_dets[md].items():
            assert value is not None, key
            assert_close(value, 1.0, rtol=0, atol=1e-9, msg=key)
    for name in CLASSES:
        assert_close(result.per_class[name], 1.0, rtol=0, atol=1e-9)
        assert_close(result.pr_precision[name], np.ones(101), rtol=0, atol=1e-9)


def test_no_predictions_give_zero_and_splits_without_gt_give_none() -> None:
    recs = [rec(1, [[0, 0, 5, 5], [10, 10, 30, 30]], [0, 1]), rec(2, [], [])]
    result = evaluate_detections(recs, {}, CLASSES)
    m = result.metrics
    for key in ("AP", "AP50", "AP75", "AP_vt", "AP_s", "AR", "AR_vt", "AR_s"):
        assert m[key] == 0.0, key
    for key in ("AP_t", "AP_m", "AP_l", "AR_t", "AR_m", "AR_l"):
        assert m[key] is None, key
    assert result.per_class == {"car": 0.0, "person": 0.0}
    assert result.to_json_dict()["AP_t"] is None


def test_no_ground_truth_at_all_gives_none() -> None:
    result = evaluate_detections([rec(1, [], [])], {1: pred([[0, 0, 9, 9]], [0.5], [0])}, CLASSES)
    assert all(v is None for v in all_values(result))
    assert result.pr_precision == {}


def test_false_positive_ranked_first_halves_ap() -> None:
    # one GT; a wrong box scores higher than the exact one: precision 1/2 at recall 1 -> AP 0.5 at every IoU
    recs = [rec(1, [[10, 10, 30, 30]], [0])]
    preds = {1: pred([[100, 100, 120, 120], [10, 10, 30, 30]], [0.9, 0.8], [0, 0])}
    for backend in ("pycocotools", "faster_coco_eval"):
        m = evaluate_detections(recs, preds, CLASSES, backend=backend).metrics
        for key in ("AP", "AP50", "AP75", "AP_s"):
            assert_close(m[key], 0.5, rtol=0, atol=1e-9, msg=f"{backend} {key}")
        assert_close(m["AR"], 1.0, rtol=0, atol=1e-9)


def test_per_class_two_classes() -> None:
    # car found exactly, person missed: per-class 1 and 0, mean AP 0.5
    recs = [rec(1, [[10, 10, 30, 30], [50, 50, 70, 70]], [0, 1])]
    result = evaluate_detections(recs, {1: pred([[10, 10, 30, 30]], [0.9], [0])}, CLASSES)
    assert result.per_class.keys() == {"car", "person"}
    assert_close(result.per_class["car"], 1.0, rtol=0, atol=1e-9)
    assert result.per_class["person"] == 0.0
    assert_close(result.metrics["AP"], 0.5, rtol=0, atol=1e-9)
    assert_close(result.pr_precision["person"], np.zeros(101))


def test_size_splits_are_half_open_like_the_vocab() -> None:
    # an 8x8 box has s = 8: bucket t (SPEC §0), not vt; 32x32 is m; 64x64 is m and l
    recs = [rec(1, [[0, 0, 8, 8], [20, 20, 52, 52], [100, 100, 164, 164]], [0, 0, 0])]
    result = evaluate_detections(recs, {}, CLASSES)
    assert result.num_gt == {"all": 3, "vt": 0, "t": 1, "s": 0, "m": 2, "l": 1}
    assert result.metrics["AP_vt"] is None and result.metrics["AP_t"] == 0.0


def test_max_dets_limits_detections_per_image() -> None:
    recs = [rec(1, [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    preds = {1: pred([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 0])}
    result = evaluate_detections(recs, preds, CLASSES, max_dets=(1, 1500))
    assert result.max_dets == 1500
    assert_close(result.by_max_dets[1]["AR"], 0.5, rtol=0, atol=1e-9)
    assert_close(result.by_max_dets[1500]["AR"], 1.0, rtol=0, atol=1e-9)
    assert "maxdets_1" in result.to_json_dict()


def test_ignore_regions_as_crowd() -> None:
    r = rec(1, [[10, 10, 30, 30]], [0])
    r.ignore = np.array([[100, 100, 150, 150]], np.float32)
    preds = {1: pred([[110, 110, 130, 130], [10, 10, 30, 30]], [0.9, 0.8], [0, 0])}
    assert evaluate_detections([r], preds, CLASSES).metrics["AP"] < 0.99
    result = evaluate_detections([r], preds, CLASSES, ignore_regions=True)
    assert_close(result.metrics["AP"], 1.0, rtol=0, atol=1e-9)
    assert result.num_gt["all"] == 1


def test_accepts_image_records() -> None:
    records = pytest.importorskip("efpn.data.records")
    r = records.ImageRecord(
        5,
        None,
        64,
        64,
        boxes=[[1, 1, 7, 7], [20, 20, 40, 40]],
        labels=[0, 1],
        iscrowd=[False, True],
        ignore=[[50, 50, 60, 60]],
    )
    preds = {
        5: {
            "boxes": np.array([[1, 1, 7, 7], [52, 52, 58, 58]]),
            "scores": np.array([0.9, 0.95]),
            "labels": np.array([0, 0]),
        }
    }
    result = evaluate_detections([r], preds, CLASSES, ignore_regions=True)
    assert result.num_gt["all"] == 1 and result.per_class["person"] is None
    assert_close(result.metrics["AP_vt"], 1.0, rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------- against pycocotools


def test_matches_pycocotools_run_directly(fixture_results: dict[str, EvalResult]) -> None:
    stats = direct_pycocotools()
    assert 0.0 < stats[0] < 1.0  # the fixture is not degenerate
    for result in fixture_results.values():
        coco = result.by_max_dets[100]
        for key, idx in (("AP", 0), ("AP50", 1), ("AP75", 2), ("AR", 8)):
            assert_close(coco[key], float(stats[idx]), rtol=0, atol=1e-6, msg=f"{result.backend} {key}")
        # no box in the fixture is larger than 96², so COCO's medium [32², 96²] equals our open-ended m here
        assert_close(coco["AP_m"], float(stats[4]), rtol=0, atol=1e-6)
        assert_close(coco["AR_m"], float(stats[10]), rtol=0, atol=1e-6)
        # no image has more than 100 detections, so the AI-TOD setting gives the same numbers here
        assert_close(result.metrics["AP"], float(stats[0]), rtol=0, atol=1e-6)


def test_backends_agree(fixture_results: dict[str, EvalResult]) -> None:
    a, b = fixture_results["pycocotools"], fixture_results["faster_coco_eval"]
    va, vb = all_values(a), all_values(b)
    assert [v is None for v in va] == [v is None for v in vb]
    assert_close([v for v in va if v is not None], [v for v in vb if v is not None], rtol=0, atol=1e-6)
    assert a.pr_precision.keys() == b.pr_precision.keys() == set(CLASSES)
    for name in CLASSES:
        assert_close(a.pr_precision[name], b.pr_precision[name], rtol=0, atol=1e-6)
        assert_close(a.pr_scores[name], b.pr_scores[name], rtol=0, atol=1e-6)


def test_fixture_values_and_json(fixture_results: dict[str, EvalResult]) -> None:
    result = fixture_results["pycocotools"]
    for value in all_values(result):
        assert value is None or 0.0 <= value <= 1.0
    d = result.to_json_dict()
    assert {"AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "per_class"} <= d.keys()
    assert d["per_class"].keys() == set(CLASSES) and d["max_dets"] == 1500
    assert d["maxdets_100"].keys() == set(ev.METRIC_KEYS)
    text = json.dumps(result.to_json_dict(include_curves=True), allow_nan=False)
    back = EvalResult.from_json_dict(json.loads(text))
    assert back.metrics == result.metrics and back.by_max_dets == result.by_max_dets
    assert_close(back.pr_precision["car"], result.pr_precision["car"])


def test_bad_inputs_raise() -> None:
    recs = [rec(1, [[0, 0, 5, 5]], [0])]
    with pytest.raises(ValueError, match="not in the records"):
        evaluate_detections(recs, {7: pred([[0, 0, 5, 5]], [0.5], [0])}, CLASSES)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        evaluate_detections(recs, {1: pred([[0, 0, 5, 5]], [0.5], [2])}, CLASSES)
    with pytest.raises(ValueError, match="backend"):
        evaluate_detections(recs, {}, CLASSES, backend="nope")  # type: ignore[arg-type]


def test_sliced_validation_equals_plain_on_an_image_that_fits_one_tile(tmp_path) -> None:
    import efpn
    from efpn.data.splits import load_split
    from efpn.data.synthetic import write_synthetic_dataset
    from efpn.evaluation import validate

    write_synthetic_dataset(tmp_path / "synth", num_images=3, image_size=96, seed=3, val_fraction=0.0)
    records, names, _ = load_split(tmp_path / "synth" / "data.yaml", "train")
    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=len(names)).eval()
    plain = validate(model, records, names, image_size=96, batch_size=1, score_thresh=0.0)
    sliced = validate(model, records, names, image_size=96, score_thresh=0.0, slice_size=128, overlap=0.2)
    for key, value in plain.metrics.items():
        if value is None:
            assert sliced.metrics[key] is None, key
        else:
            assert_close(sliced.metrics[key], value, rtol=0, atol=1e-9, msg=key)
    tiled = validate(model, records, names, image_size=96, score_thresh=0.0, slice_size=48, overlap=0.25)
    assert set(tiled.metrics) == set(plain.metrics)  # tiles of half the image: a different, valid evaluation


def test_validate_refuses_data_with_more_classes_than_the_model(tmp_path) -> None:
    """A 1-class model on 3-class data, or the same classes in another order: a clear error naming both lists, not
    an AP averaged over classes the model cannot predict or scored against the wrong class."""
    import efpn
    from efpn.data.splits import load_split
    from efpn.data.synthetic import write_synthetic_dataset
    from efpn.evaluation import validate

    write_synthetic_dataset(tmp_path / "synth", num_images=1, image_size=64, seed=0, val_fraction=0.0)
    records, names, _ = load_split(tmp_path / "synth" / "data.yaml", "train")
    model = efpn.build_model("tiny_efpn_n", num_classes=1).eval()
    with pytest.raises(ValueError, match=r"data.s classes \[disc, square, cross\] are not the model.s \[1 unnamed\]"):
        validate(model, records, names, image_size=64)
    named = efpn.build_model("tiny_efpn_n", num_classes=3, class_names=("cross", "disc", "square")).eval()
    with pytest.raises(ValueError, match=r"\[disc, square, cross\] are not the model.s \[cross, disc, square\]"):
        validate(named, records, names, image_size=64)  # same classes, another order: refused, not mis-scored
