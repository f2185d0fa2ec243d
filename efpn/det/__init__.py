"""Pure, parameter-free detection geometry: boxes and coders, priors, label assignment, its per-level accounting,
box-only protocols with published defaults, losses and postprocessing."""

from efpn.det.accounting import LevelAccounting, account
from efpn.det.assign import (
    Assignment,
    assign_atss,
    assign_fcos,
    assign_maxiou,
    assign_yolov5,
    assign_yolov5_batch,
)
from efpn.det.priors import Priors, anchor_priors, point_priors, yolo_priors
from efpn.det.protocols import PROTOCOLS, assign_boxes
from efpn.det.tal import assign_tal, assign_tal_batch

__all__ = [
    "PROTOCOLS",
    "Assignment",
    "LevelAccounting",
    "Priors",
    "account",
    "anchor_priors",
    "assign_atss",
    "assign_boxes",
    "assign_fcos",
    "assign_maxiou",
    "assign_tal",
    "assign_tal_batch",
    "assign_yolov5",
    "assign_yolov5_batch",
    "point_priors",
    "yolo_priors",
]
