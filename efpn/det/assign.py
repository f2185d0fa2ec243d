"""Label assignment (SPEC §8): which priors are positive for which ground-truth box, and how many per level.

Every assigner is a ``@torch.no_grad()`` pure function of boxes (TAL, in :mod:`efpn.det.tal`, also of
predictions) that returns an :class:`Assignment`: positives as ``(prior, gt)`` pairs, so one prior may serve several
GTs (YOLOv5), plus the dense ``ignore`` mask. Counting them per level is :mod:`efpn.det.accounting`; running a
box-only protocol with its published default priors is :mod:`efpn.det.protocols`.

Shared conventions:

* GT boxes are ``(M, 4)`` xyxy in the same pixels as the priors; ``M`` may be 0 (then nothing is positive and
  nothing is ignored). A GT with zero or negative width/height, or a non-finite coordinate, is never positive.
  Boxes may extend outside the image.
* "Strictly inside" a box means every one of ``l, t, r, b`` (point to box edge) is ``> 0``.
* Conflicts (one prior positive for several GTs) go to the highest IoU; exact ties to the lowest GT index.
* Pairs are returned sorted by ``(prior_idx, gt_idx)``.
* IoU matrices are computed in blocks of GTs, so memory stays ``O(R)`` per block even for images with hundreds
  of boxes on a million priors.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from efpn.det.boxes import box_iof, box_iou_pairwise
from efpn.det.priors import (
    Priors,
)
from efpn.vocab import level_stride

#: FCOS regression ranges for p3..p7 (max of l, t, r, b in pixels), lower and upper bound inclusive.
FCOS_SIZE_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 64.0),
    (64.0, 128.0),
    (128.0, 256.0),
    (256.0, 512.0),
    (512.0, math.inf),
)

#: Upper bound on the elements of one (GT block x R) temporary.
_BLOCK_ELEMS = 1 << 22
#: GTs per block in MaxIoU's banded IoU (smaller blocks -> thinner bands -> fewer priors per block).
_BAND_GTS = 16
#: matched_gt() values.
IGNORE = -2
BACKGROUND = -1


# ----------------------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True, eq=False)
class Assignment:
    """Positives of one image as ``(prior, gt)`` pairs plus the dense ignore mask.

    A prior that is neither in ``prior_idx`` nor ``ignore`` is background (negative). ``fallback`` marks pairs
    that are positive only through the low-quality (best-anchor) rule of MaxIoU. ``quality`` is TAL's
    normalised alignment metric (the soft classification target); ``iou`` is the IoU behind the pair (prior
    box vs GT for box-based assigners, predicted box vs GT for TAL; ``None`` for FCOS), used to resolve
    repeated priors.
    """

    prior_idx: Tensor  # (P,) int64 index into R; may repeat (YOLOv5)
    gt_idx: Tensor  # (P,) int64 index into M
    fallback: Tensor  # (P,) bool: positive only through the low-quality rule
    ignore: Tensor  # (R,) bool: neither positive nor negative
    num_priors: int  # R
    quality: Tensor | None = None  # (P,) float, TAL only
    iou: Tensor | None = None  # (P,) float

    @property
    def num_pos(self) -> int:
        """Number of positive pairs P (a repeated prior counts once per GT)."""
        return int(self.prior_idx.numel())

    def matched_gt(self) -> Tensor:
        """Dense (R,) int64: -2 ignore, -1 background, else the GT index (for a repeated prior the highest-IoU
        GT, ties and ``iou is None`` -> the lowest GT index)."""
        out = torch.full((self.num_priors,), BACKGROUND, dtype=torch.int64, device=self.ignore.device)
        out[self.ignore] = IGNORE
        if self.num_pos:
            key = self.iou if self.iou is not None else torch.zeros_like(self.prior_idx, dtype=torch.float32)
            keep = _best_pair_per_prior(self.prior_idx, self.gt_idx, key, self.num_priors)
            out[self.prior_idx[keep]] = self.gt_idx[keep]
        return out


def _assignment(
    prior_idx: Tensor,
    gt_idx: Tensor,
    num_priors: int,
    *,
    fallback: Tensor | None = None,
    ignore: Tensor | None = None,
    iou: Tensor | None = None,
    quality: Tensor | None = None,
) -> Assignment:
    """Build an :class:`Assignment` with pairs sorted by (prior, gt); missing masks default to all False."""
    device = prior_idx.device
    order = torch.argsort(prior_idx * (int(gt_idx.max()) + 1) + gt_idx) if prior_idx.numel() else prior_idx
    if fallback is None:
        fallback = torch.zeros(order.numel(), dtype=torch.bool, device=device)
    if ignore is None:
        ignore = torch.zeros(num_priors, dtype=torch.bool, device=device)
    return Assignment(
        prior_idx=prior_idx[order],
        gt_idx=gt_idx[order],
        fallback=fallback[order],
        ignore=ignore,
        num_priors=num_priors,
        quality=None if quality is None else quality[order],
        iou=None if iou is None else iou[order],
    )


# ----------------------------------------------------------------------------------------------------------
# Geometry helpers (private; the public box library is efpn.det.boxes)


def _as_gt(gt_boxes: Tensor, priors: Priors) -> tuple[Tensor, Tensor]:
    """GT boxes as float32 (M, 4) on the priors' device, and the (M,) mask of usable (valid) boxes."""
    gt = gt_boxes.to(device=priors.device, dtype=torch.float32).reshape(-1, 4)
    valid = torch.isfinite(gt).all(1) & (gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])
    return gt, valid


def _stacked(gt_boxes: Sequence[Tensor], priors: Priors) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """A batch's GTs stacked image by image, for the batch assigners: boxes (M, 4) and their usable mask (M,) as
    :func:`_as_gt` gives them, each GT's image (M,), and each image's count."""
    device = priors.device
    per_image = [_as_gt(b, priors) for b in gt_boxes]
    counts = [g.shape[0] for g, _ in per_image]
    gt = torch.cat([g for g, _ in per_image]) if per_image else torch.zeros(0, 4, device=device)
    valid = torch.cat([v for _, v in per_image]) if per_image else torch.zeros(0, dtype=torch.bool, device=device)
    image = torch.repeat_interleave(torch.arange(len(counts), device=device),
                                    torch.tensor(counts, dtype=torch.int64, device=device))
    return gt, valid, image, counts


def _per_image(image: Tensor, counts: list[int], num_priors: int, prior_idx: Tensor, gt_idx: Tensor,
               **fields: Tensor) -> list[Assignment]:
    """Pairs of a batch, grouped by image (batch GT indices, ascending image by image), split into each image's
    :class:`Assignment` with the image's own GT indices; ``fields`` (``iou``, ``quality``) split alike."""
    split = torch.bincount(image[gt_idx], minlength=len(counts)).tolist()
    starts = itertools.accumulate([0, *counts[:-1]])
    parts = {name: t.split(split) for name, t in fields.items()}
    return [_assignment(p, g - start, num_priors, **{name: part[i] for name, part in parts.items()})
            for i, (p, g, start) in enumerate(zip(prior_idx.split(split), gt_idx.split(split), starts))]


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """All-pairs IoU (N, R); 0 where both boxes have zero area (torchvision gives NaN there)."""
    return box_iou(a, b).nan_to_num_(0.0)


def _ltrb(points: Tensor, boxes: Tensor) -> Tensor:
    """Distances from points (R, 2) to the edges of boxes (N, 4): (N, R, 4) as (l, t, r, b)."""
    x, y = points[None, :, 0], points[None, :, 1]  # (1, R)
    return torch.stack([x - boxes[:, 0:1], y - boxes[:, 1:2], boxes[:, 2:3] - x, boxes[:, 3:4] - y], dim=2)


def _gt_blocks(m: int, r: int, per_prior: int = 1, max_block: int | None = None) -> Iterator[slice]:
    """Slices over M GTs such that a (block, R, per_prior) temporary stays under _BLOCK_ELEMS (and a block
    holds at most ``max_block`` GTs)."""
    step = max(1, _BLOCK_ELEMS // max(1, r * per_prior))
    if max_block is not None:
        step = min(step, max_block)
    for start in range(0, m, step):
        yield slice(start, min(m, start + step))


def _best_pair_per_prior(prior_idx: Tensor, gt_idx: Tensor, key: Tensor, num_priors: int) -> Tensor:
    """(P,) bool keeping, for every prior, the one pair with the largest ``key`` (ties -> lowest GT index)."""
    best = torch.full((num_priors,), -math.inf, dtype=key.dtype, device=key.device)
    best = best.scatter_reduce(0, prior_idx, key, reduce="amax")
    is_best = key == best[prior_idx]
    sentinel = torch.iinfo(torch.int64).max
    gt_cand = torch.where(is_best, gt_idx, torch.full_like(gt_idx, sentinel))
    first = torch.full((num_priors,), sentinel, dtype=torch.int64, device=key.device)
    first = first.scatter_reduce(0, prior_idx, gt_cand, reduce="amin")
    return is_best & (gt_idx == first[prior_idx])


def _covered_by_regions(priors: Priors, regions: Tensor, min_iof: float) -> Tensor:
    """(R,) bool: priors covered by any ignore region for at least ``min_iof`` of their own area (for
    zero-size priors: centre inside a region, edges included)."""
    boxes = priors.boxes
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1)  # (R,)
    covered = torch.zeros(len(priors), dtype=torch.bool, device=boxes.device)
    for sl in _gt_blocks(regions.shape[0], len(priors), per_prior=2):
        reg = regions[sl]
        iof = box_iof(boxes, reg).T  # (Q, R): the share of each prior inside each region
        point_in = _ltrb(priors.points, reg).amin(2) >= 0  # (Q, R)
        hit = torch.where(area > 0, iof >= min_iof, point_in)
        covered |= hit.any(0)
    return covered


# ----------------------------------------------------------------------------------------------------------
# Assigners


@torch.no_grad()
def assign_maxiou(
    priors: Priors,
    gt_boxes: Tensor,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    low_quality: bool = True,
    ignore_regions: Tensor | None = None,
    ignore_iof: float = 0.5,
) -> Assignment:
    """RetinaNet / Faster R-CNN MaxIoU assignment on prior boxes.

    Each prior takes its highest-IoU GT (ties -> lowest GT index): positive if that IoU >= ``pos_iou``,
    negative if < ``neg_iou``, ignored in between. With ``low_quality`` each GT also takes its best prior(s)
    (every prior that reaches the GT's maximum IoU, exact float ties included, only if that maximum is > 0);
    such a prior is labelled with ITS highest-IoU GT (detectron2/torchvision ``Matcher`` semantics, so a GT
    can lose its best prior to a better-overlapping GT), and ``fallback=True`` when that IoU is < ``pos_iou``.
    ``ignore_regions`` (Q, 4): non-positive priors covered by a region for >= ``ignore_iof`` of their area are
    ignored too (VisDrone "ignored regions"); positives are never overridden.
    """
    r = len(priors)
    gt, valid = _as_gt(gt_boxes, priors)
    device = priors.device
    best_iou = torch.zeros(r, device=device)  # (R,) max IoU over GTs
    best_gt = torch.full((r,), -1, dtype=torch.int64, device=device)  # (R,) its GT, -1: no overlap at all
    low_q = torch.zeros(r, dtype=torch.bool, device=device)  # (R,) some GT's best prior
    # Blocks of GTs sorted by centre y: a block only overlaps the priors crossing its bounding box (a band of
    # the image), and priors outside it have IoU 0 with every GT of the block, so they are skipped exactly.
    idx_valid = valid.nonzero().squeeze(1)
    by_y = idx_valid[torch.argsort(gt[idx_valid, 1] + gt[idx_valid, 3], stable=True)]  # (M_valid,)
    for sl in _gt_blocks(by_y.numel(), r, max_block=_BAND_GTS):
        ids = by_y[sl].sort().values  # (b,) GT indices, ascending
        g = gt[ids]  # (b, 4)
        lo, hi = g[:, :2].amin(0), g[:, 2:].amax(0)  # the block's bounding box
        boxes = priors.boxes
        near = (boxes[:, 0] < hi[0]) & (boxes[:, 2] > lo[0]) & (boxes[:, 1] < hi[1]) & (boxes[:, 3] > lo[1])
        sel = near.nonzero().squeeze(1)  # (S,) priors that can overlap the block
        if sel.numel() == 0:
            continue
        iou = _iou(g, boxes[sel])  # (b, S)
        block_best, block_arg = iou.max(0)  # (S,) first maximum = lowest GT index (ids are sorted)
        block_gt = ids[block_arg]  # (S,)
        old_iou, old_gt = best_iou[sel], best_gt[sel]
        # higher IoU wins; an exact tie between blocks goes to the lower GT index
        better = (block_best > old_iou) | ((block_best == old_iou) & (block_best > 0) & (block_gt < old_gt))
        best_iou[sel] = torch.where(better, block_best, old_iou)
        best_gt[sel] = torch.where(better, block_gt, old_gt)
        if low_quality:
            gt_best = iou.amax(1, keepdim=True)  # (b, 1)
            low_q[sel] |= ((iou == gt_best) & (gt_best > 0)).any(0)

    pos = ((best_iou >= pos_iou) | low_q) & (best_gt >= 0)
    ignore = ~pos & (best_iou >= neg_iou)
    if ignore_regions is not None and ignore_regions.numel():
        regions = ignore_regions.to(device=device, dtype=torch.float32).reshape(-1, 4)
        ignore |= ~pos & _covered_by_regions(priors, regions, ignore_iof)
    prior_idx = pos.nonzero().squeeze(1)  # (P,) sorted, each prior once
    pair_iou = best_iou[prior_idx]
    return _assignment(
        prior_idx, best_gt[prior_idx], r, fallback=pair_iou < pos_iou, ignore=ignore, iou=pair_iou
    )


@torch.no_grad()
def assign_atss(priors: Priors, gt_boxes: Tensor, topk: int = 9) -> Assignment:
    """ATSS (Zhang et al. 2020): adaptive IoU threshold from the statistics of nearby anchors.

    Per GT and per level, the ``topk`` priors whose centres are nearest the GT centre (L2) are candidates; the
    GT's threshold is ``mean + std`` (unbiased std, as the reference code; 0 with a single candidate) of the
    candidates' IoUs. A candidate is positive if its IoU >= threshold and its centre is strictly inside the
    GT. A prior positive for several GTs goes to the highest IoU. Nothing is ignored.
    """
    r = len(priors)
    gt, valid = _as_gt(gt_boxes, priors)
    centres = (gt[:, :2] + gt[:, 2:]) / 2  # (M, 2)
    level_slices = [sl for sl in priors.level_slices().values() if sl.stop > sl.start]
    pairs_p, pairs_g, pairs_iou = [], [], []
    for sl in _gt_blocks(gt.shape[0], r, per_prior=4):
        iou = _iou(gt[sl], priors.boxes)  # (b, R)
        dist = ((centres[sl, None, :] - priors.points[None]) ** 2).sum(2)  # (b, R) squared distance
        cand = torch.cat(
            [
                dist[:, ls].topk(min(topk, ls.stop - ls.start), dim=1, largest=False).indices + ls.start
                for ls in level_slices
            ],
            dim=1,
        )  # (b, C) candidate prior indices, C = sum_l min(topk, R_l)
        cand_iou = iou.gather(1, cand)  # (b, C)
        std = cand_iou.std(1) if cand.shape[1] > 1 else torch.zeros_like(cand_iou[:, 0])
        thr = cand_iou.mean(1) + std  # (b,)
        inside = _ltrb(priors.points, gt[sl]).amin(2) > 0  # (b, R) prior centre strictly inside
        pos = (cand_iou >= thr[:, None]) & inside.gather(1, cand) & valid[sl, None]  # (b, C)
        g, c = pos.nonzero(as_tuple=True)
        pairs_p.append(cand[g, c])
        pairs_g.append(g + sl.start)
        pairs_iou.append(cand_iou[g, c])
    return _resolved(pairs_p, pairs_g, pairs_iou, r, priors.device)


@torch.no_grad()
def assign_yolov5_batch(priors: Priors, gt_boxes: Sequence[Tensor], anchor_t: float = 4.0,
                        offset: float = 0.5) -> list[Assignment]:
    """:func:`assign_yolov5` for N images at once (``gt_boxes[i]`` (M_i, 4) of image i): the batch's GTs are stacked
    and matched on every level together, pairs keyed by (image, prior, GT). Each image's assignment is exactly what
    :func:`assign_yolov5` gives it alone; the per-image operators' dispatch, not their arithmetic, was the cost of
    assigning a training batch image by image."""
    r = len(priors)
    device = priors.device
    gt, valid, image, counts = _stacked(gt_boxes, priors)  # (M, 4), (M,), (M,) over the batch, image by image
    m, a = gt.shape[0], priors.anchors_per_loc
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    if m == 0:
        return _per_image(image, counts, r, empty, empty, iou=torch.zeros(0, device=device))
    centre = (gt[:, :2] + gt[:, 2:]) / 2  # (M, 2) x, y
    wh = (gt[:, 2:] - gt[:, :2]).clamp(min=1e-12)  # (M, 2); invalid boxes are masked below
    # centre cell, then the left, up, right, down neighbours: cell = floor(g - shift)
    directions = [[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]]
    shifts = offset * torch.tensor(directions, dtype=torch.float32, device=device)  # (5, 2)
    sizes = priors.feature_sizes()
    keys = []
    for name, sl in priors.level_slices().items():
        h, w = sizes[name]
        if h == 0 or w == 0:
            continue
        anchor_wh = priors.boxes[sl][:a, 2:] - priors.boxes[sl][:a, :2]  # (A, 2)
        ratio = wh[:, None, :] / anchor_wh[None]  # (M, A, 2)
        match = torch.maximum(ratio, 1 / ratio).amax(2) < anchor_t  # (M, A)
        match &= valid[:, None]
        g = centre / level_stride(name)  # (M, 2) grid units
        g_inv = torch.tensor([w, h], dtype=torch.float32, device=device) - g  # (M, 2) distance to far edge
        lo = (g % 1 < offset) & (g > 1)  # (M, 2) left, up
        hi = (g_inv % 1 < offset) & (g_inv > 1)  # (M, 2) right, down
        use = torch.cat([torch.ones_like(lo[:, :1]), lo, hi], dim=1)  # (M, 5)
        cells = (g[:, None, :] - shifts[None]).floor().long()  # (M, 5, 2) x, y
        loc = cells[..., 1].clamp(0, h - 1) * w + cells[..., 0].clamp(0, w - 1)  # (M, 5)
        gi, di, ai = (use[:, :, None] & match[:, None, :]).nonzero(as_tuple=True)
        prior = sl.start + loc[gi, di] * a + ai
        keys.append((image[gi] * r + prior) * m + gi)  # sorts by image, then prior, then GT
    if not keys:  # no level has a cell
        return _per_image(image, counts, r, empty, empty, iou=torch.zeros(0, device=device))
    key = torch.unique(torch.cat(keys))  # sorted, duplicate (prior, GT) pairs dropped
    gt_idx, prior_idx = key % m, (key // m) % r
    return _per_image(image, counts, r, prior_idx, gt_idx, iou=box_iou_pairwise(priors.boxes[prior_idx], gt[gt_idx]))


@torch.no_grad()
def assign_yolov5(priors: Priors, gt_boxes: Tensor, anchor_t: float = 4.0, offset: float = 0.5) -> Assignment:
    """Ultralytics YOLOv5 ``build_targets`` on :func:`~efpn.det.priors.yolo_priors`.

    On every level, anchor ``a`` matches a GT when ``max(w/a_w, a_w/w, h/a_h, a_h/h) < anchor_t``. The
    matched anchor is positive in the cell holding the GT centre and in up to two neighbours picked by the
    centre's fractional position ``g`` (grid units):

    * left if ``g_x % 1 < offset`` and ``g_x > 1``; right if ``(W - g_x) % 1 < offset`` and ``W - g_x > 1``;
      likewise up / down with ``g_y`` and ``H``;
    * a neighbour is the cell holding ``g -/+ offset``.

    Cells are clamped to the grid (centres outside the image) and duplicate ``(prior, gt)`` pairs are dropped
    (Ultralytics would count the centre cell twice when ``g_x`` is an exact integer). A prior may repeat for
    several GTs; nothing is fallback or ignored.
    """
    return assign_yolov5_batch(priors, [gt_boxes], anchor_t, offset)[0]


@torch.no_grad()
def assign_fcos(
    priors: Priors,
    gt_boxes: Tensor,
    size_ranges: Sequence[tuple[float, float]] | Mapping[str, tuple[float, float]] = FCOS_SIZE_RANGES,
    center_radius: float = 1.5,
) -> Assignment:
    """Box-only FCOS (Tian et al. 2019) with centre sampling, on point priors.

    A point is positive for a GT when it lies strictly inside the GT and strictly inside the centre region (GT
    centre +- ``center_radius * stride``, clipped to the GT; ``center_radius <= 0`` disables it), and the
    largest of its ``l, t, r, b`` distances falls in its level's range ``lo <= d <= hi``. ``size_ranges`` is a
    sequence aligned with ``priors.levels`` (default: p3..p7) or a mapping level name -> range. A point
    claimed by several GTs goes to the smallest-area GT. Nothing is ignored; ``iou`` is None (points have no
    box).
    """
    r = len(priors)
    device = priors.device
    gt, valid = _as_gt(gt_boxes, priors)
    if isinstance(size_ranges, Mapping):
        missing = [n for n in priors.levels if n not in size_ranges]
        if missing:
            raise ValueError(f"size_ranges has no range for levels {missing}")
        ranges = [size_ranges[n] for n in priors.levels]
    else:
        ranges = list(size_ranges)
        if len(ranges) != len(priors.levels):
            raise ValueError(f"{len(ranges)} size ranges for {len(priors.levels)} levels {priors.levels}")
    lo = torch.tensor([rg[0] for rg in ranges], dtype=torch.float32, device=device)[priors.level]  # (R,)
    hi = torch.tensor([rg[1] for rg in ranges], dtype=torch.float32, device=device)[priors.level]  # (R,)
    area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])  # (M,)
    pairs_p, pairs_g, pairs_key = [], [], []
    for sl in _gt_blocks(gt.shape[0], r, per_prior=8):
        box = gt[sl]
        ltrb = _ltrb(priors.points, box)  # (b, R, 4)
        pos = (ltrb.amin(2) > 0) & (ltrb.amax(2) >= lo) & (ltrb.amax(2) <= hi) & valid[sl, None]  # (b, R)
        if center_radius > 0:
            c = (box[:, :2] + box[:, 2:]) / 2  # (b, 2)
            rad = priors.strides[None, :, None] * center_radius  # (1, R, 1)
            region_lo = torch.maximum(c[:, None] - rad, box[:, None, :2])  # (b, R, 2) clipped to the GT
            region_hi = torch.minimum(c[:, None] + rad, box[:, None, 2:])  # (b, R, 2)
            pts = priors.points[None]  # (1, R, 2)
            pos &= torch.cat([pts - region_lo, region_hi - pts], dim=2).amin(2) > 0
        g, p = pos.nonzero(as_tuple=True)
        pairs_p.append(p)
        pairs_g.append(g + sl.start)
        pairs_key.append(-area[g + sl.start])  # larger key = smaller area wins
    return _resolved(pairs_p, pairs_g, pairs_key, r, device, keep_key=False)


def _resolved(
    pairs_p: list[Tensor],
    pairs_g: list[Tensor],
    pairs_key: list[Tensor],
    num_priors: int,
    device: torch.device,
    *,
    resolve: bool = True,
    keep_key: bool = True,
) -> Assignment:
    """Concatenate per-block pairs, keep one GT per prior (largest key), store the key as ``iou`` if asked."""
    if not pairs_p:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return _assignment(empty, empty, num_priors, iou=torch.zeros(0, device=device) if keep_key else None)
    prior_idx, gt_idx, key = torch.cat(pairs_p), torch.cat(pairs_g), torch.cat(pairs_key)
    if resolve:
        keep = _best_pair_per_prior(prior_idx, gt_idx, key, num_priors)
        prior_idx, gt_idx, key = prior_idx[keep], gt_idx[keep], key[keep]
    return _assignment(prior_idx, gt_idx, num_priors, iou=key if keep_key else None)
