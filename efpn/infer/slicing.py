"""Sliced inference: detect on overlapping tiles of a large image and merge, so tiny objects keep their pixels.

A detector resizes its input so the long side is ``model.config.image_size``; on a 4000 px aerial photo a
10 px object shrinks to under 2 px. :func:`sliced_predict` instead cuts the image into ``tile`` x ``tile``
windows overlapping by ``overlap`` (a fraction of the tile), runs the model on every window at its own input
size, maps the boxes back to the full image, optionally adds one pass over the whole image (for objects
larger than a tile), and merges everything with class-aware NMS. Pure library code: no UI, no files.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms

from efpn.det.postprocess import empty_detections
from efpn.infer.predict import predict_image
from efpn.infer.preprocess import MAX_PIXELS, MIN_SIDE, drop_empty, network_hw, to_rgb_uint8
from efpn.models.detector import check_postprocess

__all__ = ["MAX_TILES", "SLICED_MAX_PIXELS", "TooManyTilesError", "num_tiles", "sliced_predict", "smallest_tile",
           "suggested_tile", "tile_windows"]

#: Largest image sliced inference takes (each tile is small; the whole image must still fit in memory once).
SLICED_MAX_PIXELS = 400_000_000
#: Most windows one image is cut into by default: one forward each, so 4096 tiles are already minutes on a CPU.
#: An 8 px tile of a 640 x 480 image made 8,560 windows (and of a 12 MP photo 333,500): a run that looks hung.
MAX_TILES = 4096


class TooManyTilesError(ValueError):
    """A tile side (with its overlap) would cut an image into more windows than allowed; the message says which
    tile side stays within the limit."""


def _starts(extent: int, tile: int, step: int) -> list[int]:
    """Window starts covering ``[0, extent)``; the last window is shifted back to end at ``extent``."""
    if extent <= tile:
        return [0]
    starts = list(range(0, extent - tile, step))
    starts.append(extent - tile)
    return sorted(set(starts))


def check_slicing(tile: Any, overlap: Any) -> tuple[int, float]:
    """``(tile, overlap)`` as an int >= 8 px and a float in [0, 1); ValueError saying what is wrong otherwise (a
    fractional or boolean tile, an overlap that is NaN, 1 or more, or negative)."""
    if isinstance(tile, bool) or not isinstance(tile, numbers.Real) or not math.isfinite(tile) or tile != int(tile):
        raise ValueError(f"tile is a window side in whole pixels (an int, at least 8), got {tile!r}")
    if int(tile) < 8:
        raise ValueError(f"tile must be >= 8 px, got {tile}")
    if (isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not math.isfinite(overlap)
            or not 0.0 <= overlap < 1.0):
        raise ValueError(f"overlap is a fraction of the tile in [0, 1) (0.2 is usual), got {overlap!r}")
    return int(tile), float(overlap)


def tile_windows(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Windows ``(x1, y1, x2, y2)`` (pixels, end exclusive) of at most ``tile`` x ``tile`` covering the image.

    Neighbouring windows overlap by at least ``round(overlap * tile)`` px; every window has the same size
    (``min(tile, W)`` x ``min(tile, H)``), because the last one in a row or column is shifted back to the
    image edge rather than cut short. Row-major order.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1x1, got {width}x{height}")
    tile, overlap = check_slicing(tile, overlap)
    step = max(1, tile - int(round(overlap * tile)))
    tw, th = min(tile, width), min(tile, height)
    return [(x, y, x + tw, y + th) for y in _starts(height, tile, step) for x in _starts(width, tile, step)]


def _predict_crop(
    model: Any, crop: np.ndarray, offset: tuple[int, int], image_size: int, **kw: Any
) -> dict[str, Tensor]:
    """Detections of one crop (efpn.infer.predict.predict_image), shifted into full-image pixels by ``offset``.

    A crop so thin that the network input would fall under its minimum side is padded (bottom/right, black) to
    reach it: a 20000 x 8 px strip is still detected tile by tile."""
    h, w = crop.shape[:2]
    scale = image_size / max(h, w)
    need = math.ceil(MIN_SIDE / scale)
    if min(h, w) < need:
        padded = np.zeros((max(h, need), max(w, need), 3), dtype=crop.dtype)
        padded[:h, :w] = crop
        crop = padded
    ph, pw = crop.shape[:2]
    _, (nh, nw) = network_hw((ph, pw), image_size)
    if ph * pw > MAX_PIXELS:
        # more pixels than one network input is decoded with (the whole-image pass over a 56 MP scene, a tile as
        # large as the image): shrunk here by area averaging to the network's own size, all that predict_image would
        # keep of it, and the boxes scaled back
        crop = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA)
    det = predict_image(model, crop, image_size=image_size, **kw)
    if (ph, pw) != crop.shape[:2]:
        det["boxes"] = det["boxes"] * torch.tensor([pw / nw, ph / nh, pw / nw, ph / nh], dtype=det["boxes"].dtype)
    det = drop_empty(det, (h, w))  # nothing lies in the padding
    det["boxes"] = det["boxes"] + torch.tensor([offset[0], offset[1], offset[0], offset[1]], dtype=det["boxes"].dtype)
    return det


def sliced_predict(
    model: Any,
    image: Any,
    tile: int = 512,
    overlap: float = 0.2,
    score_thresh: float | None = None,
    nms_iou: float | None = None,
    *,
    include_full: bool = True,
    max_det: int | None = None,
    image_size: int | None = None,
    max_tiles: int | None = MAX_TILES,
) -> dict[str, Any]:
    """Detect on overlapping tiles of ``image`` and merge with class-aware NMS.

    Args:
        model: an eval-mode :class:`~efpn.models.detector.Detector` (never changed: ``predict`` only).
        image: anything :func:`efpn.infer.preprocess.to_rgb_uint8` accepts (array, PIL image, tensor, path).
        tile: window side in original pixels (a smaller image is one window).
        overlap: overlap between neighbouring windows, as a fraction of ``tile`` in [0, 1).
        score_thresh, nms_iou: per-tile postprocessing (default: the model's config); ``nms_iou`` is also the
            IoU of the final merge.
        include_full: also run the model once on the whole image (catches objects larger than a tile), when the
            network can take it whole (a strip thinner than its minimum side at ``image_size`` gets its tiles alone).
        max_det: cap on the merged detections (default: the model's ``postprocess.max_det``).
        image_size: network long side for every window (default: ``model.config.image_size``).
        max_tiles: refuse (:class:`TooManyTilesError`, before any forward) an image that ``tile`` and ``overlap``
            cut into more windows than this; None: no limit.

    Returns:
        ``{"boxes" (D, 4) xyxy original px, "scores" (D,), "labels" (D,), "levels" (D,) index into
        model.levels, "tiles" (T, 4) the windows, "num_tiles" T}``, detections sorted by decreasing score
        (the detections contract of docs/architecture.md, plus the windows).
    """
    if model.training:
        raise ValueError("sliced_predict needs an eval-mode model; call model.eval() once after loading")
    tile, overlap = check_slicing(tile, overlap)  # before the image is decoded, and before any count of tiles
    check_postprocess(score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det)  # as predict: 1.5 is no count
    rgb = to_rgb_uint8(image, max_pixels=SLICED_MAX_PIXELS)  # tiles are small: the whole image may be large
    h, w = rgb.shape[:2]
    pp = model.config.postprocess
    iou = pp.nms_iou if nms_iou is None else float(nms_iou)
    cap = pp.max_det if max_det is None else int(max_det)
    size = int(image_size or model.config.image_size)
    kw: dict[str, Any] = {"nms_iou": iou, "max_det": cap}  # a tile keeps as many as the merge may
    if score_thresh is not None:
        kw["score_thresh"] = float(score_thresh)

    n_tiles = num_tiles((h, w), tile, overlap)
    if max_tiles is not None and n_tiles > max_tiles:
        fit = smallest_tile((h, w), overlap, max_tiles)
        raise TooManyTilesError(
            f"tiles of {tile} px with overlap {overlap:g} cut this {w}x{h} image into {n_tiles} windows, more than "
            f"the limit of {max_tiles} (one forward each); use tiles of at least {fit} px (or a smaller overlap)")
    windows = tile_windows(h, w, tile, overlap)
    parts = [_predict_crop(model, rgb[y1:y2, x1:x2], (x1, y1), size, **kw) for x1, y1, x2, y2 in windows]
    # the whole-image pass (objects larger than a tile) needs an image the network can take whole: a strip too thin
    # for one input is covered by its tiles alone
    if include_full and len(windows) > 1 and min(network_hw((h, w), size)[1]) >= MIN_SIDE:
        parts.append(_predict_crop(model, rgb, (0, 0), size, **kw))
    merged = {k: torch.cat([p[k] for p in parts]) for k in ("boxes", "scores", "labels", "levels")}
    if merged["boxes"].numel() == 0:
        out: dict[str, Any] = empty_detections()
    else:
        keep = batched_nms(merged["boxes"], merged["scores"], merged["labels"], iou)[:cap]  # sorted by score
        out = {k: v[keep] for k, v in merged.items()}
    out["tiles"] = torch.tensor(windows, dtype=torch.float32).reshape(-1, 4)
    out["num_tiles"] = len(windows)
    return out


def suggested_tile(image_hw: tuple[int, int], model_size: int) -> int:
    """A tile side that keeps objects at native resolution: the model's input size, but never above the image."""
    return int(max(32, min(model_size, max(image_hw))))


def smallest_tile(image_hw: tuple[int, int], overlap: float, max_tiles: int) -> int:
    """The smallest tile side (>= 8 px) that cuts an image of ``image_hw`` into at most ``max_tiles`` windows at
    ``overlap`` (the count falls as the side grows, so a binary search finds it)."""
    lo, hi = 8, max(8, *image_hw)  # one window at the image's long side
    while lo < hi:
        mid = (lo + hi) // 2
        if num_tiles(image_hw, mid, overlap) <= max_tiles:
            hi = mid
        else:
            lo = mid + 1
    return lo


def num_tiles(image_hw: tuple[int, int], tile: int, overlap: float) -> int:
    """How many windows :func:`tile_windows` makes (to warn before a long run)."""
    h, w = image_hw
    step = max(1, tile - int(round(overlap * tile)))
    per = [1 if e <= tile else math.ceil((e - tile) / step) + 1 for e in (h, w)]
    return per[0] * per[1]
