"""The RetinaNet head's separable form (the pretrained flagship's light head)."""

from __future__ import annotations

import math

import torch
from torch import nn

import efpn
from efpn.models.heads import RetinaHead
from efpn.zoo import build, get_config


def _head(separable: bool) -> RetinaHead:
    return RetinaHead(32, num_classes=3, levels=("p2", "p3"), num_anchors=1, num_convs=2, anchor_scale=2.0,
                      anchor_scales=(1.0,), anchor_ratios=(1.0,), separable=separable)


def test_separable_head_predicts_the_same_shapes_with_depthwise_pointwise_convs() -> None:
    feats = {"p2": torch.rand(2, 32, 24, 20), "p3": torch.rand(2, 32, 12, 10)}
    dense, light = _head(False).eval(), _head(True).eval()
    a, b = dense(feats), light(feats)
    assert a.cls_logits.shape == b.cls_logits.shape == (2, 24 * 20 + 12 * 10, 3)
    assert a.box.shape == b.box.shape == (2, 24 * 20 + 12 * 10, 4)
    convs = [m for m in light.modules() if isinstance(m, nn.Conv2d)]
    spatial = [m for m in convs if m.kernel_size == (3, 3)]
    # every 3x3 is depthwise (2 towers x 2 convs + 2 outputs), and each is followed by a 1x1
    assert len(spatial) == 6 and all(m.groups == m.in_channels for m in spatial)
    assert sum(m.kernel_size == (1, 1) for m in convs) == 6
    # focal-loss prior on the classifier's final conv, as in the dense head
    prior = -math.log((1 - 0.01) / 0.01)
    assert torch.allclose(light.cls_out[-1].bias, torch.full((3,), prior))
    assert torch.sigmoid(b.cls_logits).mean().item() < 0.05


def test_separable_head_learns() -> None:
    torch.manual_seed(0)
    head = _head(True)
    feats = {"p2": torch.rand(1, 32, 8, 8), "p3": torch.rand(1, 32, 4, 4)}
    target = torch.zeros(1, 80, 3)
    target[0, 5, 1] = 1.0
    opt = torch.optim.Adam(head.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.binary_cross_entropy_with_logits(head(feats).cls_logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_flagship_conv_budget_is_within_twice_yolov8n() -> None:
    """The latency target (flagship <= 2x our YOLOv8n at 640, bench/latency.py) needs its conv FLOPs near
    YOLOv8n's: the 96-channel dense head over 9 anchors of efpn_bs_mv2 is ~4x them."""
    def gflops(name: str) -> float:
        return efpn.count_gflops(build(get_config(name, 80), pretrained=False).eval(), 640)

    g_flag, g_v8, g_bs = gflops("efpn_mv2"), gflops("yolov8n"), gflops("efpn_bs_mv2")
    assert g_flag <= 2.0 * g_v8 < g_bs, (g_flag, g_v8, g_bs)
