"""SGDM's compiled dynamic branch (efpn.layers.native) computes what the PyTorch path computes, and is used only
where it may be: eval mode, no gradient recorded, float32 on CPU, a shared (or no) static bank."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from efpn.layers import native
from efpn.layers.sgdm import SGDM
from tests.layers.sgdm_helpers import perturb

needs_native = pytest.mark.skipif(native.sgdm_library() is None,
                                  reason="no C compiler here: SGDM runs its PyTorch path (tested elsewhere)")


def _randomised(m: SGDM, seed: int = 0) -> SGDM:
    perturb(m, seed=seed, scale=0.3)
    return m.eval()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls that the native kernel actually served (it returns None when it is unavailable)."""
    seen: list[int] = []
    real = native.sgdm_dynamic

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        if out is not None:
            seen.append(1)
        return out

    monkeypatch.setattr(native, "sgdm_dynamic", counting)
    return seen


@needs_native
@pytest.mark.parametrize("c_in, c_out, size, kwargs", [
    (16, 32, (41, 64), {}),                                       # odd height, G = 1
    (32, 16, (33, 33), {"groups": 4}),                            # several groups
    (16, 16, (20, 29), {"guided": False}),                        # unguided: K = D
    (16, 24, (17, 18), {"learned_razor": True}),                  # razor with its learned 1x1
    (8, 8, (23, 21), {"kernel_size": 5, "groups": 2}),            # 5x5 taps
    (8, 8, (12, 13), {"stride": 1, "groups": 2}),                 # stride 1
    (8, 8, (19, 19), {"stride": 3, "groups": 2}),                 # stride 3 (the generic strided gather)
    (16, 16, (200, 48), {}),                                      # many row chunks
    (16, 24, (17, 18), {"expansion": None}),                      # one 1x1 after the aggregation
    (8, 8, (15, 14), {"act_layer": nn.ReLU6, "groups": 2}),        # another activation
])
def test_native_equals_the_pytorch_path(calls: list[int], c_in: int, c_out: int, size: tuple[int, int],
                                         kwargs: dict) -> None:
    m = _randomised(SGDM(c_in, c_out, **kwargs))
    x = torch.randn(3, c_in, *size, generator=torch.Generator().manual_seed(1)) * 2.0
    with torch.no_grad():
        fast = m(x)
    assert len(calls) == 1
    ref = m(x).detach()  # gradient recorded: the PyTorch path
    assert len(calls) == 1
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)  # float sums in another order


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("size", [(40, 40), (42, 17), (9, 30)])  # 20, 21 and 5 output rows
def test_one_image_splits_its_rows_over_the_threads(calls: list[int], threads: int, size: tuple[int, int]) -> None:
    """One image: its rows are cut into as many chunks as keep every thread busy (at most 8 rows each); the
    result is the PyTorch path's for every thread count and row count."""
    m = _randomised(SGDM(16, 16, groups=2))
    x = torch.randn(1, 16, *size, generator=torch.Generator().manual_seed(2))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            fast = m(x)
    finally:
        torch.set_num_threads(before)
    assert len(calls) == 1
    torch.testing.assert_close(fast, m(x).detach(), rtol=1e-4, atol=1e-5)


@needs_native
def test_native_is_used_only_where_it_may_be(calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(1, 16, 24, 24)
    m = _randomised(SGDM(16, 16))
    m(x)  # gradients recorded (attribution needs them): PyTorch path
    with torch.no_grad():
        trained = copy.deepcopy(m).train()
        trained(x)  # training: batch statistics, PyTorch path
        m.path = "reference"
        m(x)
        m.path = "fast"
        _randomised(SGDM(16, 16, shared_bank=False))(x)  # a bank per channel: PyTorch path
        assert calls == []
        y = m(x)
        assert calls == [1]
        monkeypatch.setenv("EFPN_NATIVE", "0")
        torch.testing.assert_close(m(x), y, rtol=1e-4, atol=1e-5)  # switched off: the PyTorch path, same output
        assert calls == [1]


@needs_native
def test_native_under_inference_mode_with_a_model_built_there() -> None:
    """A model built inside ``torch.inference_mode`` (its parameters are inference tensors without version
    counters) runs, natively, to the same output."""
    x = torch.randn(2, 16, 30, 30)
    torch.manual_seed(0)
    with torch.inference_mode():
        m = _randomised(SGDM(16, 32))
        y = m(x)
    torch.manual_seed(0)
    ref = _randomised(SGDM(16, 32))(x).detach()
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_without_a_compiler_sgdm_warns_once_and_runs_its_pytorch_path(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path) -> None:
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("EFPN_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    m = _randomised(SGDM(8, 8, groups=2))
    x = torch.randn(1, 8, 16, 16)
    with pytest.warns(RuntimeWarning, match="native SGDM kernel is unavailable"):
        with torch.no_grad():
            y = m(x)
    torch.testing.assert_close(y, m(x).detach())
    with torch.no_grad():
        m(x)  # no second warning: the failure is remembered


@needs_native
@pytest.mark.parametrize("kwargs", [{}, {"guided": False}, {"groups": 4, "learned_razor": True}])
def test_native_internals_equal_the_pytorch_paths(calls: list[int], monkeypatch: pytest.MonkeyPatch,
                                                  kwargs: dict) -> None:
    """With ``return_internals`` the native kernel also returns D and K: the inspected maps (D, K, S, entropy,
    high-frequency energy) equal the PyTorch path's."""
    m = _randomised(SGDM(16, 24, **kwargs))
    x = torch.randn(2, 16, 27, 34, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y, got = m(x, return_internals=True)
        assert calls == [1]
        monkeypatch.setenv("EFPN_NATIVE", "0")
        y_ref, ref = m(x, return_internals=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for name in ("dynamic", "guided", "bank", "entropy", "hf_energy"):
        a, b = getattr(got, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@needs_native
def test_traces_and_exports_see_the_pytorch_ops(calls: list[int]) -> None:
    """A trace (as ONNX export makes) records the PyTorch ops, not the native call's output as a constant: the
    traced module follows a new input."""
    m = _randomised(SGDM(8, 8, groups=2))
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        traced = torch.jit.trace(m, x, check_trace=False)  # (the BN fold cache makes a second trace differ)
        assert calls == []
        other = torch.randn(1, 8, 16, 16)
        torch.testing.assert_close(traced(other), m(other), rtol=1e-4, atol=1e-5)
