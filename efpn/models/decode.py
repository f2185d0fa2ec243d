"""Decoders: raw head predictions -> per-prior boxes (pixels) and class scores, one per head family.

Kept apart from heads (which only predict) and from NMS (:mod:`efpn.det.postprocess`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

from efpn.det import boxes as bx
from efpn.det.priors import Priors
from efpn.models.heads import HeadOutput

#: ``(head_output, priors) -> (boxes (N, R, 4) xyxy px, scores (N, R, K) in [0, 1])``. Contract used by
#: :func:`candidate_subset`: a score never exceeds ``sigmoid(cls_logits)``, nor ``sigmoid(obj_logits)`` when the
#: head has objectness (true of every decoder here: the score is one of them or their product).
Decoder = Callable[[HeadOutput, Priors], tuple[Tensor, Tensor]]


def candidate_subset(out: HeadOutput, priors: Priors, score_thresh: float) -> tuple[HeadOutput, Priors]:
    """The priors some image could score above ``score_thresh`` with, before anything is decoded.

    A score ``<= sigmoid(logit)`` can only exceed ``t`` if ``logit > log(t / (1 - t))``, so priors whose best
    class logit (and objectness logit) is below that bound in every image are dropped. The bound is lowered
    by a margin far above float rounding, so the kept set is a superset of the true candidates and the
    detections are unchanged, while a dense head's (N, R, K) sigmoid and threshold run on the few survivors
    (R·K is ~25 M for a p2-p6 anchor head at 640). Returns ``(out, priors)`` restricted to the kept priors, in
    their original order (the subset ``Priors`` is only fit for decoding: its levels are no longer grids);
    the inputs themselves when ``score_thresh`` is outside (0, 1) or nothing can be dropped.
    """
    if not 0.0 < score_thresh < 1.0:
        return out, priors
    floor = math.log(score_thresh / (1.0 - score_thresh)) - 1e-3  # logit(t) minus a safety margin
    keep = out.cls_logits.amax(-1) > floor  # (N, R); NaN logits compare False, as their NaN scores would
    if out.obj_logits is not None:
        keep &= out.obj_logits > floor
    idx = keep.any(0).nonzero().squeeze(1)  # (R',) priors kept for at least one image
    if idx.numel() == len(priors):
        return out, priors
    sub_out = dataclasses.replace(
        out,
        cls_logits=out.cls_logits[:, idx],
        box=out.box[:, idx],
        obj_logits=None if out.obj_logits is None else out.obj_logits[:, idx],
    )
    level = priors.level[idx]
    sub_priors = dataclasses.replace(
        priors,
        boxes=priors.boxes[idx],
        points=priors.points[idx],
        strides=priors.strides[idx],
        level=level,
        num_per_level=torch.bincount(level, minlength=len(priors.levels)).tolist(),
    )
    return sub_out, sub_priors


def decode_retina(out: HeadOutput, priors: Priors) -> tuple[Tensor, Tensor]:
    """Anchor deltas -> boxes; sigmoid class scores."""
    n = out.box.shape[0]
    boxes = bx.decode_deltas(priors.boxes.expand(n, -1, -1).reshape(-1, 4), out.box.reshape(-1, 4))
    return boxes.view(n, -1, 4), out.cls_logits.sigmoid()


def decode_yolov5(out: HeadOutput, priors: Priors) -> tuple[Tensor, Tensor]:
    """YOLOv5 parametrisation -> boxes; score = sigmoid(objectness) * sigmoid(class)."""
    n = out.box.shape[0]
    boxes = bx.decode_yolov5(
        priors.boxes.expand(n, -1, -1).reshape(-1, 4),
        priors.strides.expand(n, -1).reshape(-1),
        out.box.reshape(-1, 4),
    )
    assert out.obj_logits is not None
    return boxes.view(n, -1, 4), out.cls_logits.sigmoid() * out.obj_logits.sigmoid()[..., None]


def make_decode_yolov8(reg_max: int) -> Decoder:
    """DFL expectation over ``reg_max`` bins (stride units) -> ltrb distances -> boxes; sigmoid class scores."""

    def decode(out: HeadOutput, priors: Priors) -> tuple[Tensor, Tensor]:
        n = out.box.shape[0]
        ltrb = bx.dfl_decode(out.box, reg_max) * priors.strides[:, None]  # (N, R, 4) px
        boxes = bx.dist2bbox(priors.points.expand(n, -1, -1), ltrb)
        return boxes, out.cls_logits.sigmoid()

    return decode
