"""Thresholds, class-aware NMS, limits and letterbox undo of efpn.det.postprocess."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from efpn.det.postprocess import batched_detections, empty_detections, scale_detections


def one_image(boxes: list[list[float]], scores: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([boxes], dtype=torch.float32), torch.tensor([scores], dtype=torch.float32)


def test_nms_removes_duplicate_of_same_class() -> None:
    boxes, scores = one_image([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]], [[0.9], [0.8], [0.7]])
    (det,) = batched_detections(boxes, scores, torch.zeros(3, dtype=torch.long), nms_iou=0.5)
    assert_close(det["scores"], torch.tensor([0.9, 0.7]))
    assert_close(det["boxes"], torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]]))
    assert det["labels"].dtype == torch.long and det["levels"].dtype == torch.long


def test_nms_is_class_aware_and_multi_label() -> None:
    # prior 0 scores two classes above threshold -> two detections with the same box; prior 1 duplicates
    # prior 0's box but for class 1 with a lower score -> suppressed only within class 1.
    boxes, scores = one_image([[0, 0, 10, 10], [0, 0, 10, 10]], [[0.9, 0.6], [0.01, 0.5]])
    (det,) = batched_detections(boxes, scores, torch.tensor([0, 1]), score_thresh=0.05)
    assert_close(det["scores"], torch.tensor([0.9, 0.6]))
    assert det["labels"].tolist() == [0, 1]
    assert det["levels"].tolist() == [0, 0]


def test_score_threshold_and_max_det() -> None:
    boxes = torch.tensor([[[i * 20.0, 0, i * 20 + 10, 10] for i in range(6)]])  # disjoint
    scores = torch.tensor([[[0.9], [0.2], [0.8], [0.04], [0.7], [0.6]]])
    levels = torch.zeros(6, dtype=torch.long)
    (det,) = batched_detections(boxes, scores, levels, score_thresh=0.05, max_det=3)
    assert_close(det["scores"], torch.tensor([0.9, 0.8, 0.7]))
    (det,) = batched_detections(boxes, scores, levels, score_thresh=0.5)
    assert_close(det["scores"], torch.tensor([0.9, 0.8, 0.7, 0.6]))


def test_pre_nms_topk_is_per_level() -> None:
    boxes = torch.tensor([[[i * 20.0, 0, i * 20 + 10, 10] for i in range(4)]])
    scores = torch.tensor([[[0.9], [0.8], [0.3], [0.2]]])
    levels = torch.tensor([0, 0, 1, 1])
    (det,) = batched_detections(boxes, scores, levels, pre_nms_topk=1)
    assert_close(det["scores"], torch.tensor([0.9, 0.3]))
    assert det["levels"].tolist() == [0, 1]


def test_objectness_multiplies_scores_per_image() -> None:
    boxes = torch.tensor([[[0.0, 0, 10, 10]], [[5.0, 5, 9, 9]]])  # N = 2, R = 1
    scores = torch.tensor([[[0.8, 0.1]], [[0.5, 0.9]]])
    obj = torch.tensor([[0.5], [0.1]])
    dets = batched_detections(
        boxes, scores, torch.zeros(1, dtype=torch.long), objectness=obj, score_thresh=0.05
    )
    assert_close(dets[0]["scores"], torch.tensor([0.4]))
    assert_close(dets[1]["scores"], torch.tensor([0.09]))
    assert dets[1]["labels"].tolist() == [1]
    assert_close(dets[1]["boxes"], torch.tensor([[5.0, 5, 9, 9]]))


def test_empty_inputs_give_empty_tensors() -> None:
    dets = batched_detections(torch.zeros(2, 0, 4), torch.zeros(2, 0, 3), torch.zeros(0, dtype=torch.long))
    assert len(dets) == 2
    for det in dets:
        assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,)
        assert det["labels"].shape == (0,) and det["levels"].dtype == torch.long
    boxes, scores = one_image([[0, 0, 10, 10]], [[0.01]])
    (det,) = batched_detections(boxes, scores, torch.zeros(1, dtype=torch.long))  # all below threshold
    assert det["boxes"].shape == (0, 4)
    assert set(det) == set(empty_detections())


def test_non_finite_boxes_are_skipped() -> None:
    boxes, scores = one_image([[float("nan"), 0, 10, 10], [0, 0, 10, 10]], [[0.9], [0.8]])
    (det,) = batched_detections(boxes, scores, torch.zeros(2, dtype=torch.long))
    assert_close(det["scores"], torch.tensor([0.8]))


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"boxes must be \(N, R, 4\)"):
        batched_detections(torch.zeros(1, 3, 5), torch.zeros(1, 3, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="levels"):
        batched_detections(torch.zeros(1, 3, 4), torch.zeros(1, 3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="objectness"):
        batched_detections(
            torch.zeros(1, 3, 4),
            torch.zeros(1, 3, 2),
            torch.zeros(3, dtype=torch.long),
            objectness=torch.ones(3),
        )


def test_scale_detections_undoes_letterbox_and_clips() -> None:
    # original 100 (H) x 200 (W) image, resized by 0.5 and padded 10 left, 20 top
    det = {
        "boxes": torch.tensor([[20.0, 30, 60, 70], [100.0, 20, 130, 90]]),
        "scores": torch.tensor([0.9, 0.5]),
        "labels": torch.tensor([0, 1]),
        "levels": torch.tensor([0, 0]),
    }
    before = det["boxes"].clone()
    out = scale_detections(det, 0.5, (10, 20), (100, 200))
    assert_close(out["boxes"], torch.tensor([[20.0, 20, 100, 100], [180.0, 0, 200, 100]]))
    assert_close(det["boxes"], before)  # input untouched
    assert out["scores"] is det["scores"]
    out_xy = scale_detections(det, (0.5, 0.25), (10, 20), (1000, 1000))
    assert_close(out_xy["boxes"][0], torch.tensor([20.0, 40, 100, 200]))
