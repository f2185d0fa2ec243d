"""The studio in a real browser: upload -> detections and every internal rendered; inspect overhead; memory.

Four measurements, one result file (``bench/results/studio.json`` / ``studio.md``):

1. **Latency in the browser.** ``streamlit run app/streamlit_app.py`` on a free 127.0.0.1 port with the
   checkpoint ``make app`` opens, driven by Debian's Chromium through Playwright. Every repetition opens a fresh
   session (its own browser context), leaves it idle ``--think`` seconds (a user choosing a file; without the
   pause the upload waits ~2 s behind the fresh page's own start-up work), uploads a new 640x640 synthetic PNG
   (a different synthetic index each time, so no cache holds it) on the Detect page and times, on the wall
   clock of this process,

   * upload action -> the Detect page's run finished with its detections figure showing the new image AND
     its "Inside the network" overview drawn: detections and positive anchors per level, the CEM fused
     maps, the FBSM gates and the dynamic-kernel entropy maps of the same forward (every picture loaded).
     This is "upload -> detections and all internals rendered" (target <= 1 s);
   * then each detail page, Pyramid, Gates and Kernels: click in the sidebar -> that page's run finished and
     all its figures drawn (reported apart, with the sum of the whole walk; each an interaction after the first
     inspection, target <= 1 s);
   * then the Attribution page, which explains detection #0 with LayerGradCAM on every level as it opens (the
     studio's default attribution, target <= 5 s).

   "Rendered" is read from the DOM: ``stApp``'s ``data-test-script-state`` went back to ``notRunning`` after
   the action (a MutationObserver counts those transitions), the page's ``<h1>`` is there, no element is
   stale (``data-stale="true"``), every ``stPlotlyChart`` holds a drawn ``svg.main-svg`` with its traces,
   every ``<img>`` of the main area has loaded, and, for Detect, the figure's ``<image>`` is no longer the
   picture shown before the upload and the overview's pictures are there.
2. **inspect overhead**, in this process: ``efpn.inspect(model, image)`` against
   ``efpn.infer.predict.predict_image(model, image)`` on the same 640 px image for the served checkpoint
   and ``yolov8n_sgdm`` (random weights, 3 classes); interleaved rounds, median of per-round
   ratios (:mod:`harness`); target <= 1.1x.
3. **Memory** of the ``streamlit`` server process (a second, fresh server): RSS idle after start (no model
   loaded yet), after one session uploaded an image and rendered Detect, and with five sessions open at once
   (the first one plus four more that upload concurrently); per-session increment = (five - one) / 4; peak RSS
   (``VmHWM``) of the server's lifetime.
4. **Server work of two interactions**, in this process: the miss table (matching and diagnosing every missed
   object on a cached inspection) on the bundled samples with their ground truth, against a 0.3 s budget; and a
   checkpoint switch (another bundled checkpoint loaded from disk, then its first inspection), against 2 s.

Checkpoint: the one `make app` opens (``checkpoints/efpn_mv2_sirst.safetensors``, else ``efpn_n_synth``)
when it exists, else ``efpn_n`` with random weights (3 classes) saved in a temporary folder (random weights time
the same network; the results say which).

Run from the repository root (needs ``/usr/bin/chromium`` and the ``playwright`` Python package; Playwright's
own browser download is never used)::

    .venv/bin/python bench/studio.py                  # 5 timed repetitions after 1 warm-up
    .venv/bin/python bench/studio.py --quick          # 3 repetitions, fewer inspect rounds
    .venv/bin/python bench/studio.py --reps 1 --warmup 0 --skip-memory    # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness as H
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the studio is the `app` package at the repository root
    sys.path.insert(0, str(REPO))

from studio_browser import (  # noqa: E402  (bench/ is on sys.path when this runs)
    CHROMIUM,
    IMAGE_INDEX,
    INTERNAL_PAGES,
    REACH_STEP,
    STEPS,
    OtherLoad,
    latency_phase,
    memory_phase,
    resolve_checkpoint,
)

import efpn  # noqa: E402
from efpn.data.synthetic import make_synthetic_sample  # noqa: E402
from efpn.infer.predict import predict_image  # noqa: E402

#: upload -> detections and all internals rendered, seconds (and every other page of the walk)
TARGET_S = 1.0
#: the Attribution page's default (LayerGradCAM on every level) is computed when the page opens: its own budget
PAGE_BUDGET_S: dict[str, float] = {"Attribution": 5.0}
#: efpn.explain.inspection / predict_image
INSPECT_BOUND = 1.1
INSPECT_PRESETS: tuple[str, ...] = ("checkpoint", "yolov8n_sgdm")  # "checkpoint": the one served


# ---------------------------------------------------------------------------------------------------- inspect


def inspect_phase(args: argparse.Namespace, checkpoint: str) -> dict[str, Any]:
    """``efpn.inspect`` vs ``predict_image`` on the same 640 px uint8 image, interleaved."""
    image = make_synthetic_sample(0, IMAGE_INDEX, args.size).image
    cases = {}
    with torch.no_grad():
        for name in INSPECT_PRESETS:
            if name == "checkpoint":  # the served checkpoint
                model = efpn.load_model(checkpoint).eval()
            else:
                torch.manual_seed(0)
                model = efpn.build_model(name, num_classes=3).eval()
            cases[f"plain:{name}"] = lambda m=model: predict_image(m, image)
            cases[f"inspect:{name}"] = lambda m=model: efpn.inspect(m, image)
        times = H.interleaved(cases, args.inspect_rounds, warmup=1, inner=args.inner, progress=H.log)
    out: dict[str, Any] = {"cases_ms": {k: H.Summary.of(v).to_dict() for k, v in times.items()},
                           "samples_ms": {k: [round(x, 3) for x in v] for k, v in times.items()}, "ratios": {}}
    for name in INSPECT_PRESETS:
        out["ratios"][name] = H.Ratio.of(times[f"inspect:{name}"], times[f"plain:{name}"]).to_dict()
    return out


# ---------------------------------------------------------------------------------------------------- server work

#: server-side budgets (s): the miss table's addition to an inspection, and a checkpoint switch
MISS_TABLE_BUDGET_S = 0.3
SWITCH_BUDGET_S = 2.0


def server_phase(args: argparse.Namespace, checkpoint: str) -> dict[str, Any]:
    """The server's part of two interactions, in this process (no browser): the miss table (match + diagnose every
    missed object on a cached inspection, what Detect adds to its run) against the inspection itself, on the
    bundled samples with their ground truth; and a checkpoint switch (load another bundled checkpoint from disk and
    run its first inspection, nothing cached), interleaved rounds."""
    from app.loaders import load_samples
    from efpn.explain import diagnose_image

    model = efpn.load_model(checkpoint).eval()
    dataset = ((efpn.read_card(checkpoint) or {}).get("data") or {}).get("dataset")
    samples, _ = load_samples(dataset if isinstance(dataset, str) else None)
    items = [(np.asarray(Image.open(smp.path).convert("RGB")), smp.boxes, smp.labels) for smp in samples]
    if not items:  # no bundled samples for this checkpoint: a synthetic scene with its boxes
        smp = make_synthetic_sample(0, IMAGE_INDEX, args.size)
        items = [(smp.image, smp.boxes, smp.labels)]
    out: dict[str, Any] = {"images": len(items)}
    inspect_ms, miss_ms, misses = [], [], 0
    with torch.no_grad():
        for rgb, boxes, labels in items:
            for _ in range(args.inner + 1):
                t0 = time.perf_counter()
                ins = efpn.inspect(model, rgb)
                t1 = time.perf_counter()
                diag = diagnose_image(model, ins, boxes, labels)
                t2 = time.perf_counter()
            inspect_ms.append((t1 - t0) * 1e3)  # the last of the repeats: warm caches, as in a live session
            miss_ms.append((t2 - t1) * 1e3)
            misses += len(diag.misses)
    out["inspect_ms"] = H.Summary.of(inspect_ms).to_dict()
    out["miss_table_ms"] = H.Summary.of(miss_ms).to_dict()
    out["misses_diagnosed"] = misses
    served = Path(checkpoint).resolve()
    others = sorted(p for p in (REPO / "checkpoints").glob("*.safetensors") if p.resolve() != served)
    if others:
        other = str(others[0])
        rgb = items[0][0]

        def switch() -> None:
            fresh = efpn.load_model(other).eval()
            efpn.inspect(fresh, rgb)

        with torch.no_grad():
            times = H.interleaved({"switch": switch}, args.inspect_rounds, warmup=1, inner=1, progress=H.log)
        out["switch_to"] = Path(other).name
        out["switch_ms"] = H.Summary.of(times["switch"]).to_dict()
    return out


# ---------------------------------------------------------------------------------------------------- report


def _fmt_s(d: dict[str, float]) -> str:
    return f"median {d['median']:.2f} s · p90 {d['p90']:.2f} s (n={d['n']})"


def _met(value: float, bound: float) -> str:
    return "yes" if value < bound else "**no**"


def build_targets(payload: dict[str, Any]) -> list[H.Target]:
    """Rows for run_all's summary: studio time against its budget, inspect overhead against 1.1x."""
    targets: list[H.Target] = []
    lat = payload.get("latency")
    if lat:
        rows = [("Detect", "upload -> detections + internals (Detect page)", 1.0)]
        rows += [(page, f"open {page} after the inspection" + (" (LayerGradCAM on every level)"
                                                                if page == "Attribution" else ""), 1.0)
                 for page in INTERNAL_PAGES]
        rows += [(REACH_STEP, "open the Pyramid page's gradient reach (two backward passes)", None)]
        rows += [("total", f"upload -> Detect + {' + '.join(STEPS)} pages", None)]
        for key, what, bound in rows:
            med = lat["summary_s"][key]["median"] * 1e3
            limit = PAGE_BUDGET_S.get(key, TARGET_S)
            targets.append(H.Target(f"studio {what} (median, browser)", "studio", f"{limit:g} s budget", med,
                                    limit * 1e3, "ms", med / (limit * 1e3), bound, f"ratio = time / {limit:g} s"))
    ins = payload.get("inspect")
    if ins:
        for name, r in ins["ratios"].items():
            a, b = ins["cases_ms"][f"inspect:{name}"]["median"], ins["cases_ms"][f"plain:{name}"]["median"]
            targets.append(H.Target("inspect overhead", f"efpn.inspect({name})", "predict_image", a, b, "ms",
                                    r["paired"], INSPECT_BOUND))
    srv = payload.get("server")
    if srv:
        med = srv["miss_table_ms"]["median"]
        targets.append(H.Target("miss table added to an inspection (server)", "diagnose_image",
                                f"{MISS_TABLE_BUDGET_S:g} s budget", med, MISS_TABLE_BUDGET_S * 1e3, "ms",
                                med / (MISS_TABLE_BUDGET_S * 1e3), 1.0,
                                f"inspection itself {srv['inspect_ms']['median']:.0f} ms; ratio = time / budget"))
        if "switch_ms" in srv:
            med = srv["switch_ms"]["median"]
            targets.append(H.Target("checkpoint switch: load + first inspection (server)", srv["switch_to"],
                                    f"{SWITCH_BUDGET_S:g} s budget", med, SWITCH_BUDGET_S * 1e3, "ms",
                                    med / (SWITCH_BUDGET_S * 1e3), 1.0, "ratio = time / budget"))
    return targets


def render(payload: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    lat, ins, mem = payload.get("latency"), payload.get("inspect"), payload.get("memory")
    if lat:
        s = lat["summary_s"]
        rows.append(["**upload -> detections + all internals rendered** (Detect page: boxes, detections and "
                     "positive anchors per level, CEM fused maps, FBSM gates, kernel entropy maps)",
                     _fmt_s(s["Detect"]), f"< {TARGET_S:g} s",
                     f"median {_met(s['Detect']['median'], TARGET_S)}, p90 {_met(s['Detect']['p90'], TARGET_S)}"])
        for t in STEPS:
            what = ("then open its gradient reach (click -> two backward passes -> bars drawn)" if t == REACH_STEP
                    else "then the Attribution page (click -> LayerGradCAM on every level for detection #0 -> "
                         "maps and charts drawn)" if t == "Attribution"
                    else f"then the {t} detail page (click -> figures drawn)")
            budget = PAGE_BUDGET_S.get(t, TARGET_S)  # each an interaction after the first inspection
            rows.append([what, _fmt_s(s[t]), f"< {budget:g} s",
                         f"median {_met(s[t]['median'], budget)}, p90 {_met(s[t]['p90'], budget)}"])
        rows.append([f"whole walk: Detect + {' + '.join(STEPS)}", _fmt_s(s["total"]), "—", "—"])
    if ins:
        for name, r in ins["ratios"].items():
            a, b = ins["cases_ms"][f"inspect:{name}"]["median"], ins["cases_ms"][f"plain:{name}"]["median"]
            rows.append([f"efpn.explain.inspection / predict_image, {name}",
                         f"{r['paired']:.3f}x (IQR {r['q1']:.3f}-{r['q3']:.3f}; {a:.0f} vs {b:.0f} ms)",
                         f"<= {INSPECT_BOUND:g}x", "yes" if r["paired"] <= INSPECT_BOUND else "**no**"])
    srv = payload.get("server")
    if srv:
        rows.append([f"miss table (match + diagnose every miss) added to an inspection, server, {srv['images']} "
                     f"bundled images ({srv['misses_diagnosed']} misses)",
                     f"median {srv['miss_table_ms']['median']:.0f} ms "
                     f"(inspection {srv['inspect_ms']['median']:.0f} ms)",
                     f"<= {MISS_TABLE_BUDGET_S:g} s", _met(srv["miss_table_ms"]["median"] / 1e3, MISS_TABLE_BUDGET_S)])
        if "switch_ms" in srv:
            rows.append([f"checkpoint switch to {srv['switch_to']}: load from disk + first inspection, server",
                         f"median {srv['switch_ms']['median']:.0f} ms", f"<= {SWITCH_BUDGET_S:g} s",
                         _met(srv["switch_ms"]["median"] / 1e3, SWITCH_BUDGET_S)])
    if mem:
        n = mem["sessions"]
        rows += [
            ["server RSS idle after start (no model loaded yet)", f"{mem['idle']['rss']:.0f} MiB", "—", "—"],
            ["server RSS after 1 session (upload + Detect)", f"{mem['one_session']['rss']:.0f} MiB", "—", "—"],
            [f"server RSS with {n} concurrent sessions", f"{mem['all_sessions']['rss']:.0f} MiB", "—", "—"],
            [f"per-session increment (({n} - 1 sessions) / {max(1, n - 1)})",
             f"{mem['per_session_increment_mib']:.1f} MiB", "—", "—"],
            ["server peak RSS (VmHWM)", f"{mem['all_sessions'].get('peak', float('nan')):.0f} MiB", "—", "—"],
            [f"{mem['concurrent_uploads']} concurrent uploads -> all Detect pages rendered",
             f"{mem['concurrent_uploads_all_rendered_s']:.2f} s", "—", "—"],
            ["server RSS 5 s after all sessions closed", f"{mem['after_close']['rss']:.0f} MiB", "—", "—"],
        ]
    a = payload["args"]
    parts = [
        "# Studio: upload to rendered internals, inspect overhead, memory",
        "",
        f"Machine: {H.machine_line(payload['machine'])}.",
        f"Checkpoint: {payload['checkpoint']['kind']}; the network runs at {payload['checkpoint']['network_input']} px "
        f"long side (its config's image_size). Image: {a['size']}x{a['size']} synthetic PNG, new per "
        f"repetition; CPU; browser: Chromium {lat['chromium'] if lat else 'n/a'} (headless) via Playwright; "
        f"{a['reps']} timed repetitions after {a['warmup']} warm-up, each in a fresh session left idle "
        f"{a['think']:g} s before the upload; the detail pages are clicked right after each other.",
        "",
        H.markdown_table(["what", "value", "target", "met?"], rows),
        "",
    ]
    if lat:
        det = sorted({r["detections"] for r in lat["repetitions"]}, key=lambda x: (x is None, x))
        parts += [
            f"Detections shown per image: {det}. The Pyramid page's gradient reach, opened after the page (two "
            f"backward passes; needs GT or detections), drew its bars, per image: {lat['pyramid_gradient_reach']}. "
            f"The Attribution page explained detection #0 (its LayerGradCAM maps shown), per image: "
            f"{lat.get('attribution_explained')}.",
            "",
            H.markdown_table(["image", "Detect s", *[f"{t} s" for t in STEPS], "total s", "detections"],
                             [[r["image"] + (" (warm-up)" if r["warmup"] else ""), f"{r['Detect']:.2f}",
                               *[f"{r[t]:.2f}" for t in STEPS], f"{r['total']:.2f}", str(r["detections"])]
                              for r in lat["repetitions"]]),
            "",
        ]
        split = lat.get("breakdown_median_s") or {}
        if split:
            fwd = lat.get("detect_forward_ms_median")
            parts += [
                "Where the time goes (medians over the timed repetitions, seconds; from the browser's log of the "
                "app's script state). The middle column is the script run as the browser sees it: the page script "
                "on the server plus sending its elements and the browser drawing them as they arrive.",
                "",
                H.markdown_table(["step", "action -> run starts", "run (server + transfer + drawing)",
                                  "run end -> drawn"],
                                 [[k, f"{v['to_run']:.2f}", f"{v['run']:.2f}", f"{v['after_run']:.2f}"]
                                  for k, v in split.items()]),
                "",
                f"Forward time the Detect page reports (server, inside its run): median "
                f"{'n/a' if fwd is None else f'{fwd:.0f} ms'}.",
                "",
            ]
    if payload.get("notes"):
        parts += ["Notes:", "", *[f"- {n}" for n in payload["notes"]], ""]
    parts.append(f"Command: `{payload['command']}`")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=None, help="timed browser repetitions (default 5, --quick 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed browser repetitions first (default 1)")
    ap.add_argument("--size", type=int, default=640, help="square image side (default 640)")
    ap.add_argument("--checkpoint", default=None, help="serve this .safetensors (default: bundled, else random efpn_n)")
    ap.add_argument("--random-weights", action="store_true",
                    help="serve a random-weight efpn_n at the preset's 640 px input even if the bundled one exists")
    ap.add_argument("--sessions", type=int, default=5, help="concurrent sessions of the memory phase (default 5)")
    ap.add_argument("--inspect-rounds", type=int, default=None, help="inspect rounds (default 10, --quick 4)")
    ap.add_argument("--inner", type=int, default=2, help="inspect calls per round, best kept (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the inspect phase (default 2)")
    ap.add_argument("--think", type=float, default=3.0,
                    help="seconds a new session stays idle before its upload, as a user choosing a file "
                         "(default 3; with 0 the upload queues behind the fresh page's start-up work)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds before each memory reading (default 5)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for one page (default 180)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-inspect", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-server", action="store_true", help="skip the in-process miss-table and switch timings")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--out", default="studio", help="result name (default studio)")
    ap.add_argument("--out-dir", type=Path, default=H.RESULTS_DIR, help="result folder (default bench/results)")
    args = ap.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    if args.inspect_rounds is None:
        args.inspect_rounds = 4 if args.quick else 10
    if args.reps < 1 or args.sessions < 1:
        ap.error("--reps and --sessions must be at least 1")
    return args


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    notes: list[str] = []
    missing = [] if CHROMIUM.is_file() else [f"Chromium at {CHROMIUM} (apt-get install -y chromium)"]
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright Python package")
    if missing and not (args.skip_latency and args.skip_memory):
        notes.append(f"Browser and memory phases skipped: no {' and no '.join(missing)}.")
        H.log(notes[-1])
        args.skip_latency = args.skip_memory = True
    H.set_threads(args.threads)
    machine = H.machine_info(args.threads)
    try:
        from importlib.metadata import version

        machine["streamlit"] = version("streamlit")
        machine["playwright"] = version("playwright")
    except Exception:
        pass
    arg_values = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload: dict[str, Any] = {"benchmark": "studio", "args": arg_values, "machine": machine,
                               "command": shlex.join([".venv/bin/python", "bench/studio.py", *(argv or [])])}
    with tempfile.TemporaryDirectory(prefix="efpn-bench-studio-") as tmp_name:
        tmp = Path(tmp_name)
        payload["checkpoint"] = resolve_checkpoint(args.checkpoint, tmp, args.random_weights)
        H.log(f"checkpoint: {payload['checkpoint']['kind']} ({payload['checkpoint']['path']})")
        others: dict[str, float | None] = {}
        if not args.skip_latency:
            load = OtherLoad().start()
            payload["latency"] = latency_phase(args, payload["checkpoint"]["path"], tmp)
            others["latency"] = load.cores()
        if not args.skip_memory:
            load = OtherLoad().start()
            payload["memory"] = memory_phase(args, payload["checkpoint"]["path"], tmp)
            others["memory"] = load.cores()
        if not args.skip_server:
            H.log("server work: miss table and checkpoint switch")
            load = OtherLoad().start()
            payload["server"] = server_phase(args, payload["checkpoint"]["path"])
            others["server"] = load.cores()
        if not args.skip_inspect:
            H.log(f"inspect overhead: {args.inspect_rounds} rounds x best of {args.inner}")
            load = OtherLoad().start()
            payload["inspect"] = inspect_phase(args, payload["checkpoint"]["path"])
            others["inspect"] = load.cores()
        payload["other_processes_cpu_cores"] = others
    if "random" in payload["checkpoint"]["kind"] and "latency" in payload:
        notes.append("Random weights: the network costs the same as trained weights, but few boxes pass the 0.25 "
                     "score threshold, so the per-box work (drawing, tables) and the Pyramid page's gradient reach "
                     "(skipped without GT or detections) may be lighter than with a trained checkpoint.")
    busy = {k: v for k, v in payload["other_processes_cpu_cores"].items() if v is not None}
    if busy:
        cpus = machine.get("logical_cpus")
        text = ", ".join(f"{k} phase {v:.2f}" for k, v in busy.items())
        notes.append(f"CPU used by other processes (not this benchmark, its server or Chromium) while it ran, in "
                     f"cores of {cpus}: {text}." + (" The machine was shared: absolute times are inflated (the "
                                                    "inspect ratio is paired and less affected)."
                                                    if max(busy.values()) > 0.25 else ""))
    if "latency" in payload:
        notes.append("Timed on this process's wall clock from the action (set_input_files / sidebar click) until "
                     "the DOM condition held (polled every animation frame): script run finished, no stale element, "
                     "every plotly chart drawn, every picture loaded (the Kernels picker's included); Detect also "
                     "needs its figure's image to be the uploaded one and its 'Inside the network' overview drawn.")
    payload["notes"] = notes
    payload["targets"] = [t.to_dict() for t in build_targets(payload)]
    markdown = render(payload)
    H.write_results(args.out, payload, markdown, args.out_dir)
    print(markdown)
    return payload


if __name__ == "__main__":
    run(sys.argv[1:])
