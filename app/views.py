"""Small pure helpers shared by pages: detections as rows, JSON and PNG downloads (no Streamlit, no model)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from efpn import BUCKETS, box_size, size_bucket
from efpn.infer import detections_to_json, draw_detections


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def detection_rows(
    detections: Mapping[str, Any], levels: Sequence[str], class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One dict per detection: index, class, label, score, level, size (sqrt(wh)), bucket, box, x1..y2."""
    boxes = _np(detections["boxes"]).reshape(-1, 4).astype(float)
    scores = _np(detections["scores"]).astype(float)
    labels = _np(detections["labels"]).astype(int)
    lvls = _np(detections["levels"]).astype(int)
    sizes = box_size(torch.from_numpy(boxes)).tolist()  # sqrt(wh), efpn's size vocabulary
    buckets = [BUCKETS[k] for k in size_bucket(torch.from_numpy(boxes)).tolist()]
    rows = []
    for i, (b, s, c, lv, size, bucket) in enumerate(zip(boxes, scores, labels, lvls, sizes, buckets)):
        rows.append({
            "index": i,
            "class": class_names[c] if 0 <= c < len(class_names) else str(c),
            "label": int(c),
            "score": float(s),
            "level": levels[lv] if 0 <= lv < len(levels) else str(lv),
            "size": size,
            "bucket": bucket,
            "box": [float(v) for v in b],
            "x1": float(b[0]), "y1": float(b[1]), "x2": float(b[2]), "y2": float(b[3]),
        })
    return rows


def table_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for ``st.dataframe`` (no nested lists)."""
    digits = {"score": 4, "size": 1, "x1": 1, "y1": 1, "x2": 1, "y2": 1}
    keys = ("index", "class", "score", "level", "size", "bucket", "x1", "y1", "x2", "y2")
    return [{k: (round(r[k], digits[k]) if k in digits else r[k]) for k in keys} for r in rows]


def level_counts(rows: Sequence[Mapping[str, Any]], levels: Sequence[str]) -> dict[str, int]:
    return {lv: sum(1 for r in rows if r["level"] == lv) for lv in levels}


def detections_json(
    detections: Mapping[str, Any], levels: Sequence[str], class_names: Sequence[str], image_name: str,
    image_hw: tuple[int, int], checkpoint: str, score: float, nms: float,
) -> str:
    """The downloadable JSON: image, checkpoint, thresholds and the detections in the same form as
    ``efpn detect`` writes them (boxes xyxy in original px)."""
    doc = {
        "image": image_name,
        "height": int(image_hw[0]),
        "width": int(image_hw[1]),
        "checkpoint": checkpoint,
        "score_thresh": score,
        "nms_iou": nms,
        "detections": detections_to_json(_tensors(detections), class_names, levels),
    }
    return json.dumps(doc, indent=2)


def drawn_png(rgb: np.ndarray, detections: Mapping[str, Any], levels: Sequence[str],
              class_names: Sequence[str]) -> bytes:
    """PNG bytes of the image with every detection drawn as ``efpn detect`` draws it (colour = level)."""
    drawn = draw_detections(rgb, _tensors(detections), class_names, levels)
    buf = io.BytesIO()
    Image.fromarray(drawn).save(buf, format="PNG")
    return buf.getvalue()


def _tensors(detections: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Detections as tensors (the sliced path hands numpy arrays)."""
    return {k: torch.as_tensor(np.asarray(detections[k])) for k in ("boxes", "scores", "labels", "levels")}
