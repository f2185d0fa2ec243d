"""`efpn detect`: images or folders in, drawn images and JSON out (optionally with sliced inference)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
from tqdm import tqdm

from efpn.data.images import CorruptImageError, read_image
from efpn.infer.draw import detections_to_json, draw_detections

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


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

    One bad file never stops the batch: an unreadable image, or one the model cannot take (too small, too many
    pixels for one input without ``slice_size``), is reported with its size and what to do, listed under
    ``"errors"`` in the JSON, and the rest are processed. Raises NotADirectoryError when ``out_dir`` is a file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is an existing file; give a folder for the drawn images and JSON")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"--out {out} lies under {parent}, which is a file; give a folder path")
    from efpn.checkpoint import load_model
    from efpn.infer.predict import predict_image

    model = load_model(weights, device=device)
    names = list(model.config.class_names) or [str(i) for i in range(model.num_classes)]
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
        try:
            if slice_size:
                from efpn.infer.slicing import sliced_predict

                det = sliced_predict(model, rgb, tile=slice_size, overlap=overlap, score_thresh=score_thresh,
                                     nms_iou=nms_iou)
            else:
                det = predict_image(model, rgb, score_thresh=score_thresh, nms_iou=nms_iou, image_size=image_size)
        except ValueError as e:  # too small, too many pixels for one input, ...: this file only
            h, w = rgb.shape[:2]
            why = f"{w}x{h} px image: {e}"
            summary["errors"][str(path)] = why  # type: ignore[index]
            tqdm.write(f"skipped {path}: {why}")
            continue
        drawn = draw_detections(rgb, det, names, model.levels)
        png = out / f"{path.stem}.png"
        cv2.imwrite(str(png), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        written.append(png)
        summary["images"][str(path)] = detections_to_json(det, names, model.levels)  # type: ignore[index]
    js = out / "detections.json"
    js.write_text(json.dumps(summary, indent=2))
    written.append(js)
    return written
