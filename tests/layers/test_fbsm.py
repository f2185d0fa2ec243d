"""FBSM gate, its box-mask target (tiny boxes survive coarse strides) and the gate-mass statistic."""

from __future__ import annotations

import pytest
import torch

from efpn.layers.fbsm import FBSM, box_mask_target, gate_mass_inside


@pytest.mark.parametrize("bg", [False, True])
def test_fbsm_shapes_formula_and_internals(bg: bool) -> None:
    m = FBSM(8, hidden_channels=4, bg_suppression=bg)
    if m.delta is not None:
        with torch.no_grad():
            m.delta.fill_(0.5)
    x = torch.randn(2, 8, 7, 9)
    y, inner = m(x, return_internals=True)
    mask, logits = inner.mask, inner.logits
    assert y.shape == x.shape and mask.shape == (2, 1, 7, 9) and logits.shape == (2, 2, 7, 9)
    assert mask.min() >= 0 and mask.max() <= 1
    torch.testing.assert_close(mask, torch.sigmoid(logits[:, 1:2] - logits[:, :1]))
    expect = x * (1 + mask) - (0.5 * x * (1 - mask) if bg else 0)
    torch.testing.assert_close(y, expect)
    torch.testing.assert_close(m(x), y)


@pytest.mark.parametrize("bg", [False, True])
def test_fbsm_every_parameter_gets_gradient(bg: bool) -> None:
    m = FBSM(8, hidden_channels=4, bg_suppression=bg)
    m(torch.randn(2, 8, 5, 5)).square().sum().backward()
    names = {n for n, _ in m.named_parameters()}
    assert ("delta" in names) == bg and "beta" in names
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fbsm_bad_input() -> None:
    with pytest.raises(ValueError, match="has 4 channels"):
        FBSM(8)(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        FBSM(8)(torch.randn(8, 5, 5))


def test_box_mask_target_tiny_box_marks_its_centre_cell() -> None:
    # a 4 px box at stride 8: no cell centre (12, 20) lies in [13, 17], yet its centre cell (1, 1) is marked
    t = box_mask_target([torch.tensor([[13.0, 13.0, 17.0, 17.0]])], (4, 4), 8)
    expect = torch.zeros(1, 1, 4, 4)
    expect[0, 0, 1, 1] = 1
    torch.testing.assert_close(t, expect)


def test_box_mask_target_rasterises_clips_and_handles_empty() -> None:
    boxes = torch.tensor(
        [
            [16.0, 0.0, 32.0, 16.0],  # cell centres x 20, 28 and y 4, 12 inside: rows 0-1, cols 2-3
            [-10.0, 20.0, 6.0, 30.0],  # clipped to x [0, 6]: col 0 (centre 4); y centres 20, 28: rows 2-3
            [100.0, 100.0, 120.0, 120.0],  # wholly outside the 40 x 32 px grid: nothing
        ]
    )
    t = box_mask_target([boxes, torch.zeros(0, 4)], (4, 5), 8)
    expect = torch.zeros(2, 1, 4, 5)
    expect[0, 0, 0:2, 2:4] = 1
    expect[0, 0, 2:4, 0] = 1
    torch.testing.assert_close(t, expect)
    assert box_mask_target([], (4, 5), 8).shape == (0, 1, 4, 5)
    with pytest.raises(ValueError, match="xyxy"):
        box_mask_target([torch.zeros(3)], (4, 5), 8)


def test_gate_mass_inside_golden() -> None:
    mask = torch.zeros(3, 1, 2, 2)
    mask[0] = 1.0  # uniform gate, one of four cells inside -> 0.25
    mask[1, 0, 0, 0] = 3.0  # all mass on the box cell -> 1
    target = torch.zeros(3, 1, 2, 2)
    target[:, 0, 0, 0] = 1.0
    torch.testing.assert_close(gate_mass_inside(mask, target), torch.tensor([0.25, 1.0, 0.0]))
    with pytest.raises(ValueError, match="equal"):
        gate_mass_inside(mask, target[:, :, :1])
