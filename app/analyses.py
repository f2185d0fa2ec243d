"""Cached library calls for the studio: the one inspected forward every page shares, and the analyses on it.

Results are cached with ``st.cache_data``, keyed on the checkpoint (path + mtime, :func:`app.loaders.checkpoint_key`),
the image's SHA-1 and the parameters; arguments with a leading underscore (the model, the decoded pixels, a cached
inspection) are not hashed, their keys stand in for them. All model logic lives in :mod:`efpn`; this module only
calls it. Boxes given and returned here are in the image's pixels; the network's pixels stay inside :mod:`efpn`
(the :class:`efpn.Inspection` coordinate helpers, ``efpn.infer.boxes_to_network``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import streamlit as st
import torch

import efpn
from efpn import Detector, Inspection
from efpn.data import ImageRecord
from efpn.det import Assignment, LevelAccounting, Priors, assign_boxes
from efpn.explain import (
    DatasetDiagnosis,
    Explanation,
    ImageDiagnosis,
    Progress,
    accounting_for_records,
    assign_on,
    attribution_passes,
    diagnose_image,
    diagnose_records,
    explain_detection,
    gradient_reach,
    level_score_maps,
)
from efpn.infer import (
    Prepared,
    boxes_to_network,
    boxes_to_original,
    network_hw,
    predict_image,
    prepare,
    sliced_predict,
)

#: Box-only protocols with their published priors (``efpn.det.assign_boxes``), by display name.
BOX_PROTOCOLS: dict[str, str] = {
    "MaxIoU (RetinaNet)": "maxiou",
    "ATSS": "atss",
    "YOLOv5 ratio": "yolov5",
    "FCOS": "fcos",
    "RPN (Faster R-CNN)": "rpn",
}
MODEL_ASSIGNER = "Model's own assigner"
TAL = "TAL (YOLOv8, uses the model's predictions)"
TAL_NOTE = ("TAL ranks candidates by score^0.5 x IoU^6 of the model's own predictions: an untrained model gives "
            "near-random picks.")


# ----------------------------------------------------------------------------------------------- heavy work

#: Heavy requests (sliced inference, Integrated Gradients / Occlusion) run at most this many at a time in the server
#: process (``EFPN_STUDIO_HEAVY_SLOTS``, default 1). The others wait for a slot instead of all slowing each other
#: down, and the light work of every session (inspections, pages) keeps the rest of the machine.
def _slots_from_env(default: int = 1) -> int:
    """``$EFPN_STUDIO_HEAVY_SLOTS`` as a whole number >= 1; any other value is logged and the default kept (at import
    time there is no page to say it on, and a typo must not take every page down)."""
    raw = os.environ.get("EFPN_STUDIO_HEAVY_SLOTS", "").strip()
    try:
        return max(1, int(raw)) if raw else default
    except ValueError:
        logging.getLogger(__name__).warning("EFPN_STUDIO_HEAVY_SLOTS=%r is not a whole number; using %d", raw, default)
        return default


HEAVY_SLOTS = _slots_from_env()
_HEAVY = threading.BoundedSemaphore(HEAVY_SLOTS)


@contextlib.contextmanager
def heavy_slot(waiting: Callable[[], None] | None = None, interval: float = 0.25) -> Iterator[None]:
    """Hold one of the server's heavy-work slots for the ``with`` block.

    While another request holds it, ``waiting()`` is called every ``interval`` seconds: the studio passes a
    Streamlit update there, which says the request is queued and is also where a user's Cancel (a rerun) stops the
    wait. The slot is released however the block ends.
    """
    while not _HEAVY.acquire(timeout=interval):
        if waiting is not None:
            waiting()
    try:
        yield
    finally:
        _HEAVY.release()


# ----------------------------------------------------------------------------------------------- ground truth


def gt_key(boxes: np.ndarray | None, labels: np.ndarray | None) -> tuple | None:
    """A hashable, compact stand-in for a set of GT boxes (cache key)."""
    if boxes is None:
        return None
    b = np.round(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 2)
    lab = np.asarray(labels if labels is not None else np.zeros(len(b)), dtype=np.int64).reshape(-1)
    return tuple(map(tuple, b.tolist())), tuple(lab.tolist())


def _targets(gt: tuple | None) -> dict[str, np.ndarray] | None:
    if gt is None:
        return None
    boxes, labels = gt
    return {"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.asarray(labels, dtype=np.int64)}


# ----------------------------------------------------------------------------------------------- forwards


#: inspections kept server-wide: one per (checkpoint, image, thresholds); about 16 MB each for a 320 px network
#: (all pyramid features and the raw head output). Ten concurrent users each on their own image must not evict each
#: other's between two page views (with 8, `bench/load.py`'s ten sessions re-ran inspections on later pages).
INSPECTIONS_KEPT = 24


@st.cache_data(max_entries=INSPECTIONS_KEPT, show_spinner="Running the detector ...")
def inspect_image(
    _model: Detector, ckpt: str, _rgb: np.ndarray, digest: str, score: float, nms: float, gt: tuple | None = None
) -> Inspection:
    """``efpn.inspect`` on one image (detections and every internal); with ``gt`` also the model's own
    assignment and losses."""
    return efpn.inspect(_model, _rgb, targets=_targets(gt), score_thresh=score, nms_iou=nms)


@st.cache_data(max_entries=256, show_spinner="Running the detector ...")
def predict_detections(
    _model: Detector, ckpt: str, _rgb: np.ndarray, digest: str, score: float, nms: float
) -> dict[str, Any]:
    """Detections only (``efpn.infer.predict_image``, original px) and the forward time in ms: light enough
    to cache for many images and checkpoints, unlike a full :func:`inspect_image`."""
    t0 = time.perf_counter()
    det = predict_image(_model, _rgb, score_thresh=score, nms_iou=nms)
    out: dict[str, Any] = {k: v.numpy() for k, v in det.items()}
    out["forward_ms"] = 1e3 * (time.perf_counter() - t0)
    return out


@st.cache_data(max_entries=8,
               show_spinner="Sliced inference over tiles (after any other heavy request on this server) ...")
def sliced_detections(
    _model: Detector, ckpt: str, _rgb: np.ndarray, digest: str, tile: int, overlap: float, score: float, nms: float
) -> dict[str, np.ndarray]:
    """``efpn.infer.sliced_predict`` as numpy arrays (a heavy request: it runs in one of :data:`HEAVY_SLOTS`)."""
    with heavy_slot():
        out = sliced_predict(_model, _rgb, tile=tile, overlap=overlap, score_thresh=score, nms_iou=nms)
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


@st.cache_data(max_entries=32, show_spinner=False)
def diagnose(
    _model: Detector, ckpt: str, _ins: Inspection, digest: str, score: float, nms: float, gt: tuple, iou: float,
    class_aware: bool, sliced: tuple[int, float] | None = None, _detections: dict[str, Any] | None = None,
    ignore: tuple[float, ...] = (),
) -> ImageDiagnosis:
    """``efpn.explain.diagnose_image``: the detections above ``score`` matched to ``gt`` (original px) at ``iou``,
    and every miss walked back through the cached inspection (no second forward). Keyed like the inspection
    (checkpoint, image, thresholds) plus the boxes and the matching settings; with ``sliced`` = (tile, overlap) the
    matched detections are the sliced ones passed in ``_detections``; ``ignore``: flattened xyxy ignore regions
    (crowds, ignored areas), whose detections are no false alarms."""
    t = _targets(gt)
    assert t is not None
    det = None
    if _detections is not None:
        det = {k: torch.as_tensor(np.asarray(_detections[k])) for k in ("boxes", "scores", "labels")}
    return diagnose_image(_model, _ins, t["boxes"], t["labels"], score, iou, class_aware, detections=det,
                          ignore_boxes=np.asarray(ignore, np.float32).reshape(-1, 4))


@st.cache_data(max_entries=4096, show_spinner=False)
def diagnose_record(
    _model: Detector, ckpt: str, _record: ImageRecord, image_key: str, class_names: tuple[str, ...], score: float,
    iou: float, class_aware: bool = True, nms: float | None = None,
) -> DatasetDiagnosis:
    """``efpn.explain.diagnose_records`` on one dataset image (cached per image, so a larger N only runs the new
    ones and a progress bar can follow) at the sidebar's ``score`` and ``nms`` (as Detect). ``image_key``: the file,
    its modification time and the record's id."""
    return diagnose_records(_model, [_record], list(class_names), score_thresh=score, iou_thresh=iou,
                            class_aware=class_aware, nms_iou=nms)


def merge_diagnoses(parts: Sequence[DatasetDiagnosis], score: float, iou: float,
                    class_names: Sequence[str], class_aware: bool = True) -> DatasetDiagnosis:
    """Per-image diagnoses as one :class:`efpn.explain.DatasetDiagnosis` (its table, rows, COCO results, and the
    images that could not be diagnosed, with why)."""
    out = DatasetDiagnosis(score_thresh=score, iou_thresh=iou, class_names=list(class_names), class_aware=class_aware,
                           nms_iou=next((d.nms_iou for d in parts if d.nms_iou is not None), None),
                           slice_size=next((d.slice_size for d in parts if d.slice_size is not None), None),
                           overlap=next((d.overlap for d in parts if d.overlap is not None), None))
    for d in parts:
        out.images.extend(d.images)
        out.detections.update(d.detections)
        out.errors.extend(d.errors)
        out.tiles_only.extend(d.tiles_only)
    return out


def record_key(record: ImageRecord) -> str:
    """Cache key of a dataset image: path, modification time and record id."""
    p = record.path
    mtime = p.stat().st_mtime_ns if p is not None and p.exists() else 0
    return f"{p}@{mtime}#{record.image_id}"


def prepared(model: Detector, rgb: np.ndarray) -> Prepared:
    """The network input of ``rgb`` for this model (long side = the model's image size)."""
    return prepare(rgb, model.config.image_size)


def network_rgb(model: Detector, rgb: np.ndarray) -> np.ndarray:
    """What the network sees: the resized input as an (h, w, 3) uint8 picture (network pixels)."""
    return (prepared(model, rgb).tensor[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- assignment


@dataclass
class AssignmentSummary:
    """What the Assignment page draws: the accounting (``LevelAccounting.to_dict()``) and, per level, the
    positive priors' boxes in ORIGINAL image pixels (clipped to the image) with the GT each one serves."""

    name: str
    accounting: dict[str, Any]
    positives: dict[str, np.ndarray] = field(default_factory=dict)  # level -> (P_l, 4)
    positive_gt: dict[str, np.ndarray] = field(default_factory=dict)  # level -> (P_l,)
    network_hw: tuple[int, int] = (0, 0)
    note: str | None = None


def _summarise(name: str, assignment: Assignment, priors: Priors, acc: LevelAccounting,
               to_image: Callable[[torch.Tensor], torch.Tensor], hw: tuple[int, int],
               note: str | None = None) -> AssignmentSummary:
    """Positives per level, their prior boxes mapped to the image's pixels by ``to_image`` (network px -> image px)."""
    pi, gi = assignment.prior_idx.cpu(), assignment.gt_idx.cpu()
    lvl = priors.level.cpu()[pi]
    boxes = to_image(priors.boxes.cpu()[pi])  # (P, 4) image px
    positives = {lv: boxes[lvl == i].numpy() for i, lv in enumerate(priors.levels)}
    owners = {lv: gi[lvl == i].numpy() for i, lv in enumerate(priors.levels)}
    return AssignmentSummary(name=name, accounting=acc.to_dict(), positives=positives, positive_gt=owners,
                             network_hw=hw, note=note)


@st.cache_data(max_entries=32, show_spinner=False)
def box_assignment(protocol: str, gt: tuple, image_hw: tuple[int, int], long_side: int) -> AssignmentSummary:
    """A box-only protocol with its published priors on the image resized to ``long_side`` (the model's
    input size), as the detector would see it."""
    h, w = image_hw
    scale, hw = network_hw((h, w), long_side)  # as efpn.infer.prepare resizes
    t = _targets(gt)
    assert t is not None
    assignment, priors, acc = assign_boxes(protocol, boxes_to_network(t["boxes"], scale), hw, scale=scale)
    return _summarise(protocol, assignment, priors, acc, lambda b: boxes_to_original(b, scale, (h, w)), hw)


@st.cache_data(max_entries=16, show_spinner="Assigning with the model ...")
def model_assignment(
    _model: Detector, ckpt: str, _ins: Inspection, digest: str, gt: tuple, tal: bool
) -> AssignmentSummary:
    """The model's own assigner on the priors of the cached inspection of this image, or with ``tal`` TAL ranking
    them by the model's predictions (``efpn.explain.assign_on``: no second forward). Priors and predictions do
    not depend on the thresholds, so the key is checkpoint + image + boxes."""
    t = _targets(gt)
    assert t is not None
    view = assign_on(_model, _ins, t["boxes"], t["labels"], assigner="tal" if tal else None)
    name = "tal" if tal else f"model ({view.assigner})"
    return _summarise(name, view.assignment, view.priors, view.accounting, _ins.to_image, _ins.network_hw,
                      TAL_NOTE if tal else None)


@st.cache_data(max_entries=32, show_spinner=False)
def boxes_accounting(_model: Detector, ckpt: str, _ins: Inspection, digest: str, gt: tuple) -> dict[str, Any]:
    """The model's own assignment of ``gt`` (original px) on the priors of the cached inspection of this image,
    as ``LevelAccounting.to_dict()`` (``efpn.explain.assign_on``: no second forward). Priors and the predictions
    TAL ranks by do not depend on the thresholds, so the key is checkpoint + image + boxes."""
    t = _targets(gt)
    assert t is not None
    return assign_on(_model, _ins, t["boxes"], t["labels"]).accounting.to_dict()


def iter_dataset_accounting(
    records: Sequence[Any], protocol: str, long_side: int | None
) -> Iterator[tuple[int, LevelAccounting]]:
    """Accounting of a box-only ``protocol`` over ``records`` (efpn ImageRecords), image by image
    (``efpn.explain.accounting_for_records``): yields ``(images done, running total)``. ``long_side``: resize
    every image to it first (``None`` = native)."""
    total: LevelAccounting | None = None
    for i, r in enumerate(records, start=1):
        acc = accounting_for_records([r], [protocol], image_size=long_side or max(r.height, r.width))[protocol]
        total = acc if total is None else total.merge(acc)
        yield i, total


# ----------------------------------------------------------------------------------------------- explanations


@st.cache_data(max_entries=16, show_spinner="Measuring gradient reach (two backward passes) ...")
def gradient_reach_pair(
    _model: Detector, ckpt: str, _rgb: np.ndarray, digest: str, gt: tuple
) -> dict[str, dict[str, float]]:
    """``efpn.explain.gradient_reach`` with CEM and with CEM bypassed: ``{"with": ..., "without": ...}``."""
    prep = prepared(_model, _rgb)
    t = _targets(gt)
    assert t is not None
    targets = [{"boxes": boxes_to_network(t["boxes"], prep.scale), "labels": torch.as_tensor(t["labels"]),
                "scale": prep.scale}]
    with torch.no_grad():  # one backbone pass for both runs: no number of the reach needs a gradient below c5
        features = _model.backbone_features(prep.tensor)
    return {
        "with": gradient_reach(_model, prep.tensor, targets, bypass_cem=False, features=features),
        "without": gradient_reach(_model, prep.tensor, targets, bypass_cem=True, features=features),
    }


def _network_box(model: Detector, rgb: np.ndarray, box: Sequence[float]) -> tuple[Prepared, list[float]]:
    """The network input of ``rgb`` and ``box`` (ORIGINAL image px) in its pixels."""
    prep = prepared(model, rgb)
    return prep, boxes_to_network([box], prep.scale)[0].tolist()


@st.cache_data(max_entries=32, show_spinner="LayerGradCAM on every level ...")
def explain_gradcam(
    _model: Detector, ckpt: str, _rgb: np.ndarray, digest: str, box: tuple[float, ...], label: int
) -> Explanation:
    """The Attribution page's fast default: ``efpn.explain.explain_detection`` with LayerGradCAM only (one
    forward+backward per level), its deletion curve and the random pixel order's, for a box in ORIGINAL image
    pixels (the explanation's maps and box are in network pixels). Its ``pass_ms`` times one forward+backward and
    one forward of this model on this machine: the base of the estimate shown before a long method runs."""
    prep, box_net = _network_box(_model, _rgb, box)
    return explain_detection(_model, prep.tensor, box_net, label, methods=("gradcam",))


#: The methods the Attribution page runs only on request (many passes), in the order they run.
LONG_METHODS: tuple[str, ...] = ("integrated_gradients", "occlusion")
#: Integrated Gradients path points per forward+backward on the page: one, so the bar moves (and a Cancel is
#: seen) after every step, and the per-pass time LayerGradCAM measured (one image per pass) applies.
IG_BATCH = 1


def long_plan(model: Detector, rgb: np.ndarray, box: Sequence[float], methods: Sequence[str], ig_steps: int,
              occlusion_evals: int) -> list[tuple[str, dict[str, int]]]:
    """The images :func:`explain_long` sends through the network, part by part in the order it runs them: the clean
    score (``"clean"``), each method of ``methods`` and the deletion curves (``"deletion"``), each as
    ``{"forward_backward": n, "forward": m}`` (``efpn.explain.attribution_passes``). ``box`` in ORIGINAL px."""
    prep, box_net = _network_box(model, rgb, box)
    hw = tuple(prep.tensor.shape[-2:])
    chosen = [m for m in LONG_METHODS if m in methods]
    plan: list[tuple[str, dict[str, int]]] = [("clean", {"forward_backward": 0, "forward": 1})]
    for m in chosen:
        p = attribution_passes(model, hw, box_net, (m,), ig_steps, None, occlusion_evals, deletion=False,
                               random_order=False)
        plan.append((m, {"forward_backward": p["forward_backward"], "forward": p["forward"] - 1}))  # less the clean
    with_curves = attribution_passes(model, hw, box_net, chosen, ig_steps, None, occlusion_evals, deletion=True,
                                     random_order=False)
    without = attribution_passes(model, hw, box_net, chosen, ig_steps, None, occlusion_evals, deletion=False,
                                 random_order=False)
    plan.append(("deletion", {"forward_backward": 0, "forward": with_curves["forward"] - without["forward"]}))
    return plan


def explain_long(
    model: Detector, rgb: np.ndarray, box: Sequence[float], label: int, methods: Sequence[str], ig_steps: int,
    occlusion_evals: int, progress: Progress | None = None, waiting: Callable[[], None] | None = None,
) -> Explanation:
    """Integrated Gradients and/or Occlusion (``methods``, run in :data:`LONG_METHODS` order) on a box in ORIGINAL
    image pixels, with their deletion curves (the random order's comes from :func:`explain_gradcam`).

    Deliberately not cached: it runs for many seconds inside the page's script run, and a Cancel works by an
    exception from ``progress`` (Streamlit stops a script at its next call, here the progress bar update) that must
    reach this call and stop it; ``st.cache_data`` would keep such a run going (or keep nothing) in a way a user
    cannot stop. The page keeps a finished result in the session, keyed by its request. A heavy request: it waits
    for one of :data:`HEAVY_SLOTS` (calling ``waiting()`` meanwhile, see :func:`heavy_slot`)."""
    prep, box_net = _network_box(model, rgb, box)
    chosen = tuple(m for m in LONG_METHODS if m in methods)
    with heavy_slot(waiting):
        return explain_detection(model, prep.tensor, box_net, label, methods=chosen, ig_steps=ig_steps,
                                 occlusion_evals=occlusion_evals, random_order=False, ig_batch=IG_BATCH,
                                 progress=progress)


@st.cache_data(max_entries=16, show_spinner=False)
def score_maps(_model: Detector, ckpt: str, _rgb: np.ndarray, digest: str) -> dict[str, np.ndarray]:
    """``efpn.explain.level_score_maps`` as numpy arrays."""
    prep = prepared(_model, _rgb)
    return {lv: m.numpy() for lv, m in level_score_maps(_model, prep.tensor).items()}
