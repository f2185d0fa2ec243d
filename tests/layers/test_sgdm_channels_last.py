"""SGDM at inference on channels-last tensors (what ``Detector`` runs on CPU): the native dynamic branch reads NHWC
as it lies, the pointwise MLP runs on the rows of the channels-last memory, and both compute what the contiguous
path and the reference path compute; the output stays channels-last for the convs after it. And in training
(``--channels-last``): the same step as on a contiguous x."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from efpn.layers import native
from efpn.layers.sgdm import SGDM
from tests.layers.sgdm_helpers import count_calls, perturb

needs_native = pytest.mark.skipif(native.sgdm_library() is None,
                                  reason="no C compiler here: SGDM runs its PyTorch path (tested elsewhere)")

CASES = [
    (16, 32, (41, 64), {}),                                   # G = 1, 16 channels: two 8-lane blocks
    (32, 16, (33, 33), {"groups": 4}),                        # 8 channels per group
    (24, 24, (17, 18), {}),                                   # 24 channels in one group: three blocks
    (12, 24, (15, 20), {"groups": 2}),                        # 6 channels per group: the scalar tail only
    (20, 20, (13, 12), {"groups": 2}),                        # 10 per group: one block and a tail
    (16, 16, (20, 29), {"guided": False}),                    # unguided: K = D
    (16, 24, (17, 18), {"learned_razor": True}),              # razor with its learned 1x1
    (8, 8, (23, 21), {"kernel_size": 5, "groups": 2}),        # 5x5 taps
    (8, 8, (12, 13), {"stride": 1, "groups": 2}),             # stride 1
    (8, 8, (19, 19), {"stride": 3, "groups": 2}),             # stride 3
    (16, 24, (17, 18), {"expansion": None}),                  # one 1x1 after the aggregation
    (8, 16, (15, 14), {"act_layer": nn.ReLU6, "groups": 2}),  # another activation
]


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _is_cl(x: torch.Tensor) -> bool:
    return native.channels_last(x)


@needs_native
@pytest.mark.parametrize("c_in, c_out, size, kwargs", CASES)
def test_the_native_branch_reads_channels_last_as_it_lies(c_in: int, c_out: int, size: tuple[int, int],
                                                          kwargs: dict) -> None:
    """dyn, D and K from a channels-last x equal those from the same x contiguous; dyn comes back channels-last."""
    m = perturb(SGDM(c_in, c_out, **kwargs), seed=3, scale=0.3).eval()
    x = torch.randn(2, c_in, *size, generator=torch.Generator().manual_seed(4)) * 2.0
    with torch.no_grad():
        ref = m._dynamic_native(x, True)
        out = m._dynamic_native(_cl(x), True)
    assert ref is not None and out is not None
    assert _is_cl(out[0]) and out[1].is_contiguous() and out[2].is_contiguous()
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # the razor sums in another order


@needs_native
@pytest.mark.parametrize("c_in, c_out, size, kwargs", CASES)
def test_channels_last_forward_equals_the_other_paths(c_in: int, c_out: int, size: tuple[int, int], kwargs: dict,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole module in eval mode: a channels-last x gives a channels-last y equal to the contiguous fast path,
    the reference path (module by module) and the PyTorch path with a gradient recorded; the MLP ran as row
    products (counted)."""
    m = perturb(SGDM(c_in, c_out, **kwargs), seed=5, scale=0.3).eval()
    x = torch.randn(2, c_in, *size, generator=torch.Generator().manual_seed(6))
    rows: list[int] = []
    real = SGDM._merge_rows

    def counting(self, *args):
        out = real(self, *args)
        rows.append(out is not None)
        return out

    monkeypatch.setattr(SGDM, "_merge_rows", counting)
    with torch.no_grad():
        y = m(_cl(x))
        contiguous = m(x)
        m.path = "reference"
        reference = m(_cl(x))
        m.path = "fast"
    assert rows == [True]
    assert _is_cl(y) and y.shape == contiguous.shape
    torch.testing.assert_close(y, contiguous, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y, m(x).detach(), rtol=1e-4, atol=1e-5)  # gradient recorded: the PyTorch path


@needs_native
def test_channels_last_internals_equal_the_contiguous_ones() -> None:
    """``return_internals`` on a channels-last x: the same D, K, S, entropy and Laplacian energy."""
    m = perturb(SGDM(16, 32, groups=2), seed=7, scale=0.3).eval()
    x = torch.randn(1, 16, 22, 26, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        y_cl, ins_cl = m(_cl(x), return_internals=True)
        y, ins = m(x, return_internals=True)
    torch.testing.assert_close(y_cl, y, rtol=1e-4, atol=1e-5)
    for name in ("dynamic", "guided", "bank", "entropy", "hf_energy"):
        torch.testing.assert_close(getattr(ins_cl, name), getattr(ins, name), rtol=1e-4, atol=1e-5, msg=name)


@needs_native
def test_kernels_over_seven_taps_run_contiguous() -> None:
    """The channels-last loop serves k <= 7; a 9x9 SGDM given a channels-last x runs the contiguous kernel (same
    result, a contiguous dyn) instead of failing."""
    m = perturb(SGDM(8, 8, kernel_size=9, groups=2), seed=9, scale=0.3).eval()
    x = torch.randn(1, 8, 20, 20, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        out = m._dynamic_native(_cl(x))
        ref = m._dynamic_native(x)
        y = m(_cl(x))
    assert out is not None and ref is not None and out.is_contiguous()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(y, m(x).detach(), rtol=1e-4, atol=1e-5)


@needs_native
@pytest.mark.parametrize("c_in, c_out, size, kwargs", [
    (16, 32, (21, 20), {}),                  # the deep layout's MLP
    (32, 64, (9, 11), {"groups": 4}),
    (16, 24, (17, 18), {"expansion": None}),  # one 1x1 after the aggregation
])
def test_channels_last_training_equals_contiguous(c_in: int, c_out: int, size: tuple[int, int], kwargs: dict,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Training on a channels-last x (``efpn train --channels-last``): the native dynamic branch runs on x reordered
    once, dyn returns channels-last for the MLP, the join runs channels-last; output, input gradient, parameter
    gradients and running statistics equal the contiguous step's, and y stays channels-last."""
    m = perturb(SGDM(c_in, c_out, **kwargs), seed=11, scale=0.3).train()
    ref = copy.deepcopy(m)
    x = torch.randn(2, c_in, *size, generator=torch.Generator().manual_seed(12))
    heads = count_calls(monkeypatch, native, "kernel_head_forward")
    xs = [_cl(x).requires_grad_(), x.clone().requires_grad_()]
    ys = [mod(t) for mod, t in zip((m, ref), xs)]
    assert heads["n"] == 2  # the native kernel head served both
    assert _is_cl(ys[0])
    grad = torch.randn(ys[1].shape, generator=torch.Generator().manual_seed(13))
    for y in ys:
        y.backward(grad)
    torch.testing.assert_close(ys[0], ys[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-3, atol=1e-4 * float(xs[1].grad.abs().max()))
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4 * float(q.grad.abs().max()) + 1e-6, msg=name)
    for (name, b), c in zip(m.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)


def test_channels_last_means_not_also_contiguous() -> None:
    """A tensor that is both (one channel, or 1x1 pixels) counts as contiguous: either kernel reads it the same."""
    assert native.channels_last(_cl(torch.randn(2, 4, 5, 6)))
    assert not native.channels_last(torch.randn(2, 4, 5, 6))
    assert not native.channels_last(_cl(torch.randn(2, 1, 5, 6)))
    assert not native.channels_last(_cl(torch.randn(2, 4, 1, 1)))
    assert not native.channels_last(torch.randn(4, 5, 6))
