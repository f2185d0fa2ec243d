"""BatchNorm (training mode) + SiLU in one native pass, optionally of the sum of two BatchNorms.

Every YOLO "Conv" unit ends in ``SiLU(BN(conv(x)))`` and SGDM joins its branches as ``SiLU(BN(pw(d)) + BN(conv(x)))``.
In training on CPU PyTorch runs each BatchNorm, the sum and the SiLU as separate operators, about ten passes over
the activation forward and backward with their temporaries; :func:`batchnorm_act` computes the same function with
the native kernels of :mod:`efpn.layers.native` (three passes forward, two backward) and updates the running
statistics exactly as ``nn.BatchNorm2d`` does (momentum or cumulative average, unbiased variance,
``num_batches_tracked``). tests/layers/test_bn_act.py holds outputs, gradients and running statistics equal to
the PyTorch modules.

It applies only where nothing else could differ: plain ``nn.BatchNorm2d`` layers in training mode with affine
parameters and running statistics, ``nn.SiLU`` or no activation, float32 contiguous CPU tensors, more than one
value per channel, not inside a trace, an ONNX export or ``torch.compile``, and the library built. Tensors may be
contiguous, or channels-last for the sum of two BatchNorms (both inputs in one layout; the output and the gradients
keep it). Otherwise it returns None and the caller runs its modules (GPUs, autocast, eval mode, SyncBatchNorm).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from efpn.layers import native


class _BatchNormAct(torch.autograd.Function):
    """x1, gamma1, beta1[, x2, gamma2, beta2] -> y, plus the batch means and biased variances (no gradient)."""

    @staticmethod
    def forward(ctx: Any, x1: Tensor, gamma1: Tensor, beta1: Tensor, x2: Tensor | None,  # type: ignore[override]
                gamma2: Tensor | None, beta2: Tensor | None, eps1: float, eps2: float, act: str
                ) -> tuple[Tensor, ...]:
        out = native.bn_act_forward(x1, gamma1, beta1, eps1, act, x2, gamma2, beta2, eps2)
        if out is None:  # the caller checked the library; losing it mid-run is a bug worth a clear message
            raise RuntimeError("efpn native BatchNorm + activation: the library became unavailable")
        y, mean1, var1, mean2, var2 = out
        invstd1 = (var1 + eps1).rsqrt()
        invstd2 = (var2 + eps2).rsqrt() if var2 is not None else None
        ctx.save_for_backward(x1, gamma1, beta1, mean1, invstd1, x2, gamma2, beta2, mean2, invstd2)
        ctx.act = act
        stats = (mean1, var1) if mean2 is None or var2 is None else (mean1, var1, mean2, var2)
        ctx.mark_non_differentiable(*stats)
        return (y, *stats)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor | None, *_stats: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if grad_y is None:
            return (None,) * 9
        x1, gamma1, beta1, mean1, invstd1, x2, gamma2, beta2, mean2, invstd2 = ctx.saved_tensors
        layout = torch.channels_last if native.channels_last(x1) else torch.contiguous_format
        grads = native.bn_act_backward(grad_y.contiguous(memory_format=layout), x1, gamma1, beta1, mean1, invstd1,
                                       ctx.act, x2, gamma2, beta2, mean2, invstd2)
        if grads is None:
            raise RuntimeError("efpn native BatchNorm + activation backward: the library became unavailable")
        gx1, gg1, gb1, gx2, gg2, gb2 = grads
        need = ctx.needs_input_grad
        picked = [g if need[i] else None for i, g in enumerate((gx1, gg1, gb1, gx2, gg2, gb2))]
        return (*picked, None, None, None)


def _trains(bn: nn.Module) -> bool:
    """A plain BatchNorm2d that normalises with the batch's statistics and keeps running ones."""
    return (type(bn) is nn.BatchNorm2d and bn.training and bn.affine and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None)


def _act_name(act: nn.Module | None) -> str | None:
    if act is None or type(act) is nn.Identity:
        return "none"
    return "silu" if type(act) is nn.SiLU else None


def _update_running(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """``nn.BatchNorm2d``'s update of its running statistics from a batch's mean and biased variance."""
    with torch.no_grad():
        assert bn.num_batches_tracked is not None and bn.running_mean is not None and bn.running_var is not None
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.lerp_(mean, momentum)
        bn.running_var.lerp_(var * (count / (count - 1)), momentum)  # the unbiased variance, as PyTorch keeps


def batchnorm_act(x1: Tensor, bn1: nn.Module, act: nn.Module | None, x2: Tensor | None = None,
                  bn2: nn.Module | None = None) -> Tensor | None:
    """``act(bn1(x1) [+ bn2(x2)])`` for training-mode BatchNorms: (N, C, H, W) -> (N, C, H, W), the running
    statistics updated as the modules would. None where it does not apply (see the module docstring); the caller
    then runs the modules."""
    name = _act_name(act)
    if name is None or not _trains(bn1) or (x2 is not None and (bn2 is None or not _trains(bn2))):
        return None
    assert isinstance(bn1, nn.BatchNorm2d) and (x2 is None or isinstance(bn2, nn.BatchNorm2d))  # by _trains
    second = (x2, bn2.weight, bn2.bias) if x2 is not None and bn2 is not None else (None, None, None)
    layout = torch.channels_last if native.channels_last(x1) else torch.contiguous_format
    if layout is torch.channels_last and x2 is None:
        # one channels-last BatchNorm + SiLU: PyTorch's own channels-last kernels took as long in a YOLOv8n training
        # step (283 vs 289 ms, 2 CPUs); the sum of two (SGDM's join) is where the single pass saves (352 vs 365 ms)
        return None
    if (x1.dim() != 4 or not x1.is_contiguous(memory_format=layout) or x1.shape[1] != bn1.num_features
            or (x2 is not None and (x2.shape != x1.shape or not x2.is_contiguous(memory_format=layout)))
            or not native.eligible(x1, bn1.weight, bn1.bias, *(t for t in second if t is not None))
            or native.sgdm_library() is None):
        return None
    count = x1.shape[0] * x1.shape[2] * x1.shape[3]
    if count < 2:
        return None  # BatchNorm's own error ("expected more than 1 value per channel") from the modules
    eps2 = bn2.eps if x2 is not None and bn2 is not None else 0.0
    y, *stats = _BatchNormAct.apply(x1, bn1.weight, bn1.bias, *second, bn1.eps, eps2, name)
    _update_running(bn1, stats[0], stats[1], count)
    if len(stats) == 4:  # the second BatchNorm's
        assert isinstance(bn2, nn.BatchNorm2d)
        _update_running(bn2, stats[2], stats[3], count)
    return y
