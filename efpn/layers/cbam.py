"""CBAM (Woo et al., 2018): channel then spatial attention — the comparison block for SGDM (SPEC §6).

``CBAM`` gates a feature map in place (same shape); ``CBAMDown`` is a stride-2 3x3 ``ConvBNAct`` followed by
CBAM, the attention block at exactly SGDM's placement (a drop-in for the downsampling conv).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from efpn.layers.conv import ActLayer, ConvBNAct, check_nchw
from efpn.layers.internals import AttentionInternals


class CBAM(nn.Module):
    """``x' = x * A_c(x) * A_s(x * A_c)``: (N, C, H, W) -> (N, C, H, W).

    Channel attention ``A_c = sigmoid(MLP(avgpool x) + MLP(maxpool x))`` (N, C, 1, 1), one MLP ``C -> max(1, C
    // reduction) -> C`` shared by both pools. Spatial attention ``A_s = sigmoid(BN(conv_kxk([mean_c,
    max_c])))`` (N, 1, H, W) on the channel-gated map. ``forward(x, return_internals=True)`` -> ``(x',
    AttentionInternals)``.
    """

    exposes_internals = True

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7):
        super().__init__()
        if spatial_kernel < 1 or spatial_kernel % 2 == 0:
            raise ValueError(f"spatial_kernel must be odd, got {spatial_kernel}")
        self.channels = channels
        # At least 4 hidden units: with 1-2 a ReLU unit can start dead and the MLP never learns (narrow stages).
        hidden = max(min(4, channels), channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)
        self.spatial_bn = nn.BatchNorm2d(1, eps=1e-3, momentum=0.03)

    def forward(self, x: Tensor, return_internals: bool = False) -> Tensor | tuple[Tensor, AttentionInternals]:
        check_nchw(x, self.channels, type(self).__name__)
        ca = torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        xc = x * ca  # (N, C, H, W), ca (N, C, 1, 1)
        desc = torch.cat([xc.mean(1, keepdim=True), xc.amax(1, keepdim=True)], 1)  # (N, 2, H, W)
        sa = torch.sigmoid(self.spatial_bn(self.spatial(desc)))  # (N, 1, H, W)
        out = xc * sa
        if return_internals:
            return out, AttentionInternals(channel=ca, spatial=sa)
        return out


class CBAMDown(nn.Module):
    """``CBAM(ConvBNAct(c_in, c_out, 3, stride)(x))``: (N, c_in, H, W) -> (N, c_out, ceil(H/s), ceil(W/s)).

    Internals are CBAM's (on the downsampled map).
    """

    exposes_internals = True

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 2,
        reduction: int = 16,
        spatial_kernel: int = 7,
        act_layer: ActLayer = nn.SiLU,
    ):
        super().__init__()
        self.c_in = c_in
        self.conv = ConvBNAct(c_in, c_out, 3, stride, act_layer=act_layer)
        self.cbam = CBAM(c_out, reduction, spatial_kernel)

    def forward(self, x: Tensor, return_internals: bool = False) -> Tensor | tuple[Tensor, AttentionInternals]:
        check_nchw(x, self.c_in, type(self).__name__)
        return self.cbam(self.conv(x), return_internals=return_internals)
