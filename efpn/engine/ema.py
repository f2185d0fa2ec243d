"""Exponential moving average of model weights (the weights that get evaluated and saved).

``ema = d·ema + (1 − d)·θ`` after every optimizer step, with the YOLO ramp ``d_t = decay·(1 − exp(−t / tau))``:
early in training the average follows the live weights closely (``d`` near 0), later it smooths over roughly
``1 / (1 − decay)`` steps. Buffers (BatchNorm running statistics, DCLoss statistics, step counters) are copied,
not averaged: they are already running statistics of the live model, and averaging integer counters is
meaningless.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel wrappers (``.module``), else ``model`` itself."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


class ModelEMA:
    """A frozen, eval-mode copy of a model whose parameters track an EMA of the live model's.

    Not an ``nn.Module`` itself (so it never ends up in an optimizer or a DDP wrapper); :attr:`module` is the
    averaged model. ``state_dict``/``load_state_dict`` hold plain data (tensors and numbers), so the state
    round-trips through ``torch.load(weights_only=True)``.

    Args:
        model: the live model (DDP-wrapped is fine); it is deep-copied once.
        decay: asymptotic decay ``d`` in [0, 1).
        tau: ramp length in updates: ``d_t = decay·(1 − exp(−t / tau))``.
        updates: number of updates already applied (when resuming without :meth:`load_state_dict`).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if tau <= 0:
            raise ValueError(f"EMA tau must be > 0, got {tau}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = updates

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use (after its update counter is incremented)."""
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the live ``model``'s current parameters into the average and copy its buffers."""
        d = self.current_decay()
        self.updates += 1
        live = unwrap_model(model)
        ema_params = dict(self.module.named_parameters())
        for name, p in live.named_parameters():
            e = ema_params[name]
            # lerp_: e += (1 - d) * (p - e), i.e. e = d*e + (1-d)*p, in the EMA's dtype
            e.lerp_(p.detach().to(e.dtype), 1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in live.named_buffers():
            ema_buffers[name].copy_(b)

    def state_dict(self) -> dict[str, Any]:
        """``{"module": state_dict of the averaged model, "updates", "decay", "tau"}``."""
        return {
            "module": self.module.state_dict(),
            "updates": int(self.updates),
            "decay": float(self.decay),
            "tau": float(self.tau),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (weights, update count, decay and ramp)."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state.get("decay", self.decay))
        self.tau = float(state.get("tau", self.tau))
