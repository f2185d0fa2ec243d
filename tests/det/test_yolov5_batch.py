"""efpn.det.assign.assign_yolov5_batch: a batch assigned at once gives each image what it gets alone (the rules
themselves are held by tests/det/test_assign.py through assign_yolov5, which is this function on one image)."""

from __future__ import annotations

import pytest
import torch

from efpn.det.assign import Assignment, assign_yolov5, assign_yolov5_batch
from efpn.det.priors import feature_sizes_for, yolo_priors
from tests.det.criterion_steps import assert_same_step

ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


def _gts(counts: list[int], seed: int, size: int = 160) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for m in counts:
        xy = torch.rand(m, 2, generator=gen) * size * 1.1 - size * 0.05  # some centres outside the image
        wh = torch.rand(m, 2, generator=gen) * size / 2 + 1
        box = torch.cat([xy, xy + wh], 1)
        if m > 2:
            box[1, 2] = box[1, 0]  # zero width: never positive
            box[2] = box[0]        # a duplicate
            box[0, :2] = torch.tensor([16.0, 24.0])  # an exact grid point: the centre cell counted once
        out.append(box)
    return out


def _same(a: Assignment, b: Assignment) -> None:
    assert torch.equal(a.prior_idx, b.prior_idx) and torch.equal(a.gt_idx, b.gt_idx) and torch.equal(a.iou, b.iou)
    assert torch.equal(a.fallback, b.fallback) and torch.equal(a.ignore, b.ignore) and a.num_priors == b.num_priors


@pytest.mark.parametrize("counts", [[3, 0, 7, 1], [12, 9], [0, 0], [1], [30, 25, 0, 33]])
@pytest.mark.parametrize("seed", [0, 1])
def test_each_image_gets_what_it_gets_alone(counts: list[int], seed: int) -> None:
    priors = yolo_priors(feature_sizes_for((160, 160), ("p3", "p4", "p5")), ANCHORS)
    gts = _gts(counts, seed)
    batched = assign_yolov5_batch(priors, gts)
    assert len(batched) == len(counts)
    for gt, got in zip(gts, batched):
        _same(got, assign_yolov5(priors, gt))
        _same(got, assign_yolov5_batch(priors, [gt])[0])
    if sum(counts) > 5:
        assert sum(a.prior_idx.numel() for a in batched) > 0


def test_the_yolov5_criterion_trains_as_with_one_image_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert_same_step(monkeypatch, "yolov5n", "assign_yolov5_batch",
                     lambda priors, gts: [assign_yolov5_batch(priors, [g])[0] for g in gts])
