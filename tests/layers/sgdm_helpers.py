"""Helpers of the SGDM tests (not a test module)."""

from __future__ import annotations

import torch
from torch import nn


def perturb(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
    """Move every parameter away from its initialisation (the box bank, zero gammas) and give every BatchNorm
    non-trivial running statistics, so each term of the function under test matters; returns ``module``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
        for mod in module.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0.0, 0.3, generator=gen)
                mod.running_var.uniform_(0.5, 2.0, generator=gen)
    return module


def count_calls(monkeypatch, owner: object, name: str) -> dict[str, int]:
    """Replace ``owner.name`` by a wrapper that counts its calls (``counts["n"]``) and still calls it."""
    counts = {"n": 0}
    real = getattr(owner, name)

    def counting(*args, **kwargs):
        counts["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return counts
