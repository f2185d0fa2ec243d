"""SGDM's fast path computes the reference path's function: forward, backward, BatchNorm statistics, every variant."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from efpn.layers.conv import ConvBNAct
from efpn.layers.folding import conv_bn_pair, folded_conv_bn, pointwise_unit
from efpn.layers.sgdm import SGDM, set_sgdm_path
from tests.layers.sgdm_helpers import perturb

VARIANTS: dict[str, dict] = {
    "guided": {},
    "unshared": {"shared_bank": False},
    "unguided": {"guided": False},
    "single_pw": {"expansion": None},
    "relu6_given_static": {"act_layer": nn.ReLU6, "expansion": None},
}


def _build(name: str, stride: int) -> SGDM:
    kwargs = dict(VARIANTS[name])
    if name == "relu6_given_static":  # a pretrained-style static branch: Sequential(depthwise conv, BN)
        kwargs["static"] = nn.Sequential(nn.Conv2d(8, 8, 3, stride, 1, groups=8, bias=False), nn.BatchNorm2d(8))
        m = SGDM(8, 8, stride=stride, groups=2, **kwargs)
    else:
        m = SGDM(8, 6, stride=stride, groups=2, **kwargs)
    return perturb(m, seed=0, scale=0.2)


def _pair(name: str, stride: int, training: bool | None = None) -> tuple[SGDM, SGDM]:
    """The reference and the fast path of one SGDM variant, both in ``training`` mode when it is given."""
    ref = _build(name, stride)
    ref.path = "reference"
    fast = copy.deepcopy(ref)
    fast.path = "fast"
    if training is not None:
        ref.train(training)
        fast.train(training)
    return ref, fast


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("training", [True, False])
def test_fast_equals_reference_forward_and_backward(name: str, stride: int, training: bool) -> None:
    ref, fast = _pair(name, stride)
    ref.train(training)
    fast.train(training)
    x = torch.randn(3, 8, 11, 14)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ref(xa), fast(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    for (pname, pa), (_, pb) in zip(ref.named_parameters(), fast.named_parameters(), strict=True):
        assert (pa.grad is None) == (pb.grad is None), pname
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=pname: f"{n}: {m}")
    for (bname, ba), (_, bb) in zip(ref.named_buffers(), fast.named_buffers(), strict=True):
        torch.testing.assert_close(bb, ba, rtol=1e-5, atol=1e-6, msg=lambda m, n=bname: f"{n}: {m}")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fast_no_grad_in_place_equals_reference(name: str) -> None:
    ref, fast = _pair(name, 2, training=False)
    x = torch.randn(2, 8, 16, 9)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
        # internals are the same tensors whichever path merges the branches
        ya, ia = ref(x, return_internals=True)
        yb, ib = fast(x, return_internals=True)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ib.guided, ia.guided)
    torch.testing.assert_close(ib.dynamic, ia.dynamic)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_static_and_last_unit_accumulate_in_one_product(name: str) -> None:
    """In eval mode without gradients the last 1x1 of the MLP accumulates into the static conv's output (both
    BatchNorms folded): that merged sum is taken for every variant whose units are conv -> BN pairs, and it is the
    reference path's ``pw(dyn) + static(x)`` before the activation."""
    ref, fast = _pair(name, 2, training=False)
    x = torch.randn(2, 8, 16, 9)
    with torch.no_grad():
        dyn = torch.randn(2, 8, 8, 5)
        units = list(fast.pw) if isinstance(fast.pw, nn.Sequential) else [fast.pw]
        a = dyn.view(2, 8, -1)
        for unit in units[:-1]:
            a = pointwise_unit(unit, a, (8, 5))
        merged = fast._static_plus_last_unit(units[-1], a, x)
        assert merged is not None, "the fused sum fell back"
        torch.testing.assert_close(merged, ref.pw(dyn) + ref.static(x), rtol=1e-5, atol=1e-5)
        with torch.enable_grad():  # recorded gradients: never in place
            assert fast._static_plus_last_unit(units[-1], a.clone().requires_grad_(True), x) is None


def test_fast_path_reads_already_folded_units() -> None:
    """A model whose BatchNorms were folded beforehand (bn -> Identity, as a deployment fuse does) still works."""
    ref, fast = _pair("guided", 2)
    ref.eval()
    with torch.no_grad():
        for unit in [*fast.pw, fast.static]:
            pair = conv_bn_pair(unit)
            assert pair is not None
            conv, norm = pair
            w, b = folded_conv_bn(conv, norm)
            folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                               bias=True)
            folded.weight.copy_(w)
            assert b is not None
            folded.bias.copy_(b)
            unit.conv, unit.bn = folded, nn.Identity()
        fast.eval()
        x = torch.randn(1, 8, 12, 12)
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_fast_path_on_channels_last_input() -> None:
    ref, fast = _pair("guided", 2)
    ref.eval()
    fast.eval()
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x.contiguous()), rtol=1e-5, atol=1e-5)


def test_set_sgdm_path_switches_every_sgdm() -> None:
    model = nn.Sequential(SGDM(8, 8, groups=2), ConvBNAct(8, 8), SGDM(8, 4, groups=2))
    assert set_sgdm_path(model, "reference") == 2
    assert all(m.path == "reference" for m in model.modules() if isinstance(m, SGDM))
    with pytest.raises(ValueError, match="path must be one of"):
        set_sgdm_path(model, "turbo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path must be one of"):
        SGDM(8, 8, groups=2, path="turbo")  # type: ignore[arg-type]


@pytest.mark.parametrize("training", [True, False])
def test_pointwise_unit_as_matrix_product_equals_the_module(training: bool) -> None:
    """The matrix-product form of a 1x1 ConvBNAct, with batch statistics in training and folded BN in eval."""
    unit = ConvBNAct(6, 10, 1)
    twin = copy.deepcopy(unit)
    unit.train(training)
    twin.train(training)
    x = torch.randn(3, 6, 5, 7)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ya = unit(a)
    yb = pointwise_unit(twin, b.flatten(2), (5, 7)).view_as(ya)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(twin.conv.weight.grad, unit.conv.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(twin.bn.running_mean, unit.bn.running_mean)


def test_kept_fold_follows_every_change_of_the_weights() -> None:
    """Without gradients the folded weights are kept between calls; an in-place update (optimiser step), a
    ``load_state_dict`` or new running statistics must never leave a stale fold."""
    ref, fast = _pair("guided", 2)
    ref.eval()
    fast.eval()
    x = torch.randn(1, 8, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
        for m in (ref, fast):  # the same in-place change on both: a step of an optimiser, new BN statistics
            m.static.bn.running_mean.add_(0.5)
            m.pw[0].conv.weight.mul_(1.1)
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
        other = _build("guided", 2)
        other.eval()
        fast.load_state_dict(other.state_dict())
        other.path = "reference"
        torch.testing.assert_close(fast(x), other(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["guided", "single_pw"])
def test_fast_path_under_cpu_autocast(name: str) -> None:
    """bf16 autocast on CPU at inference: the fast path runs (the branches merge out of place) and stays near float."""
    ref, fast = _pair(name, 2, training=False)
    x = torch.randn(2, 8, 16, 10)
    with torch.no_grad():
        want = ref(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
