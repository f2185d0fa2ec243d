"""Helper of the batched-assigner tests (not a test module): a criterion step with the batch assigner against the
same step with a per-image one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import efpn
import efpn.models.criterion as criterion


def assert_same_step(monkeypatch: pytest.MonkeyPatch, preset: str, name: str, per_image: Callable) -> None:
    """Train-mode ``preset``: losses, gradients, positives and per-level accounting of one step are equal (bit for
    bit) with ``criterion.<name>`` (the batch assigner) and with ``per_image`` put in its place — so images, labels
    and predictions stay paired through the criterion. Three images, one without boxes."""
    torch.manual_seed(0)
    model = efpn.build_model(preset, num_classes=3, image_size=96).train()
    images = torch.rand(3, 3, 96, 96)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 30.0, 40.0], [50.0, 50.0, 58.0, 57.0]]),
                "labels": torch.tensor([2, 0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
               {"boxes": torch.tensor([[5.0, 60.0, 90.0, 95.0]]), "labels": torch.tensor([1])}]

    def step():
        model.zero_grad(set_to_none=True)
        run = model.run(images, targets=targets)
        sum(run.losses.values()).backward()
        return run.losses, run.stats, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    state = {k: v.clone() for k, v in model.state_dict().items()}
    batched = step()
    model.load_state_dict(state)  # BatchNorm's running statistics as before the first step
    monkeypatch.setattr(criterion, name, per_image)
    single = step()
    for key in batched[0]:
        assert torch.equal(batched[0][key], single[0][key]), key
    assert batched[1].num_pos == single[1].num_pos > 0
    assert batched[1].accounting.to_dict() == single[1].accounting.to_dict()
    assert all(torch.equal(a, b) for a, b in zip(batched[2], single[2]))
