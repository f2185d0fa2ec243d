"""Box geometry and box coders: pure, parameter-free tensor functions.

Conventions (SPEC §0): boxes are ``xyxy`` in absolute input pixels unless a name says otherwise (``cxcywh``).
Every function takes boxes with a trailing dimension of 4 and any leading shape ``(..., 4)``; the pairwise
functions compare ``a[i]`` with ``b[i]`` (elementwise, broadcasting the leading dims), not all pairs — for
the all-pairs IoU matrix use :func:`torchvision.ops.box_iou`.

Coders, one per head family:

* :func:`encode_deltas` / :func:`decode_deltas` — RetinaNet / Faster R-CNN ``(dx, dy, dw, dh)`` relative to an
  anchor box.
* :func:`decode_yolov5` — Ultralytics YOLOv5 sigmoid parametrisation relative to an anchor centred on its
  cell.
* :func:`bbox2dist` / :func:`dist2bbox` / :func:`dfl_decode` — YOLOv8 anchor-free ``(l, t, r, b)`` distances
  from a point, with the Distribution Focal Loss bin expectation.

The functions are differentiable where a loss needs them (IoU family, decoders) and never modify their inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss

__all__ = [
    "DEFAULT_DELTA_CLAMP",
    "bbox2dist",
    "box_iof",
    "box_iou_pairwise",
    "ciou_pairwise",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "decode_deltas",
    "decode_yolov5",
    "dfl_decode",
    "dist2bbox",
    "encode_deltas",
    "giou_pairwise",
    "validate_boxes",
    "xyxy_to_cxcywh",
]

#: Largest ``dw``/``dh`` :func:`decode_deltas` lets through: at most 1000/16 times the anchor (Detectron).
DEFAULT_DELTA_CLAMP: float = math.log(1000.0 / 16)
_EPS: float = 1e-7


def _check_last_dim(t: Tensor, size: int, name: str) -> None:
    if t.ndim == 0 or t.shape[-1] != size:
        raise ValueError(f"{name} must have shape (..., {size}), got {tuple(t.shape)}")


# ----------------------------------------------------------------------------------------------------------
# Formats


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``; shape ``(..., 4)`` kept (``torchvision.ops.box_convert``)."""
    _check_last_dim(boxes, 4, "boxes")
    return box_convert(boxes, "xyxy", "cxcywh")


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``; shape ``(..., 4)`` kept (``torchvision.ops.box_convert``)."""
    _check_last_dim(boxes, 4, "boxes")
    return box_convert(boxes, "cxcywh", "xyxy")


def clip_boxes(boxes: Tensor, hw: tuple[int, int] | Sequence[float]) -> Tensor:
    """Clip xyxy boxes ``(..., 4)`` to an image ``hw = (H, W)``: x into [0, W], y into [0, H]."""
    _check_last_dim(boxes, 4, "boxes")
    h, w = float(hw[0]), float(hw[1])
    x = boxes[..., 0::2].clamp(0.0, w)  # (..., 2) x1, x2
    y = boxes[..., 1::2].clamp(0.0, h)  # (..., 2) y1, y2
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def validate_boxes(
    boxes: Tensor,
    image_hw: tuple[int, int] | None = None,
    *,
    drop_nonfinite: bool = False,
    min_size: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Sanitise ground-truth xyxy boxes ``(M, 4)``; returns ``(clean (M', 4), keep (M,) bool)``.

    Steps, in order: non-finite rows (NaN/inf) are an error — a corrupt annotation should be seen, not
    silently lost — unless ``drop_nonfinite=True``, which drops them; boxes are clipped to ``image_hw = (H,
    W)`` when given; boxes whose clipped width or height is ``<= min_size`` (zero/negative size, or entirely
    outside the image) are dropped. ``keep`` indexes the *input* rows, so labels follow with ``labels[keep]``.

    Raises ValueError for a wrong shape, or for non-finite values when ``drop_nonfinite`` is False.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (M, 4), got {tuple(boxes.shape)}")
    finite = torch.isfinite(boxes).all(dim=-1)  # (M,)
    if not drop_nonfinite and not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(
            f"{len(bad)} box(es) contain NaN or inf (rows {bad[:10]}{'...' if len(bad) > 10 else ''}); "
            "fix the annotations or pass drop_nonfinite=True"
        )
    # Replace non-finite rows by zeros so clipping stays finite; they are dropped below via `finite`.
    clean = torch.where(finite[:, None], boxes, torch.zeros_like(boxes))
    if image_hw is not None:
        clean = clip_boxes(clean, image_hw)
    wh = clean[:, 2:] - clean[:, :2]  # (M, 2)
    keep = finite & (wh > min_size).all(dim=-1)  # (M,)
    return clean[keep], keep


# ----------------------------------------------------------------------------------------------------------
# IoU family (elementwise)


def _pairwise_terms(a: Tensor, b: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """IoU-family pieces: ``iou (...,)``, ``union (...,)``, enclosing box ``lt (..., 2)``, ``rb (..., 2)``."""
    _check_last_dim(a, 4, "a")
    _check_last_dim(b, 4, "b")
    wh_a = (a[..., 2:] - a[..., :2]).clamp(min=0)  # (..., 2)
    wh_b = (b[..., 2:] - b[..., :2]).clamp(min=0)
    inter_wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]  # (...,)
    union = wh_a[..., 0] * wh_a[..., 1] + wh_b[..., 0] * wh_b[..., 1] - inter
    iou = inter / (union + eps)
    enc_lt = torch.minimum(a[..., :2], b[..., :2])  # smallest enclosing box
    enc_rb = torch.maximum(a[..., 2:], b[..., 2:])
    return iou, union, enc_lt, enc_rb


def box_iou_pairwise(a: Tensor, b: Tensor, eps: float = _EPS) -> Tensor:
    """Elementwise IoU of xyxy boxes ``a (..., 4)`` and ``b (..., 4)`` -> ``(...,)`` in [0, 1].

    Ours because ``torchvision.ops`` has only the all-pairs ``box_iou`` matrix, not IoU of matched pairs.

    Leading dims broadcast. Degenerate boxes count as zero area; ``eps`` keeps two empty boxes at IoU 0, not
    NaN.
    """
    return _pairwise_terms(a, b, eps)[0]


def box_iof(a: Tensor, regions: Tensor, eps: float = 1e-12) -> Tensor:
    """Share of each xyxy box of ``a (A, 4)`` inside each region of ``regions (Q, 4)`` (intersection over the box's
    own area, COCO's crowd rule) -> ``(A, Q)`` in [0, 1]; a box with no area gets 0 (``eps`` keeps it finite)."""
    _check_last_dim(a, 4, "a")
    _check_last_dim(regions, 4, "regions")
    wh = (torch.minimum(a[:, None, 2:], regions[None, :, 2:])
          - torch.maximum(a[:, None, :2], regions[None, :, :2])).clamp(min=0)  # (A, Q, 2)
    area = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)  # (A,)
    return wh.prod(2) / area.clamp(min=eps)[:, None]


def giou_pairwise(a: Tensor, b: Tensor, eps: float = _EPS) -> Tensor:
    """Elementwise Generalised IoU (Rezatofighi et al. 2019) -> ``(...,)`` in (-1, 1].

    ``GIoU = IoU - |C \\ (A ∪ B)| / |C|`` with C the smallest enclosing box, so disjoint boxes score below 0
    and still get a gradient that pulls them together.
    """
    _check_last_dim(a, 4, "a")
    _check_last_dim(b, 4, "b")
    a, b = torch.broadcast_tensors(a, b)  # torchvision's loss needs equal shapes
    return 1.0 - generalized_box_iou_loss(a, b, reduction="none", eps=eps)


def ciou_pairwise(a: Tensor, b: Tensor, eps: float = _EPS) -> Tensor:
    """Elementwise Complete IoU (Zheng et al. 2020) -> ``(...,)`` in [-1.5, 1] (roughly).

    ``CIoU = IoU - ρ²/c² - α·v``: ρ the centre distance, c the enclosing box diagonal,
    ``v = 4/π² (atan(w_b/h_b) - atan(w_a/h_a))²`` the aspect-ratio mismatch, ``α = v / (1 - IoU + v)``.
    ``α`` is a trade-off weight, detached from the graph as in the reference implementation. Ours rather than
    ``torchvision.ops.complete_box_iou_loss``: its aspect term divides by the height without eps, so a
    zero-height box (a collapsed prediction) gives NaN instead of a finite loss.
    """
    iou, _, lt, rb = _pairwise_terms(a, b, eps)
    c2 = ((rb - lt) ** 2).sum(dim=-1) + eps  # (...,) squared enclosing diagonal
    centre_a = (a[..., :2] + a[..., 2:]) / 2
    centre_b = (b[..., :2] + b[..., 2:]) / 2
    rho2 = ((centre_a - centre_b) ** 2).sum(dim=-1)
    wh_a = (a[..., 2:] - a[..., :2]).clamp(min=0)
    wh_b = (b[..., 2:] - b[..., :2]).clamp(min=0)
    atan_a = torch.atan(wh_a[..., 0] / (wh_a[..., 1] + eps))
    atan_b = torch.atan(wh_b[..., 0] / (wh_b[..., 1] + eps))
    v = (4 / math.pi**2) * (atan_b - atan_a) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - rho2 / c2 - alpha * v


# ----------------------------------------------------------------------------------------------------------
# RetinaNet / Faster R-CNN coder


def encode_deltas(
    anchors: Tensor, gt: Tensor, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
) -> Tensor:
    """Regression targets of xyxy ``gt`` relative to xyxy ``anchors`` (both ``(..., 4)``) -> ``(..., 4)``.

    ``dx = wx·(gx − ax)/aw``, ``dy = wy·(gy − ay)/ah``, ``dw = ww·log(gw/aw)``, ``dh = wh·log(gh/ah)`` with
    ``(x, y)`` box centres. Sizes are floored at 1e-6 px so a degenerate GT gives a large finite target,
    not ``-inf`` (sanitise targets with :func:`validate_boxes` first).
    """
    _check_last_dim(anchors, 4, "anchors")
    _check_last_dim(gt, 4, "gt")
    a = xyxy_to_cxcywh(anchors)
    g = xyxy_to_cxcywh(gt)
    awh = a[..., 2:].clamp(min=1e-6)
    gwh = g[..., 2:].clamp(min=1e-6)
    w = torch.as_tensor(weights, dtype=a.dtype, device=a.device)  # (4,)
    dxy = (g[..., :2] - a[..., :2]) / awh
    dwh = torch.log(gwh / awh)
    return torch.cat((dxy, dwh), dim=-1) * w


def decode_deltas(
    anchors: Tensor,
    deltas: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = DEFAULT_DELTA_CLAMP,
) -> Tensor:
    """Inverse of :func:`encode_deltas`: xyxy ``anchors (..., 4)`` + ``deltas (..., 4)`` -> xyxy ``(..., 4)``.

    ``dw``/``dh`` are clamped at ``clamp`` before ``exp`` so an untrained head cannot overflow.
    Leading dims broadcast, e.g. anchors ``(R, 4)`` with deltas ``(N, R, 4)``.
    """
    _check_last_dim(anchors, 4, "anchors")
    _check_last_dim(deltas, 4, "deltas")
    a = xyxy_to_cxcywh(anchors)
    w = torch.as_tensor(weights, dtype=deltas.dtype, device=deltas.device)
    d = deltas / w
    centre = a[..., :2] + d[..., :2] * a[..., 2:]
    size = a[..., 2:] * torch.exp(d[..., 2:].clamp(max=clamp))
    return cxcywh_to_xyxy(torch.cat((centre, size), dim=-1))


# ----------------------------------------------------------------------------------------------------------
# YOLOv5 coder


def decode_yolov5(priors_boxes: Tensor, strides: Tensor, raw: Tensor) -> Tensor:
    """Ultralytics YOLOv5 box decoding -> xyxy ``(..., R, 4)``.

    Args:
        priors_boxes: ``(R, 4)`` xyxy anchors centred on their cell centre ``p`` (as built by
            ``yolo_priors``), so ``anchor_wh = (x2 − x1, y2 − y1)``.
        strides: ``(R,)`` stride of each prior's level.
        raw: ``(..., R, 4)`` raw head outputs ``(t_x, t_y, t_w, t_h)`` (logits, before the sigmoid).

    YOLOv5 writes ``centre = cell_xy + (2σ(t_xy) − 0.5)·stride`` with ``cell_xy = p − 0.5·stride`` the cell's
    top-left corner, i.e. ``centre = p + (2σ(t_xy) − 1)·stride`` — a centre within ±1 stride of the cell
    centre (the assigner's neighbour cells rely on that reach). ``wh = (2σ(t_wh))²·anchor_wh``: at most 4× the
    anchor, the same bound as the assigner's ``anchor_t = 4``.
    """
    _check_last_dim(priors_boxes, 4, "priors_boxes")
    _check_last_dim(raw, 4, "raw")
    if strides.shape != priors_boxes.shape[:1] or raw.ndim < 2 or raw.shape[-2] != priors_boxes.shape[0]:
        raise ValueError(
            f"expected priors_boxes (R, 4), strides (R,), raw (..., R, 4); got {tuple(priors_boxes.shape)}, "
            f"{tuple(strides.shape)}, {tuple(raw.shape)}"
        )
    prior = xyxy_to_cxcywh(priors_boxes)  # (R, 4)
    s = torch.sigmoid(raw)  # (..., R, 4)
    cell_origin = prior[:, :2] - 0.5 * strides[:, None]  # (R, 2) top-left of the cell
    centre = cell_origin + (2 * s[..., :2] - 0.5) * strides[:, None]
    size = (2 * s[..., 2:]) ** 2 * prior[:, 2:]
    return cxcywh_to_xyxy(torch.cat((centre, size), dim=-1))


# ----------------------------------------------------------------------------------------------------------
# YOLOv8 distance coder + DFL


def dist2bbox(points: Tensor, ltrb: Tensor, strides: Tensor | None = None) -> Tensor:
    """Distances ``ltrb (..., 4)`` (left, top, right, bottom) from ``points (..., 2)`` -> xyxy ``(..., 4)``.

    Distances are in the units of ``points``; with ``strides (...)`` (broadcastable to ``ltrb[..., 0]``) they
    are in stride units and are multiplied by the stride first (pixel points, DFL-unit distances).
    """
    _check_last_dim(points, 2, "points")
    _check_last_dim(ltrb, 4, "ltrb")
    if strides is not None:
        ltrb = ltrb * strides[..., None]
    return torch.cat((points - ltrb[..., :2], points + ltrb[..., 2:]), dim=-1)


def bbox2dist(points: Tensor, boxes: Tensor, reg_max: int, strides: Tensor | None = None) -> Tensor:
    """Inverse of :func:`dist2bbox`: DFL targets ``ltrb (..., 4)`` of xyxy ``boxes`` from ``points``.

    ``reg_max`` is the number of DFL bins (``HeadConfig.reg_max``, bins ``0 .. reg_max − 1``), the same
    meaning as in :func:`dfl_decode` and ``dfl_loss``. Distances are divided by ``strides`` when given (pixels
    -> stride units) and clamped to ``[0, reg_max − 1 − 0.01]`` so the upper interpolation bin of the DFL
    always exists. (Ultralytics passes ``reg_max − 1`` to its ``bbox2dist`` and clamps at that minus 0.01: the
    same bound.)
    """
    _check_last_dim(points, 2, "points")
    _check_last_dim(boxes, 4, "boxes")
    if reg_max < 2:
        raise ValueError(f"reg_max must be >= 2 bins, got {reg_max}")
    ltrb = torch.cat((points - boxes[..., :2], boxes[..., 2:] - points), dim=-1)
    if strides is not None:
        ltrb = ltrb / strides[..., None]
    return ltrb.clamp(0.0, reg_max - 1 - 0.01)


def dfl_decode(logits: Tensor, reg_max: int) -> Tensor:
    """Expected distance under the softmax over DFL bins: ``logits (..., 4·reg_max)`` -> ``(..., 4)``.

    Bin ``j`` stands for distance ``j`` (stride units), so the result lies in ``[0, reg_max − 1]``.
    The last dimension is side-major: ``[l bins, t bins, r bins, b bins]``.
    """
    if logits.ndim == 0 or logits.shape[-1] != 4 * reg_max:
        raise ValueError(f"logits must have shape (..., 4*reg_max={4 * reg_max}), got {tuple(logits.shape)}")
    prob = logits.unflatten(-1, (4, reg_max)).softmax(dim=-1)  # (..., 4, reg_max)
    bins = torch.arange(reg_max, dtype=prob.dtype, device=prob.device)
    return prob @ bins  # (..., 4)
