"""Backbones: CSPDarknet (C3 = YOLOv5, C2f = YOLOv8 flavours) and torchvision ResNet.

Both return a named dict of stage outputs ``{"c2".."c5"}`` and publish ``out_channels`` / ``strides`` as data.
Nothing is downloaded: ResNet weights come from random init or a local state-dict file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from efpn.layers.conv import ConvBNAct
from efpn.layers.internals import KernelInternals
from efpn.models.blocks import C3, SPPF, C2f, make_divisible, scaled_depth, supports_internals
from efpn.models.outputs import KernelLayer
from efpn.models.pretrained import load_backbone_state

#: ``{c*: features}``, or with ``return_internals`` that and ``{layer name: KernelLayer}``.
BackboneOutput = dict[str, Tensor] | tuple[dict[str, Tensor], dict[str, KernelLayer]]

#: (stage name, base channels, base repeats for C3, base repeats for C2f); stride of c{i} is 2**i.
_CSP_STAGES: tuple[tuple[str, int, int, int], ...] = (
    ("c2", 128, 3, 3),
    ("c3", 256, 6, 6),
    ("c4", 512, 9, 6),
    ("c5", 1024, 3, 3),
)

#: A factory for a stage's stride-2 entry conv: ``(stage_name, c_in, c_out) -> module``.
DownsampleFactory = Callable[[str, int, int], nn.Module]


def plain_downsample(stage: str, c_in: int, c_out: int) -> nn.Module:
    """The default stride-2 3x3 ConvBNAct (what SGDM replaces)."""
    return ConvBNAct(c_in, c_out, 3, 2)


def call_collecting(
    module: nn.Module, x: Tensor, kernels: dict[str, KernelLayer] | None, name: str, stride: int
) -> Tensor:
    """Run ``module``; when ``kernels`` is a dict and the module reveals per-pixel kernels (RDConv, SGDM), record
    them as ``kernels[name]`` with the output ``stride`` in input pixels. Other internals (CBAM) are not kept."""
    if kernels is not None and supports_internals(module):
        out, inner = module(x, return_internals=True)
        if isinstance(inner, KernelInternals):
            kernels[name] = KernelLayer(name, stride, inner)
        return out
    return module(x)


class CSPDarknet(nn.Module):
    """YOLO CSPDarknet.

    ``variant="c3"``: YOLOv5 (6x6 stride-2 stem, C3 blocks with shortcuts); ``"c2f"``: YOLOv8 (3x3 stem, C2f).
    ``width``/``depth`` scale channels and repeats (n: 0.25/0.33, s: 0.5/0.33). ``downsample`` builds each stage's
    stride-2 entry conv, so SGDM/CBAM can be placed per stage without flags inside the backbone.
    Output: ``{name: (N, C_name, H/stride, W/stride)}`` for ``out_levels`` (subset of c2..c5; c5 is after SPPF).
    """

    def __init__(
        self,
        variant: str = "c2f",
        width: float = 0.25,
        depth: float = 0.33,
        out_levels: Sequence[str] = ("c3", "c4", "c5"),
        downsample: DownsampleFactory = plain_downsample,
    ):
        super().__init__()
        if variant not in ("c3", "c2f"):
            raise ValueError(f"CSPDarknet variant must be 'c3' or 'c2f', got {variant!r}")
        valid = [s[0] for s in _CSP_STAGES]
        bad = [lv for lv in out_levels if lv not in valid]
        if bad:
            raise ValueError(f"unknown backbone levels {bad}; CSPDarknet provides {valid}")
        self.variant = variant
        self.out_levels = tuple(out_levels)
        c_stem = make_divisible(64 * width)
        # YOLOv5 v6+ uses a 6x6 stride-2 stem; YOLOv8 a 3x3 one.
        self.stem = ConvBNAct(3, c_stem, 6, 2, 2) if variant == "c3" else ConvBNAct(3, c_stem, 3, 2)
        self.stages = nn.ModuleDict()
        self.out_channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        c_prev = c_stem
        for name, base_c, n_c3, n_c2f in _CSP_STAGES:
            c = make_divisible(base_c * width)
            if variant == "c3":
                block: nn.Module = C3(c, c, scaled_depth(n_c3, depth), shortcut=True)
            else:
                block = C2f(c, c, scaled_depth(n_c2f, depth), shortcut=True)
            layers = [downsample(name, c_prev, c), block]
            if name == "c5":
                layers.append(SPPF(c, c, 5))
            self.stages[name] = nn.ModuleList(layers)
            self.out_channels[name] = c
            self.strides[name] = 2 ** int(name[1:])
            c_prev = c

    def forward(self, x: Tensor, return_internals: bool = False) -> BackboneOutput:
        """``{c*: (N, C, H/s, W/s)}``; with ``return_internals`` also ``{"c3.down": KernelLayer, ...}`` for stages
        whose stride-2 entry is a dynamic convolution."""
        internals: dict[str, KernelLayer] | None = {} if return_internals else None
        x = self.stem(x)  # (N, 3, H, W) -> (N, C1, H/2, W/2)
        feats: dict[str, Tensor] = {}
        for name, layers in self.stages.items():
            # stride-2 entry: (N, C, H/s, W/s)
            x = call_collecting(layers[0], x, internals, f"{name}.down", self.strides[name])
            for layer in layers[1:]:
                x = layer(x)
            if name in self.out_levels:
                feats[name] = x
        return (feats, internals) if internals is not None else feats


class ResNetBackbone(nn.Module):
    """torchvision ResNet-18/50 trunk returning ``{"c2".."c5"}`` (strides 4..32).

    ``weights``: optional local path to a torchvision ``state_dict`` (``.pth`` saved tensors, loaded with
    ``weights_only=True``, or ``.safetensors``); the classifier head keys are ignored. Nothing is downloaded.
    """

    def __init__(self, depth: int = 18, out_levels: Sequence[str] = ("c3", "c4", "c5"), weights: str | None = None):
        super().__init__()
        builders = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}
        if depth not in builders:
            raise ValueError(f"ResNet depth must be one of {sorted(builders)}, got {depth}")
        net = builders[depth](weights=None)
        if weights:
            _load_local_weights(net, weights)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleDict({"c2": net.layer1, "c3": net.layer2, "c4": net.layer3, "c5": net.layer4})
        widths = (64, 128, 256, 512) if depth == 18 else (256, 512, 1024, 2048)
        bad = [lv for lv in out_levels if lv not in self.layers]
        if bad:
            raise ValueError(f"unknown backbone levels {bad}; ResNet provides {list(self.layers)}")
        self.out_levels = tuple(out_levels)
        self.out_channels = dict(zip(("c2", "c3", "c4", "c5"), widths))
        self.strides = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}

    def forward(self, x: Tensor, return_internals: bool = False) -> BackboneOutput:
        x = self.stem(x)  # (N, 64, H/4, W/4)
        feats: dict[str, Tensor] = {}
        for name, layer in self.layers.items():
            x = layer(x)
            if name in self.out_levels:
                feats[name] = x
            if name == self.out_levels[-1]:
                break
        return (feats, {}) if return_internals else feats


def _load_local_weights(net: nn.Module, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"backbone weights file {p} not found (give a local torchvision state_dict file)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"backbone weights {p} do not fit: missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )


class InvertedDown(nn.Module):
    """A MobileNetV2 stride-2 inverted residual split into its parts: 1x1 ``expand`` -> 3x3 depthwise ``spatial``
    (stride 2) -> 1x1 ``project``; no residual (the shape changes). ``spatial`` may be a dynamic convolution that
    wraps the pretrained depthwise conv (SGDM with it as the static branch); its kernels are then internals."""

    def __init__(self, expand: nn.Module, spatial: nn.Module, project: nn.Module):
        super().__init__()
        self.expand = expand
        self.spatial = spatial
        self.project = project

    def forward(self, x: Tensor, return_internals: bool = False) -> Tensor | tuple[Tensor, KernelInternals | None]:
        h = self.expand(x)  # (N, t*C_in, H, W)
        inner: KernelInternals | None = None
        if return_internals and supports_internals(self.spatial):
            h, inner = self.spatial(h, return_internals=True)  # (N, t*C_in, H/2, W/2)
        else:
            h = self.spatial(h)
        y = self.project(h)  # (N, C_out, H/2, W/2)
        return (y, inner) if return_internals else y


#: MobileNetV2 ``features`` index ranges per stage and the index of the stage's stride-2 block.
_MV2_STAGES: dict[str, tuple[int, int, int]] = {"c2": (0, 4, 2), "c3": (4, 7, 4), "c4": (7, 14, 7), "c5": (14, 18, 14)}

#: Wraps a stage's pretrained depthwise stride-2 conv: ``(stage, channels, static) -> module``.
SpatialWrapper = Callable[[str, int, nn.Module], nn.Module]


class MobileNetV2Backbone(nn.Module):
    """torchvision MobileNetV2 ``features[:18]`` as stages ``{c2: 24 ch, c3: 32, c4: 96, c5: 320}`` (strides 4-32).

    ``weights``: a ``state_dict`` in torchvision's layout (e.g. the ImageNet one from
    :func:`efpn.models.pretrained.packaged_state_dict`) or None for random init. ``wrap`` names stages whose
    stride-2 depthwise conv is wrapped by ``wrapper`` (SGDM with the pretrained conv + BN as its static branch);
    the block's ReLU6 moves into the wrapper. Each stage is ``pre`` blocks, the stride-2 ``down``
    (:class:`InvertedDown`) and ``post`` blocks, so the stage outputs equal torchvision's feature maps.
    """

    def __init__(
        self,
        out_levels: Sequence[str] = ("c2", "c3", "c4", "c5"),
        weights: dict[str, Tensor] | None = None,
        wrap: Sequence[str] = (),
        wrapper: SpatialWrapper | None = None,
    ):
        super().__init__()
        net = torchvision.models.mobilenet_v2()
        if weights is not None:
            load_backbone_state(net, weights, "mobilenet_v2")  # strict, but the classifier may be absent
        bad = [lv for lv in out_levels if lv not in _MV2_STAGES]
        if bad:
            raise ValueError(f"unknown backbone levels {bad}; MobileNetV2 provides {list(_MV2_STAGES)}")
        if wrap and wrapper is None:
            raise ValueError("wrap names stages but no wrapper builds the modules")
        feats = net.features
        self.stages = nn.ModuleDict()
        for name, (start, end, down) in _MV2_STAGES.items():
            block = feats[down]
            expand, dw, project_conv, project_bn = block.conv  # Conv2dNormActivation x 2, Conv2d, BatchNorm2d
            spatial: nn.Module = dw
            if name in wrap:
                assert wrapper is not None
                spatial = wrapper(name, dw[0].in_channels, nn.Sequential(dw[0], dw[1]))
            self.stages[name] = nn.ModuleDict({
                "pre": nn.Sequential(*feats[start:down]),
                "down": InvertedDown(expand, spatial, nn.Sequential(project_conv, project_bn)),
                "post": nn.Sequential(*feats[down + 1 : end]),
            })
        self.out_levels = tuple(out_levels)
        self.out_channels = {"c2": 24, "c3": 32, "c4": 96, "c5": 320}
        self.strides = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
        # weights channels-last too: with NCHW weights oneDNN is skipped for the 1x1 convs and every BatchNorm
        # meets a mixed layout (a copy each); load_state_dict and .to(device) keep this layout
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, return_internals: bool = False) -> BackboneOutput:
        internals: dict[str, KernelLayer] | None = {} if return_internals else None
        feats: dict[str, Tensor] = {}
        last = max(self.out_levels, key=lambda lv: self.strides[lv])
        # Channels-last inside: oneDNN's NHWC depthwise convs run 5-8x faster than NCHW on CPU (the stride-2
        # 96-channel one at 320x320: 5 ms vs 39 ms), which halves the backbone; outputs go back to NCHW.
        x = x.contiguous(memory_format=torch.channels_last)
        for name, stage in self.stages.items():
            x = stage["pre"](x)
            x = call_collecting(stage["down"], x, internals, f"{name}.down", self.strides[name])  # (N, C, H/s, W/s)
            x = stage["post"](x)
            if name in self.out_levels:
                feats[name] = x.contiguous()
            if name == last:
                break
        return (feats, internals) if internals is not None else feats
