"""efpn.det.tal_batch: the batched task-aligned assigner gives every image exactly what assign_tal gives it alone."""

from __future__ import annotations

import pytest
import torch

import efpn
import efpn.models.criterion as criterion
from efpn.det import assign_tal
from efpn.det.assign import Assignment
from efpn.det.priors import feature_sizes_for, point_priors
from efpn.det.tal_batch import assign_tal_batch


def _batch(counts: list[int], seed: int, size: int = 128, k: int = 3):
    """Random GTs per image (tiny to large, some degenerate), predicted boxes near them and coarse scores whose
    ties exercise the top-k and the conflict rules."""
    gen = torch.Generator().manual_seed(seed)
    priors = point_priors(feature_sizes_for((size, size), ("p3", "p4", "p5")))
    r = len(priors)
    gts, labels = [], []
    for m in counts:
        xy = torch.rand(m, 2, generator=gen) * size
        wh = torch.rand(m, 2, generator=gen) * size / 3 + 0.5
        box = torch.cat([xy, xy + wh], 1)
        if m > 2:
            box[1, 2] = box[1, 0]  # zero width: never positive
            box[2] = box[0]        # a duplicate: ties between two GTs
        gts.append(box)
        labels.append(torch.randint(0, k, (m,), generator=gen))
    centre = priors.points[None].expand(len(counts), -1, -1)
    half = torch.rand(len(counts), r, 2, generator=gen) * 20 + 1
    pred_boxes = torch.cat([centre - half, centre + half], 2)  # (N, R, 4)
    pred_scores = (torch.rand(len(counts), r, k, generator=gen) * 4).round() / 4  # many equal scores
    return priors, gts, labels, pred_scores, pred_boxes


def _same(a: Assignment, b: Assignment) -> None:
    assert torch.equal(a.prior_idx, b.prior_idx) and torch.equal(a.gt_idx, b.gt_idx)
    assert torch.equal(a.iou, b.iou) and torch.equal(a.quality, b.quality)
    assert torch.equal(a.fallback, b.fallback) and torch.equal(a.ignore, b.ignore) and a.num_priors == b.num_priors


@pytest.mark.parametrize("counts", [[3, 0, 7, 1], [12, 9], [0, 0], [1], [40, 25, 0, 33]])
@pytest.mark.parametrize("seed", [0, 1])
def test_each_image_gets_what_assign_tal_gives_it(counts: list[int], seed: int) -> None:
    priors, gts, labels, scores, boxes = _batch(counts, seed)
    batched = assign_tal_batch(priors, gts, labels, scores, boxes)
    assert len(batched) == len(counts)
    for i in range(len(counts)):
        _same(batched[i], assign_tal(priors, gts[i], labels[i], scores[i], boxes[i]))
    if sum(counts) > 5:  # not a vacuous equality: positives were found
        assert sum(a.prior_idx.numel() for a in batched) > 0


def test_blocks_of_gts_give_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many GTs split into several (GT block x R) temporaries, across image boundaries: the same result."""
    priors, gts, labels, scores, boxes = _batch([30, 20, 25], 3)
    whole = assign_tal_batch(priors, gts, labels, scores, boxes)
    monkeypatch.setattr("efpn.det.assign._BLOCK_ELEMS", 7 * len(priors) * 4)  # blocks of 7 GTs
    for a, b in zip(assign_tal_batch(priors, gts, labels, scores, boxes), whole):
        _same(a, b)


def test_bad_input_says_which() -> None:
    priors, gts, labels, scores, boxes = _batch([2, 3], 4)
    with pytest.raises(ValueError, match="image 1: 3 boxes but 2 labels"):
        assign_tal_batch(priors, gts, [labels[0], labels[1][:2]], scores, boxes)
    with pytest.raises(ValueError, match="gt_labels must lie in"):
        assign_tal_batch(priors, gts, [labels[0], labels[1] + 5], scores, boxes)
    with pytest.raises(ValueError, match="pred_scores"):
        assign_tal_batch(priors, gts, labels, scores[:1], boxes)


def test_the_yolov8_criterion_trains_as_with_one_image_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The criterion's losses, gradients and per-level accounting with the batched assigner equal those with
    assign_tal called image by image (the wiring: images, labels and predictions stay paired)."""
    torch.manual_seed(0)
    model = efpn.build_model("yolov8n", num_classes=3, image_size=96).train()
    images = torch.rand(3, 3, 96, 96)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 30.0, 40.0], [50.0, 50.0, 58.0, 57.0]]),
                "labels": torch.tensor([2, 0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
               {"boxes": torch.tensor([[5.0, 60.0, 90.0, 95.0]]), "labels": torch.tensor([1])}]

    def step():
        model.zero_grad(set_to_none=True)
        run = model.run(images, targets=targets)
        sum(run.losses.values()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return run.losses, run.stats, grads

    state = {k: v.clone() for k, v in model.state_dict().items()}
    batched = step()
    model.load_state_dict(state)  # BatchNorm's running statistics as before the first step
    monkeypatch.setattr(criterion, "assign_tal_batch", lambda priors, gts, labels, scores, boxes: [
        assign_tal(priors, g, lab, s, b) for g, lab, s, b in zip(gts, labels, scores, boxes)])
    single = step()
    for name in batched[0]:
        assert torch.equal(batched[0][name], single[0][name]), name
    assert batched[1].num_pos == single[1].num_pos > 0
    assert batched[1].accounting.to_dict() == single[1].accounting.to_dict()
    assert all(torch.equal(a, b) for a, b in zip(batched[2], single[2]))
