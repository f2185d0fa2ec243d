"""efpn.layers.bn_act: BatchNorm (training) + SiLU in one native pass computes what the PyTorch modules compute —
outputs, every gradient, the running statistics — and is used only where it may be."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import efpn
from efpn.layers import native
from efpn.layers.bn_act import batchnorm_act
from efpn.layers.conv import ConvBNAct
from efpn.layers.sgdm import SGDM
from tests.layers.sgdm_helpers import count_calls

needs_native = pytest.mark.skipif(native.sgdm_library() is None,
                                  reason="no C compiler here: the modules run their PyTorch operators")


def _bn(c: int, seed: int, momentum: float | None = 0.03, eps: float = 1e-3) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=eps, momentum=momentum).train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # away from the defaults, so a swapped gamma/beta or a missing shift shows
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.rand(c, generator=gen) - 0.5)
        bn.running_mean.copy_(torch.rand(c, generator=gen))
        bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return bn


def _step(fn, inputs: list[torch.Tensor], modules: list[nn.Module]):
    """Output and gradients (inputs, then every parameter) of one forward/backward with a varied output gradient."""
    xs = [x.clone().requires_grad_() for x in inputs]
    y = fn(*xs)
    y.backward(torch.linspace(-2.0, 3.0, y.numel()).view_as(y))
    grads = [x.grad for x in xs] + [p.grad for m in modules for p in m.parameters()]
    buffers = [b.clone() for m in modules for b in m.buffers()]
    return y.detach(), grads, buffers


def _assert_same(a, b) -> None:
    ya, ga, ba = a
    yb, gb, bb = b
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    assert len(ga) == len(gb) and len(ba) == len(bb)
    for u, v in zip(ga, gb):  # float32 sums in another order, through several layers: relative to the tensor's scale
        torch.testing.assert_close(u, v, rtol=1e-3, atol=1e-4 * float(v.abs().max()) + 1e-6)
    for u, v in zip(ba, bb):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


@needs_native
@pytest.mark.parametrize("shape", [(4, 6, 9, 11), (1, 3, 1, 2), (2, 16, 20, 20)])  # odd planes, 2 values, 8-lane
@pytest.mark.parametrize("act", [nn.SiLU(), nn.Identity()])
@pytest.mark.parametrize("momentum", [0.03, None])  # None: the cumulative average
def test_one_batchnorm_and_activation_equal_the_modules(shape, act: nn.Module, momentum) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))) * 3 + 1  # a non-zero mean
    fused_bn, ref_bn = _bn(shape[1], 1, momentum), _bn(shape[1], 1, momentum)
    fused = _step(lambda t: batchnorm_act(t, fused_bn, act), [x], [fused_bn])
    ref = _step(lambda t: act(ref_bn(t)), [x], [ref_bn])
    _assert_same(fused, ref)
    assert int(fused_bn.num_batches_tracked) == int(ref_bn.num_batches_tracked) == 1


@needs_native
def test_the_sum_of_two_batchnorms_then_silu_equals_the_modules() -> None:
    gen = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(3, 5, 7, 9, generator=gen), torch.randn(3, 5, 7, 9, generator=gen) * 0.2 - 4
    bns = [_bn(5, 2, eps=1e-3), _bn(5, 3, eps=1e-5)]
    refs = copy.deepcopy(bns)
    fused = _step(lambda a, b: batchnorm_act(a, bns[0], nn.SiLU(), b, bns[1]), [x1, x2], bns)
    ref = _step(lambda a, b: nn.functional.silu(refs[0](a) + refs[1](b)), [x1, x2], refs)
    _assert_same(fused, ref)


@needs_native
def test_the_result_does_not_depend_on_the_thread_count() -> None:
    x = torch.randn(2, 24, 30, 30, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            bn = _bn(24, 4)
            runs.append(_step(lambda t, bn=bn: batchnorm_act(t, bn, nn.SiLU()), [x], [bn]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(runs[0][0], runs[1][0]) and all(torch.equal(u, v) for u, v in zip(runs[0][1], runs[1][1]))


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


@needs_native
@pytest.mark.parametrize("shape", [(4, 6, 9, 11), (2, 16, 20, 20), (3, 20, 300, 7)])  # tail only; 2 blocks; both,
@pytest.mark.parametrize("two", [False, True])                                      # and chunks of 256 rows + rest
@pytest.mark.parametrize("act", ["silu", "none"])
def test_the_channels_last_kernels_equal_the_contiguous_ones(shape, two: bool, act: str) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    x1, x2 = torch.randn(shape, generator=gen) * 3 + 1, torch.randn(shape, generator=gen) - 2
    c = shape[1]
    g1, b1, g2, b2 = (torch.rand(c, generator=gen) + 0.5 for _ in range(4))
    second = (x2, g2, b2, 1e-5) if two else (None, None, None, 0.0)
    out_n = native.bn_act_forward(x1, g1, b1, 1e-3, act, *second)
    out_c = native.bn_act_forward(_cl(x1), g1, b1, 1e-3, act, *((_cl(x2),) + second[1:] if two else second))
    assert out_n is not None and out_c is not None
    assert native.channels_last(out_c[0]) or c == 1  # y keeps x's layout
    for u, v in zip(out_c, out_n):
        if v is not None:
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
    grad_y = torch.randn(shape, generator=gen)
    _, mean1, var1, mean2, var2 = out_n
    stats = [mean1, (var1 + 1e-3).rsqrt()]
    rest = (x2, g2, b2, mean2, (var2 + 1e-5).rsqrt()) if two and var2 is not None else ()
    grads_n = native.bn_act_backward(grad_y, x1, g1, b1, *stats, act, *rest)
    rest_c = (_cl(x2), *rest[1:]) if rest else ()
    grads_c = native.bn_act_backward(_cl(grad_y), _cl(x1), g1, b1, *stats, act, *rest_c)
    assert grads_n is not None and grads_c is not None
    for u, v in zip(grads_c, grads_n):  # per-channel sums over 256-row chunks here, over planes there
        if v is not None:
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4 * float(v.abs().max()) + 1e-6)


@needs_native
def test_the_channels_last_sum_of_two_equals_the_modules() -> None:
    gen = torch.Generator().manual_seed(7)
    x1, x2 = _cl(torch.randn(2, 24, 17, 33, generator=gen)), _cl(torch.randn(2, 24, 17, 33, generator=gen) * 2 - 1)
    bns = [_bn(24, 2, eps=1e-3), _bn(24, 3, eps=1e-5)]
    refs = copy.deepcopy(bns)
    fused = _step(lambda a, b: batchnorm_act(a, bns[0], nn.SiLU(), b, bns[1]), [x1, x2], bns)
    ref = _step(lambda a, b: nn.functional.silu(refs[0](a) + refs[1](b)), [x1, x2], refs)
    assert native.channels_last(fused[0]) and native.channels_last(fused[1][0])  # output and gradients keep it
    _assert_same(fused, ref)


@needs_native
def test_the_channels_last_result_does_not_depend_on_the_thread_count() -> None:
    gen = torch.Generator().manual_seed(1)
    x1, x2 = _cl(torch.randn(3, 20, 30, 30, generator=gen)), _cl(torch.randn(3, 20, 30, 30, generator=gen))
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            bns = [_bn(20, 4), _bn(20, 5)]
            runs.append(_step(lambda a, b, bns=bns: batchnorm_act(a, bns[0], nn.SiLU(), b, bns[1]), [x1, x2], bns))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(runs[0][0], runs[1][0]) and all(torch.equal(u, v) for u, v in zip(runs[0][1], runs[1][1]))


def test_used_only_where_it_computes_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 4, 5, 5)
    bn = _bn(4, 0)
    assert batchnorm_act(x, bn.eval(), nn.SiLU()) is None  # running statistics: the module (folded elsewhere)
    bn.train()
    assert batchnorm_act(x, bn, nn.ReLU()) is None  # an activation it does not compute
    assert batchnorm_act(x.double(), bn.double(), nn.SiLU()) is None
    bn.float()
    # one channels-last BatchNorm: PyTorch's own kernels (as fast there); a channels-last pair with a contiguous one
    assert batchnorm_act(x.to(memory_format=torch.channels_last), bn, nn.SiLU()) is None
    assert batchnorm_act(_cl(x), bn, nn.SiLU(), x, _bn(4, 1)) is None
    assert batchnorm_act(x[:1, :, :1, :1], bn, nn.SiLU()) is None  # one value per channel: BatchNorm's own error
    assert batchnorm_act(x, nn.SyncBatchNorm(4).train(), nn.SiLU()) is None
    assert batchnorm_act(x, nn.BatchNorm2d(4, affine=False).train(), nn.SiLU()) is None
    assert batchnorm_act(x, bn, nn.SiLU(), x[:, :2], _bn(2, 1)) is None  # shapes that do not add up
    monkeypatch.setenv("EFPN_NATIVE", "0")
    assert batchnorm_act(x, bn, nn.SiLU()) is None


@needs_native
@pytest.mark.parametrize("make, shape", [
    (lambda: ConvBNAct(6, 10, 3, 2), (3, 6, 15, 17)),
    (lambda: SGDM(16, 32), (2, 16, 21, 20)),  # its hidden unit and its join of the two branches
    (lambda: SGDM(32, 64, groups=4), (2, 32, 9, 9)),
])
def test_training_steps_equal_the_pytorch_path(monkeypatch: pytest.MonkeyPatch, make, shape) -> None:
    torch.manual_seed(0)
    module = make().train()
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    reference = copy.deepcopy(module)
    x = torch.randn(shape)
    calls = count_calls(monkeypatch, native, "bn_act_forward")
    fused = _step(module, [x], [module])
    assert calls["n"] >= 1
    monkeypatch.setenv("EFPN_NATIVE", "0")
    _assert_same(fused, _step(reference, [x], [reference]))
    assert calls["n"] == len([m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]) - (
        2 if isinstance(module, SGDM) else 0)  # every BN but the generator's and one of the joined pair


@needs_native
def test_a_detector_trains_the_same_with_and_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = efpn.build_model("yolov8n", num_classes=2, image_size=64).train()
    reference = copy.deepcopy(model)
    images = torch.rand(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 20.0, 24.0]]), "labels": torch.tensor([1])}] * 2
    losses = sum(model(images, targets).values())
    losses.backward()
    monkeypatch.setenv("EFPN_NATIVE", "0")
    ref_losses = sum(reference(images, targets).values())
    ref_losses.backward()
    torch.testing.assert_close(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):  # ~60 layers of float32 sums
        worst = float((p.grad - q.grad).abs().max() / q.grad.abs().max().clamp_min(1e-12))  # 0 where both are 0
        assert worst < 2e-3, (name, worst)  # measured ~2e-4
    for (name, b), c in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)


def test_where_it_does_not_apply_each_conv_still_runs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """SGDM's join computes its two conv outputs before asking for the fused pass: without it (a GPU, or
    ``EFPN_NATIVE=0``) it finishes them as modules instead of running the convs again."""
    monkeypatch.setenv("EFPN_NATIVE", "0")
    torch.manual_seed(0)
    module = SGDM(16, 32).train()
    calls: dict[str, int] = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    x = torch.randn(2, 16, 12, 12)
    y = module(x)
    assert calls and set(calls.values()) == {1}, calls
    reference = copy.deepcopy(module)
    monkeypatch.setattr(type(reference), "_join_training", lambda *args: None)  # the unit-by-unit path
    torch.testing.assert_close(y, reference(x), rtol=1e-5, atol=1e-6)
