"""`efpn detect`: images or folders in, drawn images and JSON out (optionally with sliced inference)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from efpn.data.images import CorruptImageError, read_image
from efpn.vocab import box_size

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
#: One colour per pyramid level (RGB), so a drawing shows which level found each object.
LEVEL_COLOURS = {
    "p2": (255, 200, 0), "p3": (60, 180, 75), "p4": (0, 130, 200), "p5": (245, 130, 48),
    "p6": (145, 30, 180), "p7": (70, 240, 240),
}


def collect_images(sources: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into image paths, sorted; raises FileNotFoundError for a missing one."""
    out: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"source {p} does not exist (give image files or folders)")
    if not out:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, sources))}")
    return out


def draw_detections(image: np.ndarray, det: dict, class_names: Sequence[str], levels: Sequence[str]) -> np.ndarray:
    """RGB uint8 copy of ``image`` with boxes coloured by pyramid level and ``class score`` labels."""
    out = image.copy()
    for box, score, label, lv in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(),
                                     det["levels"].tolist()):
        colour = LEVEL_COLOURS.get(levels[lv], (255, 255, 0))
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


def detect_sources(
    weights: str | Path,
    sources: Sequence[str | Path],
    out_dir: str | Path = "runs/detect",
    score_thresh: float = 0.25,
    nms_iou: float = 0.5,
    slice_size: int | None = None,
    overlap: float = 0.2,
    image_size: int | None = None,
    device: str = "cpu",
) -> list[Path]:
    """Run a checkpoint over images/folders; writes ``<stem>.png`` (drawn) per image and ``detections.json``.

    Unreadable images are reported and skipped (listed under ``"errors"`` in the JSON), never fatal.
    """
    from efpn.engine.checkpoint import load_model
    from efpn.predict import predict_image

    model = load_model(weights, device=device)
    names = list(model.config.class_names) or [str(i) for i in range(model.num_classes)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = collect_images(sources)
    written: list[Path] = []
    summary: dict[str, object] = {"weights": str(weights), "images": {}, "errors": {}}
    for path in tqdm(paths, desc="detect", unit="img"):
        try:
            rgb = read_image(path)
        except (CorruptImageError, ValueError, OSError) as e:
            summary["errors"][str(path)] = str(e)  # type: ignore[index]
            tqdm.write(f"skipped {path}: {e}")
            continue
        if slice_size:
            from efpn.slicing import sliced_predict

            det = sliced_predict(model, rgb, tile=slice_size, overlap=overlap, score_thresh=score_thresh,
                                 nms_iou=nms_iou)
        else:
            det = predict_image(model, rgb, score_thresh=score_thresh, nms_iou=nms_iou, image_size=image_size)
        drawn = draw_detections(rgb, det, names, model.levels)
        png = out / f"{path.stem}.png"
        cv2.imwrite(str(png), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        written.append(png)
        summary["images"][str(path)] = detections_to_json(det, names, model.levels)  # type: ignore[index]
    js = out / "detections.json"
    js.write_text(json.dumps(summary, indent=2))
    written.append(js)
    return written
