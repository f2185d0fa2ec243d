"""The studio in Chromium for ``bench/studio.py`` and ``bench/load.py``: the server, fresh sessions, the DOM
conditions that say a page is drawn, and the two browser phases of ``bench/studio.py`` (latency of the upload and
the detail pages; memory of the server with one and five sessions). See ``bench/studio.py`` for what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness as H
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the studio is the `app` package at the repository root
    sys.path.insert(0, str(REPO))

import efpn  # noqa: E402
from app.serve import CHROMIUM_ARGS, studio_server  # noqa: E402
from efpn.checkpoint import save_checkpoint  # noqa: E402
from efpn.data.synthetic import SYNTH_CLASSES, make_synthetic_sample  # noqa: E402

#: the checkpoint `make app` opens: the real-data default, else the synthetic flagship (as app/loaders.py picks)
BUNDLED_CHECKPOINT = next((p for p in (REPO / "checkpoints" / "efpn_mv2_sirst.safetensors",
                                       REPO / "checkpoints" / "efpn_n_synth.safetensors") if p.is_file()),
                          REPO / "checkpoints" / "efpn_mv2_sirst.safetensors")
CHROMIUM = Path(os.environ.get("EFPN_CHROMIUM", "/usr/bin/chromium"))
VIEWPORT = {"width": 1440, "height": 1100}

#: detail pages opened after Detect, in this order, for the same image (the Detect page already shows an overview);
#: Attribution opens on detection #0 (an upload has no ground truth) and runs LayerGradCAM on every level at once
INTERNAL_PAGES: tuple[str, ...] = ("Pyramid", "Gates", "Kernels", "Attribution")
#: the page text that shows Attribution explained a box (it says "Nothing to explain" without a detection)
ATTRIBUTION_DONE_TEXT = "LayerGradCAM per pyramid level"
#: The Pyramid page measures gradient reach (two backward passes) only when its expander is opened: a step of its
#: own, right after the Pyramid page is drawn.
REACH_STEP = "Pyramid reach"
REACH_LABEL = "Measure it on this image"
#: Every timed step after the upload, in order.
STEPS: tuple[str, ...] = ("Pyramid", REACH_STEP, "Gates", "Kernels", "Attribution")

#: synthetic indices of the timed images start here (memory-phase images start at MEMORY_INDEX)
IMAGE_INDEX = 100
MEMORY_INDEX = 900

#: Counts the transitions of stApp's data-test-script-state into "notRunning" (= a script run finished) and
#: logs every state with its performance.now() time.
INIT_SCRIPT = """
(() => {
  const e = window.__efpn = {finished: 0, state: null, log: []};
  const step = (s) => {
    if (s === e.state) return;
    if (s === 'notRunning' && e.state !== null) e.finished += 1;
    e.state = s;
    e.log.push([performance.now(), s]);
  };
  // The observer delivers mutations in batches: a run that starts and ends within one batch leaves the attribute
  // as it was, so every record's old value is replayed before the current one (a missed run would never finish).
  new MutationObserver((records) => {
    for (const r of records) if (r.type === 'attributes' && r.attributeName === 'data-test-script-state'
                                 && r.oldValue !== null) step(r.oldValue);
    const app = document.querySelector('[data-testid="stApp"]');
    step(app ? app.getAttribute('data-test-script-state') : null);
  }).observe(document, {subtree: true, childList: true, attributes: true, attributeOldValue: true,
                        attributeFilter: ['data-test-script-state']});
})();
"""

#: The first image of the first plotly figure in the main area (its href), or null.
FIRST_IMAGE_JS = """
() => {
  const img = document.querySelector('[data-testid="stMain"] .js-plotly-plot image');
  return img ? (img.getAttribute('href') || img.getAttribute('xlink:href')) : null;
}
"""

#: True-ish once the page titled `title` finished a run started after `n0` runs and drew every figure.
DONE_JS = """
([title, n0, prev, hasPrev, newPage]) => {
  const overviewShown = (main) => [...main.querySelectorAll('h3')]
      .some(h => h.textContent.includes('Inside the network'))
    && main.querySelectorAll('[data-testid="stImage"] img, [data-testid="stFullScreenFrame"] img').length > 0;
  const e = window.__efpn;
  if (!e || e.state !== 'notRunning') return false;
  // The counter misses a run whose start and end the browser drew in one frame (a fast run on a loaded machine);
  // another page's title (newPage) shows a run as well: it can only be drawn after its run started, and the state
  // reads notRunning again only once that run ended. (A new figure image is not enough for an upload: under load
  // an image can change between two runs of the page before the upload's own run.)
  if (e.finished <= n0 && !newPage) return false;
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main) return false;
  if (![...main.querySelectorAll('h1')].some(h => h.textContent.trim().startsWith(title))) return false;
  if (document.querySelector('[data-stale="true"]')) return false;
  const charts = [...main.querySelectorAll('[data-testid="stPlotlyChart"]')];
  for (const c of charts) {
    const svg = c.querySelector('.js-plotly-plot svg.main-svg');
    if (!svg) return false;
    if (!c.querySelector('.cartesianlayer .trace, .imagelayer image, .hm image, .barlayer .trace, '
                        + '.scatterlayer .trace, .heatmaplayer image')) return false;
  }
  // the pixel picker (app/picker.py, a components-v2 element) draws its picture from its own script, after the run
  for (const c of main.querySelectorAll('.stBidiComponent')) {
    if (c.closest('.st-key-kernel_pick') && !c.querySelector('.efpn-pick img[src]')) return false;
  }
  const imgs = [...main.querySelectorAll('img')];
  if (imgs.some(i => !i.complete || i.naturalWidth === 0)) return false;
  if (hasPrev) {
    if (title === 'Detect' && !overviewShown(main)) return false;
    const img = main.querySelector('.js-plotly-plot image');
    const src = img ? (img.getAttribute('href') || img.getAttribute('xlink:href')) : null;
    if (!src || src === prev) return false;
  }
  return {charts: charts.length, images: imgs.length,
          exceptions: main.querySelectorAll('[data-testid="stException"]').length, now: performance.now()};
}
"""


#: The gradient-reach section opened and finished: its expander open, showing its bars or its message (an image
#: with no boxes). Its run is a fragment rerun that can start and end within one browser frame, so the run counter
#: of :data:`INIT_SCRIPT` may not see it; the section's content is what shows it ran.
REACH_DONE_JS = """
([label]) => {
  const box = [...document.querySelectorAll('[data-testid="stMain"] details')]
      .find(d => d.querySelector('summary') && d.querySelector('summary').textContent.includes(label));
  if (!box || !box.open) return false;
  const chart = box.querySelector('.st-key-pyr_reach .efpn-bars');
  return !!chart || !!box.querySelector('[data-testid="stAlert"]');
}
"""

# ---------------------------------------------------------------------------------------------------- server


def resolve_checkpoint(path: str | None, tmp: Path, random_weights: bool = False) -> dict[str, Any]:
    """The checkpoint to serve: ``path``, else the bundled one, else (or with ``random_weights``) a random-weight
    ``efpn_n`` (3 classes, the preset's 640 px input) saved in ``tmp``; with the network's input size."""
    if path:
        info: dict[str, Any] = {"path": str(Path(path).resolve()), "kind": "given on the command line"}
    elif BUNDLED_CHECKPOINT.is_file() and not random_weights:
        info = {"path": str(BUNDLED_CHECKPOINT), "kind": f"bundled checkpoints/{BUNDLED_CHECKPOINT.name}"}
    else:
        torch.manual_seed(0)
        model = efpn.build_model("efpn_n", num_classes=3, class_names=SYNTH_CLASSES)
        out = save_checkpoint(model, tmp / "efpn_n_random.safetensors", card={"data": {"dataset": "none (random)"}})
        info = {"path": str(out), "kind": "efpn_n with random weights (3 classes), built by bench/studio.py"}
    info["network_input"] = efpn.load_model(info["path"]).config.image_size
    return info


def serve(checkpoint: str, log: Path, timeout: float = 180.0) -> contextlib.AbstractContextManager:
    """The studio serving ``checkpoint`` (and its folder in the picker); yields (url, process)."""
    env = {"EFPN_CHECKPOINT": checkpoint, "EFPN_CHECKPOINT_DIR": str(Path(checkpoint).parent)}
    return studio_server(env, log, timeout)


def rss_mib(pid: int) -> dict[str, float]:
    """Resident memory of ``pid`` and its children (MiB), and the peak RSS of ``pid`` (VmHWM, MiB)."""
    out: dict[str, float] = {}
    try:
        import psutil

        proc = psutil.Process(pid)
        out["rss"] = (proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))) / 2**20
    except ImportError:
        pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out.setdefault("rss" if key == "VmRSS" else "peak", int(value.split()[0]) / 1024)
    except OSError:
        pass
    return {k: round(v, 1) for k, v in out.items()}


class OtherLoad:
    """CPU used by processes outside this benchmark's own process tree (others' tests, training runs), sampled
    every ``every`` seconds in a thread: :meth:`cores` = their CPU seconds / wall seconds since :meth:`start`."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._cpu = 0.0
        self._last: dict[int, float] = {}
        self._t0 = self._wall0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        ours = {me.pid, *(c.pid for c in me.children(recursive=True))}
        for proc in psutil.process_iter():
            if proc.pid in ours:
                continue
            try:
                t = proc.cpu_times()
                total, born = t.user + t.system, proc.create_time()
            except (psutil.Error, OSError):
                continue
            prev = self._last.get(proc.pid)
            if prev is not None:
                self._cpu += max(0.0, total - prev)
            elif born >= self._wall0:  # started while we ran: all of its CPU time counts
                self._cpu += total
            self._last[proc.pid] = total

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def start(self) -> OtherLoad:
        try:
            import psutil  # noqa: F401
        except ImportError:
            return self
        self._t0, self._wall0 = time.perf_counter(), time.time() - 1.0
        self._sample()
        self._cpu = 0.0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def cores(self) -> float | None:
        """Stop sampling; the others' mean CPU use in cores (None without psutil)."""
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._sample()
        return round(self._cpu / max(1e-9, time.perf_counter() - self._t0), 3)


# ---------------------------------------------------------------------------------------------------- browser


def write_images(folder: Path, indices: Sequence[int], size: int) -> list[Path]:
    """Synthetic ``size`` x ``size`` PNGs (seed 0, the given indices) -> their paths."""
    paths = []
    for i in indices:
        path = folder / f"synth_{size}_{i:04d}.png"
        Image.fromarray(make_synthetic_sample(0, i, size).image).save(path)
        paths.append(path)
    return paths


def open_session(browser: Any, url: str, timeout_ms: float) -> tuple[Any, Any]:
    """A fresh browser context (= a new Streamlit session) on the Detect page, its first run finished."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(INIT_SCRIPT)
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(url)
    wait_done(page, "Detect", 0, timeout_ms)
    return context, page


def finished_runs(page: Any) -> int:
    return int(page.evaluate("() => window.__efpn.finished"))


def done_args(title: str, n0: int, prev: Any = ..., new_page: bool = False) -> list[Any]:
    """:data:`DONE_JS`'s argument: ``prev`` the figure's image before an upload (... when no new image is awaited;
    when one is, the Detect page must also show its overview), ``new_page`` when ``title`` is not the page shown
    before the action (the caller's promise: a new title is what shows the run happened)."""
    return [title, n0, None if prev is ... else prev, prev is not ..., new_page]


def wait_done(page: Any, title: str, n0: int, timeout_ms: float, prev: Any = ...,
              new_page: bool = False) -> dict[str, int]:
    """Block until :data:`DONE_JS` holds; raise with the exception text if the page shows one."""
    args = done_args(title, n0, prev, new_page)
    result = page.wait_for_function(DONE_JS, arg=args, polling="raf", timeout=timeout_ms).json_value()
    if result.get("exceptions"):
        text = page.locator("[data-testid='stException']").first.inner_text()
        raise RuntimeError(f"the {title} page raised:\n{text}")
    return result


def upload(page: Any, path: Path) -> None:
    page.locator("[data-testid='stMain'] input[type='file']").first.set_input_files(str(path))


def start_upload(page: Any, path: Path) -> tuple[int, Any]:
    """Upload ``path`` on the Detect page; returns what :func:`wait_done` needs to wait for its result."""
    prev = page.evaluate(FIRST_IMAGE_JS)
    n0 = finished_runs(page)
    upload(page, path)
    return n0, prev


def detections_shown(page: Any) -> int | None:
    metric = page.locator("[data-testid='stMetric']").filter(has_text="Detections")
    try:
        return int(metric.locator("[data-testid='stMetricValue']").first.inner_text(timeout=5000))
    except Exception:  # no metric: the page stopped before it (no model, no image)
        return None


def forward_ms(page: Any) -> float | None:
    """The server-side forward time the Detect page prints ("Forward N ms on ..."), if shown."""
    caption = page.get_by_text(re.compile(r"^Forward \d+ ms on")).first
    try:
        return float(caption.inner_text(timeout=2000).split()[1])
    except Exception:
        return None


def breakdown(page: Any, since: float, done_at: float) -> dict[str, float | int]:
    """Where a step's time went, from the browser's log of script states after ``since`` (performance.now()):
    ``to_run``: action -> the server's script run started (for an upload: the file transfer and the rerun
    request); ``run``: first run started -> last run finished (``runs`` of them); ``after_run``: last run
    finished -> the DOM condition held (drawing what the run sent last)."""
    log = page.evaluate("(t) => window.__efpn.log.filter(x => x[0] >= t)", since)
    starts = [t for t, state in log if state == "running"]
    ends = [t for t, state in log if state == "notRunning"]
    if not starts or not ends:
        return {}
    return {"to_run": round((starts[0] - since) / 1e3, 4), "run": round((ends[-1] - starts[0]) / 1e3, 4),
            "after_run": round(max(0.0, done_at - ends[-1]) / 1e3, 4), "runs": len(ends)}


def time_repetition(browser: Any, url: str, path: Path, timeout_ms: float, think: float) -> dict[str, Any]:
    """One fresh session, idle for ``think`` s: upload ``path`` on Detect, then open every internal page (no pause
    between them); seconds per step."""
    context, page = open_session(browser, url, timeout_ms)
    try:
        time.sleep(think)
        prev = page.evaluate(FIRST_IMAGE_JS)
        n0 = finished_runs(page)
        since = page.evaluate("performance.now()")
        t0 = time.perf_counter()
        upload(page, path)
        detect = wait_done(page, "Detect", n0, timeout_ms, prev)
        rec: dict[str, Any] = {"image": path.name, "Detect": time.perf_counter() - t0,
                               "charts": {"Detect": detect["charts"]}, "images": {"Detect": detect["images"]},
                               "detections": detections_shown(page),
                               "forward_ms": forward_ms(page),
                               "breakdown": {"Detect": breakdown(page, since, detect["now"])}}
        chosen = page.get_by_role("combobox", name="Image").input_value()
        if chosen != f"upload {path.name}":
            raise RuntimeError(f"after the upload the sidebar shows {chosen!r}, not the uploaded image")
        for title in INTERNAL_PAGES:
            n0 = finished_runs(page)
            since = page.evaluate("performance.now()")
            t0 = time.perf_counter()
            page.locator("[data-testid='stSidebarNav'] a").filter(has_text=title).first.click()
            done = wait_done(page, title, n0, timeout_ms, new_page=True)
            rec[title] = time.perf_counter() - t0
            rec["breakdown"][title] = breakdown(page, since, done["now"])
            rec["charts"][title] = done["charts"]
            rec["images"][title] = done["images"]
            if title == "Pyramid":  # open gradient reach (two backward passes; needs GT or detections)
                n0 = finished_runs(page)
                since = page.evaluate("performance.now()")
                t0 = time.perf_counter()
                page.get_by_text(REACH_LABEL).first.click()
                page.wait_for_function(REACH_DONE_JS, arg=[REACH_LABEL], polling="raf", timeout=timeout_ms)
                done = wait_done(page, title, -1, timeout_ms)  # then every figure of the page drawn
                rec[REACH_STEP] = time.perf_counter() - t0
                rec["breakdown"][REACH_STEP] = breakdown(page, since, done["now"])
                rec["charts"][REACH_STEP] = done["charts"]
                rec["images"][REACH_STEP] = done["images"]
                rec["pyramid_gradient_reach"] = page.locator(".st-key-pyr_reach").count() > 0
            if title == "Attribution":
                rec["attribution_explained"] = page.get_by_text(ATTRIBUTION_DONE_TEXT).count() > 0
        rec["total"] = rec["Detect"] + sum(rec[t] for t in STEPS)
        return rec
    finally:
        context.close()


def latency_phase(args: argparse.Namespace, checkpoint: str, tmp: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    n = args.warmup + args.reps
    images = write_images(tmp, [IMAGE_INDEX + i for i in range(n)], args.size)
    timeout_ms = args.timeout * 1e3
    records: list[dict[str, Any]] = []
    with serve(checkpoint, tmp / "server_latency.log") as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        version = browser.version
        try:
            for i, path in enumerate(images):
                rec = time_repetition(browser, url, path, timeout_ms, args.think)
                rec["warmup"] = i < args.warmup
                rec["loadavg_1min"] = round(os.getloadavg()[0], 2)
                records.append(rec)
                steps = ", ".join(f"{k} {rec[k]:.2f} s" for k in ("Detect", *STEPS, "total"))
                which = "warm-up" if rec["warmup"] else f"rep {i - args.warmup + 1}/{args.reps}"
                H.log(f"{which} {path.name}: {steps}; {rec['detections']} detections")
        finally:
            browser.close()
    timed = [r for r in records if not r["warmup"]]
    steps = ("Detect", *STEPS, "total")
    summary = {k: _stats([r[k] for r in timed]) for k in steps}
    parts = ("to_run", "run", "after_run")
    split = {k: {p: round(statistics.median(r["breakdown"][k][p] for r in timed if r["breakdown"].get(k)), 4)
                 for p in parts} for k in steps[:-1] if all(r["breakdown"].get(k) for r in timed)}
    reach = sorted({r.get("pyramid_gradient_reach") for r in timed}, key=str)
    explained = sorted({r.get("attribution_explained") for r in timed}, key=str)
    for r in records:
        for k in steps:
            r[k] = round(r[k], 4)
    forward = [r["forward_ms"] for r in timed if r.get("forward_ms") is not None]
    return {"chromium": version, "summary_s": summary, "breakdown_median_s": split, "repetitions": records,
            "pyramid_gradient_reach": reach, "attribution_explained": explained,
            "detect_forward_ms_median": statistics.median(forward) if forward else None}



def _stats(samples: Sequence[float]) -> dict[str, float | int]:
    s = sorted(samples)
    return {"median": round(statistics.median(s), 4), "p90": round(H._quantile(s, 0.9), 4), "min": round(s[0], 4),
            "max": round(s[-1], 4), "n": len(s)}


def memory_phase(args: argparse.Namespace, checkpoint: str, tmp: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    images = write_images(tmp, [MEMORY_INDEX + i for i in range(args.sessions)], args.size)
    timeout_ms = args.timeout * 1e3
    out: dict[str, Any] = {"sessions": args.sessions}
    with serve(checkpoint, tmp / "server_memory.log") as (url, proc), sync_playwright() as p:
        time.sleep(args.settle)
        out["idle"] = rss_mib(proc.pid)
        H.log(f"memory: idle after start {out['idle']}")
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        contexts = []
        try:
            context, page = open_session(browser, url, timeout_ms)
            contexts.append(context)
            time.sleep(args.think)
            n0, prev = start_upload(page, images[0])
            wait_done(page, "Detect", n0, timeout_ms, prev)
            time.sleep(args.settle)
            out["one_session"] = rss_mib(proc.pid)
            H.log(f"memory: after 1 session {out['one_session']}")
            pages = []
            for _ in images[1:]:
                context, page = open_session(browser, url, timeout_ms)
                contexts.append(context)
                pages.append(page)
            time.sleep(args.think)
            t0 = time.perf_counter()
            pending = [(page, *start_upload(page, path)) for page, path in zip(pages, images[1:])]
            for page, n0, prev in pending:
                wait_done(page, "Detect", n0, timeout_ms, prev)
            out["concurrent_uploads"] = len(pending)
            out["concurrent_uploads_all_rendered_s"] = round(time.perf_counter() - t0, 3)
            time.sleep(args.settle)
            out["all_sessions"] = rss_mib(proc.pid)
            H.log(f"memory: with {len(contexts)} sessions {out['all_sessions']}")
        finally:
            for c in contexts:
                c.close()
            browser.close()
        time.sleep(args.settle)
        out["after_close"] = rss_mib(proc.pid)
    extra = max(1, args.sessions - 1)
    out["per_session_increment_mib"] = round((out["all_sessions"]["rss"] - out["one_session"]["rss"]) / extra, 1)
    return out


