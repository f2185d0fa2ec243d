"""Detections in the original image's pixels: boxes the network puts in its input's padding are dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import efpn
from efpn.infer.predict import predict_image
from efpn.infer.preprocess import drop_empty


def test_boxes_with_no_area_once_clipped_are_dropped_from_every_field() -> None:
    det = {"boxes": torch.tensor([[0.0, 10.0, 5.0, 20.0], [0.0, 120.0, 1.6, 130.0], [3.0, 3.0, 3.0, 9.0]]),
           "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 1, 2]),
           "levels": torch.tensor([0, 1, 2])}
    out = drop_empty(det, (120, 160))  # the second lies below the 120 px image, the third is a line
    assert out["boxes"].tolist() == [[0.0, 10.0, 5.0, 20.0]] and out["scores"].tolist() == [pytest.approx(0.9)]
    assert out["labels"].tolist() == [0] and out["levels"].tolist() == [0]
    assert det["boxes"].shape == (3, 4)  # the input is left as it was


def test_a_wide_image_gets_no_detection_in_the_padding_below_it() -> None:
    """A 160x120 image is a 320x240 input padded to 256 rows: the bundled synthetic detector scores priors in that
    padding (on a black image), and those became zero-height boxes on the bottom edge, which attribution and
    gradient reach refuse."""
    ckpt = Path(__file__).resolve().parents[2] / "checkpoints" / "efpn_n_synth.safetensors"
    model = efpn.load_model(ckpt)
    det = predict_image(model, np.zeros((120, 160, 3), np.uint8), score_thresh=0.01, max_det=300)
    boxes = det["boxes"]
    assert len(boxes) and ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
    assert len(det["scores"]) == len(det["labels"]) == len(det["levels"]) == len(boxes)
