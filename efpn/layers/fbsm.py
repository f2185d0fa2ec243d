"""FBSM — Foreground-Background Separation Module (SPEC §3), plus its box-mask target and gate statistics.

    h      = act(BN(conv3x3(x, C -> hidden)))                  (N, hidden, H, W)
    logits = conv3x3([h, mean_c x, max_c x], hidden + 2 -> 2)  (N, 2, H, W)  channels: background, foreground
    M      = softmax(logits)[:, 1:2]                           (N, 1, H, W)  in [0, 1]
    x'     = x * (1 + beta * M)  [ - delta * x * (1 - M) ]     beta init 1, delta init 0

The gate only amplifies at initialisation (``1 <= 1 + beta*M <= 2``), so it never erases a feature before it
has learned where the foreground is; background suppression is opt-in and starts switched off (delta = 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from efpn.layers.conv import ActLayer, ConvBNAct, check_nchw
from efpn.layers.internals import GateInternals

#: Initial foreground probability of the gate.
FG_PRIOR = 0.01


class FBSM(nn.Module):
    """Foreground gate on one pyramid level: (N, C, H, W) -> (N, C, H, W).

    ``forward(x, return_internals=True)`` -> ``(x', GateInternals)``: M (N, 1, H, W) and its logits (N, 2, H, W);
    train the mask with :func:`box_mask_target` (focal BCE on ``logits[:, 1] - logits[:, 0]``, M's logit).
    """

    exposes_internals = True

    def __init__(
        self,
        channels: int,
        hidden_channels: int = 64,
        bg_suppression: bool = False,
        act_layer: ActLayer = nn.SiLU,
    ):
        super().__init__()
        self.channels = channels
        self.hidden = ConvBNAct(channels, hidden_channels, 3, act_layer=act_layer)
        # + 2 CBAM-style cues (channel mean and max) that stay cheap and saliency-like whatever C is
        self.classifier = nn.Conv2d(hidden_channels + 2, 2, 3, padding=1)
        # foreground prior 0.01 (RetinaNet's focal-loss init): at 0.5 the tens of thousands of background cells of
        # p2/p3 dominate the mask loss (normalised by the few foreground cells of tiny objects) for many steps
        nn.init.constant_(self.classifier.bias, 0.0)
        with torch.no_grad():
            self.classifier.bias[1] = math.log(FG_PRIOR / (1 - FG_PRIOR))
        self.beta = nn.Parameter(torch.ones(()))
        self.delta = nn.Parameter(torch.zeros(())) if bg_suppression else None

    def forward(self, x: Tensor, return_internals: bool = False) -> Tensor | tuple[Tensor, GateInternals]:
        check_nchw(x, self.channels, type(self).__name__)
        h = self.hidden(x)  # (N, hidden, H, W)
        cues = torch.cat([h, x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)  # (N, hidden + 2, H, W)
        logits = self.classifier(cues)  # (N, 2, H, W): [background, foreground]
        mask = logits.softmax(1)[:, 1:2]  # (N, 1, H, W) in [0, 1]
        out = x * (1 + self.beta * mask)
        if self.delta is not None:
            out = out - self.delta * x * (1 - mask)
        if return_internals:
            return out, GateInternals(mask=mask, logits=logits, beta=self.beta, delta=self.delta)
        return out


@torch.no_grad()
def box_mask_target(boxes_list: list[Tensor], size_hw: tuple[int, int], stride: int) -> Tensor:
    """Rasterise xyxy pixel boxes onto ``size_hw = (H, W)`` cells of ``stride`` px: -> (N, 1, H, W) float.

    Cell (i, j) covers pixels ``[j*s, (j+1)*s) x [i*s, (i+1)*s)``, centre ``((j+0.5)s, (i+0.5)s)``. A box
    marks every cell whose centre lies inside it, and always the cell holding its own centre (otherwise a
    4 px object would mark nothing at stride 8). Boxes are clipped to the grid's extent first; boxes wholly
    outside it (or with x2 < x1) mark nothing. ``N = len(boxes_list)``; an image without boxes gives zeros.
    """
    h, w = size_hw
    if stride < 1 or h < 0 or w < 0:
        raise ValueError(f"box_mask_target: need stride >= 1 and H, W >= 0, got {stride=}, {size_hw=}")
    device = boxes_list[0].device if boxes_list else torch.device("cpu")
    out = torch.zeros(len(boxes_list), 1, h, w, device=device)
    for n, boxes in enumerate(boxes_list):
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"box_mask_target: boxes[{n}] must be (M, 4) xyxy, got {tuple(boxes.shape)}")
        if boxes.numel() == 0 or h == 0 or w == 0:
            continue
        b = boxes.to(device=device, dtype=torch.float32)
        inside = (b[:, 0] < w * stride) & (b[:, 1] < h * stride) & (b[:, 2] > 0) & (b[:, 3] > 0)
        inside &= (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
        b = b[inside]
        if b.numel() == 0:
            continue
        limit = b.new_tensor([w, h, w, h]) * stride
        b = torch.minimum(b.clamp(min=0), limit)  # (M, 4), clipped to the grid
        rows = _cell_span(b[:, 1], b[:, 3], stride, h)  # (M, H) bool
        cols = _cell_span(b[:, 0], b[:, 2], stride, w)  # (M, W) bool
        # union over boxes of row-span x col-span as one (H, M) @ (M, W) product, never an (M, H, W) tensor
        out[n, 0] = (rows.T.float() @ cols.float()).clamp_(max=1.0)
    return out


def _cell_span(lo: Tensor, hi: Tensor, stride: int, size: int) -> Tensor:
    """(M,) extents on one axis -> (M, size) bool: cells with centre in [lo, hi], plus the box-centre cell."""
    idx = torch.arange(size, device=lo.device)
    centres = (idx + 0.5) * stride  # (size,)
    span = (centres[None] >= lo[:, None]) & (centres[None] <= hi[:, None])  # (M, size)
    centre_cell = ((lo + hi) / 2 / stride).floor().long().clamp(0, size - 1)  # (M,)
    span[torch.arange(len(lo), device=lo.device), centre_cell] = True
    return span


def gate_mass_inside(mask: Tensor, target: Tensor) -> Tensor:
    """Share of the gate's mass inside the boxes, ``Σ M·T / Σ M`` per image: (N, 1, H, W) x2 -> (N,).

    0 for an image whose mask sums to 0.
    """
    if mask.shape != target.shape or mask.dim() != 4:
        raise ValueError(
            f"gate_mass_inside: mask and target must be equal (N, 1, H, W) shapes, "
            f"got {tuple(mask.shape)} and {tuple(target.shape)}"
        )
    total = mask.sum((1, 2, 3))
    inside = (mask * target).sum((1, 2, 3))
    share = inside / total.clamp_min(torch.finfo(mask.dtype).tiny)
    return torch.where(total > 0, share, torch.zeros_like(total))
