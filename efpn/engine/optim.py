"""The optimizer and the learning-rate schedule of a training run."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from efpn.config import TrainConfig

__all__ = ["WarmupCosine", "build_optimizer", "param_groups"]


class WarmupCosine:
    """LR factor for LambdaLR: linear warm-up over ``warmup`` steps, then cosine from 1 to ``final_ratio``.

    Step ``t`` (optimizer steps already taken): ``(t + 1) / warmup`` while ``t < warmup``, then
    ``final + (1 - final) * (1 + cos(pi * p)) / 2`` with ``p = (t - warmup) / (total - 1 - warmup)``. A plain
    object (not a closure) so LambdaLR's state_dict records its parameters.
    """

    def __init__(self, total_steps: int, warmup: int, final_ratio: float):
        self.total_steps = max(1, int(total_steps))
        # a warm-up longer than a third of the run would leave no time at the peak lr
        self.warmup = min(int(warmup), self.total_steps // 3)
        self.final_ratio = float(final_ratio)

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        span = max(1, self.total_steps - 1 - self.warmup)
        p = min(1.0, (t - self.warmup) / span)
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def param_groups(
    model: nn.Module, weight_decay: float, slow_prefix: str | None = None, slow_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Optimizer groups: weight decay on conv/linear weights (ndim > 1), none on biases, norm weights and scalar
    gains (CEM α, FBSM β), where decay would only pull a learned scale towards zero. Parameters whose name starts
    with ``slow_prefix`` (a pretrained backbone) get their own pair of groups with ``lr_scale = slow_scale``; the
    others have ``lr_scale`` 1 (the schedule multiplies each group's peak lr by it). Empty groups are left out."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if not p.requires_grad:
            continue
        slow = slow_prefix is not None and name.startswith(slow_prefix)
        groups.setdefault((slow, p.ndim > 1), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_scale": slow_scale if slow else 1.0}
        for (slow, decays), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (beta1 = ``momentum``) or Nesterov SGD over :func:`param_groups`."""
    pretrained = getattr(getattr(model, "config", None), "backbone", None)
    slow = "backbone." if pretrained is not None and pretrained.weights else None
    groups = param_groups(model, cfg.weight_decay, slow, cfg.backbone_lr_scale)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
