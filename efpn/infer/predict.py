"""Single-image prediction in the user's pixels (the one inference path shared by CLI, studio and validation)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from efpn.infer.preprocess import boxes_to_original, drop_empty, prepare
from efpn.models.detector import Detector


@torch.no_grad()
def predict_image(
    model: Detector,
    image: Any,
    score_thresh: float | None = None,
    nms_iou: float | None = None,
    max_det: int | None = None,
    image_size: int | None = None,
) -> dict[str, Tensor]:
    """Detections for one image (path, array, PIL or tensor): ``boxes`` (D, 4) xyxy in ORIGINAL pixels,
    ``scores``, ``labels``, ``levels`` (index into ``model.levels``). The model must be in eval mode."""
    if model.training:
        raise ValueError("predict_image needs an eval-mode model (call model.eval())")
    prep = prepare(image, image_size or model.config.image_size)
    device = next(model.parameters()).device
    det = model.predict(prep.tensor.to(device), score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det)[0]
    out = {k: v.cpu() for k, v in det.items()}
    out["boxes"] = boxes_to_original(out["boxes"].float(), prep.scale, prep.orig_hw)
    return drop_empty(out)  # boxes wholly in the input's padding
