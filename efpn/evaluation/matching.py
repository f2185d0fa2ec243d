"""Detections <-> ground truth on one image: which objects were found, which detections are false alarms.

The rule is COCO's greedy matching at one IoU threshold: detections in decreasing score take the unmatched
ground-truth box of the same class (or any class with ``class_aware=False``) they overlap most, if that IoU is at
least ``iou_thresh``. It is what the studio draws (found / missed / false alarm) and what the miss diagnosis starts
from; dataset AP stays pycocotools' (:mod:`efpn.evaluation.coco`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from efpn.det.boxes import box_iof
from efpn.vocab import BUCKETS, size_bucket

__all__ = ["IGNORED", "Matching", "match_detections"]

#: ``Matching.det_match`` of a detection inside an ignore region.
IGNORED = -2


@dataclass(frozen=True)
class Matching:
    """The outcome of :func:`match_detections` (all tensors on CPU).

    ``gt_match`` (M,) int64: index of the detection that found each GT, -1 when missed; ``gt_iou`` (M,) its IoU
    (0 when missed); ``det_match`` (D,) int64: index of the GT each detection found, -1 for a false alarm,
    :data:`IGNORED` for one inside an ignore region (neither); ``gt_bucket`` (M,) int64 index into
    :data:`efpn.vocab.BUCKETS` of each GT's size.
    """

    gt_match: Tensor
    gt_iou: Tensor
    det_match: Tensor
    gt_bucket: Tensor
    iou_thresh: float
    class_aware: bool

    @property
    def found(self) -> Tensor:
        """(M,) bool: GTs matched by a detection."""
        return self.gt_match >= 0

    @property
    def missed(self) -> Tensor:
        """(M,) bool: GTs no detection matched."""
        return self.gt_match < 0

    @property
    def false_alarms(self) -> Tensor:
        """(D,) bool: detections that matched no GT and lie in no ignore region."""
        return self.det_match == -1

    @property
    def ignored(self) -> Tensor:
        """(D,) bool: unmatched detections inside an ignore region (a crowd, VisDrone's ignored areas): neither
        found objects nor false alarms."""
        return self.det_match == IGNORED

    def counts_by_bucket(self) -> dict[str, dict[str, int]]:
        """``{bucket: {"gt", "found", "missed"}}`` for every size bucket (zeros where there is no GT)."""
        out = {}
        for i, b in enumerate(BUCKETS):
            sel = self.gt_bucket == i
            found = int((sel & self.found).sum())
            out[b] = {"gt": int(sel.sum()), "found": found, "missed": int(sel.sum()) - found}
        return out


def match_detections(
    det_boxes: Tensor | np.ndarray,
    det_scores: Tensor | np.ndarray,
    det_labels: Tensor | np.ndarray,
    gt_boxes: Tensor | np.ndarray,
    gt_labels: Tensor | np.ndarray,
    iou_thresh: float = 0.5,
    class_aware: bool = True,
    ignore_boxes: Tensor | np.ndarray | None = None,
) -> Matching:
    """Greedy one-to-one matching of detections (D, 4) xyxy with scores (D,) and labels (D,) to ground truth
    (M, 4) with labels (M,), all in the same pixels. Ties in score keep the detections' order; a detection takes
    the best-overlapping GT still free. Sizes (for the buckets) are measured on ``gt_boxes`` as given, so pass
    boxes in the image's own pixels. ``ignore_boxes`` (Q, 4): regions of any class (crowds, VisDrone's ignored
    areas) that take, as COCO's crowd boxes do, every detection left unmatched with at least ``iou_thresh`` of its
    area inside one: such a detection is :data:`IGNORED`, not a false alarm."""
    if not 0.0 < iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    db = torch.as_tensor(np.asarray(det_boxes, dtype=np.float32)).reshape(-1, 4)
    ds = torch.as_tensor(np.asarray(det_scores, dtype=np.float32)).reshape(-1)
    dl = torch.as_tensor(np.asarray(det_labels, dtype=np.int64)).reshape(-1)
    gb = torch.as_tensor(np.asarray(gt_boxes, dtype=np.float32)).reshape(-1, 4)
    gl = torch.as_tensor(np.asarray(gt_labels, dtype=np.int64)).reshape(-1)
    if not len(db) == len(ds) == len(dl):
        raise ValueError(f"detections disagree in length: {len(db)} boxes, {len(ds)} scores, {len(dl)} labels")
    if len(gb) != len(gl):
        raise ValueError(f"ground truth disagrees in length: {len(gb)} boxes, {len(gl)} labels")
    m, d = len(gb), len(db)
    gt_match = torch.full((m,), -1, dtype=torch.int64)
    gt_iou = torch.zeros(m)
    det_match = torch.full((d,), -1, dtype=torch.int64)
    if m and d:
        iou = box_iou(db, gb).nan_to_num_(0.0)  # (D, M)
        if class_aware:
            iou = torch.where(dl[:, None] == gl[None, :], iou, torch.zeros_like(iou))
        for j in torch.argsort(ds, descending=True, stable=True).tolist():
            cand = torch.where(gt_match < 0, iou[j], torch.full_like(iou[j], -1.0))
            best = int(cand.argmax())
            if float(cand[best]) >= iou_thresh:
                gt_match[best], gt_iou[best], det_match[j] = j, float(cand[best]), best
    regions = (torch.as_tensor(np.asarray(ignore_boxes, dtype=np.float32)).reshape(-1, 4)
               if ignore_boxes is not None else torch.zeros((0, 4)))
    free = det_match < 0
    if len(regions) and bool(free.any()):
        inside = box_iof(db, regions).amax(1) >= iou_thresh  # (D,): share of the detection in a region
        det_match[free & inside] = IGNORED
    return Matching(gt_match, gt_iou, det_match, size_bucket(gb), float(iou_thresh), class_aware)
