"""Conv -> BatchNorm units run with the BatchNorm folded in, at call time: SGDM's fast path (``efpn.layers.sgdm``).

Eval-mode BatchNorm after a conv is an affine map per channel, so ``norm(conv(x))`` is one conv with scaled weights
and a shifted bias. The fold is computed from the current parameters (never stale) and, while no gradient is
recorded, kept on the conv until one of the tensors it reads changes. A pointwise (1x1) unit also runs as a matrix
product on the flattened (N, C, H*W) map: on CPU a 1x1 convolution reorders small-C tensors into blocked layouts
on every call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_pair(unit: nn.Module) -> tuple[nn.Conv2d, nn.Module] | None:
    """The (conv, norm) of a conv -> BatchNorm unit, or None when ``unit`` is not one.

    Recognised: a :class:`ConvBNAct` (``conv``/``bn``; ``bn`` may already be an ``nn.Identity`` when BatchNorm was
    folded beforehand) and an ``nn.Sequential(Conv2d, BatchNorm2d)`` (a pretrained static branch). Anything else is
    called as a module by the fast path.
    """
    if isinstance(unit, nn.Sequential):
        if len(unit) == 2 and isinstance(unit[0], nn.Conv2d) and isinstance(unit[1], (nn.BatchNorm2d, nn.Identity)):
            return unit[0], unit[1]
        return None
    conv, norm = getattr(unit, "conv", None), getattr(unit, "bn", None)
    if isinstance(conv, nn.Conv2d) and isinstance(norm, (nn.BatchNorm2d, nn.Identity)):
        return conv, norm
    return None


def foldable(norm: nn.Module) -> bool:
    """True when ``norm`` is an identity or a BatchNorm that normalises with its running statistics (eval mode)."""
    if isinstance(norm, nn.Identity):
        return True
    return isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.running_var is not None


def folded_conv_bn(conv: nn.Conv2d, norm: nn.Module) -> tuple[Tensor, Tensor | None]:
    """``norm(conv(x))`` as one conv's (weight, bias), for a :func:`foldable` ``norm``.

    ``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``. Computed from the current
    parameters on every call (differentiable in them), so it never goes stale.
    """
    if isinstance(norm, nn.Identity):
        return conv.weight, conv.bias
    assert isinstance(norm, nn.BatchNorm2d) and norm.running_var is not None and norm.running_mean is not None
    scale = torch.rsqrt(norm.running_var + norm.eps)  # (C_out,)
    if norm.weight is not None:
        scale = scale * norm.weight
    weight = conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    shift = -norm.running_mean * scale if conv.bias is None else (conv.bias - norm.running_mean) * scale
    return weight, shift if norm.bias is None else shift + norm.bias


def _fold_once(conv: nn.Conv2d, norm: nn.Module) -> tuple[Tensor, Tensor | None]:
    """:func:`folded_conv_bn`, kept on ``conv`` while no gradient is recorded and nothing it reads has changed.

    The key is every input tensor's storage and in-place version counter (an optimiser step, ``load_state_dict``
    or ``copy_`` bumps it), so a stale fold is never used; with gradients recorded the fold is recomputed in the
    graph every call. Folding per call costs a few small ops per unit, measurable beside a 1x1 conv on CPU.
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        # under torch.compile the fold is traced into the graph: the cache below reads storage addresses and
        # version counters, which would break the graph and recompile the fold for every layer shape
        return folded_conv_bn(conv, norm)
    tensors = [conv.weight, conv.bias, *(getattr(norm, n, None) for n in ("weight", "bias", "running_mean",
                                                                          "running_var"))]
    if any(t is not None and t.is_inference() for t in tensors):  # built under inference_mode: no version counter
        return folded_conv_bn(conv, norm)
    key = tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors) + (getattr(norm, "eps", 0.0),)
    cached = conv.__dict__.get("_efpn_folded")
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    weight, bias = folded_conv_bn(conv, norm)
    conv.__dict__["_efpn_folded"] = (key, weight, bias)  # a plain attribute: not a parameter, buffer or state
    return weight, bias


def _records_grad(t: Tensor) -> bool:
    """True when autograd records operations on ``t`` (then nothing may be modified in place)."""
    return torch.is_grad_enabled() and t.requires_grad


def _activate(act: nn.Module, t: Tensor) -> Tensor:
    """``act(t)``, in place when no gradient is recorded (SiLU, ReLU, ReLU6; other activations are called)."""
    inplace = not _records_grad(t)
    if isinstance(act, nn.Identity):
        return t
    if isinstance(act, nn.SiLU):
        return F.silu(t, inplace=inplace)
    if isinstance(act, nn.ReLU6):
        return F.hardtanh(t, 0.0, 6.0, inplace=inplace)
    if isinstance(act, nn.ReLU):
        return F.relu(t, inplace=inplace)
    return act(t)


def pointwise_unit(unit: nn.Module, a: Tensor, hw: tuple[int, int]) -> Tensor:
    """A 1x1 conv -> BN -> act unit applied to ``a`` (N, C, P) as a matrix product: -> (N, C', P), ``P = H*W``.

    Eval mode: the BatchNorm is folded into the product. Training mode: the BatchNorm runs on the (N, C', H, W)
    view with batch statistics (and updates its running statistics), exactly as the module would. Units that
    are not conv -> BN pairs, or convs that are not 1x1 with one group, are called as modules on the 4-D view.
    """
    n, c, p = a.shape
    pair = conv_bn_pair(unit)
    if pair is None or pair[0].kernel_size != (1, 1) or pair[0].groups != 1 or pair[0].stride != (1, 1):
        return unit(a.view(n, c, *hw)).flatten(2)
    conv, norm = pair
    if foldable(norm):
        weight, bias = _fold_once(conv, norm)
        w2 = weight.flatten(1).expand(n, -1, -1)  # (N, C', C), a view
        # the bias rides in the product (beta * bias + W @ a): no separate pass over the (N, C', P) result
        out = torch.bmm(w2, a) if bias is None else torch.baddbmm(bias.view(1, -1, 1), w2, a)  # (N, C', P)
    else:
        out = torch.matmul(conv.weight.flatten(1), a)  # (N, C', P)
        if conv.bias is not None:
            out = out + conv.bias.view(-1, 1)
        out = norm(out.view(n, -1, *hw)).view(n, -1, p)  # batch statistics, running statistics updated
    act = getattr(unit, "act", None)
    return out if act is None else _activate(act, out)


def conv_bn_unit(unit: nn.Module, x: Tensor) -> Tensor:
    """``unit(x)`` for a conv -> BN (-> act) unit, with an eval-mode BatchNorm folded into the conv (one pass)."""
    pair = conv_bn_pair(unit)
    if pair is None or not foldable(pair[1]):
        return unit(x)
    conv, norm = pair
    weight, bias = _fold_once(conv, norm)
    out = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    act = getattr(unit, "act", None)
    return out if act is None else _activate(act, out)
