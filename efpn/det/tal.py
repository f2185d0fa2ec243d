"""Task-aligned assignment (TOOD; YOLOv8's TaskAlignedAssigner) on point priors, for one image or a whole batch.

:func:`assign_tal_batch` assigns N images in one pass: the batch's GTs are stacked, each compared with its own
image's predictions, and the per-image rules applied with image-aware indices. A training step assigns every
image; run image by image, the assigner's few dozen small operators cost more in dispatch than in arithmetic (8
images at 320 px: ~1.7 ms each on 2 CPU threads, most of the YOLOv8 criterion's time). :func:`assign_tal` is the
same function on one image; tests/det/test_tal.py holds the batch's result equal, bit for bit, to each image
assigned alone. Conventions (GT boxes, ties, sorting, blocks) are those of :mod:`efpn.det.assign`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from efpn.det.assign import Assignment, _best_pair_per_prior, _gt_blocks, _ltrb, _per_image, _stacked
from efpn.det.priors import Priors


def _aligned_iou(gt: Tensor, boxes: Tensor) -> Tensor:
    """IoU of each GT (b, 4) with every box of its own row (b, R, 4) -> (b, R): torchvision's ``box_iou`` formula
    term by term (so equal values to an all-pairs ``box_iou``), NaN (both boxes empty) -> 0."""
    area_gt = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])  # (b,)
    area_box = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (b, R)
    lt = torch.max(gt[:, None, :2], boxes[..., :2])  # (b, R, 2)
    rb = torch.min(gt[:, None, 2:], boxes[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (b, R)
    union = area_gt[:, None] + area_box - inter
    return (inter / union).nan_to_num_(0.0)


@torch.no_grad()
def assign_tal_batch(
    priors: Priors,
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    pred_scores: Tensor,
    pred_boxes: Tensor,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    eps: float = 1e-9,
) -> list[Assignment]:
    """:func:`assign_tal` for N images at once: ``gt_boxes[i]`` (M_i, 4) xyxy and ``gt_labels[i]``
    (M_i,) of image i, ``pred_scores`` (N, R, K) probabilities, ``pred_boxes`` (N, R, 4) decoded xyxy. Returns the
    N assignments, each equal to ``assign_tal(priors, gt_boxes[i], gt_labels[i], pred_scores[i], pred_boxes[i])``.
    Raises ValueError on the shapes or labels :func:`assign_tal` refuses, naming the image."""
    r = len(priors)
    n = len(gt_boxes)
    device = priors.device
    scores = pred_scores.to(device=device, dtype=torch.float32)
    boxes = pred_boxes.to(device=device, dtype=torch.float32)
    if len(gt_labels) != n or scores.shape[:2] != (n, r) or boxes.shape != (n, r, 4):
        raise ValueError(f"need N={n} label tensors, pred_scores (N, R, K) and pred_boxes (N, R, 4) with R={r}; got "
                         f"{len(gt_labels)}, {tuple(scores.shape)}, {tuple(boxes.shape)}")
    gt, valid, image, counts = _stacked(gt_boxes, priors)  # (M, 4), (M,), (M,) over the batch, image by image
    labels = [lab.to(device=device, dtype=torch.int64).reshape(-1) for lab in gt_labels]
    for i, (count, lab) in enumerate(zip(counts, labels)):
        if lab.shape[0] != count:
            raise ValueError(f"image {i}: {count} boxes but {lab.shape[0]} labels")
    label = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=device)  # (M,)
    if label.numel() and (label.min() < 0 or label.max() >= scores.shape[2]):
        raise ValueError(f"gt_labels must lie in [0, {scores.shape[2]}), got {label.tolist()}")
    prior_ids = torch.arange(r, device=device)
    pairs_p, pairs_g, pairs_iou, pairs_t = [], [], [], []
    for sl in _gt_blocks(gt.shape[0], r, per_prior=4):
        img = image[sl]
        inside = (_ltrb(priors.points, gt[sl]).amin(2) > 0) & valid[sl, None]  # (b, R)
        iou = _aligned_iou(gt[sl], boxes[img])  # (b, R): each GT against its own image's boxes
        score = scores[img[:, None], prior_ids[None, :], label[sl, None]]  # (b, R): its class's score there
        t = score.clamp(min=0).pow(alpha) * iou.pow(beta)  # (b, R)
        top_t, top_idx = torch.where(inside, t, -1.0).topk(min(topk, r), dim=1)  # (b, k); -1: not a candidate
        g, j = (top_t >= 0).nonzero(as_tuple=True)
        p = top_idx[g, j]
        pairs_p.append(p)
        pairs_g.append(g + sl.start)
        pairs_iou.append(iou[g, p])
        pairs_t.append(t[g, p])
    if not pairs_p:  # no GT in the whole batch
        empty, none = torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, device=device)
        return _per_image(image, counts, r, empty, empty, iou=none, quality=none)
    prior_idx, gt_idx = torch.cat(pairs_p), torch.cat(pairs_g)  # gt_idx over the batch, ascending
    iou, t = torch.cat(pairs_iou), torch.cat(pairs_t)
    # one prior of one image to one GT: the key (image, prior) makes the per-image rule a batch one; GT indices keep
    # each image's order, so "ties -> lowest GT index" is unchanged
    keep = _best_pair_per_prior(image[gt_idx] * r + prior_idx, gt_idx, iou, n * r)
    prior_idx, gt_idx, iou, t = prior_idx[keep], gt_idx[keep], iou[keep], t[keep]
    m = gt.shape[0]
    max_t = torch.zeros(m, device=device).scatter_reduce(0, gt_idx, t, reduce="amax")  # (M,)
    max_iou = torch.zeros(m, device=device).scatter_reduce(0, gt_idx, iou, reduce="amax")  # (M,)
    quality = t / (max_t[gt_idx] + eps) * max_iou[gt_idx]  # (P,)
    # pairs come grouped by image (GTs are stacked in image order, blocks in GT order)
    return _per_image(image, counts, r, prior_idx, gt_idx, iou=iou, quality=quality)


@torch.no_grad()
def assign_tal(
    priors: Priors,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    pred_scores: Tensor,
    pred_boxes: Tensor,
    topk: int = 10,
    alpha: float = 0.5,
    beta: float = 6.0,
    eps: float = 1e-9,
) -> Assignment:
    """Task-aligned assignment of one image.

    ``pred_scores`` (R, K) are probabilities (after sigmoid), ``pred_boxes`` (R, 4) decoded xyxy,
    ``gt_labels`` (M,) in [0, K). Candidates of a GT are the priors whose point is strictly inside it; the
    alignment metric is ``t = score[gt_label] ** alpha * IoU(pred, gt) ** beta`` (plain IoU; Ultralytics uses
    CIoU clamped at 0); the ``topk`` candidates by ``t`` are positive (fewer when the GT holds fewer points).
    A point claimed by several GTs goes to the one with the highest IoU among them. ``quality`` is the
    normalised metric ``t / (max t of the GT's positives + eps) * (max IoU of the GT's positives)`` — the soft
    class target.
    """
    r = len(priors)
    labels = gt_labels.reshape(-1)
    if pred_scores.dim() != 2 or pred_scores.shape[0] != r or pred_boxes.shape != (r, 4) or (
            labels.shape[0] != gt_boxes.reshape(-1, 4).shape[0]):
        raise ValueError(
            f"need pred_scores (R, K), pred_boxes (R, 4) with R={r} and one label per GT; got "
            f"{tuple(pred_scores.shape)}, {tuple(pred_boxes.shape)}, {tuple(labels.shape)}"
        )
    return assign_tal_batch(priors, [gt_boxes], [labels], pred_scores[None], pred_boxes[None], topk=topk,
                            alpha=alpha, beta=beta, eps=eps)[0]
