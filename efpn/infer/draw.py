"""Detections as pictures, JSON rows and YOLO label lines: what ``efpn detect`` writes and the studio shows."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from efpn.vocab import LEVEL_RGB, box_size


def draw_detections(image: np.ndarray, det: dict, class_names: Sequence[str], levels: Sequence[str]) -> np.ndarray:
    """RGB uint8 copy of ``image`` with boxes coloured by pyramid level and ``class score`` labels."""
    out = image.copy()
    for box, score, label, lv in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(),
                                     det["levels"].tolist()):
        colour = LEVEL_RGB.get(levels[lv], (255, 255, 0))
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, 1)
        name = class_names[label] if label < len(class_names) else str(label)
        cv2.putText(out, f"{name} {score:.2f}", (x0, max(8, y0 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, colour, 1,
                    cv2.LINE_AA)
    return out


def detections_to_json(det: dict, class_names: Sequence[str], levels: Sequence[str]) -> list[dict]:
    """JSON-ready list: box xyxy, score, class id and name, size sqrt(wh), level name."""
    sizes = box_size(det["boxes"]).tolist() if len(det["boxes"]) else []
    return [
        {"box": [round(v, 2) for v in b], "score": round(s, 4), "class_id": int(c),
         "class": class_names[c] if c < len(class_names) else str(c), "size": round(z, 2), "level": levels[lv]}
        for b, s, c, z, lv in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(), sizes,
                                  det["levels"].tolist())
    ]


def yolo_lines(det: dict, hw: tuple[int, int]) -> str:
    """YOLO label text of detections in an ``hw`` (H, W) image: ``class cx cy w h score`` per line, normalised."""
    h, w = hw
    return "".join(f"{int(c)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f} "
                   f"{s:.5f}\n"
                   for (x1, y1, x2, y2), s, c in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                                     det["labels"].tolist()))
