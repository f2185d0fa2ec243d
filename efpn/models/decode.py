"""Decoders: raw head predictions -> per-prior boxes (pixels) and class scores, one per head family.

Kept apart from heads (which only predict) and from NMS (:mod:`efpn.det.postprocess`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from efpn.det import boxes as bx
from efpn.det.priors import Priors
from efpn.models.heads import HeadOutput

#: ``(head_output, priors) -> (boxes (N, R, 4) xyxy px, scores (N, R, K) in [0, 1])``
Decoder = Callable[[HeadOutput, Priors], tuple[Tensor, Tensor]]


def decode_retina(out: HeadOutput, priors: Priors) -> tuple[Tensor, Tensor]:
    """Anchor deltas -> boxes; sigmoid class scores."""
    n = out.box.shape[0]
    boxes = bx.decode_deltas(priors.boxes.expand(n, -1, -1).reshape(-1, 4), out.box.reshape(-1, 4))
    return boxes.view(n, -1, 4), out.cls_logits.sigmoid()


def decode_yolov5(out: HeadOutput, priors: Priors) -> tuple[Tensor, Tensor]:
    """YOLOv5 parametrisation -> boxes; score = sigmoid(objectness) * sigmoid(class)."""
    n = out.box.shape[0]
    boxes = bx.decode_yolov5(
        priors.boxes.expand(n, -1, -1).reshape(-1, 4),
        priors.strides.expand(n, -1).reshape(-1),
        out.box.reshape(-1, 4),
    )
    assert out.obj_logits is not None
    return boxes.view(n, -1, 4), out.cls_logits.sigmoid() * out.obj_logits.sigmoid()[..., None]


def make_decode_yolov8(reg_max: int) -> Decoder:
    """DFL expectation over ``reg_max`` bins (stride units) -> ltrb distances -> boxes; sigmoid class scores."""

    def decode(out: HeadOutput, priors: Priors) -> tuple[Tensor, Tensor]:
        n = out.box.shape[0]
        ltrb = bx.dfl_decode(out.box, reg_max) * priors.strides[:, None]  # (N, R, 4) px
        boxes = bx.dist2bbox(priors.points.expand(n, -1, -1), ltrb)
        return boxes, out.cls_logits.sigmoid()

    return decode
