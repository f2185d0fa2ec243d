"""Run every benchmark and write ``bench/results/summary.md`` (+ ``summary.json``): one table of ratios.

Each benchmark runs in its own process (clean thread settings and memory), writes its own
``bench/results/<name>.json`` / ``.md``, and this script collects their target rows:

* ``latency`` — inference latency at 640, ``--threads`` threads, wall clock (the headline);
* ``latency_cpu1`` — the target pairs again with one thread and process CPU time: on a shared machine this
  is the steadier cross-check of the same ratios (skip with ``--no-cpu-check``);
* ``train_throughput`` — training step time against Ultralytics, and ``efpn.engine.train.train`` end to end;
* ``studio`` — the studio in Chromium: upload -> detections and internals rendered and each detail page against a
  1 s budget, ``efpn.inspect`` overhead, server memory with 5 sessions (skip with ``--skip-studio``).

Run from the repository root::

    .venv/bin/python bench/run_all.py            # latency + training: ~11 min on a 2-vCPU VM, plus the studio
    .venv/bin/python bench/run_all.py --quick    # ~4 min plus the studio
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness as H

BENCH_DIR = Path(__file__).resolve().parent


def _run(script: str, args: Sequence[str], env: dict[str, str]) -> bool:
    """Run ``bench/<script>`` with this interpreter; False (and a message) if it failed."""
    cmd = [sys.executable, str(BENCH_DIR / script), *args]
    H.log("$ " + " ".join(cmd))
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL, env=env)
    H.log(f"  -> exit {rc} after {time.perf_counter() - t0:.0f} s")
    return rc == 0


def _load(name: str) -> dict[str, Any] | None:
    path = H.RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _rows(payload: dict[str, Any], label: str) -> list[list[str]]:
    targets = [H.Target(**{k: v for k, v in t.items() if k != "met"}) for t in payload.get("targets", [])]
    rows = H.target_rows(targets)
    for r in rows:
        r[0] = f"{label}: {r[0]}"
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions everywhere")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads for the headline runs (default 2)")
    ap.add_argument("--device", default="cpu", help="device of the training benchmark (cpu or cuda)")
    ap.add_argument("--amp", default="off", help="training autocast: off, bf16 or fp16 (cuda)")
    ap.add_argument("--channels-last", action="store_true", help="training in channels_last")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-studio", action="store_true")
    ap.add_argument("--no-cpu-check", action="store_true", help="skip the 1-thread CPU-time latency cross-check")
    ap.add_argument("--omp-wait-policy", default="passive", choices=["passive", "active", "inherit"],
                    help="OMP_WAIT_POLICY for the benchmark processes (default passive: on a shared machine a "
                         "spinning thread holds the core its descheduled partner needs; inherit: leave as is)")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    if args.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    quick = ["--quick"] if args.quick else []
    threads = ["--threads", str(args.threads)]
    ran: dict[str, bool] = {}
    if not args.skip_latency:
        ran["latency"] = _run("latency.py", [*quick, *threads], env)
        if not args.no_cpu_check:
            ran["latency_cpu1"] = _run("latency.py", [
                *quick, "--threads", "1", "--clock", "cpu", "--catalogue-rounds", "0", "--no-fused",
                "--presets", "yolov8n", "yolov8n_sgdm", "yolov5n", "efpn_n", "--out", "latency_cpu1"], env)
    if not args.skip_train:
        train_args = [*quick, *threads, "--device", args.device, "--amp", args.amp]
        if args.channels_last:
            train_args.append("--channels-last")
        ran["train_throughput"] = _run("train_throughput.py", train_args, env)
    if not args.skip_studio:
        ran["studio"] = _run("studio.py", [*quick, *threads], env)

    labels = {"latency": f"latency ({args.threads} thr, wall)", "latency_cpu1": "latency (1 thr, CPU time)",
              "train_throughput": "training", "studio": "studio"}
    rows: list[list[str]] = []
    sections: list[str] = []
    machine: dict[str, Any] | None = None
    for name, label in labels.items():
        payload = _load(name)
        if payload is None:
            continue
        stale = "" if ran.get(name) else " (from an earlier run)"
        rows += _rows(payload, label + stale)
        machine = machine or payload.get("machine")
        sections.append(f"- [{name}.md]({name}.md){stale}: machine {H.machine_line(payload['machine'])}")
    failed = [n for n, ok in ran.items() if not ok]
    md = [
        "# Benchmark summary",
        "",
        "Ratios are ours / peer, medians of per-round ratios from interleaved runs in one process (lower is "
        "better; for training, step time). `—`: informational, no target.",
        "",
        H.markdown_table(H.TARGET_HEADERS, rows) if rows else "(no results)",
        "",
        "Details:",
        "",
        *sections,
    ]
    if failed:
        md += ["", f"Failed this run: {', '.join(failed)} (see stderr)."]
    text = "\n".join(md)
    H.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (H.RESULTS_DIR / "summary.md").write_text(text + "\n", encoding="utf-8")
    (H.RESULTS_DIR / "summary.json").write_text(json.dumps({"rows": rows, "ran": ran}, indent=1) + "\n",
                                                encoding="utf-8")
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
