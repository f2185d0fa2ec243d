"""RDConv: the shift path equals the unfold reference and a depthwise conv; kernels are distributions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from efpn.layers.rdconv import (
    RazorKernelGenerator,
    RDConv,
    apply_dynamic_kernels,
    kernel_entropy,
    output_size,
    razor_stats,
    resolve_groups,
)

CASES = [  # (C, G, k, stride, H, W)
    (4, 1, 3, 1, 7, 9),
    (4, 2, 3, 2, 7, 9),
    (6, 3, 3, 2, 8, 8),
    (4, 4, 5, 2, 9, 6),
    (2, 1, 1, 2, 5, 5),
    (4, 2, 3, 3, 10, 11),
]


def _kernels(n: int, g: int, k: int, s: int, h: int, w: int) -> torch.Tensor:
    return torch.randn(n, g, k * k, output_size(h, k, s), output_size(w, k, s))


def test_resolve_groups_rule() -> None:
    assert [resolve_groups(c) for c in (8, 16, 32, 64, 96, 128, 256)] == [1, 1, 2, 4, 6, 8, 8]
    assert resolve_groups(12, 3) == 3
    with pytest.raises(ValueError, match="divide"):
        resolve_groups(12, 8)


@pytest.mark.parametrize(("c", "g", "k", "s", "h", "w"), CASES)
def test_shift_equals_unfold_random_kernels(c: int, g: int, k: int, s: int, h: int, w: int) -> None:
    x = torch.randn(2, c, h, w)
    kern = _kernels(2, g, k, s, h, w)
    ref = apply_dynamic_kernels(x, kern, k, s, impl="unfold")
    assert ref.shape == (2, c, output_size(h, k, s), output_size(w, k, s))
    torch.testing.assert_close(apply_dynamic_kernels(x, kern, k, s, impl="shift"), ref)
    cw = torch.randn(c, k * k)  # per-channel factor (SGDM's unshared bank)
    torch.testing.assert_close(
        apply_dynamic_kernels(x, kern, k, s, "shift", channel_weights=cw),
        apply_dynamic_kernels(x, kern, k, s, "unfold", channel_weights=cw),
    )


@pytest.mark.parametrize("impl", ["shift", "unfold"])
@pytest.mark.parametrize("s", [1, 2])
def test_pixel_constant_kernels_equal_depthwise_conv(impl: str, s: int) -> None:
    """A kernel that is the same at every pixel is an ordinary grouped-shared depthwise conv."""
    c, g, k, h, w = 4, 2, 3, 7, 8
    x = torch.randn(2, c, h, w)
    taps = torch.randn(g, k * k)
    kern = taps[None, :, :, None, None].expand(2, g, k * k, output_size(h, k, s), output_size(w, k, s))
    weight = taps.repeat_interleave(c // g, 0).view(c, 1, k, k)  # channel c uses its group's taps
    ref = F.conv2d(x, weight, stride=s, padding=k // 2, groups=c)
    torch.testing.assert_close(apply_dynamic_kernels(x, kern.contiguous(), k, s, impl), ref)


def test_one_hot_kernels_golden() -> None:
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)
    centre = torch.zeros(1, 1, 9, 3, 3)
    centre[:, :, 4] = 1
    torch.testing.assert_close(apply_dynamic_kernels(x, centre, 3, 2), x[..., ::2, ::2])
    top_left = torch.zeros(1, 1, 9, 5, 6)
    top_left[:, :, 0] = 1  # tap (dy, dx) = (-1, -1): y[i, j] = x[i-1, j-1], zero outside
    expect = F.pad(x, (1, 0, 1, 0))[..., :5, :6]
    torch.testing.assert_close(apply_dynamic_kernels(x, top_left, 3, 1), expect)


def test_shift_path_never_unfolds(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the shift path must not build the (N, C*k^2, L) unfold tensor")

    x = torch.randn(1, 4, 9, 9)
    kern = _kernels(1, 2, 3, 2, 9, 9)
    ref = apply_dynamic_kernels(x, kern, 3, 2, "unfold")
    monkeypatch.setattr(F, "unfold", boom)
    torch.testing.assert_close(apply_dynamic_kernels(x, kern, 3, 2, "shift"), ref)
    with pytest.raises(AssertionError, match="must not"):
        apply_dynamic_kernels(x, kern, 3, 2, "unfold")


@pytest.mark.parametrize(("s", "hw", "out_hw"), [(1, (7, 9), (7, 9)), (2, (7, 9), (4, 5)), (2, (8, 6), (4, 3))])
def test_rdconv_shapes_and_kernel_is_a_distribution(s: int, hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    m = RDConv(8, stride=s, groups=2)
    x = torch.randn(2, 8, *hw)
    y, inner = m(x, return_internals=True)
    d = inner.dynamic
    assert y.shape == (2, 8, *out_hw) and d.shape == (2, 2, 9, *out_hw)
    assert d.min() >= 0
    torch.testing.assert_close(d.sum(2), torch.ones(2, 2, *out_hw))
    torch.testing.assert_close(m(x), y)
    torch.testing.assert_close(y, apply_dynamic_kernels(x, d, 3, s, "unfold"))


def test_rdconv_shift_and_unfold_modules_agree() -> None:
    a = RDConv(8, stride=2, groups=4, learned_razor=True, impl="shift")
    b = RDConv(8, stride=2, groups=4, learned_razor=True, impl="unfold")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 9, 7)
    torch.testing.assert_close(a(x), b(x))


def test_rdconv_every_parameter_gets_gradient() -> None:
    m = RDConv(8, stride=2, groups=2, learned_razor=True)
    m(torch.randn(2, 8, 9, 9)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_razor_generator_params_independent_of_width_but_channel_branch() -> None:
    def count(c: int, **kw: object) -> int:
        return sum(p.numel() for p in RazorKernelGenerator(c, 3, 2, groups=2, **kw).parameters())

    gkk = 2 * 9
    # spatial conv 2*9*G*9 + BN 2*G*9 + channel branch (C+1)*G*9
    assert count(8) == 2 * 9 * gkk + 2 * gkk + 9 * gkk
    assert count(16) - count(8) == 8 * gkk
    assert count(8, learned_razor=True) - count(8) == 2 * 8


def test_kernel_entropy_golden() -> None:
    uniform = torch.full((1, 2, 9, 3, 4), 1 / 9)
    one_hot = torch.zeros(1, 2, 9, 3, 4)
    one_hot[:, :, 3] = 1
    torch.testing.assert_close(kernel_entropy(uniform), torch.full((1, 2, 3, 4), math.log(9)))
    torch.testing.assert_close(kernel_entropy(one_hot), torch.zeros(1, 2, 3, 4))
    torch.testing.assert_close(kernel_entropy(-3 * uniform), kernel_entropy(uniform))  # reads |w| normalised


def test_rdconv_bad_input() -> None:
    m = RDConv(8)
    with pytest.raises(ValueError, match="8"):
        m(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match="odd"):
        RDConv(8, kernel_size=4)
    with pytest.raises(ValueError, match="impl"):
        RDConv(8, impl="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spatially"):
        apply_dynamic_kernels(torch.randn(1, 4, 8, 8), torch.randn(1, 2, 9, 8, 8), 3, 2)
    with pytest.raises(ValueError, match="divide"):
        apply_dynamic_kernels(torch.randn(1, 4, 8, 8), torch.randn(1, 3, 9, 8, 8), 3, 1)


@pytest.mark.parametrize("s", [1, 2])
def test_shift_path_gradients_are_exact(s: int) -> None:
    """gradcheck in float64: the in-place accumulation must not corrupt autograd."""
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    kern = torch.randn(1, 1, 9, output_size(5, 3, s), output_size(4, 3, s), dtype=torch.float64)
    kern.requires_grad_(True)
    cw = torch.randn(2, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: apply_dynamic_kernels(a, b, 3, s, "shift", c), (x, kern, cw))


@pytest.mark.parametrize(
    ("k", "s", "hw"),
    [(3, 1, (5, 4)), (3, 2, (5, 4)), (3, 2, (6, 8)), (3, 3, (6, 9)), (5, 2, (8, 4)), (3, 2, (6, 7)), (5, 2, (7, 5)),
     (3, 3, (7, 8)), (5, 1, (2, 3)), (5, 3, (2, 2))],
)
def test_shift_hand_written_backward_is_exact(k: int, s: int, hw: tuple[int, int]) -> None:
    """The shared-kernel shift path has its own backward: gradcheck in float64 on odd and stride-divisible sizes
    (the one-copy interleave), strides up to 3 and inputs smaller than the kernel (taps that only read padding), and
    equal to autograd through unfold."""
    h, w = hw
    x = torch.randn(2, 4, h, w, dtype=torch.float64, requires_grad=True)
    kern = torch.randn(2, 2, k * k, output_size(h, k, s), output_size(w, k, s), dtype=torch.float64)
    kern.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: apply_dynamic_kernels(a, b, k, s, "shift"), (x, kern))
    grad = torch.randn(2, 4, output_size(h, k, s), output_size(w, k, s), dtype=torch.float64)
    ga = torch.autograd.grad(apply_dynamic_kernels(x, kern, k, s, "shift"), (x, kern), grad)
    gb = torch.autograd.grad(apply_dynamic_kernels(x, kern, k, s, "unfold"), (x, kern), grad)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b)


def test_shift_backward_only_for_what_needs_it() -> None:
    """Gradient only to the kernels (x frozen) or only to x: the other stays None and the values match unfold."""
    x = torch.randn(1, 4, 9, 9)
    kern = torch.randn(1, 2, 9, 5, 5, requires_grad=True)
    (gk,) = torch.autograd.grad(apply_dynamic_kernels(x, kern, 3, 2).sum(), (kern,))
    (gk_ref,) = torch.autograd.grad(apply_dynamic_kernels(x, kern, 3, 2, "unfold").sum(), (kern,))
    torch.testing.assert_close(gk, gk_ref)
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(apply_dynamic_kernels(xg, kern.detach(), 3, 2).sum(), (xg,))
    (gx_ref,) = torch.autograd.grad(apply_dynamic_kernels(xg, kern.detach(), 3, 2, "unfold").sum(), (xg,))
    torch.testing.assert_close(gx, gx_ref)


def test_razor_stats_gradient_is_exact() -> None:
    """The generator's razor ``[mean_c, max_c]`` and global average share one hand-written backward: exact in
    double precision (gradcheck) whether both outputs, only the razor or only the average are used, and equal to
    autograd's gradient of the plain ops in float."""
    x = torch.randn(2, 5, 4, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: razor_stats(t), (x,))
    assert torch.autograd.gradcheck(lambda t: razor_stats(t)[0], (x,))
    assert torch.autograd.gradcheck(lambda t: razor_stats(t)[1], (x,))
    xf = torch.randn(3, 7, 6, 5, requires_grad=True)
    r, gap = razor_stats(xf)
    weights = torch.randn_like(r), torch.randn_like(gap)
    (r * weights[0]).sum().add((gap * weights[1]).sum()).backward()
    xr = xf.detach().clone().requires_grad_(True)
    r_ref = torch.cat([xr.mean(1, keepdim=True), xr.amax(1, keepdim=True)], 1)
    torch.testing.assert_close(r, r_ref)
    (r_ref * weights[0]).sum().add((xr.mean((2, 3), keepdim=True) * weights[1]).sum()).backward()
    torch.testing.assert_close(xf.grad, xr.grad)
    with torch.no_grad():  # no graph: the plain ops
        torch.testing.assert_close(razor_stats(xf)[0], r_ref)


def test_razor_stats_share_the_max_between_ties_as_amax() -> None:
    """Saturated activations (ReLU6 at 6, or all-zero pixels) tie for the channel max: its gradient is split
    equally between them, as autograd splits ``amax``'s."""
    x = torch.tensor([[[[6.0, 0.0]], [[6.0, 0.0]], [[1.0, 0.0]]]], requires_grad=True)  # (1, 3, 1, 2)
    r, gap = razor_stats(x)
    r[:, 1].sum().backward()
    torch.testing.assert_close(x.grad[0, :, 0, 0], torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(x.grad[0, :, 0, 1], torch.full((3,), 1 / 3))
    xr = x.detach().clone().requires_grad_(True)
    xr.amax(1).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
