"""Inference latency of every main preset against Ultralytics and torchvision peers, in one interleaved run.

Measures, at ``--size`` x ``--size`` (640), batch 1, eval mode, ``torch.no_grad``, ``--threads`` CPU threads:

* ``network``: normalise + backbone + neck + head + decode (ours: :func:`peers.efpn_network`; Ultralytics:
  ``model(x)``, whose eval forward decodes; torchvision RetinaNet: transform + backbone + head);
* ``predict``: the above plus thresholding and NMS (ours: ``Detector.predict``; Ultralytics: ``model(x)`` +
  its ``non_max_suppression`` with our thresholds; torchvision: ``model([x])``);
* ``fused``: the same with BatchNorm folded into the convs on both sides (Ultralytics ``fuse()``, ours
  :func:`peers.fold_batchnorm`), for the YOLO pairs;
* memory layout: our models run CPU inference channels-last (``Detector.cpu_channels_last``), Ultralytics runs
  NCHW as shipped. The target rows compare the two as each ships; with ``--layouts both`` (default) each YOLO pair
  is also timed in the other layout (``+nchw``: ours with ``cpu_channels_last = False``; ``+cl``: Ultralytics'
  model and input converted to channels-last inside the timed call, as ours converts its input), and rows with
  both sides in the same layout say how much of a ratio is the layout;
* ``inspect`` overhead: ``efpn.inspect(model, image)`` against ``efpn.infer.predict.predict_image(model, image)``
  on the same uint8 image (both prepare the image; inspect also returns every internal).

Every case runs once per round, rounds alternate their order, and ratios are medians of per-round ratios (see
:mod:`harness`). Writes ``bench/results/latency.json`` and ``latency.md``.

Run from the repository root::

    .venv/bin/python bench/latency.py                 # all main presets, 10 rounds, 2 threads
    .venv/bin/python bench/latency.py --quick         # 4 rounds
    .venv/bin/python bench/latency.py --presets yolov8n yolov8n_sgdm --rounds 20
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import harness as H
import numpy as np
import peers as P
import torch

import efpn
from efpn.infer.predict import predict_image
from efpn.layers.sgdm import PATHS as SGDM_PATHS
from efpn.layers.sgdm import set_sgdm_path
from efpn.models.profile import count_gflops, count_params

#: (our preset, Ultralytics YAML, bound on ours / peer unfused, bound BN-folded; None: informational). SGDM's
#: bound is the cost of its FLOPs: +5 % over the static YOLOv8n it extends, both as built and BN-folded.
YOLO_PAIRS: tuple[tuple[str, str, float | None, float | None], ...] = (
    ("yolov8n", "yolov8n.yaml", 1.2, None),
    ("yolov8n_sgdm", "yolov8n.yaml", 1.05, 1.05),
    ("yolov8n_sgdm_full", "yolov8n.yaml", 1.05, 1.05),
    ("yolov8n_sgdm_lite", "yolov8n.yaml", 1.05, 1.05),
    ("yolov5n", "yolov5n.yaml", None, None),
)
#: (flagship preset, our static network it is held against, bound): the pretrained flagship carrying both papers
#: (MobileNetV2 + SGDM + E-FPN-BS) at most 2x our YOLOv8n, both as built and both BN-folded, same rounds.
FLAGSHIP: tuple[str, str, float] = ("efpn_mv2", "yolov8n", 2.0)
#: presets whose ``efpn.inspect`` overhead over plain prediction is a target
INSPECT_PRESETS: tuple[str, ...] = ("efpn_n", "yolov8n_sgdm")
INSPECT_BOUND = 1.1


@dataclass
class Entry:
    """One model under test: its display name, callables per measurement, and its size."""

    name: str
    network: Callable[[], object]
    predict: Callable[[], object]
    params_m: float
    gflops: float | None
    family: str  # "efpn" | "ultralytics" | "torchvision"


def _ours(name: str, image: torch.Tensor, num_classes: int, fused: bool = False, sgdm_path: str = "fast",
          nchw: bool = False) -> Entry:
    model = efpn.build_model(name, num_classes=num_classes).eval()
    set_sgdm_path(model, sgdm_path)  # type: ignore[arg-type]  # checked by the parser
    model.cpu_channels_last = not nchw  # an instance attribute: fold_batchnorm's copy keeps it
    params = count_params(model) / 1e6
    gflops = count_gflops(model, image.shape[-1])
    if fused:
        ref = P.efpn_network(model)(image)
        model = P.fold_batchnorm(model)
        torch.testing.assert_close(P.efpn_network(model)(image), ref, atol=1e-3, rtol=1e-3)
    net = P.efpn_network(model)
    label = name + ("+fused" if fused else "") + ("+nchw" if nchw else "")
    return Entry(label, lambda: net(image), lambda: model.predict(image), params, gflops, "efpn")


def _ultralytics(yaml_name: str, image: torch.Tensor, num_classes: int, fused: bool = False,
                 channels_last: bool = False) -> Entry:
    model = P.ultralytics_model(yaml_name, num_classes)
    params = count_params(model) / 1e6
    gflops = count_gflops(model, image.shape[-1])
    if fused:
        model = P.ultralytics_fused(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    pp = efpn.PostprocessConfig()
    predict = P.ultralytics_predict(model, pp.score_thresh, pp.nms_iou, pp.max_det)

    def prepared() -> torch.Tensor:  # the input's conversion is timed, as ours converts inside its forward
        return image.contiguous(memory_format=torch.channels_last) if channels_last else image

    label = "ultralytics-" + yaml_name.removesuffix(".yaml") + ("+fused" if fused else "") + ("+cl" if channels_last
                                                                                               else "")
    return Entry(label, lambda: model(prepared()), lambda: predict(prepared()), params, gflops, "ultralytics")


def _retinanet(image: torch.Tensor, num_classes: int) -> Entry:
    model = P.torchvision_retinanet(num_classes, image.shape[-1])
    net = P.torchvision_retinanet_network(model)
    return Entry("torchvision-retinanet_r50_fpn", lambda: net(image), lambda: model(list(image)),
                 count_params(model) / 1e6, None, "torchvision")


def target_entries(args: argparse.Namespace, image: torch.Tensor) -> tuple[list[Entry], list[str]]:
    """Phase 1 models: the YOLO pairs (plain, then fused), each ours next to its peer so a round times them
    back to back."""
    k = args.num_classes
    entries: list[Entry] = []
    notes: list[str] = []
    have_ultra, why = P.ultralytics_available()
    use_peers = have_ultra and not args.no_peers
    if not have_ultra and not args.no_peers:
        notes.append(f"Ultralytics unavailable ({why}); YOLO peers skipped. See bench/README.md.")
    pairs = [(ours, yaml_name) for ours, yaml_name, _, _ in YOLO_PAIRS if ours in args.presets]
    both = args.layouts == "both"
    for fused in ([False] if args.no_fused else [False, True]):
        done: set[str] = set()
        for ours, yaml_name in pairs:
            if use_peers and yaml_name not in done:
                entries.append(_ultralytics(yaml_name, image, k, fused=fused))
                if both:
                    entries.append(_ultralytics(yaml_name, image, k, fused=fused, channels_last=True))
                done.add(yaml_name)
            entries.append(_ours(ours, image, k, fused=fused, sgdm_path=args.sgdm_path))
            if both:
                entries.append(_ours(ours, image, k, fused=fused, sgdm_path=args.sgdm_path, nchw=True))
        flagship, reference, _ = FLAGSHIP
        if flagship in args.presets:
            if reference not in args.presets:
                entries.append(_ours(reference, image, k, fused=fused))
            entries.append(_ours(flagship, image, k, fused=fused, sgdm_path=args.sgdm_path))
    return entries, notes


def catalogue_entries(args: argparse.Namespace, image: torch.Tensor, skip: set[str]) -> list[Entry]:
    """Phase 2 models: every other requested preset, Ultralytics YOLOv8n as the common reference, and
    torchvision RetinaNet next to our ``fpn_r50``."""
    k = args.num_classes
    entries: list[Entry] = []
    if P.ultralytics_available()[0] and not args.no_peers:
        entries.append(_ultralytics("yolov8n.yaml", image, k))
    for name in args.presets:
        if name in skip:
            continue
        if name == "fpn_r50" and not args.no_peers:
            entries.append(_retinanet(image, k))
        entries.append(_ours(name, image, k, sgdm_path=args.sgdm_path))
    return entries


def network_predict_cases(entries: Sequence[Entry]) -> dict[str, Callable[[], Any]]:
    """``network:<name>`` and ``predict:<name>`` for every entry, in entry order."""
    cases: dict[str, Callable[[], Any]] = {}
    for e in entries:
        cases[f"network:{e.name}"] = e.network
        cases[f"predict:{e.name}"] = e.predict
    return cases


def inspect_cases(args: argparse.Namespace, image_u8: np.ndarray) -> dict[str, Callable[[], Any]]:
    """``plain:<preset>`` (``predict_image``) next to ``inspect:<preset>`` (``efpn.inspect``)."""
    cases: dict[str, Callable[[], Any]] = {}
    for name in INSPECT_PRESETS:
        if name not in args.presets:
            continue
        model = efpn.build_model(name, num_classes=args.num_classes).eval()
        cases[f"plain:{name}"] = lambda m=model: predict_image(m, image_u8)
        cases[f"inspect:{name}"] = lambda m=model: efpn.inspect(m, image_u8)
    return cases


def ratios_and_targets(
    times: dict[str, list[float]], catalogue: dict[str, list[float]], entries: Sequence[Entry]
) -> tuple[dict[str, dict[str, float]], list[H.Target]]:
    """Paired ratios (within the phase that timed both sides) for the YOLO pairs, plain and fused, and
    ``efpn.inspect`` (phase 1), and RetinaNet (phase 2); the target table rows."""
    ratios: dict[str, dict[str, float]] = {}
    targets: list[H.Target] = []

    def add(kind: str, ours: str, peer: str, bound: float | None, note: str = "",
            src: dict[str, list[float]] = times) -> None:
        a, b = f"{kind}:{ours}", f"{kind}:{peer}"
        if a not in src or b not in src:
            return
        r = H.Ratio.of(src[a], src[b])
        ratios[f"{a} / {b}"] = r.to_dict()
        ma, mb = H.Summary.of(src[a]).median, H.Summary.of(src[b]).median
        targets.append(H.Target(f"{kind} latency", ours, peer, ma, mb, "ms", r.paired, bound, note))

    names = {e.name for e in entries}
    med = {k: H.Summary.of(v).median for k, v in times.items()}
    for fused in ("", "+fused"):
        for ours, yaml_name, bound, fused_bound in YOLO_PAIRS:
            peer = "ultralytics-" + yaml_name.removesuffix(".yaml") + fused
            note = "Ultralytics yolov5n.yaml = YOLOv5u (anchor-free v8 head)" if ours == "yolov5n" else ""
            if ours + fused in names:
                for kind in ("network", "predict"):
                    add(kind, ours + fused, peer, fused_bound if fused else bound, note)
                    # the same pair with both sides in one layout: what of the ratio is the layout
                    add(kind, ours + fused, peer + "+cl", None, "both channels-last")
                    add(kind, ours + fused + "+nchw", peer, None, "both NCHW")
        # SGDM against the static network it extends, timed in the same rounds (what SGDM itself costs)
        for sgdm in [n for n, _, _, _ in YOLO_PAIRS if n.startswith("yolov8n_sgdm")]:
            if f"{sgdm}{fused}" in names and f"yolov8n{fused}" in names:
                for kind in ("network", "predict"):
                    add(kind, f"{sgdm}{fused}", f"yolov8n{fused}", None, "SGDM over our static YOLOv8n")
        flagship, reference, bound = FLAGSHIP
        if f"{flagship}{fused}" in names and f"{reference}{fused}" in names:
            for kind in ("network", "predict"):
                add(kind, f"{flagship}{fused}", f"{reference}{fused}", bound, "pretrained flagship over our YOLOv8n")
    for kind in ("network", "predict"):
        add(kind, "fpn_r50", "torchvision-retinanet_r50_fpn", None, "ours: p2-p6 (p2 = 4x the p3 cells); tv: p3-p7",
            src=catalogue)
    for name in INSPECT_PRESETS:
        a, b = f"inspect:{name}", f"plain:{name}"
        if a in times and b in times:
            r = H.Ratio.of(times[a], times[b])
            ratios[f"{a} / {b}"] = r.to_dict()
            targets.append(H.Target("inspect overhead", f"efpn.inspect({name})", "predict_image", med[a], med[b],
                                    "ms", r.paired, INSPECT_BOUND))
    return ratios, targets


def _model_rows(entries: Sequence[Entry], cases: dict[str, dict[str, float]], phase: str) -> list[list[str]]:
    ref = cases.get("network:ultralytics-yolov8n", {}).get("median")
    rows = []
    for e in entries:
        n, p = cases[f"network:{e.name}"], cases[f"predict:{e.name}"]
        rel = f"{n['median'] / ref:.2f}x" if ref else "—"
        rows.append([e.name, phase, f"{e.params_m:.2f}", "—" if e.gflops is None else f"{e.gflops:.1f}",
                     f"{n['median']:.1f} [{n['q1']:.1f}, {n['q3']:.1f}]",
                     f"{p['median']:.1f} [{p['q1']:.1f}, {p['q3']:.1f}]", rel])
    return rows


def render(payload: dict[str, Any], targets: Sequence[H.Target], phase1: Sequence[Entry],
           phase2: Sequence[Entry]) -> str:
    """The markdown report: targets first, then every model's latency, then inspect overhead."""
    a = payload["args"]
    rows = _model_rows(phase1, payload["cases"], "1") + _model_rows(phase2, payload["catalogue"], "2")
    parts = [
        "# Inference latency (CPU)",
        "",
        f"{a['size']}x{a['size']}, batch 1, eval, no_grad, {a['threads']} threads, {a['num_classes']} classes, "
        f"{'wall-clock' if a['clock'] == 'wall' else 'process CPU'} time. "
        f"Phase 1 (targets): {a['rounds']} interleaved rounds, each the best of {a['inner']} calls; phase 2 "
        f"(catalogue): {a['catalogue_rounds']} rounds of single calls. ms = median [IQR] over rounds; ratio = "
        "median of per-round ours/peer ratios.",
        "",
        f"Machine: {H.machine_line(payload['machine'])}",
        "",
        "## Targets",
        "",
        H.markdown_table(H.TARGET_HEADERS, H.target_rows(targets)),
        "",
        "## Every model",
        "",
        "`network` = normalise + backbone + neck + head + decode; `predict` = network + threshold + NMS (random "
        "weights give few candidates, so NMS itself is cheap here). GFLOPs count convs/matmuls only (elementwise "
        "work such as BN, activations and SGDM's kernel application is not in it). The last column compares with "
        "Ultralytics YOLOv8n timed in the same phase.",
        "",
        H.markdown_table(["model", "phase", "params (M)", "GFLOPs", "network ms", "predict ms",
                          "network / ultralytics-yolov8n"], rows),
    ]
    cases = payload["cases"]
    inspect_rows = []
    for name in INSPECT_PRESETS:
        if f"inspect:{name}" in cases:
            i, pl = cases[f"inspect:{name}"], cases[f"plain:{name}"]
            inspect_rows.append([name, f"{pl['median']:.1f}", f"{i['median']:.1f}",
                                 f"{payload['ratios'][f'inspect:{name} / plain:{name}']['paired']:.3f}x"])
    if inspect_rows:
        parts += ["", "## efpn.inspect overhead", "",
                  H.markdown_table(["preset", "predict_image ms", "inspect ms", "inspect / predict_image"],
                                   inspect_rows)]
    if payload["notes"]:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in payload["notes"]]
    return "\n".join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=list(efpn.MAIN_PRESETS), help="our presets (default: all main)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--size", type=int, default=640, help="square input side (default 640)")
    ap.add_argument("--num-classes", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=None, help="phase-1 (target) rounds (default 12, --quick 4)")
    ap.add_argument("--inner", type=int, default=None, help="phase-1 calls per round, best kept (default 3, --quick 2)")
    ap.add_argument("--catalogue-rounds", type=int, default=None,
                    help="phase-2 rounds over the remaining presets (default 2, --quick 1; 0 skips phase 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds before each phase (default 1)")
    ap.add_argument("--clock", choices=sorted(H.CLOCKS), default="wall",
                    help="wall: elapsed time (default); cpu: process CPU time, steadier on a busy machine "
                         "(use with --threads 1)")
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--no-peers", action="store_true", help="only our presets")
    ap.add_argument("--no-fused", action="store_true", help="skip the BN-folded rows")
    ap.add_argument("--layouts", choices=("both", "default"), default="both",
                    help="both (default): also time each YOLO pair in the other memory layout (ours NCHW, "
                         "Ultralytics channels-last); default: each side only as it ships")
    ap.add_argument("--sgdm-path", choices=SGDM_PATHS, default="fast",
                    help="SGDM execution path of our models (default fast; reference: module by module)")
    ap.add_argument("--seed", type=int, default=0, help="weights and image seed")
    ap.add_argument("--out", default="latency", help="result name under bench/results (default latency)")
    args = ap.parse_args(argv)
    unknown = [p for p in args.presets if p not in efpn.PRESETS]
    if unknown:
        ap.error(f"unknown presets {unknown}; choose from {list(efpn.MAIN_PRESETS)}")
    if args.rounds is None:
        args.rounds = 4 if args.quick else 12
    if args.inner is None:
        args.inner = 2 if args.quick else 3
    if args.catalogue_rounds is None:
        args.catalogue_rounds = 1 if args.quick else 2
    return args


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON payload (also written to ``bench/results/<out>.json``)."""
    args = parse_args(argv)
    machine = H.begin(args.threads, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    image = torch.rand(1, 3, args.size, args.size, generator=gen)  # (1, 3, S, S) in [0, 1]
    image_u8 = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (S, S, 3) RGB
    with torch.no_grad():
        H.log("phase 1: building the YOLO pairs and inspect cases ...")
        phase1, notes = target_entries(args, image)
        cases = {**network_predict_cases(phase1), **inspect_cases(args, image_u8)}
        H.log(f"phase 1: {len(cases)} cases x {args.rounds} rounds x best of {args.inner}")
        times = H.interleaved(cases, args.rounds, args.warmup, args.inner, progress=H.log, clock=args.clock)
        del cases
        phase2: list[Entry] = []
        catalogue: dict[str, list[float]] = {}
        if args.catalogue_rounds > 0:
            skip = {e.name for e in phase1 if e.family == "efpn"}
            phase2 = catalogue_entries(args, image, skip)
            H.log(f"phase 2: {len(phase2)} models x {args.catalogue_rounds} rounds")
            catalogue = H.interleaved(network_predict_cases(phase2), args.catalogue_rounds, args.warmup,
                                      progress=H.log, clock=args.clock)
    ratios, targets = ratios_and_targets(times, catalogue, phase1)
    payload: dict[str, Any] = {
        "benchmark": "latency",
        "args": vars(args),
        "machine": machine,
        "cases": {k: H.Summary.of(v).to_dict() for k, v in times.items()},
        "catalogue": {k: H.Summary.of(v).to_dict() for k, v in catalogue.items()},
        "samples_ms": {k: [round(x, 3) for x in v] for k, v in {**catalogue, **times}.items()},
        "models": {e.name: {"params_m": round(e.params_m, 4), "gflops": e.gflops and round(e.gflops, 3),
                            "family": e.family} for e in [*phase1, *phase2]},
        "ratios": ratios,
        "targets": [t.to_dict() for t in targets],
        "notes": notes,
    }
    markdown = render(payload, targets, phase1, phase2)
    H.write_results(args.out, payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    run(sys.argv[1:])
