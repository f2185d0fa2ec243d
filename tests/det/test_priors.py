"""Priors: golden coordinates, layout (level-major, y, x, anchor), feature sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from efpn.det.priors import Priors, anchor_priors, feature_sizes_for, point_priors, yolo_priors


def test_anchor_priors_golden_2x2_p3() -> None:
    # stride 8, anchor_scale 4 -> 32 px squares centred on (4, 4), (12, 4), (4, 12), (12, 12)
    p = anchor_priors({"p3": (2, 2)}, anchor_scale=4.0, scales=(1.0,), ratios=(1.0,))
    expected = torch.tensor([[-12.0, -12, 20, 20], [-4, -12, 28, 20], [-12, -4, 20, 28], [-4, -4, 28, 28]])
    assert_close(p.boxes, expected)
    assert_close(p.points, torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]]))
    assert_close(p.strides, torch.full((4,), 8.0))
    assert_close(p.level, torch.zeros(4, dtype=torch.int64))
    assert p.levels == ["p3"] and p.num_per_level == [4] and p.anchors_per_loc == 1 and len(p) == 4


def test_anchor_order_is_ratio_major() -> None:
    # ratios h/w in {1/4, 1, 4} and scales {1, 2}: base 32 px, so every side is exact
    p = anchor_priors({"p3": (1, 1)}, anchor_scale=4.0, scales=(1.0, 2.0), ratios=(0.25, 1.0, 4.0))
    wh = p.boxes[:, 2:] - p.boxes[:, :2]
    # (ratio 1/4: 64x16, 128x32), (ratio 1: 32x32, 64x64), (ratio 4: 16x64, 32x128)
    expected_wh = torch.tensor([[64.0, 16], [128, 32], [32, 32], [64, 64], [16, 64], [32, 128]])
    assert_close(wh, expected_wh)
    assert_close((p.boxes[:, :2] + p.boxes[:, 2:]) / 2, torch.full((6, 2), 4.0))
    assert p.anchors_per_loc == 6


def test_layout_is_level_major_then_y_x_anchor() -> None:
    p = anchor_priors({"p3": (2, 3), "p4": (1, 2)})  # default 9 anchors per location
    assert len(p) == 2 * 3 * 9 + 1 * 2 * 9 == 72
    assert p.num_per_level == [54, 18] and p.levels == ["p3", "p4"]
    assert p.level_slices() == {"p3": slice(0, 54), "p4": slice(54, 72)}
    # flat index = offset + (y * W + x) * A + a
    assert_close(p.points[(1 * 3 + 2) * 9 + 4], torch.tensor([20.0, 12.0]))  # p3 y=1 x=2 -> (2.5*8, 1.5*8)
    assert_close(p.points[54 + (0 * 2 + 1) * 9], torch.tensor([24.0, 8.0]))  # p4 y=0 x=1 -> (1.5*16, 0.5*16)
    assert_close(p.strides[53:55], torch.tensor([8.0, 16.0]))
    assert p.level[:54].eq(0).all() and p.level[54:].eq(1).all()
    # anchor a=4 is ratio 1 (index 1) x scale 2^(1/3) (index 1): a 32 * 2^(1/3) px square
    side = 32 * 2 ** (1 / 3)
    assert_close(p.boxes[4, 2:] - p.boxes[4, :2], torch.tensor([side, side]))
    assert p.feature_sizes() == {"p3": (2, 3), "p4": (1, 2)}


def test_yolo_priors_centred_on_cells() -> None:
    p = yolo_priors({"p3": (1, 2), "p4": (1, 1), "p5": (1, 1)})
    assert p.anchors_per_loc == 3 and p.num_per_level == [6, 3, 3]
    # p3, cell x=1: centre (12, 4); anchors 10x13, 16x30, 33x23
    assert_close(
        p.boxes[3:6],
        torch.tensor([[7.0, -2.5, 17.0, 10.5], [4.0, -11.0, 20.0, 19.0], [-4.5, -7.5, 28.5, 15.5]]),
    )
    # p5 centre (16, 16), first anchor 116x90
    assert_close(p.boxes[9], torch.tensor([16 - 58.0, 16 - 45.0, 16 + 58.0, 16 + 45.0]))
    assert_close(p.strides, torch.tensor([8.0] * 6 + [16.0] * 3 + [32.0] * 3))
    with pytest.raises(ValueError, match="anchor sets"):
        yolo_priors({"p3": (1, 1)})


def test_point_priors_are_zero_size_boxes() -> None:
    p = point_priors({"p3": (2, 2), "p4": (1, 1)})
    assert p.anchors_per_loc == 1 and len(p) == 5
    assert_close(p.boxes, torch.cat([p.points, p.points], dim=1))
    assert_close(p.points[4], torch.tensor([8.0, 8.0]))


def test_feature_sizes_for_matches_a_padded_conv_stack() -> None:
    sizes = feature_sizes_for((100, 130), ["p3", "p4", "p7"])
    assert sizes == {"p3": (13, 17), "p4": (7, 9), "p7": (1, 2)}
    x = torch.zeros(1, 1, 100, 130)
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1)
    with torch.no_grad():
        for _ in range(3):
            x = conv(x)
    assert tuple(x.shape[2:]) == sizes["p3"]


def test_to_moves_every_tensor_and_bad_levels_raise() -> None:
    p = anchor_priors({"p3": (1, 1)})
    assert p.to("cpu") is p
    q = p.to("meta")
    assert isinstance(q, Priors) and q.device.type == "meta" and q.level.device.type == "meta"
    assert q.levels == p.levels and q.num_per_level == p.num_per_level
    with pytest.raises(ValueError):
        anchor_priors({"c3": (1, 1)})
    with pytest.raises(ValueError):
        point_priors({"p3x": (1, 1)})
    with pytest.raises(ValueError):
        Priors(p.boxes, p.points, p.strides, p.level, ["p3"], [5], 9)
