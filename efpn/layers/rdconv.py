"""RDConv — Razor Dynamic Convolution (SPEC §5).

A per-pixel, per-group dynamic kernel ``D`` (softmax over the k*k taps) is generated from a *razor*
descriptor — the channel-mean and channel-max of the input, 2 channels instead of C — so the generator costs
almost nothing, and applied involution-style: the kernel of group g is shared by the C/G channels of group g.

Two application paths are kept and tested against each other (:func:`apply_dynamic_kernels`):

- ``"unfold"``: the readable reference, ``F.unfold`` materialises (N, C*k^2, H'*W').
- ``"shift"``: accumulates k^2 shifted views of the input (of its polyphase components when strided), each
  times its per-pixel weight, over the output window where the view exists: no padded copy, and the largest
  temporary is one (N, C, H', W') product — linear in memory for any input size.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from efpn.layers import native, native_ops
from efpn.layers.conv import check_nchw
from efpn.layers.internals import KernelInternals

Impl = Literal["shift", "unfold"]


def resolve_groups(channels: int, groups: int | None = None, max_groups: int = 8) -> int:
    """Kernel groups G for ``channels``: explicit ``groups``, else ``min(max_groups, max(1, C // 16))``.

    Small C gets fewer groups so every group still averages >= 16 channels (a kernel per 2 channels would be a
    nearly per-channel dynamic conv, noisy and no longer "shared"). G must divide C.
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    g = groups if groups is not None else min(max_groups, max(1, channels // 16))
    if g < 1 or channels % g:
        raise ValueError(f"groups={g} must be >= 1 and divide channels={channels}")
    return g


def check_kernel_size(kernel_size: int, stride: int) -> None:
    """Raise ValueError unless ``kernel_size`` is odd and positive (same padding k//2) and ``stride >= 1``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1 (same padding k//2), got {kernel_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")


def output_size(size: int, kernel_size: int, stride: int) -> int:
    """Output size with padding ``k // 2``: ``floor((size + 2*(k//2) - k) / s) + 1``, = ceil(size / s)."""
    return (size + 2 * (kernel_size // 2) - kernel_size) // stride + 1


def apply_dynamic_kernels(
    x: Tensor,
    kernels: Tensor,
    kernel_size: int,
    stride: int = 1,
    impl: Impl = "shift",
    channel_weights: Tensor | None = None,
) -> Tensor:
    """Involution-style aggregation ``y[n,c,p] = sum_q w[n,c,q,p] * x[n,c,s*p + q]`` with zero padding k//2.

    Args:
        x: (N, C, H, W).
        kernels: (N, G, k*k, H', W') per-pixel taps in row-major (dy, dx) order; group g serves channels
            ``[g*C/G, (g+1)*C/G)``. ``H', W'`` must equal :func:`output_size` of H, W.
        channel_weights: optional (C, k*k) factor per channel and tap, so the effective kernel is
            ``w[n,c,q,p] = channel_weights[c,q] * kernels[n,g(c),q,p]`` without ever materialising the
            (N, C, k*k, H', W') product (used by SGDM's unshared static bank).
        impl: ``"shift"`` (memory-linear) or ``"unfold"`` (reference). Both give the same result.

    Returns:
        (N, C, H', W').
    """
    check_nchw(x, None, "apply_dynamic_kernels", "x")
    check_kernel_size(kernel_size, stride)
    n, c, h, w = x.shape
    kk = kernel_size * kernel_size
    h_out, w_out = output_size(h, kernel_size, stride), output_size(w, kernel_size, stride)
    if kernels.dim() != 5 or kernels.shape[0] != n or kernels.shape[2] != kk:
        raise ValueError(
            f"apply_dynamic_kernels: kernels must be (N={n}, G, k*k={kk}, H', W'), got {tuple(kernels.shape)}"
        )
    g = kernels.shape[1]
    if g < 1 or c % g:
        raise ValueError(f"apply_dynamic_kernels: kernel groups {g} must divide channels {c}")
    if tuple(kernels.shape[-2:]) != (h_out, w_out):
        raise ValueError(
            f"apply_dynamic_kernels: kernels are {tuple(kernels.shape[-2:])} spatially but input {(h, w)} "
            f"with k={kernel_size}, stride={stride} gives {(h_out, w_out)}"
        )
    if channel_weights is not None and tuple(channel_weights.shape) != (c, kk):
        raise ValueError(
            f"apply_dynamic_kernels: channel_weights must be (C={c}, k*k={kk}), got {tuple(channel_weights.shape)}"
        )
    if impl == "shift":
        return _apply_shift(x, kernels, kernel_size, stride, channel_weights)
    if impl == "unfold":
        return _apply_unfold(x, kernels, kernel_size, stride, channel_weights)
    raise ValueError(f"impl must be 'shift' or 'unfold', got {impl!r}")


def _apply_unfold(x: Tensor, kernels: Tensor, k: int, s: int, cw: Tensor | None) -> Tensor:
    n, c, _, _ = x.shape
    g, kk, h_out, w_out = kernels.shape[1:]
    cols = F.unfold(x, k, padding=k // 2, stride=s)  # (N, C*k^2, H'*W'), channel-major then tap
    cols = cols.view(n, g, c // g, kk, h_out, w_out)
    wts = kernels.unsqueeze(2)  # (N, G, 1, k^2, H', W'): shared by the C/G channels of a group
    if cw is not None:
        wts = wts * cw.view(1, g, c // g, kk, 1, 1)  # (N, G, C/G, k^2, H', W')
    return (cols * wts).sum(3).view(n, c, h_out, w_out)


def _tap_windows(k: int, s: int, hw_in: tuple[int, int], hw_out: tuple[int, int]) -> list[tuple[int, ...]]:
    """Per tap q, the polyphase read of the shift path: ``(q, ay, ax, i0, i1, j0, j1, sy, sx)``, centre tap first.

    Output pixel (i, j) of tap q = (dy, dx) reads x[s*i + ry, s*j + rx] with offsets r = d - k//2, zero outside
    x. Row s*i + r lies in polyphase component a = r mod s (rows a, a+s, ...) at index i + floor(r / s), so the
    tap contributes only over the output rows [i0, i1) where that index exists (same for columns): the zero
    padding is never materialised. Taps that only ever read padding are left out. The centre tap (offset 0)
    covers the whole output, so it can initialise a sum.
    """

    def window(r: int, size_out: int, size_in: int) -> tuple[int, int, int, int]:
        a, shift = r % s, r // s
        size_phase = (size_in - a + s - 1) // s  # rows of x in phase a
        return a, max(0, -shift), min(size_out, size_phase - shift), shift

    pad, centre = k // 2, (k * k) // 2
    taps = []
    for q in [centre, *(q for q in range(k * k) if q != centre)]:
        dy, dx = divmod(q, k)
        ay, i0, i1, sy = window(dy - pad, hw_out[0], hw_in[0])
        ax, j0, j1, sx = window(dx - pad, hw_out[1], hw_in[1])
        if i1 > i0 and j1 > j0:
            taps.append((q, ay, ax, i0, i1, j0, j1, sy, sx))
    return taps


def _phase(x: Tensor, key: tuple[int, int], s: int, g: int) -> Tensor:
    """Polyphase component ``x[..., ay::s, ax::s]`` as a contiguous (N, G, C/G, H_a, W_a) tensor (x itself if s=1)."""
    n, c = x.shape[:2]
    ph = x if s == 1 else x[..., key[0] :: s, key[1] :: s].contiguous()
    return ph.view(n, g, c // g, *ph.shape[-2:])


native_eligible = native.eligible  # float32 CPU tensors, outside traces, exports and torch.compile


def _apply_shift(x: Tensor, kernels: Tensor, k: int, s: int, cw: Tensor | None) -> Tensor:
    if cw is None and torch.is_grad_enabled() and (x.requires_grad or kernels.requires_grad):
        # hand-written backward: autograd through k^2 sliced in-place updates would allocate and zero a full
        # gradient tensor per slice (measured ~1.3x slower per training step of yolov8n_sgdm)
        return _ShiftAggregate.apply(x, kernels, k, s)
    if cw is None and native_ops.usable(x, kernels):
        return native_ops.aggregate(x, kernels, k, s)  # one pass, no polyphase copies (also inside torch.compile)
    return _shift_forward(x, kernels, k, s, cw)


def _shift_forward(x: Tensor, kernels: Tensor, k: int, s: int, cw: Tensor | None,
                   phases: dict[tuple[int, int], Tensor] | None = None) -> Tensor:
    """The shift path's arithmetic (see :func:`_tap_windows`); differentiable by autograd when ``cw`` is given.
    ``phases``, when given, receives the polyphase components it made (for a backward to reuse)."""
    n, c, h, w = x.shape
    g, _, h_out, w_out = kernels.shape[1:]
    phases = {} if phases is None else phases
    out: Tensor | None = None  # (N, G, C/G, H', W')
    for q, ay, ax, i0, i1, j0, j1, sy, sx in _tap_windows(k, s, (h, w), (h_out, w_out)):
        if (ay, ax) not in phases:
            phases[(ay, ax)] = _phase(x, (ay, ax), s, g)
        view = phases[(ay, ax)][..., i0 + sy : i1 + sy, j0 + sx : j1 + sx]  # (N, G, C/G, ., .), a view
        wq = kernels[:, :, q, i0:i1, j0:j1].unsqueeze(2)  # (N, G, 1, ., .), broadcast over the group's channels
        if cw is not None:
            wq = wq * cw[:, q].view(1, g, c // g, 1, 1)  # (N, G, C/G, ., .)
        if out is None:
            out = view * wq  # the centre tap covers (H', W') whole
        else:
            # in-place fused multiply-accumulate into the output window (autograd-safe: addcmul's backward
            # needs only view and wq, never the accumulator)
            out[..., i0:i1, j0:j1].addcmul_(view, wq)
    assert out is not None
    return out.reshape(n, c, h_out, w_out)


class _ShiftAggregate(torch.autograd.Function):
    """The shift path with its backward written out (shared kernels, no channel weights).

    ``grad_x``: every tap scatters ``grad_out * w_q`` into its polyphase component's gradient (one buffer per
    component), and the components are interleaved back once. ``grad_kernels[:, :, q]``: the sum over a group's
    channels of ``grad_out * x_q``. First-order only (attribution and training need no more). On float32 CPU tensors
    both directions run as one native pass each (:func:`efpn.layers.native.aggregate` and its backward: the same
    sums, without the per-tap temporaries and polyphase copies).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, kernels: Tensor, k: int, s: int) -> Tensor:  # type: ignore[override]
        ctx.k, ctx.s, ctx.x_shape = k, s, x.shape
        # the native pass, also inside torch.compile (as the efpn::aggregate operator)
        out = native_ops.aggregate(x, kernels, k, s) if native_ops.usable(x, kernels) else None
        ctx.native = out is not None
        if out is not None:
            ctx.keys = []
            ctx.save_for_backward(kernels, x)  # x: alive anyway (the static branch keeps it), read by grad_kernels
            return out
        phases: dict[tuple[int, int], Tensor] = {}
        out = _shift_forward(x, kernels, k, s, None, phases)
        # the kernels' gradient reads the polyphase components again: keeping them (x's size in all, for s > 1)
        # saves copying x once more in the backward; without that gradient nothing but the kernels is kept
        keep = list(phases.values()) if ctx.needs_input_grad[1] else []
        ctx.keys = list(phases) if keep else []
        ctx.save_for_backward(kernels, *keep)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        kernels, *saved = ctx.saved_tensors
        k, s = ctx.k, ctx.s
        need_x, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        x = saved[0] if ctx.native else None  # the native forward keeps x itself, not its polyphase components
        if x is not None and native_ops.usable(x, kernels, grad_out):
            grads = native_ops.aggregate_backward(x, kernels, grad_out, k, s, need_x, need_k)
            return grads[0], grads[1], None, None
        # (N, G, C/G, H_a, W_a) per component the PyTorch forward kept; none after a native forward
        phases = {} if x is not None else dict(zip(ctx.keys, saved, strict=True))
        n, c, h, w = ctx.x_shape
        g, _, h_out, w_out = kernels.shape[1:]
        go = grad_out.contiguous().view(n, g, c // g, h_out, w_out)
        phase_grads: dict[tuple[int, int], Tensor] = {}
        grad_k = torch.zeros_like(kernels) if need_k else None  # (N, G, k^2, H', W'); taps reading padding stay 0
        for q, ay, ax, i0, i1, j0, j1, sy, sx in _tap_windows(k, s, (h, w), (h_out, w_out)):
            key = (ay, ax)
            go_w = go[..., i0:i1, j0:j1]  # (N, G, C/G, ., .)
            rows, cols = slice(i0 + sy, i1 + sy), slice(j0 + sx, j1 + sx)
            if need_x:
                if key not in phase_grads:
                    size = ((h - ay + s - 1) // s, (w - ax + s - 1) // s)
                    phase_grads[key] = go.new_zeros(n, g, c // g, *size)
                wq = kernels[:, :, q, i0:i1, j0:j1].unsqueeze(2)  # (N, G, 1, ., .)
                phase_grads[key][..., rows, cols].addcmul_(go_w, wq)
            if grad_k is not None:
                if key not in phases:  # a native forward (the library switched off since): made from x here
                    assert x is not None
                    phases[key] = _phase(x, key, s, g)
                grad_k[:, :, q, i0:i1, j0:j1] = (go_w * phases[key][..., rows, cols]).sum(2)
        grad_x = None
        if need_x:
            if s == 1:
                grad_x = phase_grads[(0, 0)].view(n, c, h, w)
            elif h % s == 0 and w % s == 0 and len(phase_grads) == s * s:
                # every component has the same size and together they cover x: write each into its place of an
                # uninitialised (N, C, H/s, s, W/s, s) = (N, C, H, W) buffer, no zero-filled pass first
                grad_x = go.new_empty(n, c, h // s, s, w // s, s)
                for (ay, ax), pg in phase_grads.items():
                    grad_x[:, :, :, ay, :, ax] = pg.view(n, c, h // s, w // s)
                grad_x = grad_x.view(n, c, h, w)
            else:
                grad_x = go.new_zeros(n, c, h, w)
                for (ay, ax), pg in phase_grads.items():
                    grad_x[..., ay::s, ax::s] = pg.view(n, c, *pg.shape[-2:])
        return grad_x, grad_k, None, None


class _RazorStats(torch.autograd.Function):
    """The generator's two reads of x in one function: the razor ``[mean_c x, max_c x]`` (N, 2, H, W) and the global
    average ``mean_hw x`` (N, C, 1, 1), with a backward that builds the gradient of x in a few passes.

    Autograd would build it from three full-size tensors (the mean's expanded division, the max's mask, copy and
    product, the average's division) and two more additions: most of an SGDM's backward time on a stride-4 map.
    The max's gradient is shared equally by the channels that tie for it, as ``amax``'s (ReLU6 outputs tie at 6).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not as zeros
        stats = native.razor_forward(x) if native.eligible(x) and x.is_contiguous() else None  # one read of x
        if stats is not None:
            r, gap = stats
            ctx.save_for_backward(x, r[:, 1:2])  # the peak, a view; x is kept alive by the static branch anyway
            return r, gap
        peak = x.amax(1, keepdim=True)  # (N, 1, H, W)
        ctx.save_for_backward(x, peak)
        return torch.cat([x.mean(1, keepdim=True), peak], 1), x.mean((2, 3), keepdim=True)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_r: Tensor | None, grad_gap: Tensor | None) -> Tensor | None:  # type: ignore[override]
        x, peak = ctx.saved_tensors
        n, c, h, w = x.shape
        if (grad_r is not None or grad_gap is not None) and native_ops.usable(x, peak, grad_r, grad_gap):
            return native_ops.razor_backward(x, peak, grad_r, grad_gap)  # one pass (also inside torch.compile)
        grad_x = None
        if grad_r is not None:
            mask = x == peak  # (N, C, H, W): the channels holding the max
            share = grad_r[:, 1:2] / mask.sum(1, keepdim=True)  # (N, 1, H, W): split between ties
            grad_x = mask * share  # (N, C, H, W)
            grad_x.add_(grad_r[:, :1] / c)  # the mean's part, broadcast over channels
        if grad_gap is not None:
            gap = grad_gap / (h * w)  # (N, C, 1, 1)
            grad_x = gap.expand(n, c, h, w).contiguous() if grad_x is None else grad_x.add_(gap)
        return grad_x


def razor_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """``([mean_c x, max_c x], mean_hw x)``: (N, C, H, W) -> (N, 2, H, W), (N, C, 1, 1), with :class:`_RazorStats`'s
    gradient (``amax``'s rule for ties) when x records one."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _RazorStats.apply(x)
    return torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1), x.mean((2, 3), keepdim=True)


def kernel_entropy(kernels: Tensor, eps: float = 1e-12) -> Tensor:
    """Shannon entropy (nats) over the taps of per-pixel kernels: (N, G, k*k, H', W') -> (N, G, H', W').

    Kernels are read as distributions (|w| renormalised over the taps), so this works for softmax kernels (D)
    and for signed guided kernels (K) alike. 0 = one tap takes everything; ``log(k*k)``: uniform (box).
    """
    if kernels.dim() != 5:
        raise ValueError(f"kernel_entropy: kernels must be (N, G, k*k, H', W'), got {tuple(kernels.shape)}")
    p = kernels.abs()
    p = p / p.sum(2, keepdim=True).clamp_min(eps)
    return -(p * p.clamp_min(eps).log()).sum(2)


class RazorKernelGenerator(nn.Module):
    """Per-pixel kernels ``D`` from the razor descriptor (SPEC §5 1-4): (N, C, H, W) -> (N, G, k*k, H', W').

    ``R = [mean_c x, max_c x]`` (N, 2, H, W) (+ a learned 1x1 C->2, zero-initialised, when ``learned_razor``);
    spatial logits ``S = BN(conv_kxk,stride s(R, 2 -> G*k^2))``; channel logits
    ``c = conv1x1(GAP(x), C -> G*k^2)``; ``D = softmax_k^2(S + c)``. Parameters: ``2*k^2*G*k^2 + 2*G*k^2``
    (spatial + BN) ``+ (C+1)*G*k^2`` (channel) ``[+ 2*C]`` — independent of C except for the tiny channel
    branch, which is the point of the razor.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int | None = None,
        learned_razor: bool = False,
    ):
        super().__init__()
        check_kernel_size(kernel_size, stride)
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.groups = resolve_groups(channels, groups)
        gkk = self.groups * kernel_size * kernel_size
        self.razor = nn.Conv2d(channels, 2, 1, bias=False) if learned_razor else None
        if self.razor is not None:
            nn.init.zeros_(self.razor.weight)  # starts as the plain mean/max razor
        self.spatial = nn.Conv2d(2, gkk, kernel_size, stride, kernel_size // 2, bias=False)
        self.spatial_bn = nn.BatchNorm2d(gkk, eps=1e-3, momentum=0.03)
        self.channel = nn.Conv2d(channels, gkk, 1)  # on GAP(x): a per-image bias for every group and tap

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        kk = self.kernel_size * self.kernel_size
        s, c = self.pre_norm(x)
        s = self.spatial_bn(s)  # (N, G*k^2, H', W')
        logits = (s + c.view(n, -1, 1, 1)).view(n, self.groups, kk, *s.shape[-2:])  # (N, G, k^2, H', W')
        return logits.softmax(2)  # D: sums to 1 over the k^2 taps

    def pre_norm(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The two logit terms before the BatchNorm: the razor conv's output (N, G*k^2, H', W') and the channel
        logits (N, G*k^2); ``forward`` is ``softmax(spatial_bn(s) + c)`` of them."""
        r, gap = razor_stats(x)  # (N, 2, H, W), (N, C, 1, 1)
        if self.razor is not None:
            r = r + self.razor(x)  # (N, 2, H, W)
        return self.spatial(r), self.channel_logits(gap)

    def channel_logits(self, gap: Tensor) -> Tensor:
        """The channel branch on pooled features: (N, C, 1, 1) or (N, C) -> (N, G*k^2), ``self.channel`` applied as
        one matrix product (a 1x1 convolution of a 1x1 map costs a convolution call, layout reorders included, for a
        few hundred multiply-adds: measured ~3 ms of a YOLOv8n-SGDM training step at 2 threads)."""
        return F.linear(gap.flatten(1), self.channel.weight.flatten(1), self.channel.bias)


class RDConv(nn.Module):
    """Razor dynamic convolution: (N, C, H, W) -> (N, C, H', W'), ``H' = ceil(H / stride)`` for odd k.

    Only the spatial aggregation (channels unchanged, like a depthwise conv); add a pointwise conv for a full
    layer. ``forward(x, return_internals=True)`` returns ``(y, KernelInternals(dynamic=D))``, D (N, G, k*k, H', W').
    ``groups=None`` picks :func:`resolve_groups`.
    """

    exposes_internals = True

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int | None = None,
        learned_razor: bool = False,
        impl: Impl = "shift",
    ):
        super().__init__()
        if impl not in ("shift", "unfold"):
            raise ValueError(f"impl must be 'shift' or 'unfold', got {impl!r}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.impl: Impl = impl
        self.generator = RazorKernelGenerator(channels, kernel_size, stride, groups, learned_razor)
        self.groups = self.generator.groups

    def forward(self, x: Tensor, return_internals: bool = False) -> Tensor | tuple[Tensor, KernelInternals]:
        check_nchw(x, self.channels, type(self).__name__)
        d = self.generator(x)  # (N, G, k^2, H', W')
        y = apply_dynamic_kernels(x, d, self.kernel_size, self.stride, self.impl)  # (N, C, H', W')
        if return_internals:
            return y, KernelInternals(dynamic=d)
        return y

    def extra_repr(self) -> str:
        k, s, g = self.kernel_size, self.stride, self.groups
        return f"{self.channels}, k={k}, stride={s}, groups={g}, impl={self.impl}"


def max_entropy(kernel_size: int) -> float:
    """Entropy of the uniform k*k kernel, the upper bound of :func:`kernel_entropy`."""
    return math.log(kernel_size * kernel_size)
