"""Per-level positive accounting (SPEC §8): the app's and CLI's central number.

:func:`account` turns an :class:`~efpn.det.assign.Assignment` into a :class:`LevelAccounting`: positives per level
and per level x size bucket, fallback (low-quality) positives apart, positives per GT, and the starved GTs (zero
positives anywhere, or only fallback positives under the positive IoU). :meth:`LevelAccounting.merge` sums images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from efpn.det.assign import Assignment
from efpn.det.boxes import box_iou_pairwise
from efpn.det.priors import Priors
from efpn.vocab import BUCKETS, box_size, level_stride, size_bucket


@dataclass
class LevelAccounting:
    """Per-level positive accounting for one image or (after :meth:`merge`) a dataset (SPEC §8).

    Counts are of positive pairs (a YOLOv5 prior serving two GTs counts twice). Buckets (efpn.vocab.BUCKETS)
    are by the GT's ORIGINAL size. A GT is *starved* when it has no positive at all or, if the accounting was
    made with ``pos_iou``, no regular positive (non-fallback and IoU >= ``pos_iou``).
    """

    levels: list[str]
    positives_per_level: dict[str, int]  # level -> positive pairs
    fallback_per_level: dict[str, int]  # level -> low-quality (fallback) pairs
    per_level_bucket: dict[str, dict[str, int]]  # level -> bucket -> positive pairs
    positives_per_gt: list[int]  # (num_gt,)
    regular_per_gt: list[int]  # (num_gt,) positives that are not fallback
    gt_buckets: list[str]  # (num_gt,) bucket name
    starved: list[int]  # GT indices (dataset-wide after merge)
    num_gt: int
    num_images: int
    positives_per_gt_level: list[list[int]] = field(default_factory=list)  # (num_gt, L)
    gt_sizes: list[float] = field(default_factory=list)  # (num_gt,) sqrt(w*h) in original pixels

    @classmethod
    def empty(cls, levels: Sequence[str]) -> LevelAccounting:
        """The neutral element of :meth:`merge` for these levels (zero images)."""
        levels = list(levels)
        return cls(
            levels=levels,
            positives_per_level=dict.fromkeys(levels, 0),
            fallback_per_level=dict.fromkeys(levels, 0),
            per_level_bucket={lv: dict.fromkeys(BUCKETS, 0) for lv in levels},
            positives_per_gt=[],
            regular_per_gt=[],
            gt_buckets=[],
            starved=[],
            num_gt=0,
            num_images=0,
        )

    def merge(self, other: LevelAccounting) -> LevelAccounting:
        """Sum of two accountings over the same levels: counts add, per-GT lists concatenate (``other``'s GT
        indices are offset by ``self.num_gt``)."""
        if list(other.levels) != list(self.levels):
            raise ValueError(f"cannot merge accountings over {self.levels} and {other.levels}")
        return LevelAccounting(
            levels=list(self.levels),
            positives_per_level={
                lv: self.positives_per_level[lv] + other.positives_per_level[lv] for lv in self.levels
            },
            fallback_per_level={
                lv: self.fallback_per_level[lv] + other.fallback_per_level[lv] for lv in self.levels
            },
            per_level_bucket={
                lv: {b: self.per_level_bucket[lv][b] + other.per_level_bucket[lv][b] for b in BUCKETS}
                for lv in self.levels
            },
            positives_per_gt=self.positives_per_gt + other.positives_per_gt,
            regular_per_gt=self.regular_per_gt + other.regular_per_gt,
            gt_buckets=self.gt_buckets + other.gt_buckets,
            starved=self.starved + [i + self.num_gt for i in other.starved],
            num_gt=self.num_gt + other.num_gt,
            num_images=self.num_images + other.num_images,
            positives_per_gt_level=self.positives_per_gt_level + other.positives_per_gt_level,
            gt_sizes=self.gt_sizes + other.gt_sizes,
        )

    def histogram(self) -> list[int]:
        """``h[k]`` = number of GTs with exactly ``k`` positives (length max + 1; ``[]`` without GTs)."""
        if not self.positives_per_gt:
            return []
        h = [0] * (max(self.positives_per_gt) + 1)
        for k in self.positives_per_gt:
            h[k] += 1
        return h

    def zero_high_level_share(self) -> dict[str, float]:
        """For each level ``q >= p5`` in ``levels``: share of GTs with zero positives on ``q`` and every
        coarser level (0.0 without GTs). ``{"p5": 1.0}`` means no GT trains p5, p6 or p7 — SPEC §1's
        dead-end."""
        out: dict[str, float] = {}
        for i, name in enumerate(self.levels):
            if level_stride(name) < 32:
                continue
            zero = sum(1 for row in self.positives_per_gt_level if sum(row[i:]) == 0)
            out[name] = zero / self.num_gt if self.num_gt else 0.0
        return out

    def to_dict(self) -> dict:
        """JSON-ready form: every field plus ``num_positives``, ``starved_rate`` (0.0 without GTs),
        ``zero_positive_rate``, ``zero_high_level_share`` and ``histogram``."""
        n = self.num_gt
        return {
            "levels": list(self.levels),
            "num_images": self.num_images,
            "num_gt": n,
            "num_positives": sum(self.positives_per_level.values()),
            "positives_per_level": dict(self.positives_per_level),
            "fallback_per_level": dict(self.fallback_per_level),
            "per_level_bucket": {lv: dict(b) for lv, b in self.per_level_bucket.items()},
            "positives_per_gt": list(self.positives_per_gt),
            "regular_per_gt": list(self.regular_per_gt),
            "positives_per_gt_level": [list(row) for row in self.positives_per_gt_level],
            "gt_buckets": list(self.gt_buckets),
            "gt_sizes": list(self.gt_sizes),
            "starved": list(self.starved),
            "starved_rate": len(self.starved) / n if n else 0.0,
            "zero_positive_rate": sum(1 for k in self.positives_per_gt if k == 0) / n if n else 0.0,
            "zero_high_level_share": self.zero_high_level_share(),
            "histogram": self.histogram(),
        }


def account(
    assignment: Assignment,
    priors: Priors,
    gt_boxes: Tensor,
    pos_iou: float | None = None,
    scale: float = 1.0,
) -> LevelAccounting:
    """Count one image's positives per level, per level x size bucket and per GT (see
    :class:`LevelAccounting`).

    ``gt_boxes`` (M, 4) are in network pixels like the priors; ``scale`` is the resize factor original ->
    network, so buckets and ``gt_sizes`` use ``size / scale`` (original pixels). With ``pos_iou`` a GT counts
    as starved unless it has a positive that is not fallback and whose IoU (``assignment.iou``, else prior box
    vs GT) is >= ``pos_iou``.
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    gt = gt_boxes.to(device=priors.device, dtype=torch.float32).reshape(-1, 4)
    m, n_lv, n_b = gt.shape[0], len(priors.levels), len(BUCKETS)
    pi, gi, fb = assignment.prior_idx, assignment.gt_idx, assignment.fallback
    lvl = priors.level[pi]  # (P,)
    sane = torch.where(torch.isfinite(gt).all(1, keepdim=True), gt, torch.zeros_like(gt))  # NaN box -> size 0
    bucket = size_bucket(sane / scale)  # (M,) index into BUCKETS
    per_gt_level = torch.bincount(gi * n_lv + lvl, minlength=m * n_lv).view(m, n_lv)  # (M, L)
    per_level = torch.bincount(lvl, minlength=n_lv)  # (L,)
    fallback_level = torch.bincount(lvl[fb], minlength=n_lv)  # (L,)
    level_bucket = torch.bincount(lvl * n_b + bucket[gi], minlength=n_lv * n_b).view(n_lv, n_b)  # (L, 5)
    positives = per_gt_level.sum(1)  # (M,)
    regular = torch.bincount(gi[~fb], minlength=m)  # (M,)
    if pos_iou is None:
        starved = positives == 0
    else:
        iou = assignment.iou if assignment.iou is not None else box_iou_pairwise(priors.boxes[pi], gt[gi])
        strong = torch.bincount(gi[~fb & (iou >= pos_iou)], minlength=m)
        starved = strong == 0
    lv_names = priors.levels
    return LevelAccounting(
        levels=list(lv_names),
        positives_per_level=dict(zip(lv_names, per_level.tolist())),
        fallback_per_level=dict(zip(lv_names, fallback_level.tolist())),
        per_level_bucket={lv: dict(zip(BUCKETS, row)) for lv, row in zip(lv_names, level_bucket.tolist())},
        positives_per_gt=positives.tolist(),
        regular_per_gt=regular.tolist(),
        gt_buckets=[BUCKETS[b] for b in bucket.tolist()],
        starved=starved.nonzero().squeeze(1).tolist(),
        num_gt=m,
        num_images=1,
        positives_per_gt_level=per_gt_level.tolist(),
        gt_sizes=(box_size(sane) / scale).tolist(),
    )


