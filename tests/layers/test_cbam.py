"""CBAM and CBAMDown: shapes, attention ranges, internals agree with the output, gradients, bad input."""

from __future__ import annotations

import pytest
import torch

from efpn.layers.cbam import CBAM, CBAMDown
from efpn.layers.conv import ConvBNAct


def test_cbam_shapes_ranges_and_reconstruction() -> None:
    m = CBAM(16, reduction=4, spatial_kernel=3)
    x = torch.randn(2, 16, 7, 5)
    y, inner = m(x, return_internals=True)
    assert y.shape == x.shape
    ca, sa = inner.channel, inner.spatial
    assert ca.shape == (2, 16, 1, 1) and sa.shape == (2, 1, 7, 5)
    assert ca.min() > 0 and ca.max() < 1 and sa.min() > 0 and sa.max() < 1
    torch.testing.assert_close(y, x * ca * sa)
    torch.testing.assert_close(m(x), y)


def test_cbam_every_parameter_gets_gradient() -> None:
    m = CBAMDown(4, 8, reduction=2)  # 4 hidden units: a single one can be a dead ReLU for the whole batch
    m(torch.randn(2, 4, 9, 9)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cbamdown_is_a_drop_in_for_the_stride2_conv() -> None:
    x = torch.randn(1, 4, 9, 11)
    assert CBAMDown(4, 8)(x).shape == ConvBNAct(4, 8, 3, 2)(x).shape == (1, 8, 5, 6)
    assert CBAMDown(4, 8, stride=1)(x).shape == (1, 8, 9, 11)
    _, inner = CBAMDown(4, 8)(x, return_internals=True)
    assert inner.spatial.shape == (1, 1, 5, 6)


def test_cbam_bad_input() -> None:
    with pytest.raises(ValueError, match="channels"):
        CBAM(8)(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        CBAMDown(4, 8)(torch.randn(4, 5, 5))
    with pytest.raises(ValueError, match="odd"):
        CBAM(8, spatial_kernel=4)
