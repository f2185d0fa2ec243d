"""SGDM's per-pixel kernels in training, from the razor conv's output in one native pass each way.

In training the kernel generator ends in ``softmax(BN(spatial(r)) + c)`` (BatchNorm on the batch's statistics) and
SGDM guides the result by its static bank, ``K = S ⊙ D / (Σ|S ⊙ D| + eps)``. PyTorch runs that as about a dozen
operators over (N, G*k*k, H', W') forward and twice as many backward; :func:`guided_kernels` computes the same
function with the native kernels of :mod:`efpn.layers.native` (``native/kernel_head.c``: three passes forward, two
backward) and updates the BatchNorm's running statistics exactly as ``nn.BatchNorm2d`` does.
tests/layers/test_kernel_head.py holds K, every gradient and the running statistics equal to the PyTorch modules.

It applies where nothing else could differ: a plain training-mode ``nn.BatchNorm2d`` with affine parameters and
running statistics, float32 CPU tensors, a shared bank or none, not inside a trace, an ONNX export or
``torch.compile`` or autocast, and the library built. Otherwise :func:`applies` is False and SGDM runs its modules.
A backward that finds the library gone since its forward runs :func:`kernel_head_backward`, the same arithmetic in
PyTorch operators.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from efpn.layers import native
from efpn.layers.bn_act import _trains, _update_running


class _KernelHead(torch.autograd.Function):
    """s, c, gamma, beta, bank -> K (N, G, kk, H', W'), plus the batch mean and biased variance (no gradient)."""

    @staticmethod
    def forward(ctx: Any, s: Tensor, c: Tensor, gamma: Tensor, beta: Tensor,  # type: ignore[override]
                bank: Tensor | None, bn_eps: float, eps: float, groups: int) -> tuple[Tensor, Tensor, Tensor]:
        out = native.kernel_head_forward(s, c, gamma, beta, bn_eps, bank, eps, groups)
        if out is None:  # the caller checked the library; losing it mid-run is a bug worth a clear message
            raise RuntimeError("efpn native kernel head: the library became unavailable")
        d, k, mean, var = out
        ctx.save_for_backward(s, d, gamma, mean, (var + bn_eps).rsqrt(), bank)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return k, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_k: Tensor | None, *_stats: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if grad_k is None:
            return (None,) * 8
        s, d, gamma, mean, invstd, bank = ctx.saved_tensors
        grads = native.kernel_head_backward(grad_k, s, d, gamma, mean, invstd, bank, ctx.eps)
        if grads is None:  # the library switched off since the forward: the same arithmetic in PyTorch
            grads = kernel_head_backward(grad_k, s, d, gamma, mean, invstd, bank, ctx.eps)
        grad_s, grad_c, grad_gamma, grad_beta, grad_bank = grads
        need = ctx.needs_input_grad
        picked = [g if need[i] else None for i, g in enumerate((grad_s, grad_c, grad_gamma, grad_beta, grad_bank))]
        return (*picked, None, None, None)


def kernel_head_backward(grad_k: Tensor, s: Tensor, d: Tensor, gamma: Tensor, mean: Tensor, invstd: Tensor,
                         bank: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """The backward of ``K = guide(D = softmax(BN_batch(s) + c), bank)`` in PyTorch operators, the arithmetic of
    ``native/kernel_head.c`` written out: grad_k and D (N, G, kk, H', W'), s (N, G*kk, H', W'), the BatchNorm's gamma,
    batch mean and 1/sqrt(var + eps) (G*kk). Returns ``(grad_s, grad_c (N, G*kk), grad_gamma, grad_beta,
    grad_bank (G, kk) or None)``."""
    n, g, kk, h, w = d.shape
    grad_bank: Tensor | None = None
    grad_d = grad_k
    if bank is not None:  # K = sd / (L + eps), sd = S D, L = sum_q |sd|
        bank5 = bank[None, :, :, None, None]
        sd = d * bank5
        inv = 1.0 / (sd.abs().sum(2, keepdim=True) + eps)  # (N, G, 1, H', W')
        grad_sd = inv * (grad_k - sd.sign() * (grad_k * sd).sum(2, keepdim=True) * inv)
        grad_bank = (grad_sd * d).sum((0, 3, 4))
        grad_d = grad_sd * bank5
    grad_z = (d * (grad_d - (grad_d * d).sum(2, keepdim=True))).reshape(n, g * kk, h, w)  # softmax's backward
    grad_c = grad_z.sum((2, 3))
    grad_beta = grad_c.sum(0)
    xhat = (s - mean.view(-1, 1, 1)) * invstd.view(-1, 1, 1)
    grad_gamma = (grad_z * xhat).sum((0, 2, 3))
    count = n * h * w
    grad_s = (gamma * invstd).view(-1, 1, 1) * (grad_z - (grad_beta / count).view(-1, 1, 1)
                                                - xhat * (grad_gamma / count).view(-1, 1, 1))
    return grad_s, grad_c, grad_gamma, grad_beta, grad_bank


#: The most taps per kernel the native kernels hold (7x7): larger kernels run the modules.
MAX_TAPS = 49


def applies(bn: nn.Module, x: Tensor, bank: Tensor | None, taps: int) -> bool:
    """Whether :func:`guided_kernels` computes a call with BatchNorm ``bn`` on an input x (N, C, H, W), ``bank``
    (G, k*k) or None (a per-channel bank does not apply: its kernels are never built whole in training) and ``taps``
    = k*k taps per kernel."""
    return (_trains(bn) and x.dim() == 4 and 1 <= taps <= MAX_TAPS and native.eligible(x, bn.weight, bn.bias, bank)
            and not torch.is_autocast_enabled(x.device.type) and native.sgdm_library() is not None)


def guided_kernels(s: Tensor, c: Tensor, bn: nn.BatchNorm2d, bank: Tensor | None, eps: float, groups: int) -> Tensor:
    """``guide_kernels(softmax_kk(bn(s) + c), bank)`` (``softmax_kk(bn(s) + c)`` without a bank) for a training-mode
    ``bn``: s (N, G*kk, H', W'), c (N, G*kk) -> K (N, G, kk, H', W'), ``bn``'s running statistics updated as the
    module would. Call only where :func:`applies` holds."""
    count = s.shape[0] * s.shape[2] * s.shape[3]
    if count < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(s.shape)}")
    k, mean, var = _KernelHead.apply(s, c, bn.weight, bn.bias, bank, bn.eps, eps, groups)
    _update_running(bn, mean, var, count)
    return k
