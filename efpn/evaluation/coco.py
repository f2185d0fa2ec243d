"""COCO-style detection evaluation with the AI-TOD tiny-object size splits (SPEC §9).

The matching and the precision/recall accumulation are pycocotools' ``COCOeval`` (or faster-coco-eval's
drop-in ``COCOeval_faster``); nothing here matches boxes by hand. What this module adds:

- in-memory COCO dicts built from dataset records and per-image predictions (no JSON files);
- the AI-TOD size splits by GT area as extra ``areaRng`` entries, half-open like SPEC §0
  (see :data:`SIZE_SPLITS`);
- maxDets ``(100, 1500)``: COCO's 100 and AI-TOD's 1500;
- headline numbers read straight from ``eval["precision"]``/``eval["recall"]``, because
  ``COCOeval.summarize()`` hard-codes COCO's three area ranges and maxDets indices;
- a split (or class) with no non-crowd GT is reported as ``None`` (JSON ``null``), never pycocotools' ``-1``;
- per-class AP and per-class precision/recall curves at IoU 0.5 (plotted by :mod:`efpn.evaluation.figures`).

Example::

    result = evaluate_detections(records, predictions, class_names)
    result.metrics["AP_vt"]            # AP@[.50:.95] of very tiny objects at maxDets 1500
    result.by_max_dets[100]["AP"]      # COCO's AP (maxDets 100)
    json.dumps(result.to_json_dict())  # what goes into a model card
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from efpn.vocab import BUCKET_EDGES, BUCKET_LABELS

Backend = Literal["pycocotools", "faster_coco_eval"]

#: pycocotools' stand-in for an unbounded area (1e5 px squared).
AREA_INF = 1e10


def _half_open(lo: float, hi: float) -> tuple[float, float]:
    """``[lo, hi)`` for COCOeval, which keeps ``lo <= area <= hi``: ``hi`` moves one float down, so an 8x8
    box is ``t`` only (as :func:`efpn.vocab.size_bucket` says), not both ``vt`` and ``t``."""
    return (lo, hi if hi >= AREA_INF else float(np.nextafter(hi, -np.inf)))


_AREA_EDGES = [edge**2 for edge in BUCKET_EDGES]  # bucket edges as areas: 64, 256, 1024, 4096
#: Area ranges (px², ``[lo, hi)``) evaluated by COCOeval, by split name. ``m`` is open-ended as in SPEC §9
#: (``[32², ∞)``, so it includes ``l``); ``l`` (``[64², ∞)``) is extra information.
SIZE_SPLITS: dict[str, tuple[float, float]] = {
    "all": (0.0, AREA_INF),
    "vt": _half_open(0.0, _AREA_EDGES[0]),
    "t": _half_open(_AREA_EDGES[0], _AREA_EDGES[1]),
    "s": _half_open(_AREA_EDGES[1], _AREA_EDGES[2]),
    "m": (_AREA_EDGES[2], AREA_INF),
    "l": (_AREA_EDGES[3], AREA_INF),
}
#: Human-readable split labels for plots.
SPLIT_LABELS: dict[str, str] = {
    "all": "all",
    "vt": BUCKET_LABELS["vt"],
    "t": BUCKET_LABELS["t"],
    "s": BUCKET_LABELS["s"],
    "m": "medium+ (>=32 px)",
    "l": BUCKET_LABELS["l"],
}
#: IoU thresholds 0.50:0.05:0.95 and the 101-point recall grid, as in COCO.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_GRID = np.linspace(0.0, 1.0, 101)
#: The metric keys of one maxDets setting, in report order.
METRIC_KEYS: tuple[str, ...] = (
    "AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "AP_l",
    "AR", "AR50", "AR_vt", "AR_t", "AR_s", "AR_m", "AR_l",
)  # fmt: skip


class GroundTruth(Protocol):
    """One image's annotations; :class:`efpn.data.records.ImageRecord` satisfies it.

    ``boxes`` (M, 4) xyxy px, ``labels`` (M,) in ``[0, K)``, ``iscrowd`` (M,) bool (crowd boxes are neither
    TP nor FP, as in COCO). Records without an ``iscrowd`` attribute count as all non-crowd.
    """

    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray | None


#: Per-image predictions: ``{"boxes": (D, 4) xyxy px, "scores": (D,), "labels": (D,) in [0, K)}``,
#: tensors or numpy arrays.
Prediction = Mapping[str, "torch.Tensor | np.ndarray"]


@dataclass
class EvalResult:
    """Evaluation numbers; all values are in ``[0, 1]`` or ``None`` (no non-crowd GT in that split/class).

    ``metrics`` holds :data:`METRIC_KEYS` at the *primary* maxDets ``max_dets`` (the largest one asked for:
    1500, AI-TOD's setting, by default). ``by_max_dets`` holds the same keys for every maxDets asked for
    (``by_max_dets[100]`` is COCO's). ``AP*`` are AP@[.50:.95] unless the key says 50/75; ``AR*`` is the
    recall averaged over IoU thresholds (``AR50`` at IoU 0.5 only). ``per_class``/``per_class_ap50`` are per
    class name at the primary maxDets over all sizes. ``pr_precision[name]`` (101,) is the interpolated
    precision at IoU 0.5 on ``recall_grid`` (0 past the highest recall reached) and ``pr_scores[name]`` the
    score threshold reaching each recall point; classes without GT have no curve. ``num_gt`` counts non-crowd
    GT boxes per split.
    """

    metrics: dict[str, float | None]
    by_max_dets: dict[int, dict[str, float | None]]
    per_class: dict[str, float | None]
    per_class_ap50: dict[str, float | None]
    num_gt: dict[str, int]
    max_dets: int
    num_images: int
    backend: str
    recall_grid: np.ndarray = field(default_factory=lambda: RECALL_GRID.copy())
    pr_precision: dict[str, np.ndarray] = field(default_factory=dict)
    pr_scores: dict[str, np.ndarray] = field(default_factory=dict)
    #: images left out because they could not be read (path -> why); the metrics are computed without them
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json_dict(self, include_curves: bool = False) -> dict[str, Any]:
        """JSON-ready dict (model cards, the studio)::

            {"AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m",       # float in [0, 1] or null
             "AP_l", "AR", "AR50", "AR_vt", "AR_t", "AR_s", "AR_m", "AR_l",
             "per_class": {name: AP}, "per_class_AP50": {name: AP50},
             "max_dets": 1500, "maxdets_100": {same metric keys}, "num_gt": {split: int},
             "num_images": int, "backend": str, "skipped_images": {path: why} (only when an image was unreadable),
             "pr_curves": {"iou": 0.5, "recall": [101], "precision": {name: [101]}, "scores": {name: [101]}}}

        ``pr_curves`` only with ``include_curves=True`` (it is K x 202 numbers; cards stay small without it).
        """
        out: dict[str, Any] = dict(self.metrics)
        out["per_class"] = dict(self.per_class)
        out["per_class_AP50"] = dict(self.per_class_ap50)
        out["max_dets"] = self.max_dets
        for m, values in sorted(self.by_max_dets.items()):
            if m != self.max_dets:
                out[f"maxdets_{m}"] = dict(values)
        out["num_gt"] = dict(self.num_gt)
        out["num_images"] = self.num_images
        out["backend"] = self.backend
        if self.skipped:  # only when it happened: what the numbers leave out
            out["skipped_images"] = dict(self.skipped)
        if include_curves:
            out["pr_curves"] = {
                "iou": 0.5,
                "recall": self.recall_grid.tolist(),
                "precision": {k: v.tolist() for k, v in self.pr_precision.items()},
                "scores": {k: v.tolist() for k, v in self.pr_scores.items()},
            }
        return out

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_json_dict` (e.g. to plot the metrics stored in a model card)."""
        max_dets = int(d["max_dets"])
        metrics = {k: d.get(k) for k in METRIC_KEYS}
        by_max_dets = {max_dets: metrics}
        for key, values in d.items():
            if key.startswith("maxdets_"):
                by_max_dets[int(key.removeprefix("maxdets_"))] = {k: values.get(k) for k in METRIC_KEYS}
        curves = d.get("pr_curves") or {}
        return cls(
            metrics=metrics,
            by_max_dets=by_max_dets,
            per_class=dict(d.get("per_class", {})),
            per_class_ap50=dict(d.get("per_class_AP50", {})),
            num_gt={k: int(v) for k, v in d.get("num_gt", {}).items()},
            max_dets=max_dets,
            num_images=int(d.get("num_images", 0)),
            backend=str(d.get("backend", "")),
            recall_grid=np.asarray(curves.get("recall", RECALL_GRID), dtype=np.float64),
            pr_precision={k: np.asarray(v, dtype=np.float64) for k, v in curves.get("precision", {}).items()},
            pr_scores={k: np.asarray(v, dtype=np.float64) for k, v in curves.get("scores", {}).items()},
        )


# --------------------------------------------------------------------------------------------- COCO dicts


def _numpy(x: torch.Tensor | np.ndarray | Sequence[Any], dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    """(M, 4) xyxy -> (M, 4) xywh; negative widths/heights (degenerate boxes) are clamped to 0."""
    b = boxes_xyxy.reshape(-1, 4).astype(np.float64)
    wh = np.clip(b[:, 2:] - b[:, :2], 0.0, None)
    return np.concatenate([b[:, :2], wh], axis=1)


def to_coco_dicts(
    records: Sequence[GroundTruth],
    predictions: Mapping[int, Prediction],
    class_names: Sequence[str],
    ignore_regions: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ground truth and detections as COCO dicts ``(gt, dt)`` (bbox ``xywh``, ``area = w*h``, ids from 1).

    Category ids are ``label + 1``. Every record becomes an image (images without boxes included); an image
    missing from ``predictions`` has no detections. With ``ignore_regions=True`` a record's ``ignore`` (Q, 4)
    xyxy regions (VisDrone) become crowd boxes of every class, so detections inside them count as neither TP
    nor FP. Raises ValueError for duplicate image ids, predictions for unknown images, labels outside
    ``[0, K)``, non-finite scores or mismatched lengths.
    """
    num_classes = len(class_names)
    categories = [{"id": k + 1, "name": str(name)} for k, name in enumerate(class_names)]
    images: list[dict[str, Any]] = []
    gt_anns: list[dict[str, Any]] = []
    for rec in records:
        image_id = int(rec.image_id)
        images.append({"id": image_id, "width": int(rec.width), "height": int(rec.height)})
        boxes = _xywh(_numpy(rec.boxes, np.float64))
        labels = _numpy(rec.labels, np.int64).reshape(-1)
        crowd = getattr(rec, "iscrowd", None)
        crowd = np.zeros(len(labels), dtype=bool) if crowd is None else _numpy(crowd, bool).reshape(-1)
        if not (len(boxes) == len(labels) == len(crowd)):
            raise ValueError(
                f"image {image_id}: boxes/labels/iscrowd lengths differ ({len(boxes)}/{len(labels)}/{len(crowd)})"
            )
        _check_labels(labels, num_classes, f"ground truth of image {image_id}")
        for box, label, is_crowd in zip(boxes.tolist(), labels.tolist(), crowd.tolist()):
            gt_anns.append(_ann(len(gt_anns) + 1, image_id, label + 1, box, iscrowd=int(is_crowd)))
        if ignore_regions:
            for box in _xywh(_numpy(getattr(rec, "ignore", np.zeros((0, 4))), np.float64)).tolist():
                for k in range(num_classes):
                    gt_anns.append(_ann(len(gt_anns) + 1, image_id, k + 1, box, iscrowd=1))
    known = {img["id"] for img in images}
    if len(known) != len(images):
        raise ValueError("records have duplicate image_id values; COCO evaluation needs unique ids")
    unknown = sorted(set(int(i) for i in predictions) - known)
    if unknown:
        raise ValueError(f"predictions for image ids that are not in the records: {unknown[:10]}")

    dt_anns: list[dict[str, Any]] = []
    for image_id, pred in predictions.items():
        boxes = _xywh(_numpy(pred["boxes"], np.float64))
        scores = _numpy(pred["scores"], np.float64).reshape(-1)
        labels = _numpy(pred["labels"], np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(
                f"predictions of image {image_id}: boxes/scores/labels lengths differ "
                f"({len(boxes)}/{len(scores)}/{len(labels)})"
            )
        if not np.isfinite(scores).all():
            raise ValueError(f"predictions of image {image_id}: non-finite scores")
        _check_labels(labels, num_classes, f"predictions of image {image_id}")
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            ann = _ann(len(dt_anns) + 1, int(image_id), label + 1, box, iscrowd=0)
            ann["score"] = score
            dt_anns.append(ann)

    gt = {"images": images, "categories": categories, "annotations": gt_anns}
    dt = {"images": list(images), "categories": categories, "annotations": dt_anns}
    return gt, dt


def _ann(ann_id: int, image_id: int, category_id: int, xywh: list[float], iscrowd: int) -> dict[str, Any]:
    # ids start at 1: COCOeval stores matches as ids and treats 0 as "unmatched"
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": xywh,
        "area": xywh[2] * xywh[3],
        "iscrowd": iscrowd,
    }


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what}: labels must be in [0, {num_classes}), got {sorted(set(labels.tolist()))[:10]}")


# --------------------------------------------------------------------------------------------- COCOeval


def _coco_eval(gt: dict[str, Any], dt: dict[str, Any], max_dets: Sequence[int], backend: Backend) -> dict:
    """Run COCOeval (bbox) with our IoU thresholds, size splits and maxDets; returns its ``eval`` dict."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    elif backend == "faster_coco_eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        raise ValueError(f"backend must be 'pycocotools' or 'faster_coco_eval', got {backend!r}")
    # pycocotools prints progress to stdout; keep library output quiet (redirect_stdout is process-wide, so
    # a print from another thread during these milliseconds-to-seconds would be swallowed too)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset, coco_dt.dataset = gt, dt
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        p = ev.params
        p.imgIds = sorted(img["id"] for img in gt["images"])
        p.catIds = sorted(cat["id"] for cat in gt["categories"])
        p.iouThrs = IOU_THRESHOLDS.copy()
        p.recThrs = RECALL_GRID.copy()
        p.maxDets = sorted(int(m) for m in max_dets)
        p.areaRng = [list(rng) for rng in SIZE_SPLITS.values()]
        p.areaRngLbl = list(SIZE_SPLITS)
        ev.evaluate()
        ev.accumulate()
    return ev.eval


def _mean_valid(x: np.ndarray) -> float | None:
    """Mean over entries > -1 (COCOeval's "no GT here" marker); None when there are none."""
    valid = x[x > -1]
    return float(valid.mean()) if valid.size else None


def _metrics(precision: np.ndarray, recall: np.ndarray, m: int) -> dict[str, float | None]:
    """Headline metrics at maxDets index ``m``; precision (T, R, K, A, M), recall (T, K, A, M)."""
    splits = list(SIZE_SPLITS)
    t50 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.5)))
    t75 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.75)))
    a_all = splits.index("all")
    out: dict[str, float | None] = {
        "AP": _mean_valid(precision[:, :, :, a_all, m]),
        "AP50": _mean_valid(precision[t50, :, :, a_all, m]),
        "AP75": _mean_valid(precision[t75, :, :, a_all, m]),
    }
    for a, name in enumerate(splits):
        if name != "all":
            out[f"AP_{name}"] = _mean_valid(precision[:, :, :, a, m])
    out["AR"] = _mean_valid(recall[:, :, a_all, m])
    out["AR50"] = _mean_valid(recall[t50, :, a_all, m])
    for a, name in enumerate(splits):
        if name != "all":
            out[f"AR_{name}"] = _mean_valid(recall[:, :, a, m])
    return {k: out[k] for k in METRIC_KEYS}


def _count_gt(gt: dict[str, Any]) -> dict[str, int]:
    areas = np.array([a["area"] for a in gt["annotations"] if not a["iscrowd"]], dtype=np.float64)
    return {name: int(((areas >= lo) & (areas <= hi)).sum()) for name, (lo, hi) in SIZE_SPLITS.items()}


def evaluate_detections(
    records: Sequence[GroundTruth],
    predictions: Mapping[int, Prediction],
    class_names: Sequence[str],
    max_dets: Sequence[int] = (100, 1500),
    backend: Backend = "pycocotools",
    ignore_regions: bool = False,
) -> EvalResult:
    """COCO-style bbox evaluation with the AI-TOD splits (SPEC §9).

    ``records``: one :class:`GroundTruth` per evaluated image (boxes xyxy px, labels ``[0, K)``, iscrowd).
    ``predictions``: image_id -> ``{"boxes" (D, 4) xyxy px, "scores" (D,), "labels" (D,)}`` (tensors or
    numpy); images without an entry have no detections. maxDets limits detections per image *and class*, as
    COCOeval does. The headline ``metrics`` are at ``max(max_dets)`` (1500 by default); ``by_max_dets`` has
    every setting. ``backend`` picks the COCOeval implementation; both give the same numbers (tests check
    this). ``ignore_regions``: see :func:`to_coco_dicts`.
    """
    if not max_dets or any(int(m) < 1 for m in max_dets):
        raise ValueError(f"max_dets must be positive integers, got {tuple(max_dets)}")
    if not class_names:
        raise ValueError("class_names is empty: evaluation needs the K class names, in label order")
    gt, dt = to_coco_dicts(records, predictions, class_names, ignore_regions=ignore_regions)
    max_dets_sorted = sorted({int(m) for m in max_dets})
    ev = _coco_eval(gt, dt, max_dets_sorted, backend)
    # precision (T, R, K, A, M) with -1 where a class has no non-crowd GT in an area range; recall
    # (T, K, A, M); scores (T, R, K, A, M) = the detection score at which each recall point is reached
    precision = np.asarray(ev["precision"], dtype=np.float64)
    recall = np.asarray(ev["recall"], dtype=np.float64)
    scores = np.asarray(ev["scores"], dtype=np.float64)
    by_max_dets = {md: _metrics(precision, recall, m) for m, md in enumerate(max_dets_sorted)}
    primary = max_dets_sorted[-1]
    m = len(max_dets_sorted) - 1
    a_all = list(SIZE_SPLITS).index("all")
    t50 = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.5)))
    per_class, per_class_ap50 = {}, {}
    pr_precision, pr_scores = {}, {}
    for k, name in enumerate(class_names):
        per_class[str(name)] = _mean_valid(precision[:, :, k, a_all, m])
        per_class_ap50[str(name)] = _mean_valid(precision[t50, :, k, a_all, m])
        curve = precision[t50, :, k, a_all, m]
        if (curve > -1).all():
            pr_precision[str(name)] = curve.copy()
            pr_scores[str(name)] = np.clip(scores[t50, :, k, a_all, m], 0.0, None)
    return EvalResult(
        metrics=by_max_dets[primary],
        by_max_dets=by_max_dets,
        per_class=per_class,
        per_class_ap50=per_class_ap50,
        num_gt=_count_gt(gt),
        max_dets=primary,
        num_images=len(gt["images"]),
        backend=backend,
        recall_grid=RECALL_GRID.copy(),
        pr_precision=pr_precision,
        pr_scores=pr_scores,
    )
