"""Shared machinery of the benchmarks: interleaved timing, robust statistics, machine facts, result files.

Why interleaving: the benchmark machines are shared (a 2-core box other engineers also use), so the speed of
the machine drifts by 2-10x over seconds. Timing A for a minute and then B for a minute compares two different
machines. Instead every *round* runs every case once, back to back, in an order that reverses each round; a
slow spell then hits all cases of that round alike. A ratio is reported as the median over rounds of the
per-round ratio (a paired estimate), next to the ratio of the per-case medians; both should agree when the
noise is fair, and the spread (IQR) says how much to trust them.

Nothing here imports a peer library; peers live in :mod:`peers`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from efpn.runtime import keep_freed_memory

RESULTS_DIR = Path(__file__).resolve().parent / "results"

Case = Callable[[], object]

#: name -> seconds; see :func:`interleaved`
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


# ---------------------------------------------------------------------------------------------------- timing


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (and one inter-op thread, when that can still be set), with the CPU
    runtime the CLI and studio use (:func:`efpn.runtime.keep_freed_memory`; the same for ours and peers)."""
    keep_freed_memory()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; harmless if already fixed
        pass


def begin(threads: int, seed: int, device: str = "cpu") -> dict[str, Any]:
    """A benchmark's start: ``threads`` CPU threads with the CLI's runtime (:func:`set_threads`), torch's generator
    seeded, and the machine facts (:func:`machine_info`) taken before the first timed call."""
    set_threads(threads)
    torch.manual_seed(seed)
    return machine_info(threads, device)


def interleaved(
    cases: Mapping[str, Case],
    rounds: int,
    warmup: int = 1,
    inner: int = 1,
    progress: Callable[[str], None] | None = None,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Time every case once per round, ``rounds`` times; returns ``{case: [ms per round]}``.

    Round ``r`` runs the cases in their given order when ``r`` is even and reversed when odd, so no case
    always follows the same neighbour (caches, allocator state, turbo). ``warmup`` untimed rounds come first
    (first-call allocation, oneDNN primitive creation, lazy init in the peers). With ``inner > 1`` a round
    records the fastest of ``inner`` back-to-back calls of a case: on a shared machine a call that lost its
    core half-way is an outlier of the machine, not of the code, and the minimum drops it.

    ``clock``: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.process_time``: CPU seconds of the whole
    process, all threads). CPU time ignores the time the process waits for a core, so it is far steadier on a
    busy machine; with one torch thread it is the cleanest cost measure (with more threads it also counts the
    threads' spin-waiting).
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            best = float("inf")
            for _ in range(inner):
                t0 = now()
                cases[name]()
                best = min(best, now() - t0)
            times[name].append(best * 1e3)
        if progress is not None:
            progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.1f}" for n in names[:4])
                     + (" ..." if len(names) > 4 else ""))
    return times


# ---------------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Summary:
    """Robust summary of one case's samples (milliseconds or images/s)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("no samples to summarise")
        s = sorted(samples)
        return cls(statistics.median(s), _quantile(s, 0.25), _quantile(s, 0.75), s[0], s[-1], len(s))

    def to_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Ratio:
    """``ours / peer`` from interleaved samples: ``paired`` = median of per-round ratios (the headline),
    ``of_medians`` = median(ours) / median(peer), and the IQR of the per-round ratios."""

    paired: float
    of_medians: float
    q1: float
    q3: float

    @classmethod
    def of(cls, ours: Sequence[float], peer: Sequence[float]) -> Ratio:
        if len(ours) != len(peer) or not ours:
            raise ValueError(f"need equally many paired samples, got {len(ours)} and {len(peer)}")
        per_round = sorted(a / b for a, b in zip(ours, peer))
        return cls(
            statistics.median(per_round),
            statistics.median(ours) / statistics.median(peer),
            _quantile(per_round, 0.25),
            _quantile(per_round, 0.75),
        )

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def _quantile(sorted_samples: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted samples."""
    pos = q * (len(sorted_samples) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


# ---------------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One line of the summary table: a measured ratio against a bound (``bound=None``: informational)."""

    what: str
    ours: str
    peer: str
    ours_value: float
    peer_value: float
    unit: str
    ratio: float
    bound: float | None
    note: str = ""

    @property
    def met(self) -> bool | None:
        return None if self.bound is None else self.ratio <= self.bound

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["met"] = self.met
        return d


def target_rows(targets: Sequence[Target]) -> list[list[str]]:
    """Rows for :func:`markdown_table` with the columns what, ours, peer, ratio, target, met?."""
    rows = []
    for t in targets:
        met = "—" if t.met is None else ("yes" if t.met else "**no**")
        bound = "—" if t.bound is None else f"<= {t.bound:g}x"
        rows.append([
            t.what,
            f"{t.ours}: {_num(t.ours_value)} {t.unit}",
            f"{t.peer}: {_num(t.peer_value)} {t.unit}",
            f"{t.ratio:.3f}x",
            bound,
            met,
        ])
    return rows


TARGET_HEADERS = ["what", "ours", "peer", "ratio", "target", "met?"]


def _num(v: float) -> str:
    """4 significant digits without scientific notation: 0.4412, 12.35, 141.9, 6659."""
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


# ---------------------------------------------------------------------------------------------------- reporting


def machine_info(threads: int, device: str = "cpu") -> dict[str, Any]:
    """Facts that make a number reproducible: CPU, cores, load, library versions, thread count."""
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp default, spinning)"),
        "malloc_reuse": keep_freed_memory(),
        # efpn's own switches (EFPN_NATIVE=0, EFPN_GC_FREEZE=0, ...): a run with one set measures another program
        "efpn_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("EFPN_")},
        "device": device,
        "loadavg_start": _loadavg(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        info["ultralytics"] = version("ultralytics")
    except Exception:  # not installed: the peers report that themselves
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: Mapping[str, Any], markdown: str, out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<out_dir>/<name>.json`` (``payload``, with the end load average added) and ``<name>.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = dict(payload)
    if isinstance(data.get("machine"), dict):
        data["machine"] = {**data["machine"], "loadavg_end": _loadavg()}
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    (out_dir / f"{name}.md").write_text(markdown.rstrip() + "\n", encoding="utf-8")
    return json_path


def machine_line(info: Mapping[str, Any]) -> str:
    """One human line about the machine for the markdown files."""
    load = info.get("loadavg_start")
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    env = info.get("efpn_env") or {}
    settings = f"; set: {', '.join(f'{k}={v}' for k, v in env.items())}" if env else ""
    return (
        f"{info.get('date_utc')} UTC; {info.get('cpu')} ({info.get('logical_cpus')} logical CPUs{gpu}), "
        f"torch {info.get('torch')} with {info.get('torch_threads')} threads (OMP_WAIT_POLICY "
        f"{info.get('omp_wait_policy')}), device {info.get('device')}, "
        f"ultralytics {info.get('ultralytics', 'n/a')}, torchvision {info.get('torchvision', 'n/a')}; "
        f"load average at start {load}{settings}"
    )


def log(msg: str) -> None:
    """Progress to stderr (stdout carries the tables)."""
    print(msg, file=sys.stderr, flush=True)
