"""Why was this object missed? Every missed ground-truth box walked back through the pipeline (SPEC §11).

For a box ``g`` that no detection of its class matches at IoU >= ``iou_thresh`` after NMS, :func:`diagnose_misses`
gathers the numbers of each stage from ONE cached inspection (no second forward) and names the first stage that
lost it, in this order:

1. ``starved`` — the model's own assigner gives ``g`` no positive prior (or only low-quality fallback ones under
   the positive IoU): training never asked any prior to find it;
2. ``gated_out`` — the FBSM gate at ``g``'s centre is below :data:`GATE_LOW` on every gated level;
3. ``never_scored`` — no prior covering ``g`` scores ``g``'s class above the floor (:data:`SCORE_FLOOR`, or half
   the threshold when that is lower);
4. ``under_threshold`` — the best prior covering ``g`` scores above the floor but below the threshold;
5. ``lost_in_nms`` — a prior whose box has IoU >= ``iou_thresh`` with ``g`` passed the threshold, yet no detection
   survived NMS (or the detection cap) for it;
6. ``mislocalised`` — the best prior covering ``g`` passed the threshold but its box has IoU < ``iou_thresh``.

A prior "covers" ``g`` when its centre lies in ``g``'s box widened to at least one stride around ``g``'s centre
(a 4 px object still has the cell that holds its centre). The numbers stay beside the label — positives per level,
the gates and CEM's share at the centre, the best prior's score, level and IoU — so a reader can disagree with
the rule. These causes are this project's, not the papers'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from efpn.det.boxes import box_iou_pairwise
from efpn.evaluation.matching import Matching, match_detections
from efpn.explain.inspection import Inspection, assign_on
from efpn.models.detector import Detector
from efpn.vocab import BUCKETS, box_size, size_bucket

__all__ = [
    "CAUSES",
    "CAUSE_TEXT",
    "GATE_LOW",
    "SCORE_FLOOR",
    "ImageDiagnosis",
    "MissDiagnosis",
    "diagnose_image",
    "diagnose_misses",
    "match_image",
    "recall_by_bucket_and_cause",
]

#: The causes, in the order the rule tries them.
CAUSES: tuple[str, ...] = ("starved", "gated_out", "never_scored", "under_threshold", "lost_in_nms", "mislocalised")
#: One sentence per cause, for tables and the studio.
CAUSE_TEXT: dict[str, str] = {
    "starved": ("no regular positive prior under the model's own assigner (low-IoU fallback matches at most): "
                "training never asked a well-placed prior to find it"),
    "gated_out": "the FBSM gate is closed at its centre on every gated level",
    "never_scored": "no prior covering it gives its class a score above the floor",
    "under_threshold": "the best prior covering it scores above the floor but below the threshold",
    "lost_in_nms": "a well-placed prior passed the threshold but was suppressed by NMS",
    "mislocalised": "the best prior covering it passed the threshold but its box misses the object",
}
#: A gate below this at an object's centre counts as closed.
GATE_LOW = 0.1
#: Scores below this (or half the threshold, if lower) count as "never scored".
SCORE_FLOOR = 0.05


@dataclass
class MissDiagnosis:
    """One missed ground-truth box, its numbers and its cause (boxes in the image's pixels)."""

    gt_index: int
    box: list[float]
    label: int
    size: float
    bucket: str
    positives: dict[str, int]  # level -> positive priors under the model's own assigner
    starved: bool
    gates: dict[str, float]  # gated level -> gate at the centre
    cem_share: dict[str, float]  # CEM level -> |α·F| / |p| at the centre
    best_score: float  # best score of g's class among covering priors (0 when none covers it)
    best_level: str | None
    best_iou: float
    best_box: list[float] | None
    passing_iou: float  # IoU with g of the best prior passing the threshold (0 when none passes)
    cause: str
    why: str = field(default="")

    def to_row(self) -> dict[str, Any]:
        """A flat, JSON-ready row for tables and CSV."""
        row = asdict(self)
        row["positives_total"] = sum(self.positives.values())
        return row


@dataclass
class ImageDiagnosis:
    """Matching and the misses of one image."""

    matching: Matching
    misses: list[MissDiagnosis]
    score_thresh: float
    iou_thresh: float

    def counts_by_cause(self) -> dict[str, int]:
        return {c: sum(m.cause == c for m in self.misses) for c in CAUSES}


def _centre_value(ins: Inspection, level: str, grid: Tensor, cx: float, cy: float) -> float:
    row, col = ins.cell_of(level, cx, cy)
    return float(grid[min(row, grid.shape[-2] - 1), min(col, grid.shape[-1] - 1)])


def _cem_share(ins: Inspection, level: str, cx: float, cy: float) -> float:
    row, col = ins.cell_of(level, cx, cy)
    fused, before = ins.cem_fused[level], ins.pyramid_before_cem[level]
    row, col = min(row, fused.shape[-2] - 1), min(col, fused.shape[-1] - 1)
    added = abs(ins.cem_alpha.get(level, 0.0)) * float(fused[:, row, col].norm())
    return added / max(float(before[:, row, col].norm()), 1e-12)


def check_labels(model: Detector, labels: Any, class_aware: bool = True) -> None:
    """Raise ValueError, saying what to do, when class-aware matching meets a label outside the model's classes
    (data annotated with other classes than the model was trained on)."""
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    k = model.num_classes
    if not class_aware or not lab.size or (lab.min() >= 0 and lab.max() < k):
        return
    bad = sorted({int(v) for v in lab if v < 0 or v >= k})
    names = ", ".join(model.config.class_names or []) or "unnamed"
    raise ValueError(f"ground-truth labels {bad[:5]} are outside the model's {k} class(es) ({names}): the data is "
                     "annotated with other classes than the model predicts. Use data with the model's classes, or "
                     "match detections of any class (class_aware=False; efpn diagnose --any-class).")


@torch.no_grad()
def diagnose_misses(
    model: Detector,
    ins: Inspection,
    gt_boxes: Any,
    gt_labels: Any,
    matching: Matching,
    score_thresh: float,
    iou_thresh: float = 0.5,
    class_aware: bool = True,
) -> list[MissDiagnosis]:
    """Diagnose every GT ``matching`` marks as missed (see the module docstring). ``gt_boxes`` (M, 4) xyxy in the
    inspected image's pixels with ``gt_labels`` (M,); ``ins`` an inspection of that image by ``model`` (its priors
    and head output are reused: no second forward). ``class_aware``: the best prior is the best at the object's own
    class (False: at any class, as when any class may find the object). Raises ValueError for class-aware labels
    outside the model's classes."""
    gt = torch.as_tensor(np.asarray(gt_boxes, dtype=np.float32)).reshape(-1, 4)
    labels = torch.as_tensor(np.asarray(gt_labels, dtype=np.int64)).reshape(-1)
    check_labels(model, labels, class_aware)
    missed = matching.missed.nonzero().flatten().tolist()
    if not missed:
        return []
    if ins.priors is None or ins.head is None:
        raise ValueError("this inspection kept no priors or head output; run efpn.inspect again")
    # the assigner scores boxes at their class: one the model lacks (any-class matching) is taken as its class 0
    known = (labels >= 0) & (labels < model.num_classes)
    view = assign_on(model, ins, gt, torch.where(known, labels, torch.zeros_like(labels)))
    priors = ins.priors
    level_of = priors.level[view.assignment.prior_idx]  # (P,) level index of each positive pair
    starved = set(view.accounting.starved)
    device = model.pixel_mean.device
    boxes_net, scores = model.decode(ins.head.to(device), priors.to(device))  # (1, R, 4), (1, R, K)
    boxes_img = ins.to_image(boxes_net[0].float().cpu())  # (R, 4)
    scores = scores[0].float().cpu()
    points = priors.points * (1.0 / ins.scale)  # (R, 2) prior centres in image px
    half = priors.strides / (2.0 * ins.scale)  # (R,) half a cell in image px
    floor = min(SCORE_FLOOR, score_thresh / 2)
    sizes, buckets = box_size(gt), size_bucket(gt)
    out: list[MissDiagnosis] = []
    for i in missed:
        g, k = gt[i], int(labels[i])
        cx, cy = float(g[0] + g[2]) / 2, float(g[1] + g[3]) / 2
        pos = view.assignment.gt_idx == i
        positives = {lv: int((level_of[pos] == j).sum()) for j, lv in enumerate(priors.levels)}
        gates = {lv: _centre_value(ins, lv, m, cx, cy) for lv, m in ins.gates.items()}
        cem = {lv: _cem_share(ins, lv, cx, cy) for lv in ins.cem_fused}
        x1, y1 = torch.minimum(g[0], cx - half), torch.minimum(g[1], cy - half)
        x2, y2 = torch.maximum(g[2], cx + half), torch.maximum(g[3], cy + half)
        covering = (points[:, 0] >= x1) & (points[:, 0] <= x2) & (points[:, 1] >= y1) & (points[:, 1] <= y2)
        cls_scores = scores[:, k] if class_aware else scores.max(1).values  # (R,)
        iou = box_iou_pairwise(boxes_img, g[None].expand_as(boxes_img))  # (R,)
        best_score, best_level, best_iou, best_box = 0.0, None, 0.0, None
        if covering.any():
            idx = covering.nonzero().flatten()
            j = int(idx[cls_scores[idx].argmax()])
            best_score, best_iou = float(cls_scores[j]), float(iou[j])
            best_level, best_box = priors.levels[int(priors.level[j])], boxes_img[j].tolist()
        passing = cls_scores >= score_thresh
        passing_iou = float(iou[passing].max()) if passing.any() else 0.0
        if i in starved:
            cause = "starved"
        elif gates and max(gates.values()) < GATE_LOW:
            cause = "gated_out"
        elif best_score < floor:
            cause = "never_scored"
        elif best_score < score_thresh:
            cause = "under_threshold"
        elif passing_iou >= iou_thresh:
            cause = "lost_in_nms"
        else:
            cause = "mislocalised"
        out.append(MissDiagnosis(
            gt_index=i, box=[round(float(v), 2) for v in g], label=k, size=round(float(sizes[i]), 2),
            bucket=BUCKETS[int(buckets[i])], positives=positives, starved=i in starved,
            gates={lv: round(v, 4) for lv, v in gates.items()}, cem_share={lv: round(v, 4) for lv, v in cem.items()},
            best_score=round(best_score, 4), best_level=best_level, best_iou=round(best_iou, 4),
            best_box=None if best_box is None else [round(v, 2) for v in best_box],
            passing_iou=round(passing_iou, 4), cause=cause, why=CAUSE_TEXT[cause],
        ))
    return out


def diagnose_image(
    model: Detector,
    ins: Inspection,
    gt_boxes: Any,
    gt_labels: Any,
    score_thresh: float | None = None,
    iou_thresh: float = 0.5,
    class_aware: bool = True,
    detections: dict[str, Tensor] | None = None,
    ignore_boxes: Any = None,
) -> ImageDiagnosis:
    """Match the inspection's detections (or ``detections``, e.g. sliced ones, in image px) above
    ``score_thresh`` (default: the model's) to the ground truth, and diagnose every miss. ``ignore_boxes`` (Q, 4):
    crowds and ignored areas, whose detections are no false alarms (:func:`efpn.evaluation.match_detections`)."""
    thr = model.config.postprocess.score_thresh if score_thresh is None else float(score_thresh)
    matching = match_image(ins.detections if detections is None else detections, gt_boxes, gt_labels, thr,
                           iou_thresh, class_aware, ignore_boxes)
    misses = diagnose_misses(model, ins, gt_boxes, gt_labels, matching, thr, iou_thresh, class_aware)
    return ImageDiagnosis(matching, misses, thr, iou_thresh)


def match_image(det: dict[str, Tensor], gt_boxes: Any, gt_labels: Any, score_thresh: float, iou_thresh: float = 0.5,
                class_aware: bool = True, ignore_boxes: Any = None) -> Matching:
    """:func:`efpn.evaluation.match_detections` of the detections scoring at least ``score_thresh``, with the
    detection indices of the result (``gt_match``, ``det_match``) into the full ``det`` lists."""
    keep = det["scores"] >= score_thresh
    matching = match_detections(det["boxes"][keep], det["scores"][keep], det["labels"][keep], gt_boxes, gt_labels,
                                iou_thresh, class_aware, ignore_boxes)
    # indices into the full detection list, not the thresholded one
    kept = keep.nonzero().flatten()
    gt_match = matching.gt_match.clone()
    found = gt_match >= 0
    gt_match[found] = kept[gt_match[found]]
    det_match = torch.full((len(keep),), -1, dtype=torch.int64)
    det_match[kept] = matching.det_match
    return Matching(gt_match, matching.gt_iou, det_match, matching.gt_bucket, matching.iou_thresh, class_aware)


def recall_by_bucket_and_cause(images: Sequence[ImageDiagnosis]) -> dict[str, dict[str, int]]:
    """Over many images: per size bucket the GT count, found count, misses per cause, and ``not_diagnosed``: misses
    without a cause (an image matched but never inspected whole, e.g. detected on tiles only)."""
    table = {b: {"gt": 0, "found": 0, **dict.fromkeys(CAUSES, 0)} for b in BUCKETS}
    for img in images:
        for b, c in img.matching.counts_by_bucket().items():
            table[b]["gt"] += c["gt"]
            table[b]["found"] += c["found"]
        for m in img.misses:
            table[m.bucket][m.cause] += 1
    for t in table.values():
        t["not_diagnosed"] = t["gt"] - t["found"] - sum(t[c] for c in CAUSES)
    return table
