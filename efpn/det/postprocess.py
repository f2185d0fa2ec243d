"""Detections from decoded per-prior predictions: threshold, per-level top-k, class-aware NMS, unletterbox.

Input is already decoded (boxes xyxy in input pixels, scores as probabilities); decoding belongs to the coders
in :mod:`efpn.det.boxes`. Output follows the detections contract of ``docs/architecture.md``: one dict per
image with ``boxes (D, 4)`` float, ``scores (D,)`` float, ``labels (D,)`` int64, ``levels (D,)`` int64 (index
into ``model.levels``), sorted by decreasing score.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from efpn.det.boxes import clip_boxes

__all__ = ["batched_detections", "empty_detections", "scale_detections"]


def empty_detections(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """An image with no detections: ``boxes (0, 4)``, ``scores (0,)``, ``labels (0,)``, ``levels (0,)``."""
    return {
        "boxes": torch.zeros((0, 4), dtype=dtype, device=device),
        "scores": torch.zeros((0,), dtype=dtype, device=device),
        "labels": torch.zeros((0,), dtype=torch.long, device=device),
        "levels": torch.zeros((0,), dtype=torch.long, device=device),
    }


def _check_inputs(boxes: Tensor, scores: Tensor, levels: Tensor, objectness: Tensor | None) -> None:
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, R, 4), got {tuple(boxes.shape)}")
    n, r, _ = boxes.shape
    if scores.ndim != 3 or scores.shape[:2] != (n, r):
        raise ValueError(f"scores must be (N, R, K) = ({n}, {r}, K), got {tuple(scores.shape)}")
    if levels.shape != (r,):
        raise ValueError(f"levels must be (R,) = ({r},), got {tuple(levels.shape)}")
    if objectness is not None and objectness.shape != (n, r):
        raise ValueError(f"objectness must be (N, R) = ({n}, {r}), got {tuple(objectness.shape)}")


def _one_image(
    boxes: Tensor,
    scores: Tensor,
    levels: Tensor,
    score_thresh: float,
    nms_iou: float,
    max_det: int,
    pre_nms_topk: int,
) -> dict[str, Tensor]:
    """``boxes (R, 4)``, ``scores (R, K)``, ``levels (R,)`` -> one detections dict."""
    finite = torch.isfinite(boxes).all(dim=1)  # (R,) a diverged head must not poison NMS
    # Multi-label: every (prior, class) pair above the threshold is a candidate, as torchvision RetinaNet.
    cand = (scores > score_thresh) & finite[:, None]  # (R, K)
    prior_idx, label = cand.nonzero(as_tuple=True)  # (C,), (C,)
    cand_scores = scores[prior_idx, label]
    cand_levels = levels[prior_idx]
    # Top-k per level, so the many p2/p3 priors cannot crowd out the coarse levels before NMS.
    keep_parts = []
    for lvl in cand_levels.unique():
        idx = (cand_levels == lvl).nonzero().flatten()
        if idx.numel() > pre_nms_topk:
            idx = idx[cand_scores[idx].topk(pre_nms_topk).indices]
        keep_parts.append(idx)
    if not keep_parts:
        return empty_detections(boxes.device, boxes.dtype)
    sel = torch.cat(keep_parts)  # (C',)
    prior_idx, label = prior_idx[sel], label[sel]
    cand_scores, cand_levels = cand_scores[sel], cand_levels[sel]
    cand_boxes = boxes[prior_idx]  # (C', 4)
    keep = batched_nms(cand_boxes.float(), cand_scores.float(), label, nms_iou)[:max_det]  # sorted by score
    return {
        "boxes": cand_boxes[keep],
        "scores": cand_scores[keep],
        "labels": label[keep],
        "levels": cand_levels[keep],
    }


@torch.no_grad()
def batched_detections(
    boxes: Tensor,
    scores: Tensor,
    levels: Tensor,
    score_thresh: float = 0.05,
    nms_iou: float = 0.5,
    max_det: int = 300,
    pre_nms_topk: int = 1000,
    objectness: Tensor | None = None,
) -> list[dict[str, Tensor]]:
    """Per-image detections from decoded predictions.

    Args:
        boxes: ``(N, R, 4)`` decoded xyxy boxes in input pixels.
        scores: ``(N, R, K)`` class probabilities (sigmoid already applied).
        levels: ``(R,)`` int64 level index of each prior (``Priors.level``).
        score_thresh: keep (prior, class) pairs with ``score > score_thresh``.
        nms_iou: IoU above which the lower-scoring box of the *same class* is suppressed.
        max_det: at most this many detections per image, highest scores first.
        pre_nms_topk: at most this many candidates per level and image enter NMS.
        objectness: optional ``(N, R)`` probabilities multiplied into every class score (YOLOv5).

    A prior can yield several detections, one per class above the threshold (multi-label). Priors with
    non-finite boxes are skipped. Returns N dicts ``{boxes (D,4), scores (D,), labels (D,), levels (D,)}``,
    possibly with D = 0.
    """
    _check_inputs(boxes, scores, levels, objectness)
    if objectness is not None:
        scores = scores * objectness[..., None]  # (N, R, K)
    levels = levels.to(device=boxes.device, dtype=torch.long)
    return [
        _one_image(boxes[i], scores[i], levels, score_thresh, nms_iou, max_det, pre_nms_topk)
        for i in range(boxes.shape[0])
    ]


def scale_detections(
    dets: dict[str, Tensor],
    scale: float | Sequence[float],
    pad: Sequence[float],
    orig_hw: tuple[int, int],
) -> dict[str, Tensor]:
    """Map one image's detections from the letterboxed input back to the original image.

    The letterbox transform is ``x_input = x_orig · scale + pad`` with ``scale`` a float or ``(sx, sy)`` and
    ``pad = (pad_x, pad_y)`` the left/top padding in input pixels; this inverts it and clips boxes to
    ``orig_hw = (H, W)``. Returns a new dict (other keys copied through); the input is not modified.
    """
    boxes = dets["boxes"]
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"dets['boxes'] must be (D, 4), got {tuple(boxes.shape)}")
    sx, sy = (
        (float(scale), float(scale))
        if isinstance(scale, (int, float))
        else (float(scale[0]), float(scale[1]))
    )
    if sx <= 0 or sy <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    px, py = float(pad[0]), float(pad[1])
    offset = boxes.new_tensor([px, py, px, py])
    factor = boxes.new_tensor([sx, sy, sx, sy])
    out = dict(dets)
    out["boxes"] = clip_boxes((boxes - offset) / factor, orig_hw)
    return out
