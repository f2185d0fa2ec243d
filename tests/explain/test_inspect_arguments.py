"""efpn.inspect refuses the post-processing settings and input sizes model.predict and predict_image refuse, with
the same message (one shared check), before the image is decoded."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest
import torch

import efpn
from efpn.config.model import MAX_IMAGE_SIZE
from efpn.infer import predict_image
from efpn.infer.preprocess import MAX_SIDE, check_image_size
from efpn.models.detector import Detector


@pytest.fixture(scope="module")
def model() -> Detector:
    torch.manual_seed(0)
    return efpn.build_model("yolov8n", num_classes=1).eval()


def _message(call: Any, **kw: Any) -> str:
    with pytest.raises(ValueError) as info:
        call(**kw)
    return str(info.value)


BAD_SETTINGS = [
    ({"score_thresh": 2}, r"score_thresh must be in \[0, 1\], got 2"),
    ({"score_thresh": math.nan}, r"score_thresh must be in \[0, 1\], got nan"),
    ({"nms_iou": -0.5}, r"nms_iou must be in \[0, 1\]"),
    ({"score_thresh": "0.5"}, "score_thresh must be a number"),
    ({"max_det": 0}, "max_det must be >= 1, got 0"),
    ({"max_det": 1.5}, r"max_det must be a whole number of detections \(an int >= 1\), got 1.5"),
    ({"max_det": True}, "max_det must be a whole number of detections"),
]


@pytest.mark.parametrize(("kw", "said"), BAD_SETTINGS)
def test_inspect_predict_image_and_predict_refuse_the_same_settings_alike(model: Detector, kw: dict[str, Any],
                                                                           said: str) -> None:
    image = np.zeros((40, 48, 3), np.uint8)
    inspected = _message(lambda **k: efpn.inspect(model, image, image_size=64, **k), **kw)
    predicted = _message(lambda **k: predict_image(model, image, image_size=64, **k), **kw)
    direct = _message(lambda **k: model.predict(torch.zeros(1, 3, 64, 64), **k), **kw)
    assert inspected == predicted == direct
    assert re.search(said, inspected)


def test_whole_numbers_of_other_integer_types_are_kept(model: Detector) -> None:
    image = np.zeros((40, 48, 3), np.uint8)
    ins = efpn.inspect(model, image, image_size=64, score_thresh=np.float32(0.0), max_det=np.int64(3))
    assert len(ins.detections["boxes"]) <= 3


@pytest.mark.parametrize("size", [100_000, MAX_IMAGE_SIZE + 32])
def test_oversize_image_size_is_refused_naming_the_limit(model: Detector, size: int) -> None:
    image = np.zeros((40, 48, 3), np.uint8)
    for call in (efpn.inspect, predict_image):
        with pytest.raises(ValueError, match=rf"image_size {size} is over the {MAX_IMAGE_SIZE} px limit.*--slice"):
            call(model, image, image_size=size)


def test_image_size_is_checked_before_the_image_is_decoded(model: Detector) -> None:
    # an image that would itself be refused: the argument is said first
    with pytest.raises(ValueError, match="over the 4096 px limit"):
        efpn.inspect(model, np.full((8, 8), np.nan, np.float32), image_size=10_000)
    with pytest.raises(ValueError, match="max_det must be >= 1"):
        efpn.inspect(model, np.full((8, 8), np.nan, np.float32), max_det=0)


def test_check_image_size_limits_are_the_cli_ones() -> None:
    from efpn.cli.guards import MAX_IMAGE_SIZE as CLI_MAX

    assert MAX_SIDE == MAX_IMAGE_SIZE == CLI_MAX
    assert check_image_size(640) == 640 and check_image_size(np.int64(320)) == 320 and check_image_size(640.0) == 640
    assert check_image_size(MAX_SIDE) == MAX_SIDE
    for bad, said in ((True, "whole number"), (640.5, "whole number"), ("640", "whole number"),
                      (4, "under the network's 8 px minimum"), (MAX_SIDE + 1, "over the 4096 px limit")):
        with pytest.raises(ValueError, match=said):
            check_image_size(bad)
