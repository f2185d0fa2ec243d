"""Scoring detections: COCO AP with the AI-TOD size splits, validation of a model on records, and their figures.

Beside :mod:`efpn.engine` rather than inside it: scoring a model needs no training code.
"""

from efpn.evaluation.coco import SIZE_SPLITS, EvalResult, evaluate_detections, to_coco_dicts
from efpn.evaluation.figures import ap_by_size_figure, plot_ap_by_size, plot_pr_curves, pr_curves_figure, write_figure
from efpn.evaluation.matching import IGNORED, Matching, match_detections
from efpn.evaluation.nms_sweep import NMS_SWEEP_IOUS, NmsSweep, sweep_nms_iou
from efpn.evaluation.validate import Predictions, predict_records, predict_records_nms, validate

__all__ = [
    "SIZE_SPLITS",
    "NMS_SWEEP_IOUS",
    "EvalResult",
    "IGNORED",
    "NmsSweep",
    "Matching",
    "Predictions",
    "ap_by_size_figure",
    "evaluate_detections",
    "match_detections",
    "plot_ap_by_size",
    "plot_pr_curves",
    "pr_curves_figure",
    "predict_records",
    "predict_records_nms",
    "sweep_nms_iou",
    "to_coco_dicts",
    "validate",
    "write_figure",
]
