"""Box-only assignment protocols with their published default priors: assignment statistics with no model.

:func:`assign_boxes` builds a protocol's default priors for an image size, assigns the GT boxes and accounts the
result, which is all the dataset-wide starvation measurements need (boxes alone, no images).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from efpn.det.accounting import LevelAccounting, account
from efpn.det.assign import Assignment, assign_atss, assign_fcos, assign_maxiou, assign_yolov5
from efpn.det.priors import Priors, anchor_priors, feature_sizes_for, point_priors, yolo_priors

P3_P7: tuple[str, ...] = ("p3", "p4", "p5", "p6", "p7")
P2_P6: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")
P3_P5: tuple[str, ...] = ("p3", "p4", "p5")

_Protocol = Callable[[Tensor, tuple[int, int]], tuple[Assignment, Priors, float | None]]


def _maxiou(gt: Tensor, hw: tuple[int, int]) -> tuple[Assignment, Priors, float | None]:
    # RetinaNet: 9 anchors (3 ratios x 3 octave scales), base 4 * stride, IoU 0.5 / 0.4, low-quality on
    priors = anchor_priors(feature_sizes_for(hw, P3_P7), device=gt.device)
    return assign_maxiou(priors, gt, 0.5, 0.4, low_quality=True), priors, 0.5


def _atss(gt: Tensor, hw: tuple[int, int]) -> tuple[Assignment, Priors, float | None]:
    # ATSS: one square anchor per location, 8 * stride, topk 9 per level
    priors = anchor_priors(
        feature_sizes_for(hw, P3_P7), anchor_scale=8.0, scales=(1.0,), ratios=(1.0,), device=gt.device
    )
    return assign_atss(priors, gt, topk=9), priors, None


def _yolov5(gt: Tensor, hw: tuple[int, int]) -> tuple[Assignment, Priors, float | None]:
    priors = yolo_priors(feature_sizes_for(hw, P3_P5), device=gt.device)
    return assign_yolov5(priors, gt, anchor_t=4.0, offset=0.5), priors, None


def _fcos(gt: Tensor, hw: tuple[int, int]) -> tuple[Assignment, Priors, float | None]:
    priors = point_priors(feature_sizes_for(hw, P3_P7), device=gt.device)
    return assign_fcos(priors, gt), priors, None


def _rpn(gt: Tensor, hw: tuple[int, int]) -> tuple[Assignment, Priors, float | None]:
    # Faster R-CNN FPN RPN: sizes 32..512 on p2..p6 (8 * stride), 3 ratios, IoU 0.7 / 0.3, low-quality on
    priors = anchor_priors(feature_sizes_for(hw, P2_P6), anchor_scale=8.0, scales=(1.0,), device=gt.device)
    return assign_maxiou(priors, gt, 0.7, 0.3, low_quality=True), priors, 0.7


_PROTOCOLS: dict[str, _Protocol] = {
    "maxiou": _maxiou,
    "atss": _atss,
    "yolov5": _yolov5,
    "fcos": _fcos,
    "rpn": _rpn,
}
#: Names accepted by :func:`assign_boxes`.
PROTOCOLS: tuple[str, ...] = tuple(_PROTOCOLS)


def assign_boxes(
    protocol: str,
    gt_boxes: Tensor,
    image_size: tuple[int, int],
    scale: float = 1.0,
) -> tuple[Assignment, Priors, LevelAccounting]:
    """Run a box-only protocol with its published default priors on one image of ``image_size`` (H, W).

    * ``maxiou``: RetinaNet p3-p7, 9 anchors (base 4 * stride), IoU 0.5 / 0.4 + low-quality matches;
    * ``atss``: p3-p7, one 8 * stride anchor per location, topk 9;
    * ``yolov5``: p3-p5 with the YOLOv5 default anchors, anchor_t 4, offset 0.5;
    * ``fcos``: p3-p7 points, default ranges, centre sampling 1.5;
    * ``rpn``: Faster R-CNN RPN p2-p6, anchors 32..512 x 3 ratios, IoU 0.7 / 0.3 + low-quality matches.

    The accounting of the IoU protocols (maxiou, rpn) uses their ``pos_iou``, so fallback-only GTs are
    starved. ``scale`` (original -> network) is passed to :func:`account`. Unknown names raise ValueError.
    """
    if protocol not in _PROTOCOLS:
        raise ValueError(f"unknown assignment protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    gt = gt_boxes.to(torch.float32).reshape(-1, 4)
    assignment, priors, pos_iou = _PROTOCOLS[protocol](gt, (int(image_size[0]), int(image_size[1])))
    return assignment, priors, account(assignment, priors, gt, pos_iou=pos_iou, scale=scale)
