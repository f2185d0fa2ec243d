"""How tensors are stored in a checkpoint: fp16 where that cannot overflow, and weight-only int8 with one float32
scale per output channel (symmetric). :mod:`efpn.checkpoint` decides which tensors take which storage."""

from __future__ import annotations

import torch

__all__ = ["INT8_MIN_NUMEL", "INT8_SCALE_PREFIX", "dequantize_int8", "fits_half", "quantize_int8"]


def fits_half(t: torch.Tensor) -> bool:
    """True when casting ``t`` to fp16 keeps every finite value finite (BN running_var can exceed 65504)."""
    return bool(torch.isfinite(t.to(torch.float16)).eq(torch.isfinite(t)).all())


#: Prefix of the per-channel scale stored beside each int8 weight (``{prefix}{key}``).
INT8_SCALE_PREFIX = "__int8_scale__."
#: Weights with fewer elements stay fp16 under int8 storage (biases, norms, small kernels: no size to win).
INT8_MIN_NUMEL = 1024


def quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``t`` (O, ...) float -> (q (O, ...) int8, scale (O,) float32) with
    ``t ~= q * scale[:, None, ...]``; an all-zero channel gets scale 1 (its q is 0)."""
    flat = t.detach().float().reshape(t.shape[0], -1)  # (O, K)
    scale = flat.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(flat / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(t.shape).contiguous(), scale.contiguous()


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`quantize_int8` -> float32 tensor of ``q``'s shape."""
    return (q.float().reshape(q.shape[0], -1) * scale.float()[:, None]).reshape(q.shape)
