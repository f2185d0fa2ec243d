"""The native training kernels (efpn.layers.native: aggregation, its backward, the razor statistics' backward) compute
what the PyTorch arithmetic computes, forward and backward, and are used only where they may be."""

from __future__ import annotations

import pytest
import torch

from efpn.layers import native
from efpn.layers.rdconv import RDConv, apply_dynamic_kernels, output_size, razor_stats
from efpn.layers.sgdm import SGDM
from tests.layers.sgdm_helpers import perturb

needs_native = pytest.mark.skipif(native.sgdm_library() is None,
                                  reason="no C compiler here: rdconv runs its PyTorch arithmetic (tested elsewhere)")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the calls each native training kernel actually served (each returns None when it cannot)."""
    seen = {"aggregate": 0, "aggregate_backward": 0, "razor_backward": 0}
    for name in seen:
        real = getattr(native, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            out = _real(*args, **kwargs)
            seen[_name] += out is not None
            return out

        monkeypatch.setattr(native, name, counting)
    return seen


def _aggregate_grads(x: torch.Tensor, kernels: torch.Tensor, k: int, s: int, impl: str = "shift"):
    x, kernels = x.clone().requires_grad_(), kernels.clone().requires_grad_()
    y = apply_dynamic_kernels(x, kernels, k, s, impl)  # type: ignore[arg-type]
    y.backward(torch.linspace(-1.0, 1.0, y.numel()).view_as(y))  # a gradient that differs at every output
    return y.detach(), x.grad, kernels.grad


@needs_native
@pytest.mark.parametrize("n, c, g, h, w, k, s", [
    (2, 16, 1, 13, 17, 3, 2),   # odd sizes, one group (SGDM's narrow stride-4 layer)
    (3, 32, 8, 20, 20, 3, 2),   # eight groups
    (1, 8, 2, 9, 7, 3, 1),      # stride 1
    (2, 12, 3, 11, 10, 5, 3),   # 5x5 taps, stride 3
    (2, 4, 4, 6, 6, 1, 1),      # 1x1: a per-pixel scale
    (1, 16, 2, 2, 3, 3, 2),     # smaller than the kernel: most taps read padding
    (1, 4, 1, 1, 1, 3, 2),      # one pixel
    (2, 16, 2, 200, 150, 3, 2), # two bands of output rows (the halo rows between them read and written once)
    (1, 4, 2, 300, 60, 5, 1),   # five bands, a two-row halo
    (1, 2, 1, 6, 8300, 3, 2),   # rows wider than a band: one output row per band
    (1, 4, 2, 7, 9, 1, 2),      # stride over the kernel: components no tap reads get a zero gradient
    (1, 4, 1, 9, 10, 3, 4),
])
def test_native_aggregation_equals_the_pytorch_shift_path_and_unfold(
        served: dict[str, int], monkeypatch: pytest.MonkeyPatch, n: int, c: int, g: int, h: int, w: int, k: int,
        s: int) -> None:
    gen = torch.Generator().manual_seed(n * 100 + c + k)
    x = torch.randn(n, c, h, w, generator=gen)
    kernels = torch.randn(n, g, k * k, output_size(h, k, s), output_size(w, k, s), generator=gen)
    fast = _aggregate_grads(x, kernels, k, s)
    assert served["aggregate"] == 1 and served["aggregate_backward"] == 1
    monkeypatch.setenv("EFPN_NATIVE", "0")
    shift = _aggregate_grads(x, kernels, k, s)
    unfold = _aggregate_grads(x, kernels, k, s, "unfold")
    assert served["aggregate"] == 1  # switched off: not served again
    for a, b, r in zip(fast, shift, unfold, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


@needs_native
def test_native_aggregation_rejects_kernels_of_the_wrong_output_size() -> None:
    """The kernels' (H', W') must be the output size of padding k // 2; any other is refused, never half-computed
    (the backward writes grad_x whole only for that size)."""
    x, go = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 1, 1)
    with pytest.raises(RuntimeError, match="rejected its arguments"):
        native.aggregate(x, torch.rand(1, 1, 9, 1, 1), 3, 2)
    with pytest.raises(RuntimeError, match="rejected its arguments"):
        native.aggregate_backward(x, torch.rand(1, 1, 9, 1, 1), go, 3, 2, True, True)


@needs_native
def test_native_aggregation_backward_gives_only_the_gradients_asked_for(served: dict[str, int]) -> None:
    x, kernels = torch.randn(2, 8, 10, 10), torch.randn(2, 2, 9, 5, 5)
    xg = x.clone().requires_grad_()
    apply_dynamic_kernels(xg, kernels, 3, 2).sum().backward()  # kernels constant: grad_x only
    k_only = kernels.clone().requires_grad_()
    apply_dynamic_kernels(x, k_only, 3, 2).sum().backward()  # x constant: grad_kernels only
    ones = _ones_grads(x, kernels)
    torch.testing.assert_close(xg.grad, ones[0])
    torch.testing.assert_close(k_only.grad, ones[1])
    assert served["aggregate_backward"] == 2


def _ones_grads(x: torch.Tensor, kernels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, kernels = x.clone().requires_grad_(), kernels.clone().requires_grad_()
    apply_dynamic_kernels(x, kernels, 3, 2, "unfold").sum().backward()
    return x.grad, kernels.grad  # type: ignore[return-value]


@needs_native
@pytest.mark.parametrize("which", ["both", "razor", "gap"])
def test_native_razor_backward_equals_the_pytorch_arithmetic(served: dict[str, int], monkeypatch: pytest.MonkeyPatch,
                                                              which: str) -> None:
    x = torch.randn(3, 16, 21, 18, generator=torch.Generator().manual_seed(3))
    x[:, 2:5, :4] = 6.0  # three channels tie for the max there (ReLU6 saturating): they share its gradient

    def grad(use_native: bool) -> torch.Tensor:
        monkeypatch.setenv("EFPN_NATIVE", "1" if use_native else "0")
        xr = x.clone().requires_grad_()
        r, gap = razor_stats(xr)
        wr = torch.linspace(-1.0, 1.0, r.numel()).view_as(r)
        loss = {"both": (r * wr).sum() + (gap * 3.0).sum(), "razor": (r * wr).sum(), "gap": (gap * 3.0).sum()}[which]
        loss.backward()
        return xr.grad  # type: ignore[return-value]

    fast = grad(True)
    assert served["razor_backward"] == 1
    torch.testing.assert_close(fast, grad(False), rtol=1e-6, atol=1e-7)
    if which != "gap":  # the tied pixels' max gradient split three ways
        share = fast[0, 2:5, 0, 0] - fast[0, 5:8, 0, 0].min()
        assert torch.allclose(share, share[0].expand(3))


@needs_native
def test_sgdm_training_step_is_the_same_with_and_without_native_kernels(served: dict[str, int],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    m = SGDM(16, 32).train()
    perturb(m, seed=0, scale=0.3)
    x = torch.randn(2, 16, 24, 20, generator=torch.Generator().manual_seed(0))

    def step(use_native: str) -> list[torch.Tensor]:
        monkeypatch.setenv("EFPN_NATIVE", use_native)
        m.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_()
        y = m(xr)
        (y * torch.linspace(-1.0, 1.0, y.numel()).view_as(y)).sum().backward()
        return [y.detach(), xr.grad, *(p.grad for p in m.parameters())]  # type: ignore[list-item]

    fast = step("1")
    assert served == {"aggregate": 1, "aggregate_backward": 1, "razor_backward": 1}
    for a, b in zip(fast, step("0"), strict=True):  # sums over every pixel in another order: tolerance to scale
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


@needs_native
def test_native_kernels_stay_out_of_traces_and_other_dtypes(served: dict[str, int]) -> None:
    m = RDConv(8, stride=2).eval()
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        traced = torch.jit.trace(m, x)
        other = torch.randn(1, 8, 12, 12)
        torch.testing.assert_close(traced(other), m(other))  # the trace recorded the arithmetic, not a constant
    served_before = served["aggregate"]
    xd = x.double().requires_grad_()
    m.double()(xd).sum().backward()  # float64: PyTorch arithmetic
    assert served["aggregate"] == served_before and served["aggregate_backward"] == 0
    assert xd.grad is not None and torch.isfinite(xd.grad).all()


@needs_native
def test_a_native_forward_still_has_a_backward_when_the_library_is_switched_off_before_it(
        served: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    x, kernels = torch.randn(2, 8, 11, 10), torch.randn(2, 2, 9, 6, 5)
    ref = _aggregate_grads(x, kernels, 3, 2, "unfold")
    xr, kr = x.clone().requires_grad_(), kernels.clone().requires_grad_()
    y = apply_dynamic_kernels(xr, kr, 3, 2)
    assert served["aggregate"] == 1
    monkeypatch.setenv("EFPN_NATIVE", "0")  # the backward runs the PyTorch arithmetic from the x the forward kept
    y.backward(torch.linspace(-1.0, 1.0, y.numel()).view_as(y))
    assert served["aggregate_backward"] == 0
    for a, b in zip((y.detach(), xr.grad, kr.grad), ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
