"""``efpn diagnose``: why each object of a dataset was missed — recall by size bucket x cause on the terminal, the
miss table as JSON or CSV, the detections as COCO results and an HTML report with crops of the worst misses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from efpn.cli import guards
from efpn.cli.evaluate import model_and_records


def add_diagnose_parser(sub: Any) -> None:
    """The ``diagnose`` verb on the CLI's sub-parsers."""
    s = sub.add_parser("diagnose", help="why each object of a dataset was missed: recall by size x cause, the miss "
                       "table (JSON/CSV), COCO results and an HTML report with crops")
    s.add_argument("--weights", required=True, help="checkpoint .safetensors (with its .json card)")
    s.add_argument("--data", required=True, help="data YAML (efpn's schema or an Ultralytics dataset YAML)")
    s.add_argument("--split", default="val",
                   help="split of the data YAML to diagnose: train, val or test (default val)")
    s.add_argument("--score", type=guards.unit, default=None, help="score threshold in [0, 1] (default: the model's)")
    s.add_argument("--match-iou", "--iou", dest="iou", type=guards.match_iou, default=0.5,
                   help="IoU in (0, 1] a detection needs to find an object (default 0.5); not the NMS threshold, "
                   "which is --nms-iou")
    s.add_argument("--nms-iou", type=guards.unit, default=None,
                   help="NMS IoU threshold in [0, 1] of the detections diagnosed (default: the checkpoint's own, as "
                   "efpn val)")
    s.add_argument("--any-class", action="store_true",
                   help="a detection of any class finds an object (default: the same class only)")
    s.add_argument("--slice", type=guards.tile_size, default=None, metavar="S", help="detect on S x S tiles (>= 8 px)")
    s.add_argument("--overlap", type=guards.fraction, default=None, help="tile overlap fraction in [0, 1)")
    s.add_argument("--image-size", type=guards.image_size, default=None,
                   help="network input's long side (default: the checkpoint's own)")
    s.add_argument("--limit", type=guards.at_least_one, default=None, help="only the first N images")
    s.add_argument("--device", type=guards.device, default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    s.add_argument("--json", default=None, help="write the table and every miss as JSON")
    s.add_argument("--csv", default=None, help="write the miss table as CSV")
    s.add_argument("--coco", default=None, help="write the detections as COCO results JSON (category_id: the "
                   "dataset's own id of the class of the same name, class index + 1 for formats without ids; "
                   "detections of classes the dataset lacks are left out)")
    s.add_argument("--html", default=None, help="write an HTML report with crops of the worst misses")
    s.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args: argparse.Namespace) -> None:
    from efpn.data.splits import category_ids, category_ids_for
    from efpn.explain import CAUSES, diagnose_records, write_html
    from efpn.vocab import BUCKET_LABELS

    guards.check_outputs({"--json": args.json, "--csv": args.csv, "--coco": args.coco, "--html": args.html},
                         {**guards.checkpoint_files(args.weights), **guards.data_files(args.data)},
                         input_folders=guards.data_folders(args.data))
    model, records, names, loader = model_and_records(args, "(see the loader's report above), so no object can be "
                                                      "missed")
    diag = diagnose_records(model, records, names, score_thresh=args.score, iou_thresh=args.iou,
                            slice_size=args.slice, overlap=args.overlap, image_size=args.image_size, progress=True,
                            class_aware=not args.any_class, nms_iou=args.nms_iou)
    for image_id, file, why in diag.errors:  # reported; every other image was diagnosed
        print(f"skipped image {image_id} ({file}): {why}", file=sys.stderr)
    if records and not diag.images:  # as detect: a run that diagnosed nothing is a failure, not an empty table
        print(f"efpn: error: none of the {len(records)} images could be diagnosed (each reason is above)",
              file=sys.stderr)
        raise SystemExit(1)
    table = diag.table()
    for image_id, file, why in diag.tiles_only:
        print(f"note: image {image_id} ({file}) was matched on its tiles only; its misses have no cause "
              f"(not_diagnosed): the whole image could not be inspected: {why}", file=sys.stderr)
    columns = (*CAUSES, "not_diagnosed") if diag.tiles_only else CAUSES
    print(f"{'size':<20}{'objects':>8}{'found':>7}{'recall':>8}  " + "  ".join(f"{c:>15}" for c in columns))
    for b, t in table.items():
        recall = f"{t['found'] / t['gt']:.3f}" if t["gt"] else "-"
        print(f"{BUCKET_LABELS[b]:<20}{t['gt']:>8}{t['found']:>7}{recall:>8}  "
              + "  ".join(f"{t[c]:>15}" for c in columns))
    print("size = sqrt(w·h) of the object's box in image pixels; 'medium' stops at 64 px here, while val's AP_m counts "
          "every object from 32 px up (AI-TOD)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**diag.to_json(), "loader": loader}, indent=1))
        print(f"saved {args.json}")
    if args.csv:
        print(f"saved {diag.write_csv(args.csv)}")
    if args.coco:
        # the detections' labels are the model's class indices: each is written as the data's category of the same
        # name (with --any-class the model's classes may be others, e.g. car/boat scored against ships)
        mine = list(model.config.class_names or [])
        ids = category_ids_for(mine, names, category_ids(args.data, args.split))
        missing = [n for n, i in zip(mine, ids) if i is None]
        if missing:
            print(f"note: the data has no class {', '.join(missing)}: {args.coco} leaves out the model's detections "
                  "of those classes (nothing to score them as)", file=sys.stderr)
        Path(args.coco).parent.mkdir(parents=True, exist_ok=True)
        Path(args.coco).write_text(json.dumps(diag.coco_results(ids)))
        print(f"saved {args.coco}")
    if args.html:
        print(f"saved {write_html(diag, args.html, loader=loader)}")
