"""Choosing a detector's NMS IoU threshold on its validation split.

One threshold does not fit every dataset: isolated infrared point targets are indifferent to it, while ships moored
side by side in SAR images overlap their neighbours by more than 0.5 IoU, so at the common 0.5 the lower-scoring
ship of a pair is suppressed as a duplicate (``efpn diagnose`` reports those misses as "lost in NMS"). Detector
libraries set it per model family and dataset (YOLO validators use 0.7, RetinaNet/FCOS configs 0.5); here it is
measured: one prediction pass keeps every candidate, NMS runs at each threshold of a grid, and AP is scored per
threshold against the same ground truth (:func:`efpn.evaluation.validate.predict_records_nms`).

A threshold chosen on a split is tuned on it: the chosen row's AP is optimistic for that split, and held-out data
is the measure. Cards record the whole sweep next to the choice so a reader sees how much it mattered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from efpn.data.records import ImageRecord
from efpn.evaluation.coco import evaluate_detections
from efpn.evaluation.validate import check_classes, predict_records_nms
from efpn.models.detector import Detector

__all__ = ["NMS_SWEEP_IOUS", "NmsSweep", "sweep_nms_iou"]

#: The default grid: from below the usual 0.5 to the 0.7 of YOLO validators and a little beyond.
NMS_SWEEP_IOUS: tuple[float, ...] = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)
#: Metrics recorded per threshold.
SWEEP_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m")


@dataclass
class NmsSweep:
    """AP per NMS IoU threshold on one split, and the threshold that maximises ``metric``.

    ``rows`` maps each threshold to its metrics (``SWEEP_KEYS``; None where a size bucket has no object);
    ``current`` is the model's threshold before the sweep; ``best`` maximises ``metric`` (ties go to the threshold
    closest to ``current``, and ``current`` is kept unless another threshold gains at least ``min_gain``, so a flat
    or noisy sweep changes nothing).
    """

    metric: str
    current: float
    best: float
    rows: dict[float, dict[str, float | None]] = field(default_factory=dict)
    min_gain: float = 0.002

    @property
    def gain(self) -> float:
        """``metric`` at ``best`` minus at ``current``."""
        here = self.rows.get(self.current, {}).get(self.metric)
        there = self.rows[self.best].get(self.metric)
        return 0.0 if here is None or there is None else float(there) - float(here)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready: thresholds as strings, as a card stores them."""
        return {"metric": self.metric, "current": self.current, "best": self.best,
                "rows": {f"{iou:g}": dict(m) for iou, m in self.rows.items()}}

    def table(self) -> list[str]:
        """Plain-text lines, one per threshold, the chosen one marked."""
        lines = ["NMS IoU " + " ".join(f"{k:>7}" for k in SWEEP_KEYS)]
        for iou, m in self.rows.items():
            cells = " ".join(f"{'-' if m.get(k) is None else format(m[k], '.4f'):>7}" for k in SWEEP_KEYS)
            mark = ("  <- chosen" + (" (the model's)" if iou == self.current else "") if iou == self.best
                    else ("  (model's)" if iou == self.current else ""))
            lines.append(f"{iou:>7g} {cells}{mark}")
        return lines


@torch.no_grad()
def sweep_nms_iou(
    model: Detector,
    records: Sequence[ImageRecord],
    class_names: Sequence[str],
    ious: Sequence[float] = NMS_SWEEP_IOUS,
    image_size: int | None = None,
    metric: str = "AP",
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
    min_gain: float = 0.002,
) -> NmsSweep:
    """Score ``model`` on ``records`` at every NMS IoU threshold of ``ious`` from one prediction pass.

    ``image_size`` defaults to the model config's; evaluation settings are :func:`efpn.evaluation.validate`'s
    (score threshold 0.001, 1500 detections per image, AP at 1500). ``metric`` is the key maximised (one of
    ``SWEEP_KEYS``); the model's own threshold is always scored too, and kept unless the best gains ``min_gain``
    or more on ``metric`` (a difference smaller than one object's worth of AP on a small split is noise).
    Raises ValueError for an empty or out-of-range grid, an unknown metric, data whose classes are not the model's,
    or records with no image that could be read.
    """
    if metric not in SWEEP_KEYS:
        raise ValueError(f"metric must be one of {SWEEP_KEYS}, got {metric!r}")
    check_classes(model, class_names)
    current = float(model.config.postprocess.nms_iou)
    grid = sorted({round(float(v), 4) for v in ious} | {current})
    skipped: dict[str, str] = {}
    size = int(image_size or model.config.image_size)
    preds = predict_records_nms(model, records, size, grid, batch_size=batch_size, device=device,
                                progress=progress, skipped=skipped)
    kept = [r for r in records if str(r.path) not in skipped]
    if not kept:
        raise ValueError(f"none of the {len(records)} images could be read; the NMS sweep has nothing to score")
    rows: dict[float, dict[str, float | None]] = {}
    for iou in grid:
        m = evaluate_detections(kept, preds[iou], class_names, max_dets=(100, 1500),
                                ignore_regions=True).to_json_dict()  # scored as validate() scores
        rows[iou] = {k: m.get(k) for k in SWEEP_KEYS}

    def score(iou: float) -> float:
        value = rows[iou][metric]
        return -1.0 if value is None else float(value)

    best = max(grid, key=lambda iou: (score(iou), -abs(iou - current)))
    if score(best) - score(current) < min_gain:
        best = current
    return NmsSweep(metric=metric, current=current, best=best, rows=rows, min_gain=min_gain)
