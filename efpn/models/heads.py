"""Dense heads. Heads only predict: they never assign, compute losses or decode.

Every head maps a named pyramid ``{"p3": (N, C_l, H_l, W_l), ...}`` to a :class:`HeadOutput` whose per-prior
tensors are flattened level by level, then y, x, anchor — the order of :class:`efpn.det.priors.Priors` — and
builds its own priors for the given feature sizes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from efpn.det.priors import Priors, anchor_priors, point_priors, yolo_priors
from efpn.layers.conv import ConvBNAct


@dataclass
class HeadOutput:
    """Raw per-prior predictions over all levels (R = Σ_l H_l·W_l·A).

    ``cls_logits`` (N, R, K); ``box`` (N, R, 4) deltas/raw values, or (N, R, 4·reg_max) DFL logits;
    ``obj_logits`` (N, R) for YOLOv5, else None; ``feature_sizes`` {level: (H_l, W_l)}.
    """

    cls_logits: Tensor
    box: Tensor
    obj_logits: Tensor | None
    feature_sizes: dict[str, tuple[int, int]]

    def to(self, device: torch.device | str) -> HeadOutput:
        """The same predictions on ``device``."""
        obj = None if self.obj_logits is None else self.obj_logits.to(device)
        return HeadOutput(self.cls_logits.to(device), self.box.to(device), obj, dict(self.feature_sizes))

    def image(self, i: int) -> HeadOutput:
        """Image ``i``'s predictions as a detached float batch of one (1, R, ...) — what an inspection keeps."""
        def one(t: Tensor) -> Tensor:
            return t[i : i + 1].detach().float()

        obj = None if self.obj_logits is None else one(self.obj_logits)
        return HeadOutput(one(self.cls_logits), one(self.box), obj, dict(self.feature_sizes))


def _flatten(x: Tensor, num_anchors: int) -> Tensor:
    """(N, A*D, H, W) -> (N, H*W*A, D): the priors' y, x, anchor order."""
    n, _, h, w = x.shape
    return x.view(n, num_anchors, -1, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * num_anchors, -1)


def _sizes(feats: Mapping[str, Tensor]) -> dict[str, tuple[int, int]]:
    """``{level: (H_l, W_l)}``. While tracing (an ONNX export) the sizes stay the tracer's 0-dim tensors, so the
    priors built from them follow the input's size in a graph exported with dynamic height and width."""
    if torch.jit.is_tracing():
        return {lv: (f.shape[-2], f.shape[-1]) for lv, f in feats.items()}
    return {lv: (int(f.shape[-2]), int(f.shape[-1])) for lv, f in feats.items()}


def _conv3x3(c_in: int, c_out: int, separable: bool) -> nn.Module:
    """A 3x3 conv, or its depthwise-separable form (depthwise 3x3 without bias, then pointwise 1x1)."""
    if not separable:
        return nn.Conv2d(c_in, c_out, 3, padding=1)
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False), nn.Conv2d(c_in, c_out, 1))


class RetinaHead(nn.Module):
    """RetinaNet-style head: one cls tower and one box tower (``num_convs`` 3x3 conv + GroupNorm + ReLU), shared
    across levels, over ``num_anchors`` anchors per location. Focal-loss bias prior on the classifier.

    ``separable``: every 3x3 conv is depthwise 3x3 + pointwise 1x1 (as light heads such as NanoDet's do), for a
    head whose cost at p2 no longer dwarfs the backbone's.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        levels: Sequence[str],
        num_anchors: int = 9,
        num_convs: int = 4,
        prior_prob: float = 0.01,
        anchor_scale: float = 4.0,
        anchor_scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        separable: bool = False,
    ):
        super().__init__()
        if num_anchors != len(anchor_scales) * len(anchor_ratios):
            raise ValueError("num_anchors must equal len(anchor_scales) * len(anchor_ratios)")
        self.levels = tuple(levels)
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.anchor_scale = anchor_scale
        self.anchor_scales = tuple(anchor_scales)
        self.anchor_ratios = tuple(anchor_ratios)
        self.separable = separable
        groups = 32 if channels % 32 == 0 and channels >= 128 else max(1, channels // 8)

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(num_convs):
                layers += [_conv3x3(channels, channels, separable), nn.GroupNorm(groups, channels), nn.ReLU()]
            return nn.Sequential(*layers)

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls_out = _conv3x3(channels, num_anchors * num_classes, separable)
        self.box_out = _conv3x3(channels, num_anchors * 4, separable)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m.groups > 1:  # depthwise: a plain 3x3 spatial filter per channel (kaiming, as torchvision)
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                else:
                    nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        cls_final = self.cls_out[-1] if isinstance(self.cls_out, nn.Sequential) else self.cls_out
        nn.init.constant_(cls_final.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: Mapping[str, Tensor]) -> HeadOutput:
        cls, box = [], []
        for lv in self.levels:
            f = feats[lv]
            if self.separable:  # oneDNN's depthwise convs are several times faster channels-last on CPU
                f = f.contiguous(memory_format=torch.channels_last)
            cls.append(_flatten(self.cls_out(self.cls_tower(f)), self.num_anchors))  # (N, H*W*A, K)
            box.append(_flatten(self.box_out(self.box_tower(f)), self.num_anchors))  # (N, H*W*A, 4)
        sizes = _sizes({lv: feats[lv] for lv in self.levels})
        return HeadOutput(torch.cat(cls, 1), torch.cat(box, 1), None, sizes)

    def priors(self, feature_sizes: Mapping[str, tuple[int, int]], device: torch.device | None = None) -> Priors:
        return anchor_priors(
            dict(feature_sizes), self.anchor_scale, self.anchor_scales, self.anchor_ratios, device=device
        )


class YOLOv5Head(nn.Module):
    """YOLOv5 detect layer: a 1x1 conv per level to ``A * (5 + K)`` (box 4, objectness 1, classes K)."""

    def __init__(
        self,
        in_channels: Mapping[str, int],
        num_classes: int,
        anchors: Sequence[Sequence[float]],
        image_size: int = 640,
    ):
        super().__init__()
        self.levels = tuple(in_channels)
        self.num_classes = num_classes
        self.num_anchors = len(anchors[0]) // 2
        self.anchors = tuple(tuple(a) for a in anchors)
        self.out = nn.ModuleDict(
            {lv: nn.Conv2d(c, self.num_anchors * (5 + num_classes), 1) for lv, c in in_channels.items()}
        )
        # Bias priors as in YOLOv5: ~8 objects per 640 image, class prior 0.6 / K.
        for lv, conv in self.out.items():
            stride = 2 ** int(lv[1:])
            b = conv.bias.view(self.num_anchors, -1).detach().clone()
            b[:, 4] += math.log(8 / (image_size / stride) ** 2)
            b[:, 5:] += math.log(0.6 / (num_classes - 0.99)) if num_classes > 1 else 0.0
            conv.bias = nn.Parameter(b.view(-1))

    def forward(self, feats: Mapping[str, Tensor]) -> HeadOutput:
        outs = [_flatten(self.out[lv](feats[lv]), self.num_anchors) for lv in self.levels]  # (N, HWA, 5+K)
        raw = torch.cat(outs, 1)
        return HeadOutput(raw[..., 5:], raw[..., :4], raw[..., 4], _sizes({lv: feats[lv] for lv in self.levels}))

    def priors(self, feature_sizes: Mapping[str, tuple[int, int]], device: torch.device | None = None) -> Priors:
        return yolo_priors(dict(feature_sizes), self.anchors, device=device)


class YOLOv8Head(nn.Module):
    """YOLOv8 decoupled anchor-free head: per level a box branch (two 3x3 ConvBNAct + 1x1 to 4·reg_max DFL bins)
    and a class branch (two 3x3 ConvBNAct + 1x1 to K)."""

    def __init__(self, in_channels: Mapping[str, int], num_classes: int, reg_max: int = 16, image_size: int = 640):
        super().__init__()
        self.levels = tuple(in_channels)
        self.num_classes = num_classes
        self.reg_max = reg_max
        c_first = next(iter(in_channels.values()))
        c_box = max(16, c_first // 4, reg_max * 4)
        c_cls = max(c_first, min(num_classes, 100))
        self.box = nn.ModuleDict(
            {
                lv: nn.Sequential(ConvBNAct(c, c_box, 3), ConvBNAct(c_box, c_box, 3), nn.Conv2d(c_box, 4 * reg_max, 1))
                for lv, c in in_channels.items()
            }
        )
        self.cls = nn.ModuleDict(
            {
                lv: nn.Sequential(ConvBNAct(c, c_cls, 3), ConvBNAct(c_cls, c_cls, 3), nn.Conv2d(c_cls, num_classes, 1))
                for lv, c in in_channels.items()
            }
        )
        for lv in self.levels:  # YOLOv8 bias priors
            stride = 2 ** int(lv[1:])
            nn.init.constant_(self.box[lv][-1].bias, 1.0)
            nn.init.constant_(self.cls[lv][-1].bias, math.log(5 / num_classes / (image_size / stride) ** 2))

    def forward(self, feats: Mapping[str, Tensor]) -> HeadOutput:
        box = [_flatten(self.box[lv](feats[lv]), 1) for lv in self.levels]  # (N, HW, 4·reg_max)
        cls = [_flatten(self.cls[lv](feats[lv]), 1) for lv in self.levels]  # (N, HW, K)
        return HeadOutput(torch.cat(cls, 1), torch.cat(box, 1), None, _sizes({lv: feats[lv] for lv in self.levels}))

    def priors(self, feature_sizes: Mapping[str, tuple[int, int]], device: torch.device | None = None) -> Priors:
        return point_priors(dict(feature_sizes), device=device)
