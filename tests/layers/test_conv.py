"""ConvBNAct / autopad: shapes, YOLO conventions, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from efpn.layers.conv import ConvBNAct, autopad, check_nchw


def test_autopad_golden() -> None:
    assert [autopad(1), autopad(3), autopad(5), autopad(3, d=2), autopad(6, 2)] == [0, 1, 2, 2, 2]


@pytest.mark.parametrize(
    ("k", "s", "hw", "out_hw"), [(3, 1, (7, 9), (7, 9)), (3, 2, (7, 9), (4, 5)), (1, 2, (8, 8), (4, 4))]
)
def test_convbnact_shapes(k: int, s: int, hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    m = ConvBNAct(4, 6, k, s)
    y = m(torch.randn(2, 4, *hw))
    assert y.shape == (2, 6, *out_hw)


def test_convbnact_yolo_conventions_and_params() -> None:
    m = ConvBNAct(16, 32, 3, 2)
    assert isinstance(m.conv, nn.Conv2d) and m.conv.bias is None
    assert (m.bn.eps, m.bn.momentum) == (1e-3, 0.03)
    assert isinstance(m.act, nn.SiLU)
    assert sum(p.numel() for p in m.parameters()) == 16 * 32 * 9 + 2 * 32
    grouped = ConvBNAct(16, 32, 3, g=4)
    assert sum(p.numel() for p in grouped.parameters()) == 16 * 32 * 9 // 4 + 2 * 32


def test_convbnact_without_activation_is_affine_bn_of_conv() -> None:
    m = ConvBNAct(3, 5, 3, act_layer=None).eval()
    assert isinstance(m.act, nn.Identity)
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(m(x), m.bn(m.conv(x)))
    with torch.no_grad():  # a negative output survives, which SiLU would have bent
        m.bn.bias.fill_(-5.0)
    assert (m(x) < -1).any()


def test_check_nchw_messages() -> None:
    with pytest.raises(ValueError, match="4-D"):
        check_nchw(torch.zeros(3, 4, 4), 3, "Block")
    with pytest.raises(ValueError, match="has 2 channels but the module was built for 3"):
        check_nchw(torch.zeros(1, 2, 4, 4), 3, "Block")
    check_nchw(torch.zeros(1, 2, 4, 4), None, "Block")
