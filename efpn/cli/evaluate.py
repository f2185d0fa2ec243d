"""``efpn val``: COCO AP with the AI-TOD size splits, optionally sliced, at the checkpoint's NMS IoU or another, and
the AP of a whole grid of NMS IoU thresholds from one prediction pass (``--nms-sweep``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from efpn.cli import guards


def model_and_records(args: argparse.Namespace, why: str) -> tuple[Any, list, list[str], dict[str, Any]]:
    """The checkpoint ``--weights`` (on ``--device``), split ``--split`` of ``--data`` (``--limit`` applied) and
    its loader's report (printed, and returned as JSON data for the results file: the images it left out are not in
    the metrics). ValueError when no record has a box, ``why`` ending the message."""
    import efpn
    from efpn.config.data import load_data_config
    from efpn.data.splits import load_split

    model = efpn.load_model(args.weights, device=args.device)
    records, names, report = load_split(load_data_config(args.data), args.split)
    print(report.summary())
    if len(records) != report.images:  # the split is carved from that source by the data YAML's val_fraction
        print(f"split {args.split!r}: {len(records)} of these {report.images} images (carved from the source above "
              "by the data YAML's val_fraction and split_seed)")
    if args.limit:
        records = records[: args.limit]
    if not any(r.num_targets for r in records):
        raise ValueError(f"split {args.split!r} of {args.data} has no object boxes {why}")
    return model, records, list(names), report.to_json_dict()


def cmd_val(args: argparse.Namespace) -> None:
    from efpn.cli.tables import metrics_line, per_class_lines
    from efpn.evaluation import plot_ap_by_size, plot_pr_curves, sweep_nms_iou
    from efpn.evaluation.validate import check_network_sizes, validate

    guards.check_outputs({"--json": args.json, "--plots": args.plots},
                         {**guards.checkpoint_files(args.weights), **guards.data_files(args.data)},
                         folders=("--plots",), input_folders=guards.data_folders(args.data))
    if args.nms_sweep and args.nms_iou is not None:
        raise ValueError("--nms-sweep scores a grid of NMS IoU thresholds itself; drop --nms-iou (or --nms-sweep)")
    if args.nms_sweep and args.slice is not None:  # refused before any work: the sweep predicts whole images
        raise ValueError("--nms-sweep scores whole images, so its best threshold would not be the sliced score's; "
                         "run the sweep without --slice, then --slice with --nms-iou set to the threshold it chose")
    model, records, names, loader = model_and_records(args, "to score against (see the loader's report above); AP is "
                                              "undefined without ground truth")
    size = args.image_size or model.config.image_size
    nms = args.nms_iou if args.nms_iou is not None else model.config.postprocess.nms_iou
    print(f"NMS IoU {nms:g}" + (" (the checkpoint's)" if args.nms_iou is None else ""))

    whole = True
    if args.slice is not None:  # tiles take images too thin for one input: the whole-image comparison does not
        try:
            check_network_sizes(records, size, "whole-image metrics", "keep --slice alone")
        except ValueError as e:
            print(f"{e}: the whole-image metrics are left out, the sliced ones computed", file=sys.stderr)
            whole = False
    result = (validate(model, records, names, image_size=size, batch_size=args.batch_size, device=args.device,
                       progress=True, nms_iou=args.nms_iou) if whole else None)
    m: dict[str, Any] = {**result.to_json_dict(), "nms_iou": nms} if result is not None else {}
    if args.slice is not None:
        # the same model and records, tiled: AP by size with and without slicing side by side
        sliced = validate(model, records, names, image_size=size, device=args.device, progress=True,
                          slice_size=args.slice, overlap=args.overlap, nms_iou=args.nms_iou)
        if m:
            print(metrics_line(m, "whole image: "))
        result, m = sliced, {**sliced.to_json_dict(), "nms_iou": nms,
                             "slicing": {"tile": args.slice, "overlap": args.overlap}, "without_slicing": m or None}
        print(metrics_line(m, f"tiles {args.slice} px, overlap {args.overlap:g}: "))
    else:
        print(metrics_line(m))
    for row in per_class_lines(m):  # several classes: their AP and AP50
        print(row)
    if args.nms_sweep:
        sweep = sweep_nms_iou(model, records, names, image_size=size, batch_size=args.batch_size,
                              device=args.device, progress=True)
        print("\n".join(sweep.table()))
        print(f"chosen: NMS IoU {sweep.best:g} ({sweep.gain:+.4f} AP over the checkpoint's {sweep.current:g}; another "
              f"threshold is chosen only when it gains at least {sweep.min_gain:g} AP, so noise does not move it); "
              "chosen on this split, so optimistic for it: confirm on held-out data (efpn ship --nms-iou auto "
              "records it)")
        m["nms_sweep"] = sweep.to_json_dict()
    assert result is not None  # the sliced result when the whole-image one was left out
    m["loader"] = loader  # what the data's loader left out before scoring (images, boxes, by reason)
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s); the metrics are computed without them (listed "
              "under skipped_images in --json):")
        for path, why in list(result.skipped.items())[:10]:
            print(f"  {path}: {why}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(m, indent=2))
        print(f"saved {args.json}")
    if args.plots:
        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        print(f"saved {plot_pr_curves(result, out / 'pr_curves.png')}")
        print(f"saved {plot_ap_by_size(result, out / 'ap_by_size.png')}")


def add_val_parser(sub: Any) -> None:
    """The ``val`` verb on the CLI's sub-parsers."""
    s = sub.add_parser("val", help="COCO AP with AI-TOD size splits (AP_vt, AP_t, AP_s, AP_m)")
    s.add_argument("--weights", required=True, help="checkpoint .safetensors (with its .json card)")
    s.add_argument("--data", required=True, help="data YAML (efpn's schema or an Ultralytics dataset YAML)")
    s.add_argument("--split", default="val", help="split of the data YAML to score: train, val or test (default val)")
    s.add_argument("--image-size", type=guards.image_size, default=None,
                   help="network input's long side (default: the checkpoint's own)")
    s.add_argument("--batch-size", type=guards.count, default=8, help="images per forward pass (default 8)")
    s.add_argument("--device", type=guards.device, default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    s.add_argument("--limit", type=guards.at_least_one, default=None, help="only the first N images")
    s.add_argument("--json", default=None, help="write {AP, AP50, AP75, AP_vt, AP_t, AP_s, AP_m, per_class, nms_iou, "
                   "loader (what the data's loader left out, by reason)}; with --slice the sliced metrics, plus "
                   "'without_slicing' and 'slicing'; with --nms-sweep "
                   "'nms_sweep'")
    s.add_argument("--plots", default=None, help="folder for PR curves and AP-by-size charts (PNG)")
    s.add_argument("--slice", type=guards.tile_size, default=None, metavar="S",
                   help="also validate on S x S tiles of each image (original px, >= 8; each tile resized to the "
                   "network's input size on its long side), merged and scored against the full-image ground truth")
    s.add_argument("--overlap", type=guards.fraction, default=None,
                   help="tile overlap, a fraction in [0, 1) (default 0.2)")
    s.add_argument("--nms-iou", type=guards.unit, default=None,
                   help="NMS IoU threshold in [0, 1] (default: the checkpoint's own)")
    s.add_argument("--nms-sweep", action="store_true",
                   help="also score NMS IoU 0.4 ... 0.8 from one prediction pass and name the best for AP")
    s.set_defaults(func=cmd_val)
