"""CSP building blocks of the YOLO family: Bottleneck, C3 (YOLOv5), C2f (YOLOv8), SPPF.

Channel arithmetic follows the published YOLOv5/YOLOv8 nano definitions so that parameter counts match the
reference sizes (SPEC §7); the code is our own.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor, nn

from efpn.layers.conv import ConvBNAct


class Bottleneck(nn.Module):
    """Two convs with an optional residual: ``x + cv2(cv1(x))`` when shapes allow and ``shortcut``."""

    def __init__(self, c_in: int, c_out: int, shortcut: bool = True, k1: int = 1, k2: int = 3, e: float = 1.0):
        super().__init__()
        hidden = int(c_out * e)
        self.cv1 = ConvBNAct(c_in, hidden, k1)
        self.cv2 = ConvBNAct(hidden, c_out, k2)
        self.add = shortcut and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """YOLOv5 CSP block: two 1x1 branches, ``n`` bottlenecks on one, 1x1 fusion of both (c_out channels)."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True, e: float = 0.5):
        super().__init__()
        hidden = int(c_out * e)
        self.cv1 = ConvBNAct(c_in, hidden, 1)
        self.cv2 = ConvBNAct(c_in, hidden, 1)
        self.cv3 = ConvBNAct(2 * hidden, c_out, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, k1=1, k2=3) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class C2f(nn.Module):
    """YOLOv8 CSP block: split a 1x1 projection in two, chain ``n`` bottlenecks on one half, keep every
    intermediate, and fuse ``(2 + n)`` chunks with a 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False, e: float = 0.5):
        super().__init__()
        self.c = int(c_out * e)
        self.cv1 = ConvBNAct(c_in, 2 * self.c, 1)
        self.cv2 = ConvBNAct((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, k1=3, k2=3) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        chunks = list(self.cv1(x).chunk(2, dim=1))  # 2 x (N, c, H, W)
        for block in self.m:
            chunks.append(block(chunks[-1]))
        return self.cv2(torch.cat(chunks, dim=1))  # (N, (2+n)c, H, W) -> (N, c_out, H, W)


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools, concatenated, fused by a 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, k: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBNAct(c_in, hidden, 1)
        self.cv2 = ConvBNAct(hidden * 4, c_out, 1)
        self.pool = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)  # (N, C/2, H, W)
        if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous() and x.shape[1] > 1:
            # PyTorch's CPU max-pool over a contiguous (N, C, H, W) map parallelises over its small planes and took
            # ~1.7 ms a call on a YOLOv8n p5 map of 10 x 10 in training, 3 calls per forward; over the channels-last
            # rows of the same values it is several times faster, and so is the cat there. Same values either way.
            xc = x.contiguous(memory_format=torch.channels_last)
            y1 = self.pool(xc)
            y2 = self.pool(y1)
            return self.cv2(torch.cat((xc, y1, y2, self.pool(y2)), dim=1).contiguous())  # back to x's layout
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat((x, y1, y2, self.pool(y2)), dim=1))


def make_divisible(x: float, divisor: int = 8) -> int:
    """Round a scaled channel count up to a multiple of ``divisor`` (YOLO width scaling)."""
    return int(-(-x // divisor) * divisor)


def scaled_depth(n: int, depth: float) -> int:
    """YOLO depth scaling: ``max(round(n * depth), 1)`` repeats."""
    return max(round(n * depth), 1) if n > 1 else n


@functools.cache
def _accepts_internals(cls: type) -> bool:
    return "return_internals" in inspect.signature(cls.forward).parameters


def supports_internals(module: nn.Module) -> bool:
    """True when ``module.forward`` takes ``return_internals`` (SGDM, RDConv, CBAM, CEM, FBSM)."""
    return _accepts_internals(type(module))
