"""efpn.det.tal: the batched task-aligned assigner gives every image exactly what the per-image algorithm gives it
alone (an independent reference below: torchvision's all-pairs IoU, one image at a time), and assign_tal is it."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from efpn.det import assign_tal
from efpn.det.assign import Assignment, _assignment, _best_pair_per_prior
from efpn.det.priors import Priors, feature_sizes_for, point_priors
from efpn.det.tal import assign_tal_batch
from tests.det.criterion_steps import assert_same_step


def _reference(priors: Priors, gt: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, boxes: torch.Tensor,
               topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9) -> Assignment:
    """Task-aligned assignment of one image, written out plainly (every GT at once, no blocks)."""
    r = len(priors)
    valid = torch.isfinite(gt).all(1) & (gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])
    x, y = priors.points[None, :, 0], priors.points[None, :, 1]
    inside = (torch.stack([x - gt[:, 0:1], y - gt[:, 1:2], gt[:, 2:3] - x, gt[:, 3:4] - y], 2).amin(2) > 0)
    inside &= valid[:, None]  # (M, R)
    iou = box_iou(gt, boxes).nan_to_num_(0.0)  # (M, R)
    t = scores[:, labels].T.clamp(min=0).pow(alpha) * iou.pow(beta)
    top_t, top_idx = torch.where(inside, t, -1.0).topk(min(topk, r), dim=1)
    g, j = (top_t >= 0).nonzero(as_tuple=True)
    p = top_idx[g, j]
    if not p.numel():
        empty = torch.zeros(0, dtype=torch.int64)
        return _assignment(empty, empty, r, iou=torch.zeros(0), quality=torch.zeros(0))
    pair_iou, pair_t = iou[g, p], t[g, p]
    keep = _best_pair_per_prior(p, g, pair_iou, r)
    p, g, pair_iou, pair_t = p[keep], g[keep], pair_iou[keep], pair_t[keep]
    max_t = torch.zeros(gt.shape[0]).scatter_reduce(0, g, pair_t, reduce="amax")
    max_iou = torch.zeros(gt.shape[0]).scatter_reduce(0, g, pair_iou, reduce="amax")
    return _assignment(p, g, r, iou=pair_iou, quality=pair_t / (max_t[g] + eps) * max_iou[g])


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
        _same(batched[i], _reference(priors, gts[i], labels[i], scores[i], boxes[i]))
        _same(assign_tal(priors, gts[i], labels[i], scores[i], boxes[i]), batched[i])
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
    assert_same_step(monkeypatch, "yolov8n", "assign_tal_batch", lambda priors, gts, labels, scores, boxes: [
        _reference(priors, g.float(), lab, s, b) for g, lab, s, b in zip(gts, labels, scores, boxes)])
