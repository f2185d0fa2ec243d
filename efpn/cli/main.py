"""`efpn` command line: models, data synth, assign, train, val, detect, export, report.

argparse lives here only; every verb calls a library function with explicit arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from efpn.cli import guards
from efpn.cli.diagnose import add_diagnose_parser
from efpn.cli.evaluate import add_val_parser
from efpn.files import replaceable
from efpn.runtime import keep_freed_memory


def _die(msg: str, code: int = 2) -> typing.NoReturn:
    print(f"efpn: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


# ------------------------------------------------------------------------------------------------ models


def cmd_models(args: argparse.Namespace) -> None:
    """Print every preset with its parameters and GFLOPs at the given size."""
    import torch
    from tqdm import tqdm

    import efpn

    names = list(efpn.PRESETS) if args.all else list(efpn.MAIN_PRESETS)
    rows = []
    for name in tqdm(names, desc="measuring", disable=args.json or not sys.stderr.isatty(), leave=False):
        try:
            with torch.no_grad():
                m = efpn.build_model(name, num_classes=args.num_classes).eval()
        except (RuntimeError, MemoryError) as e:  # the allocator's words for a head too large for this machine
            if not isinstance(e, MemoryError) and "allocate" not in str(e):
                raise
            _die(f"{name} with {args.num_classes:,} classes needs more memory than this machine has (its head alone "
                 "holds a weight per class for every anchor); give --num-classes the count your data has", code=1)
        rows.append({
            "name": name, "params": efpn.count_params(m),
            "gflops": round(efpn.count_gflops(m, args.size), 2),
            "levels": list(m.levels),
            "head": m.config.head.kind,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'preset':<24}{'params':>12}{'GFLOPs@' + str(args.size):>14}  head     levels")
    for r in rows:
        levels = ",".join(r["levels"])
        print(f"{r['name']:<24}{r['params'] / 1e6:>10.2f} M{r['gflops']:>14.2f}  {r['head']:<8} {levels}")


# ------------------------------------------------------------------------------------------------ data


def cmd_data_synth(args: argparse.Namespace) -> None:
    from efpn.data.synthetic import write_synthetic_dataset

    out = Path(args.out)
    guards.check_outputs({"--out": out}, {}, folders=("--out",))
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {out} is not empty: writing the dataset there would replace its images and "
                         "annotations.json. Give a new or empty folder, or pass --overwrite")
    path = write_synthetic_dataset(
        args.out, num_images=args.num_images, image_size=args.image_size, seed=args.seed,
        min_size=args.min_size, max_size=args.max_size,
    )
    print(f"wrote {args.num_images} images and {path}")


# ------------------------------------------------------------------------------------------------ assign


def cmd_assign(args: argparse.Namespace) -> None:
    """Dataset-wide per-level positive accounting with a box-only assigner."""
    from efpn.explain import assignment_report

    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".html", ".htm"):
        _die(f"--plot {args.plot}: the chart is written as .png, .svg, .pdf, .jpg or .html; end the path with one")
    from efpn.explain import PROTOCOLS

    unknown = [name for name in args.protocol if name not in PROTOCOLS]
    if unknown:  # before the data loads
        _die(f"unknown assignment protocol {', '.join(unknown)}; choose from {', '.join(PROTOCOLS)}")
    guards.check_outputs({"--json": args.json, "--plot": args.plot}, guards.data_files(args.data),
                         input_folders=guards.data_folders(args.data))
    rep = assignment_report(
        args.data, split=args.split, protocols=args.protocol, image_size=args.image_size,
        limit=args.limit, progress=True,
    )
    print(rep.table())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rep.to_dict(), indent=2))
        print(f"saved {args.json}")
    if args.plot:
        out = rep.plot(args.plot)
        print(f"saved {out}")


# ------------------------------------------------------------------------------------------------ train


def _field_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, optional) of a simple dataclass field annotation."""
    if isinstance(tp, str):
        tp = eval(tp, {"Optional": typing.Optional, "Literal": typing.Literal})  # noqa: S307 - own annotations only
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _field_type(args[0])[0], True
    if origin is typing.Literal:
        return type(typing.get_args(tp)[0]), False
    return tp, False


def _add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _field_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help") if f.metadata else None
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=tp, default=None, metavar=f.name.upper(), help=help_text)


def cmd_train(args: argparse.Namespace) -> None:
    from efpn.config import TrainConfig, load_train_config
    from efpn.engine.train import train

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name, None) is not None}
    if args.config:
        cfg = load_train_config(args.config, **overrides)
    else:  # a resumed run starts from its own settings (its config.yaml), the flags given on top
        cfg = TrainConfig(**{**_run_settings(args.resume), **overrides})
    result = train(cfg)
    if os.environ.get("RANK", "0").strip() in ("", "0"):  # under torchrun every rank returns: rank 0 reports the run
        print(result)


def _run_settings(resume: str | None) -> dict[str, Any]:
    """The settings a run was trained with (its ``config.yaml``) when ``--resume`` names its folder or a file in it;
    {} otherwise (no resume, ``auto``, or a folder without one). Without them every flag not typed again fell back to
    its default: a 2-epoch 96 px run resumed as 100 epochs at 640 px."""
    import yaml

    from efpn.config import TrainConfig

    if not resume or resume == "auto":
        return {}
    folder = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    path = folder / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}  # not a run folder, or one from before config.yaml: the resume itself says what is wrong
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        saved = e
    if not isinstance(saved, dict):  # there and unreadable: resuming on defaults would replace the run's settings
        why = (f"{type(saved).__name__}: {' '.join(str(saved).split())[:200]}" if isinstance(saved, Exception)
               else "not a mapping")  # a YAML error's own lines joined: one line to read
        raise ValueError(f"{path} cannot be read ({why}): resuming would train on default settings and overwrite it. "
                         "Restore the file, or give the run's settings with --config")
    # what the run is (its model, data, budget and schedule), not how one sitting ran it: a --max-steps stop inherited
    # would end the resume at once, and workers/progress belong to this machine and terminal
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"resume", "max_steps", "workers", "progress", "out",
                                                                 "name"}
    if os.environ.get("RANK", "0").strip() in ("", "0"):
        print(f"resuming with the settings in {folder / 'config.yaml'} (flags given replace them)")
    return {k: v for k, v in saved.items() if k in known}


# ------------------------------------------------------------------------------------------------ diagnose


# ------------------------------------------------------------------------------------------------ detect


def cmd_detect(args: argparse.Namespace) -> None:
    from efpn.cli.detect import detect_sources

    written, summary = detect_sources(
        args.weights, args.source, out_dir=args.out, score_thresh=args.score, nms_iou=args.iou,
        slice_size=args.slice, overlap=args.overlap, image_size=args.image_size, device=args.device,
        max_det=args.max_det, classes=args.classes, save_txt=args.save_txt, draw=not args.no_draw,
        vid_stride=args.vid_stride)
    done, failed = len(summary["images"]), len(summary["errors"])
    print(f"detected in {done} image(s)/frame(s), {failed} skipped; wrote {len(written)} files to {written[-1].parent}")
    if not done:  # nothing processed: a script must not read this as success
        _die(f"no image could be processed ({failed} skipped, reasons above and in {written[-1]})", code=1)


# ------------------------------------------------------------------------------------------------ export


def cmd_export(args: argparse.Namespace) -> None:
    import efpn
    from efpn.infer.export import export_onnx

    if args.format != "onnx":
        _die(f"unsupported export format {args.format!r}; only 'onnx' is supported")
    out = args.out or str(Path(args.weights).with_suffix(".onnx"))
    guards.check_outputs({"--out": out}, guards.checkpoint_files(args.weights))
    if Path(out).exists() and not args.overwrite:  # it may be anything: a data YAML, a run's resume state
        _die(f"{out} already exists; pass --overwrite to replace it with the exported model, or give another --out")
    replaceable(out)  # a device or a pipe at --out: refused before the model loads, not replaced by a file
    model = efpn.load_model(args.weights)
    try:
        rep = export_onnx(model, out, args.image_size, dynamic=args.dynamic)
    except RuntimeError as e:  # onnxruntime disagrees with PyTorch, or the exporter failed: nothing was written
        _die(str(e), code=1)
    shape = (f"(N, 3, H, W), H and W multiples of {model.size_divisor}, checked at {rep.image_size}px and a batch of "
             "2 at another size" if rep.dynamic else f"(1, 3, {rep.image_size}, {rep.image_size})")
    print(f"exported {rep.path}: input {shape}, {rep.num_priors} priors at {rep.image_size}px; onnxruntime max "
          f"|diff| boxes {rep.max_abs_diff_boxes:.2e}, scores {rep.max_abs_diff_scores:.2e}")


# ------------------------------------------------------------------------------------------------ ship


def cmd_ship(args: argparse.Namespace) -> None:
    from efpn.cli.ship import ship

    guards.check_outputs({"--out": args.out}, {}, folders=("--out",))  # before the validation run, not after
    path = ship(args.run, args.name, out_dir=args.out, dataset=args.dataset, shared_root=args.shared_root,
                recipe=args.recipe, storage=args.storage, overwrite=args.overwrite, nms_iou=args.nms_iou)
    print(f"shipped {path}")


# ------------------------------------------------------------------------------------------------ report


REPORT_DEFAULTS = {"--shared-data": "../shared/data", "--checkpoints": "checkpoints"}


def cmd_report(args: argparse.Namespace) -> None:
    from efpn.cli.claims import claims_report

    # every input path is checked: a mistyped one would otherwise give a report with its sections empty in place of
    # the measured one (sections only say "not found" when the input was left out on purpose)
    for flag, path, what in (("--checkpoints", args.checkpoints, "the folder of shipped checkpoints"),
                             ("--shared-data", args.shared_data, "the folder holding ssdd/, sirst/ and "
                                                                  "visdrone-annotations/ ('' to leave it out)"),
                             ("--runs", args.runs, "a folder of training runs"),
                             # a new records folder is made when there are runs to record in it
                             ("--records", None if args.runs else args.records,
                              "the folder of run records (default OUT/run_records)")):
        typed = path != REPORT_DEFAULTS.get(flag)  # a default that is absent gives its section's "not found"
        if path and typed and not Path(path).is_dir():
            raise ValueError(f"{flag} {path} is not a folder (from {Path.cwd()}); give {what}")
    guards.check_outputs({"--out": args.out}, {}, folders=("--out",))
    path = claims_report(args.out, shared_data=args.shared_data, checkpoints=args.checkpoints,
                         visdrone_limit=args.visdrone_limit or None, runs=args.runs, records=args.records)
    print(f"saved {path}")


# ------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="efpn",
        description="Tiny-object detection you can see inside: E-FPN-BS and SGDM detectors, label-assignment "
        "accounting, training, evaluation with tiny-object size splits.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("models", help="list presets with parameters and GFLOPs")
    s.add_argument("--json", action="store_true", help="print a JSON list of {name, params, gflops}")
    s.add_argument("--size", type=guards.image_size, default=640,
                   help="square input side for GFLOPs, a multiple of 32 (default 640)")
    s.add_argument("--num-classes", type=guards.count, default=80, help="classes (default 80, as the references)")
    s.add_argument("--all", action="store_true", help="include the tiny test presets")
    s.set_defaults(func=cmd_models)

    d = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    s = d.add_parser("synth", help="write a deterministic synthetic tiny-object dataset (PNG + COCO JSON)")
    s.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    s.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty, writing over "
                                                            "its annotations.json, data.yaml and same-named images")
    s.add_argument("--num-images", type=guards.count, default=200, help="images to write (default 200)")
    s.add_argument("--image-size", type=guards.image_side, default=320, help="image side in px (default 320)")
    s.add_argument("--seed", type=guards.seed, default=0, help="random seed; the same seed writes the same dataset")
    s.add_argument("--min-size", type=float, default=2.0, help="smallest object side in px")
    s.add_argument("--max-size", type=float, default=32.0, help="largest object side in px")
    s.set_defaults(func=cmd_data_synth)

    s = sub.add_parser("assign", help="per-level positive accounting of a dataset with box-only assigners")
    s.add_argument("--data", required=True, help="data YAML (efpn's schema or an Ultralytics dataset YAML)")
    s.add_argument("--split", default="train",
                   help="split of the data YAML to account: train, val or test (default train)")
    s.add_argument("--protocol", nargs="+", default=["maxiou", "atss", "yolov5", "fcos"],
                   help="assigners: maxiou atss yolov5 fcos rpn (default: the first four)")
    s.add_argument("--image-size", type=guards.image_size, default=640,
                   help="resize the long side to this before assigning")
    s.add_argument("--limit", type=guards.at_least_one, default=None, help="only the first N images")
    s.add_argument("--json", default=None, help="write the accounting as JSON")
    s.add_argument("--plot", default=None, help="write a chart (.png or .html)")
    s.set_defaults(func=cmd_assign)

    s = sub.add_parser("train", help="train a detector (one CPU, one GPU, or torchrun across GPUs/nodes)")
    s.add_argument("--config", default=None, help="training recipe YAML (flags override its values)")
    try:
        from efpn.config import TrainConfig

        _add_dataclass_args(s, TrainConfig)
    except ImportError:  # pragma: no cover - the engine is part of the package
        pass
    s.set_defaults(func=cmd_train)

    add_val_parser(sub)

    add_diagnose_parser(sub)

    s = sub.add_parser("detect", aliases=["predict"], help="detect objects in images, videos or folders; writes drawn "
                       "images + JSON (alias: predict)")
    s.add_argument("source", nargs="+", help="images, videos, folders, glob patterns (quoted) or image lists (.txt)")
    s.add_argument("--weights", required=True, help="checkpoint .safetensors (with its .json card)")
    s.add_argument("--out", default="runs/detect", help="folder for the drawings and detections.json (default "
                                                       "runs/detect; a folder that is not empty gets -2, -3, ...)")
    s.add_argument("--score", type=guards.unit, default=0.25, help="score threshold in [0, 1]")
    s.add_argument("--iou", type=guards.unit, default=None,
                   help="NMS IoU threshold in [0, 1] (default: the checkpoint's own)")
    s.add_argument("--slice", type=guards.tile_size, default=None, metavar="SIZE",
                   help="sliced inference with SIZE x SIZE tiles (>= 8 px)")
    s.add_argument("--overlap", type=guards.fraction, default=None, help="tile overlap fraction in [0, 1) for --slice")
    s.add_argument("--image-size", type=guards.image_size, default=None,
                   help="network input's long side (default: the checkpoint's own)")
    s.add_argument("--device", type=guards.device, default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    s.add_argument("--max-det", type=guards.count, default=None,
                   help="at most this many detections per image (default: the checkpoint's)")
    s.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                   help="keep only these classes (names; or indices, when no class has that name)")
    s.add_argument("--save-txt", action="store_true",
                   help="also write labels/NAME.txt per image (labels/NAME/FRAME.txt per video frame): "
                        "'class cx cy w h score', normalised (YOLO)")
    s.add_argument("--no-draw", action="store_true", help="write no drawings (detections.json and labels only)")
    s.add_argument("--vid-stride", type=guards.count, default=1, help="videos: every N-th frame (default 1)")
    s.set_defaults(func=cmd_detect)

    s = sub.add_parser("export", help="export to ONNX, checked against onnxruntime")
    s.add_argument("--weights", required=True, help="checkpoint .safetensors (with its .json card)")
    s.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx only)")
    s.add_argument("--out", default=None, help="output file (default: the weights' path with .onnx)")
    s.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    s.add_argument("--image-size", type=guards.image_size, default=None,
                   help="input side of the exported graph (default: the checkpoint's own)")
    s.add_argument("--dynamic", action="store_true",
                   help="free batch, height and width (multiples of 32): feed the image as efpn does, resized to "
                        "--image-size on its long side and padded to a multiple of 32, for efpn's exact scores")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("ship", help="validate a run's best weights and write them to checkpoints/ with a model card")
    s.add_argument("run", help="run directory (runs/NAME)")
    s.add_argument("--name", required=True, help="checkpoint name, e.g. efpn_n_synth")
    s.add_argument("--out", default="checkpoints", help="folder of shipped checkpoints (default checkpoints)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint of that name")
    s.add_argument("--dataset", default="synth",
                   help="the training data's attribution in the card: synth, ssdd or sirst give their standard "
                        "text, anything else is recorded as written (default synth)")
    s.add_argument("--shared-root", default=None, help="record sanity images relative to this data folder")
    s.add_argument("--recipe", default=None, help="the training command, recorded in the card")
    s.add_argument("--storage", default="auto", choices=["auto", "fp32", "fp16", "int8"],
                   help="weight storage; auto = the smallest of int8 / fp16 whose AP is within 0.002 of fp32 and "
                        "AP50, AP_vt, AP_t within 0.005 (a size with 20 objects or more), else fp32 (explicit "
                        "choices are stored as asked, with their measured AP)")
    s.add_argument("--nms-iou", type=guards.unit_or_auto, default=None,
                   help="NMS IoU threshold stored in the card: a number in [0, 1], or auto = the best for AP on the "
                        "validation split (0.4 ... 0.8, the sweep recorded; default: the trained model's)")
    s.set_defaults(func=cmd_ship)

    s = sub.add_parser("report", help="regenerate the measured claims of both papers (tables + charts)")
    s.add_argument("--out", default="docs/claims", help="report folder; its README, claims.json and charts are "
                                                        "replaced together (default docs/claims)")
    s.add_argument("--shared-data", default=REPORT_DEFAULTS["--shared-data"],
                   help="folder with ssdd/, sirst/, visdrone-annotations/ for the assignment section; '' leaves the "
                        "section out (default ../shared/data)")
    s.add_argument("--checkpoints", default=REPORT_DEFAULTS["--checkpoints"],
                   help="folder of shipped checkpoints (default checkpoints)")
    s.add_argument("--visdrone-limit", type=guards.non_negative, default=200,
                   help="VisDrone annotation files to account (0: all)")
    s.add_argument("--runs", default=None, help="also read the cards and telemetry of the training runs in this "
                                                 "folder (ablation runs that are not shipped) and record them")
    s.add_argument("--records", default=None, help="folder of run records, kept in the repository so the runs' "
                                                    "numbers outlive their folders (default OUT/run_records)")
    s.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if hasattr(args, "overlap"):  # the tile overlap means something only with --slice: say so rather than ignore it
        if args.overlap is not None and args.slice is None:
            print("efpn: warning: --overlap applies to --slice tiles; without --slice it is ignored", file=sys.stderr)
        args.overlap = 0.2 if args.overlap is None else args.overlap
    keep_freed_memory()  # large activations reuse heap blocks instead of fresh mmaps (efpn.runtime)
    before = warnings.formatwarning
    warnings.formatwarning = _plain_warning  # a user reads the message, not efpn's source line that raised it
    try:
        args.func(args)
    except ValueError as e:
        _die(str(e))
    except OSError as e:  # a path that cannot be read or written (missing, read-only, permissions, disk full)
        _die(guards.describe_os_error(e))
    except KeyboardInterrupt:  # Ctrl-C: the command said what it kept (train: how to resume); no traceback
        print("efpn: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        warnings.formatwarning = before


def _plain_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   line: str | None = None) -> str:
    """A warning as the CLI prints it: ``efpn: warning: MESSAGE`` (Python's default adds the file, line number and
    source line of the code that warned, which mean nothing to a user and broke into progress bars)."""
    return f"efpn: warning: {message}\n"


if __name__ == "__main__":
    main()
