"""Looking inside a detector: one inspected forward, score maps, gradient reach, attribution, starvation.

Everything here runs a model through :meth:`efpn.models.Detector.run` (the one public forward with typed
internals) and never changes the model: no hooks, no mode switch, no writes to parameters or buffers.
"""

from efpn.explain.attribution import (
    METHODS,
    Progress,
    box_area_share,
    detection_score,
    random_deletion_curve,
)
from efpn.explain.diagnose import (
    CAUSE_TEXT,
    CAUSES,
    GATE_LOW,
    SCORE_FLOOR,
    ImageDiagnosis,
    MissDiagnosis,
    diagnose_image,
    diagnose_misses,
    recall_by_bucket_and_cause,
)
from efpn.explain.diagnose_dataset import DatasetDiagnosis, diagnose_records, write_html
from efpn.explain.explanation import Explanation, attribution_passes, explain_detection
from efpn.explain.gradient import POSITIVE_LOSSES, gradient_reach, high_level_grad_norms
from efpn.explain.inspection import AssignmentView, Inspection, KernelMaps, assign_on, inspect
from efpn.explain.maps import (
    count_candidates,
    gate_stats,
    kernel_at,
    kernels_inside_outside,
    level_score_maps,
    normalize01,
    pca_rgb,
    reduce_channels,
    resize_map,
)
from efpn.explain.starvation import PROTOCOLS, AssignmentReport, accounting_for_records, assignment_report

__all__ = [
    "CAUSES",
    "CAUSE_TEXT",
    "DatasetDiagnosis",
    "GATE_LOW",
    "ImageDiagnosis",
    "MissDiagnosis",
    "SCORE_FLOOR",
    "diagnose_image",
    "diagnose_misses",
    "diagnose_records",
    "recall_by_bucket_and_cause",
    "write_html",
    "METHODS",
    "POSITIVE_LOSSES",
    "PROTOCOLS",
    "AssignmentReport",
    "AssignmentView",
    "Explanation",
    "Inspection",
    "Progress",
    "KernelMaps",
    "accounting_for_records",
    "assign_on",
    "assignment_report",
    "attribution_passes",
    "box_area_share",
    "count_candidates",
    "detection_score",
    "explain_detection",
    "gate_stats",
    "gradient_reach",
    "high_level_grad_norms",
    "inspect",
    "kernel_at",
    "kernels_inside_outside",
    "level_score_maps",
    "normalize01",
    "pca_rgb",
    "random_deletion_curve",
    "reduce_channels",
    "resize_map",
]
