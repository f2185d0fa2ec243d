"""Necks: FPN (optionally the E-FPN-BS neck with CEM + FBSM) and the YOLO PAN.

Input is the backbone's named dict ``{"c2".."c5"}``; output a named pyramid ``{"p2".."p7"}`` plus, on request,
a :class:`~efpn.models.outputs.NeckInternals` (the FPN's own levels, CEM, FBSM, dynamic kernels) as a return value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efpn.layers.conv import ConvBNAct
from efpn.models.backbones import call_collecting
from efpn.models.blocks import C3, C2f, scaled_depth
from efpn.models.outputs import KernelLayer, NeckInternals
from efpn.vocab import level_stride

NeckOutput = dict[str, Tensor] | tuple[dict[str, Tensor], NeckInternals]


class FPN(nn.Module):
    """Feature pyramid (top-down, nearest upsampling, sum) with extra coarse levels by stride-2 convs.

    ``levels``: output levels, contiguous, e.g. ``("p2".."p6")`` or ``("p3".."p7")``. Levels ``p_i`` with i <= 5
    come from backbone stage ``c_i`` (must be in ``in_channels``); coarser ones from a stride-2 3x3 conv on the
    previous output (ReLU between p6 and p7, as RetinaNet). ``cem``: an optional module taking and returning the
    pyramid dict (E-FPN-BS context enhancement); ``fbsm``: optional per-level gating modules applied after CEM.
    """

    def __init__(
        self,
        in_channels: Mapping[str, int],
        levels: Sequence[str] = ("p2", "p3", "p4", "p5", "p6"),
        channels: int = 256,
        cem: nn.Module | None = None,
        fbsm: Mapping[str, nn.Module] | None = None,
    ):
        super().__init__()
        idx = [int(lv[1:]) for lv in levels]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise ValueError(f"FPN levels must be contiguous, got {list(levels)}")
        self.levels = tuple(levels)
        self.channels = channels
        self.backbone_levels = tuple(f"c{i}" for i in idx if i <= 5)
        missing = [c for c in self.backbone_levels if c not in in_channels]
        if missing:
            raise ValueError(f"FPN levels {list(levels)} need backbone stages {missing}, not provided")
        self.lateral = nn.ModuleDict({c: nn.Conv2d(in_channels[c], channels, 1) for c in self.backbone_levels})
        self.output = nn.ModuleDict(
            {f"p{c[1:]}": nn.Conv2d(channels, channels, 3, padding=1) for c in self.backbone_levels}
        )
        self.extra = nn.ModuleDict(
            {f"p{i}": nn.Conv2d(channels, channels, 3, stride=2, padding=1) for i in idx if i > 5}
        )
        self.cem = cem
        self.fbsm = nn.ModuleDict(dict(fbsm)) if fbsm else None
        for m in [*self.lateral.values(), *self.output.values(), *self.extra.values()]:
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)

    def trunk(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The plain FPN: top-down lateral sums, 3x3 output convs, extra coarse levels -> ``{p*: (N, C, H, W)}``."""
        out: dict[str, Tensor] = {}
        prev: Tensor | None = None
        for c in reversed(self.backbone_levels):  # coarsest backbone level first
            lat = self.lateral[c](feats[c])  # (N, C, H_c, W_c)
            if prev is not None:
                lat = lat + F.interpolate(prev, size=lat.shape[-2:], mode="nearest")
            prev = lat
            out[f"p{c[1:]}"] = self.output[f"p{c[1:]}"](lat)
        last = out[f"p{self.backbone_levels[-1][1:]}"]
        for name, conv in self.extra.items():
            last = conv(last if name == "p6" else F.relu(last))  # (N, C, H/2, W/2)
            out[name] = last
        return {lv: out[lv] for lv in self.levels}

    def enhance(
        self, pyramid: Mapping[str, Tensor], return_internals: bool = False, bypass_cem: bool = False
    ) -> NeckOutput:
        """E-FPN-BS on top of the trunk: CEM (unless absent or bypassed), then the FBSM gates."""
        internals = NeckInternals(fpn=dict(pyramid)) if return_internals else None
        pyramid = dict(pyramid)
        if self.cem is not None and not bypass_cem:
            if internals is not None:
                pyramid, internals.cem = self.cem(pyramid, return_internals=True)
            else:
                pyramid = self.cem(pyramid)
        if self.fbsm is not None:
            pyramid = dict(pyramid)
            for lv, gate in self.fbsm.items():
                if internals is not None:
                    pyramid[lv], internals.gates[lv] = gate(pyramid[lv], return_internals=True)
                else:
                    pyramid[lv] = gate(pyramid[lv])
        return (pyramid, internals) if internals is not None else pyramid

    def forward(
        self, feats: Mapping[str, Tensor], return_internals: bool = False, bypass_cem: bool = False
    ) -> NeckOutput:
        """``bypass_cem=True`` skips CEM for this call only (the "without CEM" counterfactual; no state changes)."""
        return self.enhance(self.trunk(feats), return_internals=return_internals, bypass_cem=bypass_cem)

    def level_conv(self, level: str) -> nn.Module | None:
        """The conv that produces pyramid level ``level`` (output or extra-level conv), None for an unknown one."""
        for convs in (self.output, self.extra):
            if level in convs:
                return convs[level]
        return None


#: Factory for the PAN's bottom-up stride-2 convs: ``(name, c_in, c_out) -> module``.
PanDownFactory = Callable[[str, int, int], nn.Module]


def _plain_down(name: str, c_in: int, c_out: int) -> nn.Module:
    return ConvBNAct(c_in, c_out, 3, 2)


class PAN(nn.Module):
    """YOLO path-aggregation neck over ``c3, c4, c5`` -> ``p3, p4, p5``.

    ``variant="c3"`` is the YOLOv5 head (1x1 reductions before upsampling, C3 blocks without shortcut);
    ``"c2f"`` the YOLOv8 one (direct concatenation, C2f blocks). Output channels equal the backbone's
    (``out_channels`` published as data).
    """

    def __init__(
        self,
        in_channels: Mapping[str, int],
        variant: str = "c2f",
        depth: float = 0.33,
        downsample: PanDownFactory = _plain_down,
    ):
        super().__init__()
        if variant not in ("c3", "c2f"):
            raise ValueError(f"PAN variant must be 'c3' or 'c2f', got {variant!r}")
        c3, c4, c5 = (in_channels[k] for k in ("c3", "c4", "c5"))
        n = scaled_depth(3, depth)
        self.variant = variant
        self.levels = ("p3", "p4", "p5")
        self.out_channels = {"p3": c3, "p4": c4, "p5": c5}
        if variant == "c3":
            self.reduce5 = ConvBNAct(c5, c4, 1)  # 256 -> 128 (n widths)
            self.td4 = C3(2 * c4, c4, n, shortcut=False)
            self.reduce4 = ConvBNAct(c4, c3, 1)
            self.td3 = C3(2 * c3, c3, n, shortcut=False)
            self.down3 = downsample("pan.down3", c3, c3)
            self.bu4 = C3(2 * c3, c4, n, shortcut=False)
            self.down4 = downsample("pan.down4", c4, c4)
            self.bu5 = C3(2 * c4, c5, n, shortcut=False)
        else:
            self.td4 = C2f(c5 + c4, c4, n)
            self.td3 = C2f(c4 + c3, c3, n)
            self.down3 = downsample("pan.down3", c3, c3)
            self.bu4 = C2f(c3 + c4, c4, n)
            self.down4 = downsample("pan.down4", c4, c4)
            self.bu5 = C2f(c4 + c5, c5, n)

    def _down(self, module: nn.Module, x: Tensor, kernels: dict[str, KernelLayer] | None, name: str, level: str
              ) -> Tensor:
        """A bottom-up stride-2 step from ``level``; its output lies at twice that level's stride."""
        return call_collecting(module, x, kernels, name, 2 * level_stride(level))

    def forward(self, feats: Mapping[str, Tensor], return_internals: bool = False, bypass_cem: bool = False
                ) -> NeckOutput:
        """``bypass_cem`` is accepted for a uniform neck call and changes nothing: a PAN has no CEM."""
        kernels: dict[str, KernelLayer] | None = {} if return_internals else None
        c3, c4, c5 = feats["c3"], feats["c4"], feats["c5"]
        up = nn.functional.interpolate
        if self.variant == "c3":
            r5 = self.reduce5(c5)  # (N, C4, H/32, W/32)
            t4 = self.td4(torch.cat((up(r5, size=c4.shape[-2:], mode="nearest"), c4), 1))
            r4 = self.reduce4(t4)  # (N, C3, H/16, W/16)
            p3 = self.td3(torch.cat((up(r4, size=c3.shape[-2:], mode="nearest"), c3), 1))
            p4 = self.bu4(torch.cat((self._down(self.down3, p3, kernels, "pan.down3", "p3"), r4), 1))
            p5 = self.bu5(torch.cat((self._down(self.down4, p4, kernels, "pan.down4", "p4"), r5), 1))
        else:
            t4 = self.td4(torch.cat((up(c5, size=c4.shape[-2:], mode="nearest"), c4), 1))
            p3 = self.td3(torch.cat((up(t4, size=c3.shape[-2:], mode="nearest"), c3), 1))
            p4 = self.bu4(torch.cat((self._down(self.down3, p3, kernels, "pan.down3", "p3"), t4), 1))
            p5 = self.bu5(torch.cat((self._down(self.down4, p4, kernels, "pan.down4", "p4"), c5), 1))
        pyramid = {"p3": p3, "p4": p4, "p5": p5}
        if kernels is None:
            return pyramid
        return pyramid, NeckInternals(fpn=dict(pyramid), kernels=kernels)

    def level_conv(self, level: str) -> nn.Module | None:
        """PAN levels come out of CSP blocks, not one output conv: None (nothing to measure separately)."""
        return None
