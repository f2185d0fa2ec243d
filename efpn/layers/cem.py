"""CEM — Context Enhancement Module (SPEC §2): coarse-level context (p5, p6) fed into fine levels (p2, p3).

For every target level t (shapes for C = in_channels, C_m = mid_channels, H_t x W_t the target size):

    local_s  = align_{s->t}(resize_t(act(BN(conv1x1(p_s, C -> C_m)))))    (N, C_m, H_t, W_t) per source s
    global   = act(Linear([GAP p_s for s], S*C -> C_m)), broadcast         (N, C_m, H_t, W_t)
    F_t      = conv1x1([local_s..., global], B*C_m -> C)                   (N, C, H_t, W_t), B = branches
    p_t'     = p_t + alpha_t * F_t                (gate="alpha", alpha_t learnable, init 0)
    p_t'     = p_t + sigmoid(conv1x1([p_t, F_t], 2C -> 1)) * F_t   (gate="learned", (N, 1, H_t, W_t) gate)

Why: tiny objects get their positives only on the fine levels, so the p5/p6 convolutions otherwise receive no
positive-driven gradient; routing F_t (a function of p5/p6) into p_t opens that gradient path. With alpha = 0
the module is exactly the plain FPN at initialisation; alpha receives gradient ``<dL/dp_t', F_t>`` and grows
from there, after which the sources receive gradient too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efpn.layers.conv import ActLayer, ConvBNAct, check_nchw, make_act
from efpn.layers.internals import CEMInternals
from efpn.vocab import level_stride

Upsample = Literal["bilinear", "pixelshuffle"]
Gate = Literal["alpha", "learned"]


class _PixelShuffleUp(nn.Sequential):
    """Learned upsampling by ``factor`` (a power of two): (N, C, H, W) -> (N, C, factor*H, factor*W).

    Repeated [1x1 C -> 4C, PixelShuffle(2)]: steps of 2 keep the expansion at 4C (one x8 step needs 64C).
    """

    def __init__(self, channels: int, factor: int):
        steps: list[nn.Module] = []
        while factor > 1:
            steps += [nn.Conv2d(channels, 4 * channels, 1), nn.PixelShuffle(2)]
            factor //= 2
        super().__init__(*steps)


class CEM(nn.Module):
    """Context enhancement of ``target_levels`` from ``source_levels`` in a pyramid dict (all C channels).

    ``forward(feats, return_internals=False)`` returns a new dict (targets replaced, other levels passed
    through); with ``return_internals=True`` also ``{t: CEMInternals}`` per target level (p_t before and after,
    the fused term F_t, α_t, and the learned gate when CEM is gated).

    ``use_local``/``use_global`` switch the branches (at least one); ``upsample="pixelshuffle"`` needs every
    source coarser than every target by a power of two. Missing levels raise ValueError naming them.
    """

    exposes_internals = True

    def __init__(
        self,
        in_channels: int = 256,
        mid_channels: int = 64,
        source_levels: Sequence[str] = ("p5", "p6"),
        target_levels: Sequence[str] = ("p3",),
        use_local: bool = True,
        use_global: bool = True,
        upsample: Upsample = "bilinear",
        gate: Gate = "alpha",
        act_layer: ActLayer = nn.SiLU,
    ):
        super().__init__()
        if not (use_local or use_global):
            raise ValueError("CEM needs at least one branch: use_local or use_global")
        if not source_levels or not target_levels:
            raise ValueError(f"CEM needs source and target levels, got {source_levels} and {target_levels}")
        if upsample not in ("bilinear", "pixelshuffle"):
            raise ValueError(f"upsample must be 'bilinear' or 'pixelshuffle', got {upsample!r}")
        if gate not in ("alpha", "learned"):
            raise ValueError(f"gate must be 'alpha' or 'learned', got {gate!r}")
        self.in_channels, self.mid_channels = in_channels, mid_channels
        self.source_levels, self.target_levels = tuple(source_levels), tuple(target_levels)
        self.use_local, self.use_global = use_local, use_global
        self.upsample, self.gate = upsample, gate
        n_branches = (len(self.source_levels) if use_local else 0) + (1 if use_global else 0)

        self.compress = nn.ModuleDict()  # per source: "compress" 1x1 C -> C_m (+ BN + act)
        self.resize = nn.ModuleDict()  # per (source, target): learned pixel-shuffle upsampling (option)
        self.align = nn.ModuleDict()  # per (source, target): 3x3 C_m -> C_m, aligns the resized map
        if use_local:
            for s in self.source_levels:
                self.compress[s] = ConvBNAct(in_channels, mid_channels, 1, act_layer=act_layer)
                for t in self.target_levels:
                    key = _pair(s, t)
                    if upsample == "pixelshuffle":
                        if level_stride(s) <= level_stride(t):
                            raise ValueError(f"pixelshuffle upsampling needs {s} coarser than target {t}")
                        self.resize[key] = _PixelShuffleUp(mid_channels, level_stride(s) // level_stride(t))
                    self.align[key] = ConvBNAct(mid_channels, mid_channels, 3, act_layer=act_layer)
        # global: one context vector from all sources' pooled descriptors (no BN: batch statistics of a pooled
        # vector are meaningless at batch 1)
        n_src = len(self.source_levels)
        self.global_fc = nn.Linear(n_src * in_channels, mid_channels) if use_global else None
        self.global_act = make_act(act_layer)
        self.fuse = nn.ModuleDict({t: nn.Conv2d(n_branches * mid_channels, in_channels, 1) for t in self.target_levels})
        if gate == "alpha":
            self.alpha = nn.ParameterDict({t: nn.Parameter(torch.zeros(())) for t in self.target_levels})
            self.gate_conv = None
        else:
            self.alpha = None
            self.gate_conv = nn.ModuleDict({t: nn.Conv2d(2 * in_channels, 1, 1) for t in self.target_levels})
            for conv in self.gate_conv.values():
                # start nearly closed (sigmoid(-4) ~ 0.018): close to the plain FPN, yet every weight learns
                nn.init.normal_(conv.weight, std=1e-3)
                nn.init.constant_(conv.bias, -4.0)

    def forward(
        self, feats: Mapping[str, Tensor], return_internals: bool = False
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], dict[str, CEMInternals]]:
        self._check(feats)
        out = dict(feats)
        internals: dict[str, CEMInternals] = {}  # target level -> what CEM did there
        compressed = {s: self.compress[s](feats[s]) for s in self.compress}  # (N, C_m, H_s, W_s) per source
        context = None
        if self.global_fc is not None:
            pooled = torch.cat([feats[s].mean((2, 3)) for s in self.source_levels], 1)  # (N, S*C)
            context = self.global_act(self.global_fc(pooled))  # (N, C_m)
        for t in self.target_levels:
            p_t = feats[t]  # (N, C, H_t, W_t)
            size = p_t.shape[-2:]
            branches = [self._local(compressed[s], s, t, size) for s in compressed]  # (N, C_m, H_t, W_t) each
            if context is not None:
                branches.append(context[:, :, None, None].expand(-1, -1, *size))
            fused = self.fuse[t](torch.cat(branches, 1))  # F_t: (N, C, H_t, W_t)
            if self.alpha is not None:
                weight: Tensor = self.alpha[t]
                new = p_t + weight * fused
            else:
                assert self.gate_conv is not None
                weight = torch.sigmoid(self.gate_conv[t](torch.cat([p_t, fused], 1)))  # (N, 1, H_t, W_t)
                new = p_t + weight * fused
            out[t] = new
            if return_internals:
                internals[t] = CEMInternals(
                    before=p_t,
                    fused=fused,
                    after=new,
                    alpha=weight if self.alpha is not None else weight.mean(),
                    gate=weight if self.gate_conv is not None else None,
                )
        return (out, internals) if return_internals else out

    def _local(self, x: Tensor, s: str, t: str, size: torch.Size) -> Tensor:
        key = _pair(s, t)
        if key in self.resize:
            x = self.resize[key](x)  # (N, C_m, f*H_s, f*W_s)
        if x.shape[-2:] != size:  # bilinear resize, or fix an odd-size mismatch after pixel shuffle
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.align[key](x)  # (N, C_m, H_t, W_t)

    def _check(self, feats: Mapping[str, Tensor]) -> None:
        needed = dict.fromkeys((*self.source_levels, *self.target_levels))
        missing = [lv for lv in needed if lv not in feats]
        if missing:
            raise ValueError(f"CEM: pyramid is missing level(s) {missing}; it has {sorted(feats)}")
        for lv in needed:
            check_nchw(feats[lv], self.in_channels, "CEM", f"level {lv!r}")

    def extra_repr(self) -> str:
        return (
            f"sources={self.source_levels}, targets={self.target_levels}, local={self.use_local}, "
            f"global={self.use_global}, upsample={self.upsample}, gate={self.gate}"
        )


def _pair(source: str, target: str) -> str:
    return f"{source}_to_{target}"  # ModuleDict keys may not contain "."
