"""Validation: batched prediction over dataset records in original pixels, then COCO AP with AI-TOD splits.

Preprocessing is exactly inference's (:func:`efpn.infer.preprocess.prepare`: resize the long side to ``image_size``,
no letterbox), so the numbers measured here are the numbers a user gets from ``efpn detect``. To batch images
without changing a single prediction, images are grouped by their padded network size (a multiple of the
model's size divisor) and padded with the model's ``pixel_mean``, which the model's normalisation maps to 0,
the same value the model pads with itself.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from efpn.data.images import CorruptImageError, read_image
from efpn.data.records import ImageRecord
from efpn.evaluation.coco import EvalResult, evaluate_detections
from efpn.infer.preprocess import MIN_SIDE, Prepared, boxes_to_original, drop_empty, prepare
from efpn.infer.slicing import TooManyTilesError, sliced_predict
from efpn.models.detector import Detector, check_postprocess

__all__ = ["Predictions", "predict_records", "predict_records_nms", "predict_records_sliced", "validate"]

#: Per-image predictions in original pixels: ``boxes`` (D, 4) float32 xyxy, ``scores`` (D,), ``labels`` (D,).
Predictions = dict[int, dict[str, np.ndarray]]


def _ceil(x: int, d: int) -> int:
    return -(-x // d) * d


def _network_hw(rec: ImageRecord, image_size: int) -> tuple[int, int]:
    """The size :func:`prepare` will give this record's image (from its annotated size; used for ordering)."""
    scale = image_size / max(rec.height, rec.width)
    return max(1, round(rec.height * scale)), max(1, round(rec.width * scale))


#: What an unreadable image file raises (missing, truncated, not an image). An image that reads but that the
#: network cannot take (too small at this size, too many pixels) is not one: that error stops the evaluation, since
#: leaving such images out would raise the score.
UNREADABLE = (CorruptImageError, OSError)


def _prepare_or_error(rec: ImageRecord, image_size: int) -> Prepared | Exception:
    try:
        rgb = read_image(rec.path)
    except UNREADABLE as e:
        return e
    try:
        return prepare(rgb, image_size)
    except ValueError as e:  # too thin for one input (its file, not its annotation, said so): name it
        raise ValueError(f"{rec.path}: {e}") from None


def check_network_sizes(records: Sequence[ImageRecord], image_size: int, where: str,
                        advice: str = "evaluate on tiles (efpn val --slice)") -> None:
    """Raise ValueError, before any forward pass, when an image's annotated size becomes thinner than the network's
    minimum side at ``image_size`` (a whole-image pass cannot take it); the message names the first few and what to
    do. ``where`` names the data (e.g. "the val split of data.yaml"), ``advice`` the last way out offered. Such an
    image is not left out silently: without its objects the score would rise."""
    bad = [r for r in records if min(_network_hw(r, image_size)) < MIN_SIDE]
    if bad:
        shown = ", ".join(f"{r.path} ({r.width}x{r.height})" for r in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise ValueError(f"{where}: {len(bad)} image(s) become thinner than the network's {MIN_SIDE} px minimum at "
                         f"{image_size} px long side: {shown}. Crop or pad them towards a square, remove them from "
                         f"this split, or {advice}")


def _prepared(records: Sequence[ImageRecord], image_size: int,
              threads: int) -> Iterator[tuple[ImageRecord, Prepared | Exception]]:
    """Decode and resize records in order, a few images ahead on ``threads`` threads (decoding releases the GIL);
    an image that cannot be read comes as its exception."""
    if threads <= 1:
        for rec in records:
            yield rec, _prepare_or_error(rec, image_size)
        return
    chunk = 4 * threads  # bounded look-ahead: never more than this many decoded images in memory
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for i in range(0, len(records), chunk):
            part = records[i : i + chunk]
            yield from zip(part, pool.map(lambda r: _prepare_or_error(r, image_size), part))


def _unreadable(rec: ImageRecord, e: Exception, skipped: dict[str, str] | None) -> None:
    """Record ``rec`` as skipped (and say so), or raise ``e`` when the caller keeps no list of skipped images."""
    if skipped is None:
        raise e
    skipped[str(rec.path)] = str(e)
    warnings.warn(f"skipped unreadable image {rec.path}: {e}", stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning to the first frame outside this module and torch (whose
    ``no_grad`` wrapper sits between the public functions and their callers): the code that asked to evaluate."""
    here, torch_dir = __file__, os.path.dirname(torch.__file__) + os.sep
    frame, level = sys._getframe(2), 2  # level 1 is the caller of this helper, where the warning is raised
    while frame is not None and (frame.f_code.co_filename == here or frame.f_code.co_filename.startswith(torch_dir)):
        frame, level = frame.f_back, level + 1
    return level


def predict_records(
    model: Detector,
    records: Sequence[ImageRecord],
    image_size: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    score_thresh: float = 0.001,
    max_det: int = 1500,
    nms_iou: float | None = None,
    threads: int = 2,
    progress: bool = False,
    skipped: dict[str, str] | None = None,
) -> Predictions:
    """Detections for every record's image: ``{image_id: {"boxes", "scores", "labels"}}`` in ORIGINAL pixels.

    An image that cannot be read raises, or with ``skipped`` (a dict) is left out of the predictions and recorded
    there (path -> why), so one bad file does not stop an evaluation.

    Each image is prepared as at inference (long side -> ``image_size``), images of the same padded size are
    batched (at most ``batch_size``), and boxes are mapped back with the image's own scale and clipped to it.
    ``score_thresh``/``max_det`` default to evaluation settings (keep nearly everything, 1500 per image as in
    AI-TOD); ``nms_iou`` defaults to the model config's. The model must already be on ``device`` (inputs are
    moved there); it is run in eval mode and its previous mode restored. Records must have image paths.
    ``threads`` decode images ahead of the model.
    """
    return _predict_batches(model, records, image_size, batch_size, device, score_thresh, max_det, (nms_iou,),
                            threads, progress, skipped)[0]


def predict_records_nms(
    model: Detector,
    records: Sequence[ImageRecord],
    image_size: int,
    nms_ious: Sequence[float],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    score_thresh: float = 0.001,
    max_det: int = 1500,
    threads: int = 2,
    progress: bool = False,
    skipped: dict[str, str] | None = None,
) -> dict[float, Predictions]:
    """:func:`predict_records` at several NMS IoU thresholds from ONE forward pass per batch: ``{iou: Predictions}``.

    The network runs once per batch and the model's own post-processing (decoding, score threshold, top-k per level,
    class-aware NMS) once per threshold on its output, so each entry equals ``predict_records(..., nms_iou=iou)``
    at the cost of one forward pass.
    """
    ious = tuple(float(v) for v in nms_ious)
    if not ious or any(not 0.0 <= v <= 1.0 for v in ious):
        raise ValueError(f"nms_ious must be a non-empty list of IoU thresholds in [0, 1], got {list(nms_ious)}")
    preds = _predict_batches(model, records, image_size, batch_size, device, score_thresh, max_det, ious, threads,
                             progress, skipped)
    return dict(zip(ious, preds))


@torch.no_grad()
def _predict_batches(
    model: Detector,
    records: Sequence[ImageRecord],
    image_size: int,
    batch_size: int,
    device: str | torch.device,
    score_thresh: float,
    max_det: int,
    nms_ious: tuple[float | None, ...],
    threads: int,
    progress: bool,
    skipped: dict[str, str] | None,
) -> list[Predictions]:
    """The batched prediction loop of :func:`predict_records`, one Predictions per entry of ``nms_ious`` (None: the
    model's own threshold); with several, the network runs once and only the post-processing per threshold."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for iou in nms_ious:
        check_postprocess(score_thresh=score_thresh, nms_iou=iou, max_det=max_det)
    missing = [r.image_id for r in records if r.path is None]
    if missing:
        raise ValueError(f"{len(missing)} records have no image path (e.g. ids {missing[:3]}); cannot predict")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    divisor = int(getattr(model, "size_divisor", 32))
    # pad value in [0, 1] pixel units that normalises to exactly 0, as the model's own padding does
    fill = torch.tensor(model.config.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    # same padded size next to each other, so batches fill up; stable, so equal sizes keep dataset order
    order = sorted(
        records, key=lambda r: tuple(_ceil(v, divisor) for v in _network_hw(r, image_size))
    )
    outs: list[Predictions] = [{} for _ in nms_ious]
    pending: list[tuple[ImageRecord, Prepared]] = []

    def run(batch: list[tuple[ImageRecord, Prepared]]) -> None:
        h = max(p.tensor.shape[-2] for _, p in batch)
        w = max(p.tensor.shape[-1] for _, p in batch)
        hp, wp = _ceil(h, divisor), _ceil(w, divisor)
        canvas = fill.expand(len(batch), 3, hp, wp).clone()  # (N, 3, H', W')
        for i, (_, p) in enumerate(batch):
            canvas[i, :, : p.tensor.shape[-2], : p.tensor.shape[-1]] = p.tensor[0]
        # the network once, then the model's own post-processing per threshold (what ``predict`` does for one)
        run_ = model.run(canvas.to(device))
        per_iou = [model.postprocess(run_.head, run_.priors, run_.input_hw, score_thresh=score_thresh,
                                     nms_iou=iou, max_det=max_det) for iou in nms_ious]
        for out, dets in zip(outs, per_iou):
            for (rec, p), det in zip(batch, dets):
                kept = drop_empty({"boxes": boxes_to_original(det["boxes"].float().cpu(), p.scale, p.orig_hw),
                                   "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()})
                out[rec.image_id] = {
                    "boxes": kept["boxes"].numpy().astype(np.float32),
                    "scores": kept["scores"].numpy(),
                    "labels": kept["labels"].numpy().astype(np.int64),
                }

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(order), desc="val", unit="img", dynamic_ncols=True, leave=False)
    try:
        for rec, prep in _prepared(order, image_size, threads):
            if isinstance(prep, Exception):
                _unreadable(rec, prep, skipped)
                if bar is not None:
                    bar.update(1)
                continue
            key = (_ceil(prep.tensor.shape[-2], divisor), _ceil(prep.tensor.shape[-1], divisor))
            if pending and (len(pending) == batch_size or key != _pending_key(pending, divisor)):
                run(pending)
                if bar is not None:
                    bar.update(len(pending))
                pending = []
            pending.append((rec, prep))
        if pending:
            run(pending)
            if bar is not None:
                bar.update(len(pending))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return outs


def predict_records_sliced(
    model: Detector,
    records: Sequence[ImageRecord],
    tile: int,
    overlap: float = 0.2,
    image_size: int | None = None,
    score_thresh: float = 0.001,
    max_det: int = 1500,
    progress: bool = False,
    skipped: dict[str, str] | None = None,
    nms_iou: float | None = None,
) -> Predictions:
    """Like :func:`predict_records` (``skipped`` and ``nms_iou`` too), but every image is cut into ``tile`` x ``tile``
    windows overlapping by ``overlap`` (:func:`efpn.infer.sliced_predict`: each window at the network size
    ``image_size``, default the model's, plus one whole-image pass when there are several windows) and the
    detections are merged in the image's own pixels. An image that fits in one window gets exactly its plain
    prediction."""
    if model.training:
        raise ValueError("sliced validation needs an eval-mode model; call model.eval()")
    out: Predictions = {}
    iterator: Any = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, desc=f"val (tiles of {tile} px)", unit="img", dynamic_ncols=True, leave=False)
    for rec in iterator:
        if rec.path is None:
            raise ValueError(f"record {rec.image_id} has no image path; cannot predict")
        try:
            rgb = read_image(rec.path)
        except UNREADABLE as e:
            _unreadable(rec, e, skipped)
            continue
        try:
            det = sliced_predict(model, rgb, tile=tile, overlap=overlap, score_thresh=score_thresh,
                                 max_det=max_det, image_size=image_size, nms_iou=nms_iou)
        except TooManyTilesError as e:  # the option, not the file: every image would be left out, so stop here
            raise TooManyTilesError(f"{rec.path}: {e}") from None
        out[rec.image_id] = {
            "boxes": det["boxes"].float().cpu().numpy().astype(np.float32),
            "scores": det["scores"].float().cpu().numpy(),
            "labels": det["labels"].cpu().numpy().astype(np.int64),
        }
    return out


def _pending_key(pending: list[tuple[ImageRecord, Prepared]], divisor: int) -> tuple[int, int]:
    t: Tensor = pending[0][1].tensor
    return _ceil(t.shape[-2], divisor), _ceil(t.shape[-1], divisor)


def check_classes(model: Detector, class_names: Sequence[str], what: str = "evaluate it on data annotated with "
                  "its classes") -> None:
    """Raise ValueError naming both class lists when data labelled with ``class_names`` cannot be scored class by
    class against ``model``: another number of classes than it predicts, or (when the model has names) other names
    or another order."""
    data, mine = list(class_names), list(model.config.class_names or [])
    if len(data) != model.num_classes or (mine and data != mine):
        shown = ", ".join(mine) if mine else f"{model.num_classes} unnamed"
        raise ValueError(f"the data's classes [{', '.join(data)}] are not the model's [{shown}] (class k of the data "
                         f"would be scored as the model's class k, in the order listed): {what}")


def validate(
    model: Detector,
    records: Sequence[ImageRecord],
    class_names: Sequence[str],
    image_size: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    score_thresh: float = 0.001,
    max_det: int = 1500,
    max_dets: Sequence[int] = (100, 1500),
    threads: int = 2,
    progress: bool = False,
    slice_size: int | None = None,
    overlap: float = 0.2,
    nms_iou: float | None = None,
) -> EvalResult:
    """COCO-style AP (with the AI-TOD size splits) of ``model`` on ``records``.

    ``image_size`` defaults to the model config's. Predictions come from :func:`predict_records`, or with
    ``slice_size`` from :func:`predict_records_sliced` (tiles of that many original pixels, ``overlap`` a fraction
    of the tile), always scored against the full-image ground truth; matching is
    :func:`efpn.evaluation.coco.evaluate_detections` (pycocotools), with every record's ignore regions (COCO
    ``ignore=1``, VisDrone category 0 and score 0) as crowd boxes of every class: a detection inside one is neither a
    true nor a false positive. The headline metrics are at ``max(max_dets)``.
    ``nms_iou`` overrides the model config's NMS IoU threshold (see :func:`efpn.evaluation.sweep_nms_iou`).
    Raises ValueError when the data's classes are not the model's: more of them (its AP would silently average in
    classes the model cannot score), or other names or another order (class k of the data would be scored against
    the model's class k).
    """
    check_classes(model, class_names)
    size = int(image_size or model.config.image_size)
    skipped: dict[str, str] = {}
    if slice_size is None:  # before hours of forwards, not at the image
        check_network_sizes(records, size, "the evaluated images")
    if slice_size is not None:
        if slice_size < 8:
            raise ValueError(f"slice_size must be at least 8 px, got {slice_size}")
        preds = predict_records_sliced(model, records, slice_size, overlap, size, score_thresh=score_thresh,
                                       max_det=max_det, progress=progress, skipped=skipped, nms_iou=nms_iou)
    else:
        preds = predict_records(
            model, records, size, batch_size=batch_size, device=device, score_thresh=score_thresh, max_det=max_det,
            nms_iou=nms_iou, threads=threads, progress=progress, skipped=skipped,
        )
    kept = [r for r in records if str(r.path) not in skipped]  # an unread image's objects are not counted missed
    if records and not kept:
        path, why = next(iter(skipped.items()))
        raise ValueError(f"none of the {len(records)} images could be read (e.g. {path}: {why}); check the data's "
                         "image files")
    # ignore regions (COCO ignore=1, VisDrone category 0 and score 0) absorb the detections inside them, as the
    # VisDrone toolkit does: neither found objects nor false alarms
    result = evaluate_detections(kept, preds, class_names, max_dets=max_dets, ignore_regions=True)
    result.skipped = skipped
    return result

