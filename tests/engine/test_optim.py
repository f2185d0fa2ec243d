"""efpn.engine.optim.build_optimizer: PyTorch's fused kernel where it applies, the same update as the default one,
and a fallback where it does not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from efpn.config import TrainConfig
from efpn.engine.optim import build_optimizer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_fused_where_it_applies_and_the_same_update(kind: str) -> None:
    """Three steps on the same gradients (given, so a difference cannot feed back through the network): the fused
    optimizer moves every parameter as the default kernel does, with the same groups (decay on weights only)."""
    cfg = TrainConfig(model="yolov8n", data="unused.yaml", optimizer=kind, lr=0.01, weight_decay=5e-4)
    fused_model, plain_model = _model(), _model()
    fused = build_optimizer(cfg, fused_model)
    assert all(g["fused"] for g in fused.param_groups)
    assert [g["weight_decay"] for g in fused.param_groups] == [5e-4, 0.0]
    by_name = dict(plain_model.named_parameters())
    names = {id(p): n for n, p in fused_model.named_parameters()}
    plain = type(fused)([dict(g, params=[by_name[names[id(p)]] for p in g["params"]], fused=None)
                         for g in fused.param_groups])
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in fused_model.parameters()]
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    moved = False
    for p, q, r in zip(fused_model.parameters(), plain_model.parameters(), _model().parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        moved |= not torch.equal(p, r)
    assert moved


def test_no_fused_kernel_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PyTorch that refuses ``fused=True`` for the parameters' device gets the default kernel, not an error."""
    real = torch.optim.AdamW

    class NoFused(real):  # type: ignore[misc, valid-type]
        def __init__(self, params, **kw):
            if kw.get("fused"):
                raise RuntimeError("fused=True requires params of supported devices")
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", NoFused)
    opt = build_optimizer(TrainConfig(model="yolov8n", data="unused.yaml"), _model())
    assert isinstance(opt, NoFused) and not any(g.get("fused") for g in opt.param_groups)
