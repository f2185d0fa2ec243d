"""Where gradient goes: the measurements behind paper 1's starting point (SPEC §1, §2).

Under standard assigners tiny objects get positives only on the finest levels, so the p5/p6 output convolutions
and head inputs receive no *positive-driven* gradient; c5 still gets some through the FPN's top-down path. CEM
feeds p5/p6 into the fine levels, so p5/p6 start receiving gradient from tiny-object positives. This module
measures exactly that, per level and per place, with and without CEM, without writing ``.grad`` on parameters,
switching the model's mode or changing any state (safe on a model shared between users).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from efpn.models.detector import Detector

#: Losses that only positive samples produce (regression): their gradient is the "positive-driven" share.
POSITIVE_LOSSES = ("loss_box", "loss_dfl")


def _norm(grads: Sequence[Tensor | None]) -> float:
    return sum(float(g.float().pow(2).sum()) for g in grads if g is not None) ** 0.5


def gradient_reach(
    model: Detector,
    images: Tensor,
    targets: Sequence[Mapping[str, Tensor]],
    levels: Sequence[str] = ("p5", "p6"),
    bypass_cem: bool = False,
    features: tuple[dict[str, Tensor], dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Norms of the loss gradient reaching the coarse levels, for the total loss and its positive-driven part.

    For each ``lv`` in ``levels`` (those the model has) and each ``part`` in ``("total", "positive")``:
    ``{lv}.head_input.{part}`` — ‖∂L/∂(p_lv as the head reads it)‖, the head path only;
    ``{lv}.feature.{part}`` — ‖∂L/∂p_lv‖ through every path (head, and CEM when present);
    ``{lv}.output_conv.{part}`` — ‖∂L/∂θ‖ of the conv producing p_lv; and ``c5.feature.{part}``.
    ``loss.total`` / ``loss.positive`` are the loss values. ``bypass_cem=True`` answers "as if CEM were absent".
    FPN necks only (YOLO PAN necks have no CEM and report head inputs and c5). The model must be in eval mode.
    ``features``: the backbone's output from ``model.backbone_features(images)`` (computed once, e.g. without
    gradients, and shared by the runs with and without CEM); no number here needs a gradient below c5.
    """
    if model.training:
        raise ValueError("gradient_reach needs an eval-mode model (train mode would update BatchNorm statistics)")
    present = [lv for lv in levels if lv in model.levels]
    # A clone per level separates the head's path from CEM's: ∂L/∂clone is the head's share only.
    head_in: dict[str, Tensor] = {}

    def tap(level: str) -> Callable[[Tensor], Tensor]:
        def clone(f: Tensor) -> Tensor:
            head_in[level] = f.clone()
            return head_in[level]

        return clone

    if features is not None:  # c5 as a leaf of this graph: its gradient is asked for below
        feats_in, kernels_in = features
        features = ({k: v.detach().requires_grad_(k == "c5") for k, v in feats_in.items()}, kernels_in)
    with torch.enable_grad():
        run = model.run(images, internals=True, targets=targets, bypass_cem=bypass_cem,
                        head_taps={lv: tap(lv) for lv in present}, features=features)
        assert run.losses is not None
        losses = {k: v for k, v in run.losses.items() if k != "loss_mask"}  # the head's losses only
        raw = {lv: r.before_cem for lv, r in run.levels.items()}  # the FPN's own p*, before CEM / FBSM
        feats = run.backbone
        parts = {
            "total": sum(losses.values()),
            "positive": sum(v for k, v in losses.items() if k in POSITIVE_LOSSES),
        }
        params = {lv: model.level_parameters(lv) for lv in present}
        c5 = feats.get("c5")
        inputs: list[Tensor] = [head_in[lv] for lv in present] + [raw[lv] for lv in present]
        inputs += [p for lv in present for p in params[lv]] + ([c5] if c5 is not None else [])
        result: dict[str, float] = {}
        for i, (part, loss) in enumerate(parts.items()):
            result[f"loss.{part}"] = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
            if not isinstance(loss, Tensor) or not loss.requires_grad:
                grads: Sequence[Tensor | None] = [None] * len(inputs)
            else:
                grads = torch.autograd.grad(loss, inputs, retain_graph=i == 0, allow_unused=True)
            n = len(present)
            for j, lv in enumerate(present):
                result[f"{lv}.head_input.{part}"] = _norm([grads[j]])
                result[f"{lv}.feature.{part}"] = _norm([grads[n + j]])
            k = 2 * n
            for lv in present:
                m = len(params[lv])
                result[f"{lv}.output_conv.{part}"] = _norm(grads[k : k + m])
                k += m
            if c5 is not None:
                result[f"c5.feature.{part}"] = _norm([grads[k]])
    return result


def high_level_grad_norms(model: nn.Module, levels: Sequence[str] = ("p5", "p6")) -> dict[str, float]:
    """After ``loss.backward()`` in training: ‖.grad‖ of the convs producing each level (telemetry)."""
    inner = getattr(model, "module", model)  # unwrap DDP
    out = {}
    for lv in levels:
        ps = inner.level_parameters(lv) if isinstance(inner, Detector) else []
        if ps:
            out[lv] = _norm([p.grad for p in ps])
    return out
