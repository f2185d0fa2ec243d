"""Copy a few real SIRST validation images into ``app/samples/sirst`` for the studio:
``python app/samples/make_sirst_samples.py checkpoints/efpn_mv2_sirst.safetensors [--count 6]``.

Picks, from the SIRST val list, the images with the most tiny targets (< 16 px) that the checkpoint finds at
its own score threshold, and one where it misses something (the studio exists to explain misses); writes the PNGs
and their ground truth as COCO ``annotations.json`` (boxes from the masks, one per 8-connected component).
SIRST: Dai et al., "Asymmetric Contextual Modulation for Infrared Small Target Detection", WACV 2021; academic
benchmark, research use (see ATTRIBUTION.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

import efpn
from efpn.data import load_split
from efpn.evaluation import match_detections
from efpn.infer import predict_image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--data", default=str(REPO / "recipes" / "data" / "sirst.yaml"))
    args = ap.parse_args()
    model = efpn.load_model(args.weights)
    records, names, _ = load_split(args.data, "val")
    scored = []
    for rec in records:
        boxes, labels = rec.target_boxes()
        if not len(boxes) or not bool((efpn.box_size(torch.as_tensor(boxes)) < 16).any()):
            continue
        det = predict_image(model, rec.path)
        m = match_detections(det["boxes"], det["scores"], det["labels"], boxes, labels)
        scored.append((int(m.found.sum()), int(m.missed.sum()), rec))
    found = sorted((s for s in scored if s[1] == 0 and s[0] > 0), key=lambda s: -s[0])
    missed = [s for s in scored if s[1] > 0]
    chosen = [s[2] for s in found[: args.count - 1]] + [s[2] for s in missed[:1]]
    out = HERE / "sirst"
    shutil.rmtree(out / "images", ignore_errors=True)  # only the chosen images, no leftovers of an earlier pick
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, rec in enumerate(chosen, start=1):
        shutil.copyfile(rec.path, out / "images" / rec.path.name)
        images.append({"id": i, "file_name": rec.path.name, "width": rec.width, "height": rec.height})
        for b, c in zip(*rec.target_boxes()):
            x1, y1, x2, y2 = (float(v) for v in b)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    doc = {"info": {"description": "SIRST val images (Dai et al., WACV 2021), boxes from the masks"},
           "images": images, "annotations": anns, "categories": [{"id": i, "name": n} for i, n in enumerate(names)]}
    (out / "annotations.json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {len(images)} images with {len(anns)} targets to {out}")


if __name__ == "__main__":
    main()
