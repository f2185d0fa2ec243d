"""The native training kernels as PyTorch custom operators, so ``torch.compile`` can call them.

:mod:`efpn.layers.native` calls its C functions through ctypes, which ``torch.compile`` cannot trace: inside a
compiled graph rdconv's autograd Functions fell back to their PyTorch arithmetic (a dozen sliced in-place updates
per aggregation), and a compiled SGDM's backward took 1.6x the eager one's. Registered here as operators of the
``efpn`` namespace, each with a shape-only ("fake") implementation, the same kernels run inside compiled graphs as
opaque calls, and inductor fuses what lies around them.

- ``efpn::aggregate(x, kernels, k, s)``: :func:`efpn.layers.native.aggregate`, x (N, C, H, W) and kernels
  (N, G, k*k, H', W') -> (N, C, H', W').
- ``efpn::aggregate_backward(x, kernels, grad_out, k, s, need_x, need_kernels)``: its gradients; one not asked for
  comes back as an empty tensor (an operator's outputs cannot be None), which :func:`aggregate_backward` turns
  into None.
- ``efpn::razor_backward(x, peak, grad_razor, grad_gap)``: :func:`efpn.layers.native.razor_backward`.

Every operator needs the compiled library: :func:`ready` says whether it is there (decided once, outside any
graph); callers check it and keep their PyTorch path otherwise. Autograd stays with the callers' Functions
(``efpn.layers.rdconv``), which call these operators from their forward and backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from efpn.layers import native


@torch.compiler.assume_constant_result
def ready() -> bool:
    """Whether the native library is built and loaded (it is built on the first call). Read as a constant by
    ``torch.compile``, so a compiled graph never traces the build."""
    return native.sgdm_library() is not None


def usable(*tensors: Tensor | None) -> bool:
    """Whether the operators may compute a call on ``tensors``: all float32 CPU tensors, the library ready, and not
    inside a TorchScript trace or an ONNX export (which cannot record a custom operator); ``torch.compile`` can."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors) and ready()


def _unavailable(what: str) -> RuntimeError:
    return RuntimeError(f"efpn::{what} needs the native library, which is unavailable here; check "
                        "efpn.layers.native_ops.usable() before calling it")


@torch.library.custom_op("efpn::aggregate", mutates_args=())
def _aggregate(x: Tensor, kernels: Tensor, kernel_size: int, stride: int) -> Tensor:
    out = native.aggregate(x, kernels, kernel_size, stride)
    if out is None:
        raise _unavailable("aggregate")
    return out


@_aggregate.register_fake
def _aggregate_fake(x: Tensor, kernels: Tensor, kernel_size: int, stride: int) -> Tensor:
    return x.new_empty((x.shape[0], x.shape[1], kernels.shape[-2], kernels.shape[-1]))


@torch.library.custom_op("efpn::aggregate_backward", mutates_args=())
def _aggregate_backward(x: Tensor, kernels: Tensor, grad_out: Tensor, kernel_size: int, stride: int, need_x: bool,
                        need_kernels: bool) -> tuple[Tensor, Tensor]:
    grads = native.aggregate_backward(x, kernels, grad_out, kernel_size, stride, need_x, need_kernels)
    if grads is None:
        raise _unavailable("aggregate_backward")
    grad_x, grad_k = grads
    return (grad_x if grad_x is not None else x.new_empty(0),
            grad_k if grad_k is not None else kernels.new_empty(0))


@_aggregate_backward.register_fake
def _aggregate_backward_fake(x: Tensor, kernels: Tensor, grad_out: Tensor, kernel_size: int, stride: int,
                             need_x: bool, need_kernels: bool) -> tuple[Tensor, Tensor]:
    return (x.new_empty(x.shape) if need_x else x.new_empty(0),
            kernels.new_empty(kernels.shape) if need_kernels else kernels.new_empty(0))


@torch.library.custom_op("efpn::razor_backward", mutates_args=())
def _razor_backward(x: Tensor, peak: Tensor, grad_razor: Tensor | None, grad_gap: Tensor | None) -> Tensor:
    grad_x = native.razor_backward(x, peak, grad_razor, grad_gap)
    if grad_x is None:
        raise _unavailable("razor_backward")
    return grad_x


@_razor_backward.register_fake
def _razor_backward_fake(x: Tensor, peak: Tensor, grad_razor: Tensor | None, grad_gap: Tensor | None) -> Tensor:
    return x.new_empty(x.shape)


def aggregate(x: Tensor, kernels: Tensor, kernel_size: int, stride: int) -> Tensor:
    """``efpn::aggregate``: x (N, C, H, W), kernels (N, G, k*k, H', W') -> (N, C, H', W'), no autograd of its own
    (call it from an autograd Function); :func:`usable` must hold."""
    return torch.ops.efpn.aggregate(x, kernels, kernel_size, stride)


def aggregate_backward(x: Tensor, kernels: Tensor, grad_out: Tensor, kernel_size: int, stride: int, need_x: bool,
                       need_kernels: bool) -> tuple[Tensor | None, Tensor | None]:
    """``efpn::aggregate_backward``: the gradients of x and of the kernels, each None when not asked for."""
    grad_x, grad_k = torch.ops.efpn.aggregate_backward(x, kernels, grad_out, kernel_size, stride, need_x,
                                                       need_kernels)
    return (grad_x if need_x else None), (grad_k if need_kernels else None)


def razor_backward(x: Tensor, peak: Tensor, grad_razor: Tensor | None, grad_gap: Tensor | None) -> Tensor:
    """``efpn::razor_backward``: the gradient of x (N, C, H, W) for the razor map's and the average's gradients
    (one of them may be None); peak = ``amax_c x`` (N, 1, H, W)."""
    return torch.ops.efpn.razor_backward(x, peak, grad_razor, grad_gap)
