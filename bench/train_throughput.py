"""Training throughput of our detectors against Ultralytics YOLOv8n on the same synthetic batches.

Two measurements:

1. **Hand loop** (the comparison): one training step = ``zero_grad -> forward + loss -> backward ->
   optimizer.step`` (SGD, momentum 0.937, Nesterov, weight decay 5e-4 on both sides), on batches decoded once
   into memory, so data loading does not enter. Ours: ``loss = sum(model(images, targets).values())``;
   Ultralytics: ``DetectionModel("yolov8n.yaml", nc=K)`` with ``model.args = get_cfg(DEFAULT_CFG)`` and
   ``model.loss(batch)`` (its own TAL assigner, BCE + CIoU + DFL), the batch dict holding ``img``,
   ``batch_idx``, ``cls`` and normalised centre-xywh ``bboxes`` of the very same boxes. Steps of all models are
   interleaved (one step each per round, order alternating) on the same batch; the first ``--warmup`` rounds
   are dropped and the median step time gives images/s. Forward+loss, backward and optimizer times are also
   recorded separately.
2. **End to end** (ours only): ``efpn.engine.train.train`` with its DataLoader, augmentation, EMA, gradient
   clipping and telemetry, ``log_every=1``; images/s is the median of the per-step ``img_per_s`` it logs in
   ``metrics.csv`` (first steps dropped). It shows what the rest of the training loop costs.

The data: ``efpn.data.synthetic.write_synthetic_dataset`` into a temporary folder (``--num-images`` images of
``--imgsz`` px, 3 classes), removed afterwards.

GPU: ``--device cuda --amp bf16 --channels-last`` applies the same autocast dtype and memory format to both
sides, synchronises around every timed phase, and samples GPU utilisation every 0.1 s during the hand loop
(``torch.cuda.utilization()``, which needs ``nvidia-ml-py``; else ``nvidia-smi``).

Run from the repository root::

    .venv/bin/python bench/train_throughput.py                         # CPU, 320 px, batch 8, 2 threads
    .venv/bin/python bench/train_throughput.py --quick
    .venv/bin/python bench/train_throughput.py --device cuda --amp bf16 --channels-last --imgsz 640 --batch 32
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness as H
import peers as P
import torch
from torch import Tensor, nn

import efpn
from efpn.data.dataset import DetectionDataset, collate
from efpn.data.splits import load_split
from efpn.data.synthetic import write_synthetic_dataset
from efpn.layers.sgdm import PATHS as SGDM_PATHS
from efpn.layers.sgdm import set_sgdm_path

Batch = tuple[Tensor, list[dict[str, Tensor]]]
AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------------- data


def synthetic_batches(root: Path, args: argparse.Namespace) -> tuple[list[Batch], int, Path]:
    """Write the synthetic set, decode it once -> (batches of float images in [0, 1] and targets, K, yaml)."""
    write_synthetic_dataset(root, args.num_images, image_size=args.imgsz, seed=args.seed, val_fraction=0.0)
    data_yaml = root / "data.yaml"
    records, names, _ = load_split(data_yaml, "train")
    ds = DetectionDataset(records)
    samples = [ds[i] for i in range(len(ds))]
    batches = []
    for start in range(0, len(samples) - args.batch + 1, args.batch):
        images, targets = collate(samples[start : start + args.batch])
        batches.append((images.float() / 255.0, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]))
    if not batches:
        raise ValueError(f"--num-images {args.num_images} is less than one batch of {args.batch}")
    return batches, len(names), data_yaml


# ---------------------------------------------------------------------------------------------------- steps


@dataclass
class Trainer:
    """One model's training step on a prepared batch, with its phase timings (ms) per call."""

    name: str
    params_m: float
    step_fn: Callable[[Batch], dict[str, float]]
    phases: dict[str, list[float]] = field(default_factory=dict)

    def step(self, batch: Batch) -> None:
        for k, v in self.step_fn(batch).items():
            self.phases.setdefault(k, []).append(v)


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    """The same optimiser for every model: SGD(lr 0.01, momentum 0.937, Nesterov), decay 5e-4 on weights >= 2-D."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                           lr=0.01, momentum=0.937, nesterov=True)


def _timed_step(
    device: torch.device, amp: torch.dtype | None, optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[], Tensor],
) -> dict[str, float]:
    """zero_grad -> forward+loss (under autocast) -> backward -> step, each phase timed (synchronised on GPU)."""

    def sync() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    t0 = sync()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
        loss = loss_fn()
    t1 = sync()
    loss.backward()
    t2 = sync()
    optimizer.step()
    t3 = sync()
    if not math.isfinite(float(loss.detach())):
        raise RuntimeError("non-finite training loss in the benchmark")
    return {"step": (t3 - t0) * 1e3, "forward_loss": (t1 - t0) * 1e3, "backward": (t2 - t1) * 1e3,
            "optimizer": (t3 - t2) * 1e3}


def _place(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _move(batch: Batch, device: torch.device, channels_last: bool) -> Batch:
    images, targets = batch
    images = images.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, [{k: v.to(device) for k, v in t.items()} for t in targets]


def ours_trainer(preset: str, num_classes: int, args: argparse.Namespace, device: torch.device) -> Trainer:
    """Our detector in train mode; loss = the sum of its named losses."""
    model = _place(efpn.build_model(preset, num_classes=num_classes, image_size=args.imgsz), device,
                   args.channels_last).train()
    set_sgdm_path(model, args.sgdm_path)
    if args.compile:
        model.compile_network()  # backbone, neck and head; compiled on the first (untimed warm-up) step
    optimizer = _sgd(model)
    amp = AMP_DTYPES[args.amp]

    def step(batch: Batch) -> dict[str, float]:
        images, targets = batch
        return _timed_step(device, amp, optimizer, lambda: sum(model(images, targets).values()))

    return Trainer(preset, sum(p.numel() for p in model.parameters()) / 1e6, step)


def ultralytics_trainer(num_classes: int, args: argparse.Namespace, device: torch.device) -> Trainer:
    """Ultralytics YOLOv8n (from YAML) in train mode with its own detection loss, in our hand loop."""
    model = P.ultralytics_train_setup(P.ultralytics_model("yolov8n.yaml", num_classes))
    model = _place(model, device, args.channels_last).train()
    optimizer = _sgd(model)
    amp = AMP_DTYPES[args.amp]
    cache: dict[int, dict[str, Any]] = {}

    def step(batch: Batch) -> dict[str, float]:
        key = id(batch)  # the conversion is data preparation, done once per batch like our decoding
        if key not in cache:
            cache[key] = {k: v.to(device) for k, v in P.ultralytics_batch(*batch).items()}
        ub = cache[key]
        return _timed_step(device, amp, optimizer, lambda: model.loss(ub)[0].sum())

    return Trainer("ultralytics-yolov8n", sum(p.numel() for p in model.parameters()) / 1e6, step)


# ---------------------------------------------------------------------------------------------------- GPU use


class GpuSampler:
    """Samples GPU utilisation (%) every ``period`` s in a background thread while active (CUDA only)."""

    def __init__(self, device: torch.device, period: float = 0.1):
        self.device, self.period = device, period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.source = "none"

    def _read(self) -> float | None:
        try:
            self.source = "torch.cuda.utilization"
            return float(torch.cuda.utilization(self.device))
        except Exception:  # no pynvml: ask nvidia-smi
            self.source = "nvidia-smi"
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                     f"--id={self.device.index or 0}"], capture_output=True, text=True, timeout=5, check=True)
                return float(out.stdout.strip().splitlines()[0])
            except Exception:
                self.source = "unavailable"
                return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            v = self._read()
            if v is not None:
                self.samples.append(v)
            self._stop.wait(self.period)

    def __enter__(self) -> GpuSampler:
        if self.device.type == "cuda":
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"source": self.source, "n": 0}
        return {"source": self.source, "n": len(self.samples), "mean": round(statistics.fmean(self.samples), 1),
                "median": statistics.median(self.samples)}


# ---------------------------------------------------------------------------------------------------- runs


def hand_loop(
    trainers: Sequence[Trainer], batches: Sequence[Batch], args: argparse.Namespace, device: torch.device
) -> dict[str, dict[str, Any]]:
    """Interleave one step of every trainer per round over cycling batches; per-trainer GPU use when on CUDA."""

    def cycle() -> Iterator[Batch]:
        while True:
            yield from batches

    gpu: dict[str, list[float]] = {t.name: [] for t in trainers}
    rounds = args.warmup + args.steps
    for r, batch in zip(range(rounds), cycle()):
        order = list(trainers) if r % 2 == 0 else list(trainers)[::-1]
        for t in order:
            with GpuSampler(device) as sampler:
                t.step(batch)
            if r >= args.warmup:
                gpu[t.name] += sampler.samples
        H.log(f"round {r + 1}/{rounds}: " + ", ".join(f"{t.name} {t.phases['step'][-1]:.0f} ms" for t in trainers))
    out: dict[str, dict[str, Any]] = {}
    for t in trainers:
        steady = {k: v[args.warmup :] for k, v in t.phases.items()}
        step = H.Summary.of(steady["step"])
        out[t.name] = {
            "params_m": round(t.params_m, 4),
            "step_ms": step.to_dict(),
            "images_per_s": round(args.batch / (step.median / 1e3), 3),
            "phases_ms": {k: round(statistics.median(v), 3) for k, v in steady.items()},
            "steady_step_ms": [round(x, 3) for x in steady["step"]],
            "samples_ms": {k: [round(x, 3) for x in v] for k, v in t.phases.items()},
        }
        if device.type == "cuda":
            g = gpu[t.name]
            out[t.name]["gpu_util_pct"] = {"n": len(g), "mean": round(statistics.fmean(g), 1) if g else None}
    return out


def end_to_end(preset: str, data_yaml: Path, run_root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``efpn.engine.train.train`` for ``--e2e-steps`` steps; per-step images/s from its metrics.csv."""
    try:
        from efpn.config import TrainConfig
        from efpn.engine.train import train
    except ImportError as e:
        return {"available": False, "reason": f"efpn.engine.train not importable: {e}"}
    cfg = TrainConfig(
        model=preset, data=str(data_yaml), epochs=1000, batch_size=args.batch, image_size=args.imgsz,
        max_steps=args.e2e_steps, val_split=None,
        # None: what a user's run gets (on 2 CPUs 1-2 loader processes gave 6-28 % more img/s than 0, bench/README)
        **({} if args.workers is None else {"workers": args.workers}),
        device="cuda" if args.device.startswith("cuda") else "cpu", amp=args.amp,
        channels_last=args.channels_last, out=str(run_root), name=f"e2e_{preset}", log_every=1, progress=False,
        seed=args.seed, warmup_iters=1,
    )
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    rates = []
    with (result.run_dir / "metrics.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("kind") == "step" and row.get("img_per_s"):
                rates.append(float(row["img_per_s"]))
    steady = rates[args.warmup :] or rates
    return {
        "available": True,
        "steps": result.steps,
        "wall_s": round(wall, 2),
        "images_per_s": round(statistics.median(steady), 3) if steady else None,
        "images_per_s_overall": round(result.steps * args.batch / wall, 3),
        "per_step_images_per_s": [round(x, 3) for x in rates],
    }


# ---------------------------------------------------------------------------------------------------- report


def targets_of(hand: dict[str, dict[str, Any]], e2e: dict[str, dict[str, Any]]) -> list[H.Target]:
    """Step-time ratios ours / Ultralytics (lower is better; no bound was set), and e2e vs hand loop."""
    rows: list[H.Target] = []
    peer = hand.get("ultralytics-yolov8n")
    for name, r in hand.items():
        if name == "ultralytics-yolov8n" or peer is None:
            continue
        ratio = H.Ratio.of(r["steady_step_ms"], peer["steady_step_ms"])  # paired: same rounds, same batches
        bound = 1.0 if name == "yolov8n" else None  # our static YOLOv8n at least as fast as Ultralytics'
        rows.append(H.Target("train step time (fwd+loss+bwd+opt)", name, "ultralytics-yolov8n",
                             r["step_ms"]["median"], peer["step_ms"]["median"], "ms", ratio.paired, bound,
                             f"{r['images_per_s']:.2f} vs {peer['images_per_s']:.2f} img/s"))
    # every yolov8n_sgdm* form against the static YOLOv8n it extends, same rounds and batches (bound: +15 %)
    for name in [n for n in hand if n.startswith("yolov8n_sgdm")] if "yolov8n" in hand else []:
        a, b = hand[name], hand["yolov8n"]
        rows.append(H.Target("train step time (fwd+loss+bwd+opt)", name, "yolov8n",
                             a["step_ms"]["median"], b["step_ms"]["median"], "ms",
                             H.Ratio.of(a["steady_step_ms"], b["steady_step_ms"]).paired, 1.15,
                             "SGDM over our static YOLOv8n"))
    for name, e in e2e.items():
        if e.get("available") and e.get("images_per_s") and name in hand:
            hand_rate = hand[name]["images_per_s"]
            rows.append(H.Target("end-to-end train() vs hand loop (time/img)", f"train({name})",
                                 f"hand loop {name}", e["images_per_s"], hand_rate, "img/s",
                                 hand_rate / e["images_per_s"], None, "includes data loading, EMA, clipping"))
    return rows


def render(payload: dict[str, Any], targets: Sequence[H.Target]) -> str:
    a = payload["args"]
    rows = []
    for name, r in payload["hand_loop"].items():
        ph = r["phases_ms"]
        s = r["step_ms"]
        gpu = r.get("gpu_util_pct", {}).get("mean")
        rows.append([name, f"{r['params_m']:.2f}", f"{s['median']:.1f} [{s['q1']:.1f}, {s['q3']:.1f}]",
                     f"{ph['forward_loss']:.1f}", f"{ph['backward']:.1f}", f"{ph['optimizer']:.1f}",
                     f"{r['images_per_s']:.2f}", "—" if gpu is None else f"{gpu:.0f}%"])
    parts = [
        "# Training throughput",
        "",
        f"{a['imgsz']} px, batch {a['batch']}, {a['num_images']} synthetic images (3 classes), device {a['device']}, "
        f"amp {a['amp']}, channels_last {a['channels_last']}, "
        + ("our networks torch.compile'd (Ultralytics eager), " if a.get("compile") else "")
        + f"{a['threads']} CPU threads; {a['steps']} interleaved "
        f"steps per model after {a['warmup']} warm-up steps; ms = median [IQR].",
        "",
        f"Machine: {H.machine_line(payload['machine'])}",
        "",
        "## Ratios",
        "",
        H.markdown_table(H.TARGET_HEADERS, H.target_rows(targets)),
        "",
        "## Hand loop (same batches, same optimiser)",
        "",
        H.markdown_table(["model", "params (M)", "step ms", "fwd+loss ms", "backward ms", "optimizer ms", "img/s",
                          "GPU util"], rows),
    ]
    e2e_rows = [[name, str(e.get("steps")), f"{e['images_per_s']:.2f}", f"{e['images_per_s_overall']:.2f}",
                 f"{e['wall_s']:.1f}"]
                for name, e in payload["end_to_end"].items() if e.get("available") and e.get("images_per_s")]
    if e2e_rows:
        parts += ["", "## End to end: efpn.engine.train.train", "",
                  "Median per-step img/s from its metrics.csv (first steps dropped); overall = steps x batch / wall "
                  "time including start-up and checkpoint saving.", "",
                  H.markdown_table(["preset", "steps", "img/s (steady)", "img/s (overall)", "wall s"], e2e_rows)]
    skipped = [f"{n}: {e['reason']}" for n, e in payload["end_to_end"].items() if not e.get("available")]
    notes = payload["notes"] + skipped
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["yolov8n", "yolov8n_sgdm", "yolov8n_sgdm_full"],
                    help="our presets to train")
    ap.add_argument("--imgsz", type=int, default=320, help="image side (default 320)")
    ap.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per model (default 12, --quick 4)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    ap.add_argument("--num-images", type=int, default=None, help="synthetic images (default 4 batches)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    ap.add_argument("--amp", choices=sorted(AMP_DTYPES), default="off", help="autocast dtype (default off)")
    ap.add_argument("--channels-last", action="store_true", help="channels_last models and images")
    ap.add_argument("--no-peers", action="store_true", help="skip Ultralytics")
    ap.add_argument("--no-e2e", action="store_true", help="skip efpn.engine.train.train")
    ap.add_argument("--e2e-steps", type=int, default=None, help="end-to-end steps (default 10, --quick 5)")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers for the end-to-end run (default: efpn train's own, 4 capped at the "
                         "usable CPUs; 0 loads in the training process)")
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--sgdm-path", choices=SGDM_PATHS, default="fast",
                    help="SGDM execution path of our models (default fast; reference: module by module)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile our networks (Detector.compile_network; on CUDA, Triton kernels)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="train_throughput", help="result name under bench/results")
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 4 if args.quick else 12
    if args.e2e_steps is None:
        args.e2e_steps = 5 if args.quick else 10
    if args.num_images is None:
        args.num_images = 4 * args.batch
    if args.amp == "fp16" and not args.device.startswith("cuda"):
        ap.error("--amp fp16 needs --device cuda (use bf16 on CPU)")
    return args


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON payload (also written to ``bench/results/<out>.json``)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    machine = H.begin(args.threads, args.seed, str(device))
    notes: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="efpn-bench-train-"))
    try:
        batches, num_classes, data_yaml = synthetic_batches(root / "data", args)
        batches_dev = [_move(b, device, args.channels_last) for b in batches]
        trainers: list[Trainer] = []
        have_ultra, why = P.ultralytics_available()
        if have_ultra and not args.no_peers:
            trainers.append(ultralytics_trainer(num_classes, args, device))
        elif not args.no_peers:
            notes.append(f"Ultralytics unavailable ({why}); peer skipped. See bench/README.md.")
        trainers += [ours_trainer(p, num_classes, args, device) for p in args.presets]
        H.log(f"hand loop: {len(trainers)} models x {args.warmup + args.steps} steps, batch {args.batch}, "
              f"{args.imgsz} px")
        hand = hand_loop(trainers, batches_dev, args, device)
        e2e: dict[str, dict[str, Any]] = {}
        if not args.no_e2e:
            for preset in args.presets[:1]:
                H.log(f"end to end: efpn.engine.train.train({preset}) for {args.e2e_steps} steps")
                try:
                    e2e[preset] = end_to_end(preset, data_yaml, root / "runs", args)
                except Exception as e:  # the trainer is another engineer's work in progress: report, go on
                    e2e[preset] = {"available": False, "reason": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    targets = targets_of(hand, e2e)
    payload: dict[str, Any] = {
        "benchmark": "train_throughput",
        "args": vars(args),
        "machine": machine,
        "hand_loop": hand,
        "end_to_end": e2e,
        "targets": [t.to_dict() for t in targets],
        "notes": notes,
    }
    markdown = render(payload, targets)
    H.write_results(args.out, payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    run(sys.argv[1:])
