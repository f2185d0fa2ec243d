"""SGDM: drop-in shapes, guided kernels, shift == unfold, internals, gradients, the paper's param budget."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from efpn.layers.conv import ConvBNAct
from efpn.layers.rdconv import apply_dynamic_kernels
from efpn.layers.sgdm import SGDM, StaticBank, guide_kernels, laplacian_energy, num_params, sgdm_overhead

#: Stride-2 3x3 convs SGDM replaces: YOLOv5n backbone + PAN, YOLOv8n backbone (c_in, c_out).
V5N = [(16, 32), (32, 64), (64, 128), (128, 256), (64, 64), (128, 128)]
V8N = V5N[:4]


def _randomise_bank(m: SGDM) -> None:
    assert m.bank is not None
    with torch.no_grad():
        for p in m.bank.parameters():
            p.normal_()


@pytest.mark.parametrize(("s", "hw", "out_hw"), [(2, (9, 11), (5, 6)), (2, (8, 8), (4, 4)), (1, (7, 5), (7, 5))])
def test_sgdm_is_a_drop_in_for_convbnact(s: int, hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    x = torch.randn(2, 8, *hw)
    y = SGDM(8, 12, stride=s, groups=2)(x)
    assert y.shape == ConvBNAct(8, 12, 3, s)(x).shape == (2, 12, *out_hw)


def test_static_bank_skeleton_is_acnet_sum() -> None:
    bank = StaticBank(2, 3)
    with torch.no_grad():
        bank.square.zero_()
        bank.horizontal.copy_(torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3).expand(2, 1, 3))
        bank.vertical.copy_(torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1).expand(2, 3, 1))
    expect = torch.tensor([[0, 10, 0], [1, 22, 3], [0, 30, 0]], dtype=torch.float32).flatten()
    torch.testing.assert_close(bank(), expect.expand(2, 9))


def test_guided_kernels_bounded_and_neutral_at_init() -> None:
    m = SGDM(8, 8, groups=2)
    x = torch.randn(2, 8, 9, 7)
    _, inner = m(x, return_internals=True)
    d, k = inner.dynamic, inner.guided
    torch.testing.assert_close(d.sum(2), torch.ones(2, 2, 5, 4))
    # the box bank at init gives K = D: training starts as plain RDConv
    torch.testing.assert_close(k, d, atol=1e-5, rtol=1e-5)
    _randomise_bank(m)
    _, inner = m(x, return_internals=True)
    k = inner.guided
    assert (k < 0).any()  # a signed skeleton makes signed kernels
    abs_sum = k.abs().sum(2)
    assert abs_sum.max() <= 1.0
    torch.testing.assert_close(abs_sum, torch.ones_like(abs_sum), atol=1e-4, rtol=0)
    torch.testing.assert_close(k, guide_kernels(inner.dynamic, inner.bank, m.eps))


@pytest.mark.parametrize("variant", [{}, {"shared_bank": False}, {"guided": False}, {"learned_razor": True}])
@pytest.mark.parametrize(("s", "hw"), [(2, (9, 7)), (1, (6, 5))])
def test_sgdm_shift_equals_unfold_forward(variant: dict, s: int, hw: tuple[int, int]) -> None:
    a = SGDM(8, 6, stride=s, groups=2, impl="shift", **variant)
    b = SGDM(8, 6, stride=s, groups=2, impl="unfold", **variant)
    if a.bank is not None:
        _randomise_bank(a)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, *hw)
    torch.testing.assert_close(a(x), b(x))


def test_unshared_bank_equals_explicit_per_channel_kernels() -> None:
    m = SGDM(8, 6, groups=2, shared_bank=False)
    _randomise_bank(m)
    x = torch.randn(2, 8, 9, 9)
    y, inner = m(x, return_internals=True)
    k = inner.guided
    assert k.shape == (2, 8, 9, 5, 5) and inner.bank.shape == (8, 9)
    assert k.abs().sum(2).max() <= 1.0
    d, bank = inner.dynamic, inner.bank
    for c in range(8):  # K[c] = S[c] ⊙ D[g(c)] / Σ|...|, straight from the formula
        torch.testing.assert_close(k[:, c], guide_kernels(d[:, c // 4 : c // 4 + 1], bank[c : c + 1], m.eps)[:, 0])
    dyn = apply_dynamic_kernels(x, k, 3, 2, "unfold")  # one group per channel: the per-channel kernels
    torch.testing.assert_close(y, m.act(m.pw(dyn) + m.static(x)))


def test_ablations_change_outputs_and_parameters() -> None:
    x = torch.randn(2, 8, 9, 9)
    torch.manual_seed(1)
    guided = SGDM(8, 6, groups=2)
    _randomise_bank(guided)
    torch.manual_seed(1)
    plain = SGDM(8, 6, groups=2, guided=False)
    assert not torch.allclose(guided(x), plain(x), atol=1e-4)
    bank_params = 9 + 3 + 3
    assert num_params(guided) - num_params(plain) == 2 * bank_params
    assert num_params(SGDM(8, 6, groups=2, shared_bank=False)) - num_params(plain) == 8 * bank_params
    assert num_params(SGDM(8, 6, groups=2, expansion=None)) < num_params(plain)


def test_internals_match_plain_forward() -> None:
    m = SGDM(8, 6, groups=2).eval()
    x = torch.randn(1, 8, 9, 7)
    y, inner = m(x, return_internals=True)
    torch.testing.assert_close(m(x), y)
    assert all(t is not None for t in (inner.dynamic, inner.guided, inner.bank, inner.entropy, inner.hf_energy))
    assert inner.bank.shape == (2, 9)
    assert inner.entropy.shape == inner.hf_energy.shape == (1, 2, 5, 4)
    assert inner.entropy.max() <= math.log(9) + 1e-5
    torch.testing.assert_close(inner.hf_energy, laplacian_energy(inner.guided, 3))
    _, unguided = SGDM(8, 6, groups=2, guided=False)(x, return_internals=True)
    assert unguided.bank is None
    torch.testing.assert_close(unguided.guided, unguided.dynamic)


def test_laplacian_energy_golden() -> None:
    delta = torch.zeros(1, 1, 9, 1, 1)
    delta[:, :, 4] = 1  # centre -4, four neighbours +1
    box = torch.full((1, 1, 9, 1, 1), 1 / 9)  # corners -2/9, edges -1/9, centre 0
    torch.testing.assert_close(laplacian_energy(delta, 3), torch.full((1, 1, 1, 1), math.sqrt(20)))
    torch.testing.assert_close(laplacian_energy(box, 3), torch.full((1, 1, 1, 1), math.sqrt(20) / 9))
    k = torch.randn(1, 1, 3, 3)
    lap = torch.tensor([[[[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]]])
    ref = F.conv2d(k, lap, padding=1).norm()  # zero-padded 5-point Laplacian of the kernel image
    torch.testing.assert_close(laplacian_energy(k.view(1, 1, 9, 1, 1), 3).view(()), ref)


@pytest.mark.parametrize("variant", [{}, {"shared_bank": False}, {"guided": False, "learned_razor": True}])
def test_every_parameter_gets_gradient(variant: dict) -> None:
    m = SGDM(8, 6, groups=2, **variant)
    if m.bank is not None:
        _randomise_bank(m)
    m(torch.randn(2, 8, 9, 9)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_input() -> None:
    m = SGDM(8, 6, groups=2)
    with pytest.raises(ValueError, match="has 4 channels but the module was built for 8"):
        m(torch.randn(1, 4, 9, 9))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(8, 9, 9))
    with pytest.raises(ValueError, match="divide"):
        SGDM(12, 6, groups=8)


def test_overhead_formula() -> None:
    # (16, 32): G = 1, hidden = 44: pw 16*44 + 2*44 + 44*32 + 2*32, channel (16+1)*9, spatial 2*9*9 + BN 2*9,
    # bank 15; the static ConvBNAct cancels.
    assert sgdm_overhead(16, 32) == 16 * 44 + 88 + 44 * 32 + 64 + 17 * 9 + 162 + 18 + 15
    assert sgdm_overhead(16, 32) == num_params(SGDM(16, 32)) - num_params(ConvBNAct(16, 32, 3, 2))


def test_parameter_budget_matches_paper() -> None:
    """Paper: +0.33 M params on YOLOv5n, +0.19 M on YOLOv8n; we must be within ±25 %."""
    v5 = sum(sgdm_overhead(ci, co) for ci, co in V5N)
    v8 = sum(sgdm_overhead(ci, co) for ci, co in V8N)
    assert 0.75 * 0.33e6 <= v5 <= 1.25 * 0.33e6, v5
    assert 0.75 * 0.19e6 <= v8 <= 1.25 * 0.19e6, v8
