"""The native training kernels as custom operators (efpn.layers.native_ops): registered correctly (schema, shape-only
implementations that match the real ones), and used inside ``torch.compile``, where the ctypes calls could not be."""

from __future__ import annotations

import copy

import pytest
import torch

from efpn.layers import native, native_ops
from efpn.layers.sgdm import SGDM
from tests.layers.sgdm_helpers import perturb

needs_native = pytest.mark.skipif(native.sgdm_library() is None,
                                  reason="no C compiler here: the operators need the native library")


@needs_native
@pytest.mark.parametrize("need", [(True, True), (True, False), (False, True)])
def test_operators_pass_torch_library_opcheck(need: tuple[bool, bool]) -> None:
    """Schema, fake (shape-only) implementation against the real one, and dispatch under AOTAutograd."""
    g = torch.Generator().manual_seed(0)
    x, kernels = torch.randn(2, 8, 11, 10, generator=g), torch.randn(2, 2, 9, 6, 5, generator=g)
    grad_out = torch.randn(2, 8, 6, 5, generator=g)
    torch.library.opcheck(torch.ops.efpn.aggregate.default, (x, kernels, 3, 2))
    torch.library.opcheck(torch.ops.efpn.aggregate_backward.default, (x, kernels, grad_out, 3, 2, *need))
    peak = x.amax(1, keepdim=True)
    grad_r, grad_gap = torch.randn(2, 2, 11, 10, generator=g), torch.randn(2, 8, 1, 1, generator=g)
    for args in ((grad_r, grad_gap), (grad_r, None), (None, grad_gap)):
        torch.library.opcheck(torch.ops.efpn.razor_backward.default, (x, peak, *args))


@needs_native
def test_aggregate_backward_gives_none_for_a_gradient_not_asked_for() -> None:
    x, kernels = torch.randn(1, 4, 9, 9), torch.rand(1, 1, 9, 5, 5)
    grad_out = torch.randn(1, 4, 5, 5)
    grad_x, grad_k = native_ops.aggregate_backward(x, kernels, grad_out, 3, 2, True, False)
    assert grad_k is None and grad_x is not None and grad_x.shape == x.shape
    both = native.aggregate_backward(x, kernels, grad_out, 3, 2, True, True)
    assert both is not None
    torch.testing.assert_close(grad_x, both[0])


def test_operators_are_not_offered_to_traces_or_other_devices_and_dtypes() -> None:
    x = torch.randn(1, 4, 6, 6)
    assert not native_ops.usable(x.double())
    assert not native_ops.usable(x, torch.randn(1, 1, 9, 3, 3, dtype=torch.float16))
    seen = []

    def probe(t: torch.Tensor) -> torch.Tensor:
        seen.append(native_ops.usable(t))
        return t * 2

    torch.jit.trace(probe, x, check_trace=False)
    assert seen == [False]  # a TorchScript trace cannot record a custom operator
    assert native_ops.usable(x) == (native.sgdm_library() is not None)  # outside the trace: wherever it is built


@needs_native
def test_compiled_sgdm_training_runs_the_native_kernels_and_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside ``torch.compile`` the aggregation, its backward and the razor's backward are the native kernels (the
    operators' real implementations run), and the compiled step computes the eager one's output and gradients."""
    served = {"aggregate": 0, "aggregate_backward": 0, "razor_backward": 0}
    for name in served:
        real = getattr(native, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            served[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(native, name, counting)
    torch._dynamo.reset()
    eager = SGDM(16, 24).train()
    perturb(eager, seed=1, scale=0.3)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend="aot_eager", fullgraph=True, dynamic=False)
    x = torch.randn(2, 16, 20, 18, generator=torch.Generator().manual_seed(2))

    def step(fn, module: torch.nn.Module) -> list[torch.Tensor]:
        xr = x.clone().requires_grad_()
        y = fn(xr)
        (y * torch.linspace(-1.0, 1.0, y.numel()).view_as(y)).sum().backward()
        return [y.detach(), xr.grad, *(p.grad for p in module.parameters())]  # type: ignore[list-item]

    got = step(compiled, compiled_module)
    assert served == {"aggregate": 1, "aggregate_backward": 1, "razor_backward": 1}, served
    want = step(eager, eager)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    torch._dynamo.reset()
