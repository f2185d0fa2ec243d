"""What Detector.predict / run take: any float dtype (converted to the model's), an empty batch (no results), and
training labels that are class indices (a fractional label is refused, not cast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import efpn
from efpn.models.detector import Detector, check_postprocess


@pytest.fixture(scope="module")
def model() -> Detector:
    torch.manual_seed(0)
    return efpn.build_model("yolov8n", num_classes=2).eval()


def test_float64_images_from_numpy_are_converted_to_the_model_dtype(model: Detector) -> None:
    pixels = np.random.default_rng(0).random((1, 3, 64, 64))  # float64, as numpy makes them
    images = torch.from_numpy(pixels)
    assert images.dtype == torch.float64
    got = model.predict(images, score_thresh=0.0)
    want = model.predict(images.float(), score_thresh=0.0)
    assert len(want[0]["boxes"]) > 0  # an untrained model keeps detections at threshold 0
    assert_close(got[0]["boxes"], want[0]["boxes"])
    assert_close(got[0]["scores"], want[0]["scores"])
    assert model.check_images(images).dtype == model.float_dtype == torch.float32
    same = images.float()
    assert model.check_images(same) is same  # the model's own dtype is taken as it is


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_images_run(model: Detector, dtype: torch.dtype) -> None:
    images = torch.rand(2, 3, 64, 64).to(dtype)
    got = model.predict(images, score_thresh=0.0)
    want = model.predict(images.float(), score_thresh=0.0)  # the widening is exact: the same detections
    assert len(got) == 2
    assert_close(got[1]["scores"], want[1]["scores"])
    with torch.no_grad():
        assert model(images)[0]["boxes"].dtype == torch.float32


def test_gradients_reach_float64_images(model: Detector) -> None:
    images = torch.rand(1, 3, 64, 64, dtype=torch.float64, requires_grad=True)
    run = model.run(images, decode=True)
    run.decoded[1].sum().backward()
    assert images.grad is not None and images.grad.dtype == torch.float64 and images.grad.abs().sum() > 0


def test_an_empty_batch_gives_no_results(model: Detector) -> None:
    assert model.predict(torch.zeros(0, 3, 64, 64)) == []
    with torch.no_grad():
        assert model(torch.zeros(0, 3, 64, 64)) == []
    assert model.predict(torch.zeros(0, 3, 64, 64, dtype=torch.float64), max_det=5) == []


def test_an_empty_batch_is_still_checked(model: Detector) -> None:
    with pytest.raises(ValueError, match="3 RGB channels"):
        model.predict(torch.zeros(0, 1, 64, 64))
    with pytest.raises(ValueError, match="must be float"):
        model.predict(torch.zeros(0, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="max_det must be >= 1"):
        model.predict(torch.zeros(0, 3, 64, 64), max_det=0)
    with pytest.raises(ValueError, match=r"empty batch \(shape \(0, 3, 64, 64\)\).*at least one image"):
        model.run(torch.zeros(0, 3, 64, 64), detect=True)  # a run has per-level internals to return: said
    with pytest.raises(ValueError, match="empty batch"):
        model.backbone_features(torch.zeros(0, 3, 64, 64))


def test_non_integer_max_det_is_refused_by_predict(model: Detector) -> None:
    for bad in (1.5, True, "3", 2.0):
        with pytest.raises(ValueError, match="max_det must be a whole number of detections"):
            model.predict(torch.rand(1, 3, 64, 64), max_det=bad)
    assert len(model.predict(torch.rand(1, 3, 64, 64), score_thresh=0.0, max_det=np.int64(2))[0]["boxes"]) <= 2


def test_check_postprocess_takes_what_it_always_took() -> None:
    check_postprocess()
    check_postprocess(score_thresh=0, nms_iou=1, max_det=1)
    check_postprocess(score_thresh=np.float32(0.25), nms_iou=0.5, max_det=np.int32(300), other="ignored")
    for kw in ({"score_thresh": False}, {"nms_iou": None, "score_thresh": float("inf")}):
        with pytest.raises(ValueError, match="score_thresh"):
            check_postprocess(**kw)


def _train_step(labels: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = efpn.build_model("yolov8n", num_classes=3).train()
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": labels},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return model(images, targets)


def test_fractional_training_labels_are_refused() -> None:
    for bad in (torch.tensor([0.7]), [1.5], np.array([np.nan])):
        with pytest.raises(ValueError, match="target 0: labels must be whole class indices"):
            _train_step(bad)


def test_whole_valued_float_labels_are_class_indices() -> None:
    as_float = _train_step(torch.tensor([2.0]))
    as_int = _train_step(torch.tensor([2]))
    assert as_float.keys() == as_int.keys()
    for key in as_int:
        assert_close(as_float[key], as_int[key])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        _train_step(torch.tensor([3.0]))
