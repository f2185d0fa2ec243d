"""Golden numbers, round trips and edge cases for efpn.det.boxes."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from efpn.det.boxes import (
    DEFAULT_DELTA_CLAMP,
    bbox2dist,
    box_iou_pairwise,
    ciou_pairwise,
    clip_boxes,
    cxcywh_to_xyxy,
    decode_deltas,
    decode_yolov5,
    dfl_decode,
    dist2bbox,
    encode_deltas,
    giou_pairwise,
    validate_boxes,
    xyxy_to_cxcywh,
)


def t(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def random_boxes(n: int, scale: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2) * scale
    wh = torch.rand(n, 2) * scale / 2 + 1.0
    return torch.cat((xy, xy + wh), dim=1)


# --- IoU family ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [box_iou_pairwise, giou_pairwise, ciou_pairwise])
def test_identical_boxes_score_one(fn) -> None:
    b = random_boxes(6)
    assert_close(fn(b, b.clone()), torch.ones(6))


def test_iou_giou_ciou_hand_values() -> None:
    # a = [0,2]^2, b = [1,3]^2: intersection 1, union 7, enclosing [0,3]^2 area 9, centre distance^2 = 2,
    # enclosing diagonal^2 = 18, same aspect ratio (v = 0).
    a, b = t((0, 0, 2, 2)), t((1, 1, 3, 3))
    assert_close(box_iou_pairwise(a, b), torch.tensor([1 / 7]))
    assert_close(giou_pairwise(a, b), torch.tensor([1 / 7 - 2 / 9]))
    assert_close(ciou_pairwise(a, b), torch.tensor([1 / 7 - 2 / 18]))


def test_ciou_aspect_term_hand_value() -> None:
    # Same centre, a = 2x2, b = 4x2 -> IoU = 1/2, rho = 0, v = 4/pi^2 (atan 2 - atan 1)^2,
    # alpha = v / (1 - IoU + v).
    a, b = t((1, 0, 3, 2)), t((0, 0, 4, 2))
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    expected = 0.5 - v / (0.5 + v) * v
    assert_close(ciou_pairwise(a, b), torch.tensor([expected]))


def test_disjoint_boxes_giou_negative() -> None:
    # Two unit squares one unit apart: IoU 0, union 2, enclosing 3 -> GIoU = -1/3.
    a, b = t((0, 0, 1, 1)), t((2, 0, 3, 1))
    assert_close(box_iou_pairwise(a, b), torch.tensor([0.0]))
    assert_close(giou_pairwise(a, b), torch.tensor([-1 / 3]))
    assert ciou_pairwise(a, b).item() < 0


def test_pairwise_broadcasts_leading_dims() -> None:
    a = random_boxes(5)
    out = giou_pairwise(a[None], a[:, None])  # (5, 5) all pairs via broadcasting
    assert out.shape == (5, 5)
    assert_close(out.diagonal(), torch.ones(5))


@pytest.mark.parametrize("fn", [box_iou_pairwise, giou_pairwise, ciou_pairwise])
def test_iou_family_eps_safe_on_degenerate_boxes(fn) -> None:
    # zero-size boxes (points, lines) and identical points: finite value and finite gradient
    a = t((5, 5, 5, 5), (0, 0, 0, 4), (1, 1, 3, 3)).requires_grad_()
    b = t((5, 5, 5, 5), (0, 0, 4, 0), (1, 1, 3, 3))
    out = fn(a, b)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(a.grad).all()


def test_giou_gradient_pulls_disjoint_boxes_together() -> None:
    a = t((0, 0, 1, 1)).requires_grad_()
    giou_pairwise(a, t((2, 0, 3, 1))).sum().backward()
    # Translating a right by dx (x1 and x2 together) moves it towards b: d GIoU / dx = 1/3 - 1/9 > 0.
    assert_close(a.grad[0, 0] + a.grad[0, 2], torch.tensor(2 / 9))


@pytest.mark.parametrize("fn", [box_iou_pairwise, giou_pairwise, ciou_pairwise, xyxy_to_cxcywh])
def test_wrong_last_dim_raises(fn) -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        fn(torch.zeros(3, 5)) if fn is xyxy_to_cxcywh else fn(torch.zeros(3, 5), torch.zeros(3, 5))


# --- formats, clipping, validation --------------------------------------------------------------------------


def test_format_conversion_hand_and_round_trip() -> None:
    assert_close(xyxy_to_cxcywh(t((2, 4, 6, 10))), t((4, 7, 4, 6)))
    assert_close(cxcywh_to_xyxy(t((4, 7, 4, 6))), t((2, 4, 6, 10)))
    b = random_boxes(8)
    assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b)


def test_clip_boxes() -> None:
    boxes = t((-5, -5, 10, 10), (90, 40, 120, 60))
    assert_close(clip_boxes(boxes, (50, 100)), t((0, 0, 10, 10), (90, 40, 100, 50)))


def test_validate_boxes_drops_degenerate_and_clips() -> None:
    boxes = t(
        (10, 10, 20, 20),  # fine
        (5, 5, 5, 9),  # zero width
        (8, 8, 4, 12),  # negative width
        (-10, 90, 10, 110),  # partly outside -> clipped
        (200, 200, 210, 210),  # fully outside -> zero size after clipping
    )
    clean, keep = validate_boxes(boxes, image_hw=(100, 100))
    assert keep.tolist() == [True, False, False, True, False]
    assert_close(clean, t((10, 10, 20, 20), (0, 90, 10, 100)))


def test_validate_boxes_nan_raises_or_drops() -> None:
    boxes = t((0, 0, 4, 4), (float("nan"), 0, 4, 4), (1, 1, 2, float("inf")))
    with pytest.raises(ValueError, match="NaN or inf"):
        validate_boxes(boxes)
    clean, keep = validate_boxes(boxes, drop_nonfinite=True)
    assert keep.tolist() == [True, False, False]
    assert_close(clean, t((0, 0, 4, 4)))


def test_validate_boxes_shapes() -> None:
    clean, keep = validate_boxes(torch.zeros(0, 4), image_hw=(10, 10))
    assert clean.shape == (0, 4) and keep.shape == (0,)
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        validate_boxes(torch.zeros(3, 5))


# --- RetinaNet coder ----------------------------------------------------------------------------------------


def test_encode_deltas_hand_value() -> None:
    # anchor centre (5, 5) size 10x10; gt centre (10, 15) size 10x20
    d = encode_deltas(t((0, 0, 10, 10)), t((5, 5, 15, 25)))
    assert_close(d, t((0.5, 1.0, 0.0, math.log(2.0))))
    d_w = encode_deltas(t((0, 0, 10, 10)), t((5, 5, 15, 25)), weights=(10, 10, 5, 5))
    assert_close(d_w, t((5.0, 10.0, 0.0, 5 * math.log(2.0))))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(weights) -> None:
    anchors, gt = random_boxes(16), random_boxes(16)
    assert_close(
        decode_deltas(anchors, encode_deltas(anchors, gt, weights), weights), gt, atol=1e-4, rtol=1e-5
    )


def test_decode_deltas_clamps_and_broadcasts() -> None:
    anchors = t((0, 0, 16, 16))  # (R=1, 4)
    deltas = torch.tensor([[[0.0, 0.0, 100.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]])  # (N=2, R=1, 4)
    out = decode_deltas(anchors, deltas)
    assert out.shape == (2, 1, 4)
    assert_close(out[0, 0, 2] - out[0, 0, 0], torch.tensor(16 * math.exp(DEFAULT_DELTA_CLAMP)))  # = 1000
    assert_close(out[1, 0], anchors[0])


# --- YOLOv5 coder -------------------------------------------------------------------------------------------


def test_decode_yolov5_zero_logits_return_the_anchor() -> None:
    # sigma(0) = 0.5: centre offset (2*0.5 - 0.5) from the cell corner = cell centre; wh = (2*0.5)^2 * anchor
    priors = t((20 - 5, 12 - 6.5, 20 + 5, 12 + 6.5))  # anchor 10x13 centred on (20, 12)
    out = decode_yolov5(priors, torch.tensor([8.0]), torch.zeros(1, 4))
    assert_close(out, priors)


def test_decode_yolov5_matches_ultralytics_grid_formula() -> None:
    # cell (gx, gy) = (2, 1) at stride 8 -> cell centre (20, 12); anchor 10x13.
    # Ultralytics: xy = (2 sigma - 0.5 + grid) * stride, wh = (2 sigma)^2 * anchor.
    stride, grid, anchor = 8.0, torch.tensor([2.0, 1.0]), torch.tensor([10.0, 13.0])
    centre_cell = (grid + 0.5) * stride
    priors = torch.cat((centre_cell - anchor / 2, centre_cell + anchor / 2))[None]
    raw = torch.tensor([[math.log(3.0), -math.log(3.0), math.log(3.0), 0.0]])  # sigma = 0.75, 0.25, 0.75, 0.5
    sig = torch.sigmoid(raw[0])
    xy = (2 * sig[:2] - 0.5 + grid) * stride
    wh = (2 * sig[2:]) ** 2 * anchor
    expected = torch.cat((xy - wh / 2, xy + wh / 2))[None]
    out = decode_yolov5(priors, torch.tensor([stride]), raw[None])  # raw (N=1, R=1, 4)
    assert_close(out, expected[None])
    assert_close(xyxy_to_cxcywh(out)[0, 0, :2], torch.tensor([24.0, 8.0]))  # 20 + 0.5*8, 12 - 0.5*8


def test_decode_yolov5_bad_shapes() -> None:
    with pytest.raises(ValueError, match="strides"):
        decode_yolov5(torch.zeros(3, 4), torch.ones(2), torch.zeros(3, 4))


# --- distance coder and DFL ---------------------------------------------------------------------------------


def test_bbox2dist_dist2bbox_round_trip_with_strides() -> None:
    points = t((20, 20), (36, 12))
    strides = torch.tensor([8.0, 8.0])
    boxes = t((4, 8, 40, 28), (30, 2, 60, 20))
    dist = bbox2dist(points, boxes, reg_max=16, strides=strides)
    assert_close(dist, t((2, 1.5, 2.5, 1), (0.75, 1.25, 3, 1)))
    assert_close(dist2bbox(points, dist, strides), boxes)


def test_bbox2dist_clamps_to_last_bin() -> None:
    # 200 px at stride 1 is far beyond bin 15; a point outside the box gives negative distances -> 0
    dist = bbox2dist(t((100, 100)), t((-100, 90, 300, 95)), reg_max=16)
    assert_close(dist, t((14.99, 10, 14.99, 0)))


def test_dfl_decode_one_hot_and_two_bin() -> None:
    reg_max = 16
    logits = torch.full((2, 4, reg_max), -1e4)
    for side, j in enumerate((0, 3, 7, 15)):
        logits[0, side, j] = 0.0
    logits[1, :, 3] = math.log(0.25)
    logits[1, :, 4] = math.log(0.75)
    out = dfl_decode(logits.flatten(1), reg_max)
    assert_close(out, t((0, 3, 7, 15), (3.75, 3.75, 3.75, 3.75)))


def test_dfl_decode_wrong_size_raises() -> None:
    with pytest.raises(ValueError, match="4\\*reg_max=64"):
        dfl_decode(torch.zeros(2, 60), 16)


def test_box_iof_is_the_share_of_each_box_inside_each_region() -> None:
    import torch

    from efpn.det.boxes import box_iof

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 9.0]])  # the second has no area
    regions = torch.tensor([[5.0, 0.0, 20.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    assert box_iof(boxes, regions).tolist() == [[0.5, 0.0], [0.0, 0.0]]
