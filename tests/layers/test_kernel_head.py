"""efpn.layers.kernel_head and the native razor statistics: SGDM's training-mode kernels (BatchNorm on batch
statistics, the channel logits, the softmax, the static guidance) in one native pass each way compute what the
PyTorch modules compute — K, every gradient, the running statistics — and are used only where they may be."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from efpn.layers import kernel_head, native
from efpn.layers.rdconv import razor_stats
from efpn.layers.sgdm import SGDM, guide_kernels
from tests.layers.sgdm_helpers import count_calls, perturb

needs_native = pytest.mark.skipif(native.sgdm_library() is None,
                                  reason="no C compiler here: SGDM runs its PyTorch modules")


def _bn(c: int, seed: int, momentum: float | None = 0.03) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=1e-3, momentum=momentum).train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # away from the defaults, so a swapped gamma/beta shows
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.rand(c, generator=gen) - 0.5)
    return bn


def _modules(s: torch.Tensor, c: torch.Tensor, bn: nn.BatchNorm2d, bank: torch.Tensor | None, groups: int):
    """The reference: SGDM's generator tail and guidance as PyTorch modules."""
    n, ch, h, w = s.shape
    d = (bn(s) + c.view(n, ch, 1, 1)).view(n, groups, ch // groups, h, w).softmax(2)
    return d if bank is None else guide_kernels(d, bank)


def _run(fn, s: torch.Tensor, c: torch.Tensor, bn: nn.BatchNorm2d, bank: torch.Tensor | None):
    """K and the gradients of s, c, gamma, beta (and the bank) for an output gradient that differs everywhere."""
    s, c = s.clone().requires_grad_(), c.clone().requires_grad_()
    bank = None if bank is None else bank.clone().requires_grad_()
    k = fn(s, c, bn, bank)
    k.backward(torch.linspace(-2.0, 3.0, k.numel()).view_as(k) * torch.cos(torch.arange(k.numel()).view_as(k)))
    grads = [s.grad, c.grad, bn.weight.grad, bn.bias.grad] + ([bank.grad] if bank is not None else [])
    return k.detach(), grads, [bn.running_mean.clone(), bn.running_var.clone()]


def _assert_same(a, b) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    for u, v in zip(a[1], b[1], strict=True):  # sums in another order: relative to the tensor's scale
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5 * float(v.abs().max()) + 1e-7)
    for u, v in zip(a[2], b[2], strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


def _case(n: int, groups: int, kk: int, h: int, w: int, guided: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(n, groups * kk, h, w, generator=gen) * 2 + 0.5
    c = torch.randn(n, groups * kk, generator=gen)
    bank = torch.randn(groups, kk, generator=gen) if guided else None
    if bank is not None:
        bank[0, 1] = 0.0  # a zero tap: |S D| has no slope there (sign 0), as abs's gradient
    return s, c, bank


@needs_native
@pytest.mark.parametrize("n, groups, kk, h, w", [
    (2, 1, 9, 13, 11),   # one group, planes not a multiple of the 8 lanes
    (3, 8, 9, 5, 4),     # eight groups
    (2, 2, 25, 7, 9),    # 5x5 taps
    (1, 4, 9, 1, 2),     # two values per channel, one image
    (4, 2, 9, 16, 16),   # whole 8-lane blocks only
])
@pytest.mark.parametrize("guided", [True, False])
def test_kernel_head_equals_the_modules(n: int, groups: int, kk: int, h: int, w: int, guided: bool) -> None:
    s, c, bank = _case(n, groups, kk, h, w, guided, seed=n * 100 + h)
    bn_fused, bn_ref = _bn(groups * kk, 1), _bn(groups * kk, 1)
    assert kernel_head.applies(bn_fused, s, bank, kk)
    fused = _run(lambda a, b, bn, k: kernel_head.guided_kernels(a, b, bn, k, 1e-6, groups), s, c, bn_fused, bank)
    _assert_same(fused, _run(lambda a, b, bn, k: _modules(a, b, bn, k, groups), s, c, bn_ref, bank))
    assert int(bn_fused.num_batches_tracked) == 1


@needs_native
def test_cumulative_running_average_and_results_independent_of_threads() -> None:
    s, c, bank = _case(3, 2, 9, 20, 19, True)
    runs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            bn = _bn(18, 2, momentum=None)
            runs.append(_run(lambda a, b, m, k: kernel_head.guided_kernels(a, b, m, k, 1e-6, 2), s, c, bn, bank))
    finally:
        torch.set_num_threads(before)
    ref = _run(lambda a, b, m, k: _modules(a, b, m, k, 2), s, c, _bn(18, 2, momentum=None), bank)
    _assert_same(runs[0], ref)
    assert torch.equal(runs[0][0], runs[1][0]) and all(torch.equal(u, v) for u, v in zip(runs[0][1], runs[1][1]))


@needs_native
def test_backward_without_the_library_runs_the_same_arithmetic_in_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    s, c, bank = _case(2, 2, 9, 9, 10, True)
    fused = _run(lambda a, b, m, k: kernel_head.guided_kernels(a, b, m, k, 1e-6, 2), s, c, _bn(18, 3), bank)
    real = kernel_head.guided_kernels

    def forward_then_switch_off(*args):
        k = real(*args)
        monkeypatch.setattr(native, "kernel_head_backward", lambda *a, **kw: None)  # as with EFPN_NATIVE=0
        return k

    fallback = _run(lambda a, b, m, k: forward_then_switch_off(a, b, m, k, 1e-6, 2), s, c, _bn(18, 3), bank)
    _assert_same(fallback, fused)


def test_used_only_where_it_computes_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    x, bn = torch.randn(2, 4, 6, 6), _bn(9, 0)
    assert kernel_head.applies(bn, x, None, 9)
    assert not kernel_head.applies(bn, x, None, 81)  # 9x9 kernels: more taps than the native kernels hold
    assert not kernel_head.applies(_bn(9, 0).eval(), x, None, 9)  # running statistics: the modules
    assert not kernel_head.applies(bn, x.double(), None, 9)
    assert not kernel_head.applies(nn.SyncBatchNorm(9).train(), x, None, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernel_head.applies(bn, x, None, 9)  # the razor conv's output would be bfloat16
    monkeypatch.setenv("EFPN_NATIVE", "0")
    assert not kernel_head.applies(bn, x, None, 9)


@needs_native
@pytest.mark.parametrize("guided", [True, False])
def test_sgdm_training_serves_its_kernels_natively_and_equals_the_reference_path(
        monkeypatch: pytest.MonkeyPatch, guided: bool) -> None:
    torch.manual_seed(0)
    fast = SGDM(16, 32, guided=guided).train()
    perturb(fast, seed=1, scale=0.3)
    reference = copy.deepcopy(fast)
    reference.path = "reference"
    calls = count_calls(monkeypatch, native, "kernel_head_forward")
    x = torch.randn(2, 16, 21, 18, generator=torch.Generator().manual_seed(4))
    outs = []
    for m in (fast, reference):
        xr = x.clone().requires_grad_()
        y = m(xr)
        y.backward(torch.linspace(-1.0, 1.0, y.numel()).view_as(y))
        outs.append([y.detach(), xr.grad, *(p.grad for p in m.parameters()), *m.buffers()])
    assert calls["n"] == 1  # the fast path only
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-4 * float(b.abs().max().float()) + 1e-7)


@needs_native
@pytest.mark.parametrize("shape", [(2, 5, 50, 50), (1, 1, 3, 7), (3, 16, 9, 300)])  # 2 chunks, one channel, wide
def test_native_razor_statistics_equal_the_pytorch_reductions(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))) * 3
    r, gap = native.razor_forward(x)  # type: ignore[misc]
    torch.testing.assert_close(r, torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1))
    torch.testing.assert_close(gap, x.mean((2, 3), keepdim=True))
    r2, gap2 = razor_stats(x.clone().requires_grad_())  # the autograd Function's forward serves it too
    assert torch.equal(r2.detach(), r) and torch.equal(gap2.detach(), gap)


@needs_native
def test_eps_zero_keeps_gradients_finite_on_a_tail_of_pixels() -> None:
    """With eps = 0 the padded lanes past the last whole 8 pixels must not divide by zero (they once turned every
    gradient into NaN through the per-channel sums)."""
    s, c, bank = _case(2, 2, 9, 5, 5, True)  # 25 pixels: a tail of 1
    bank = bank.abs() + 0.1  # no zero tap: the reference itself is finite at eps = 0
    fused = _run(lambda a, b, m, k: kernel_head.guided_kernels(a, b, m, k, 0.0, 2), s, c, _bn(18, 5), bank)
    ref = _run(lambda a, b, m, k: guide_kernels((m(a) + b.view(2, 18, 1, 1)).view(2, 2, 9, 5, 5).softmax(2), k,
                                                eps=0.0), s, c, _bn(18, 5), bank)
    assert all(torch.isfinite(g).all() for g in fused[1])
    _assert_same(fused, ref)


@needs_native
def test_sgdm_with_kernels_larger_than_7x7_trains_on_the_modules() -> None:
    m = SGDM(16, 16, kernel_size=9).train()
    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@needs_native
def test_native_razor_max_propagates_nan_as_amax() -> None:
    x = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    x[0, 1, 0, 0] = float("nan")
    r, _ = native.razor_forward(x)  # type: ignore[misc]
    assert torch.isnan(r[0, 1, 0, 0]) and torch.isfinite(r[0, 1, 1, 1])
