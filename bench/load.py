"""Load check of the studio: ten concurrent browser sessions on a freshly started server.

Each session is a fresh browser context (= a new Streamlit session) that opens the studio, uploads its own image
on the Detect page and then visits three more pages (Pyramid, Gates, Kernels). All sessions start together.
Reported per phase (``bench/results/load.json`` / ``load.md``):

* errors: a page that showed an exception, an upload that did not become the current image, or a timeout;
* page times, p50 and p95 over sessions: open (first page drawn), upload -> Detect drawn, each detail page
  (sidebar click -> drawn), and each session's whole walk;
* the server's memory: resident after start, peak (``VmHWM``) and after the sessions closed.

Two phases, each on its own fresh server:

1. ``plain``: ``--sessions`` sessions (default 10);
2. ``heavy``: the same sessions while one more session runs a heavy request first, sliced inference on a
   ``--heavy-size`` px image (thousands of tiles' worth of work on a CPU). The ratio of the sessions' p95 walk
   with and without it says whether one heavy request stalls the others.

"Drawn" is the same DOM condition as ``bench/studio.py`` (script run finished, nothing stale, every plotly chart
and picture loaded). All sessions share one headless Chromium on the same machine as the server, so the browser's
own rendering competes with the server for the cores: absolute times are upper bounds of what remote users see.

Run from the repository root (needs ``/usr/bin/chromium`` and the ``playwright`` package)::

    .venv/bin/python bench/load.py                      # 10 sessions, both phases
    .venv/bin/python bench/load.py --sessions 3 --skip-heavy     # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness as H
import studio_browser as S
from PIL import Image

from efpn.data.synthetic import make_synthetic_sample

#: detail pages every session visits after its upload on Detect
PAGES: tuple[str, ...] = ("Pyramid", "Gates", "Kernels")
#: synthetic indices of this benchmark's images (distinct from bench/studio.py's)
IMAGE_INDEX = 1500
#: a session's whole walk may take at most this many times longer while one heavy request runs (p95 over sessions)
HEAVY_BOUND = 2.0


async def _wait_done(page: Any, title: str, n0: int, timeout_ms: float, prev: Any = ...,
                     new_page: bool = False) -> dict[str, Any]:
    args = S.done_args(title, n0, prev, new_page)
    handle = await page.wait_for_function(S.DONE_JS, arg=args, polling="raf", timeout=timeout_ms)
    result = await handle.json_value()
    if result.get("exceptions"):
        text = await page.locator("[data-testid='stException']").first.inner_text()
        raise RuntimeError(f"the {title} page raised: {text[:300]}")
    return result


async def _finished(page: Any) -> int:
    return int(await page.evaluate("() => window.__efpn.finished"))


async def session(browser: Any, url: str, image: Path, timeout_ms: float, sliced: bool = False) -> dict[str, Any]:
    """One user: open the studio, upload ``image`` on Detect (sliced inference when ``sliced``), visit
    :data:`PAGES` (not for the sliced heavy user); seconds per step, or the error that stopped it."""
    rec: dict[str, Any] = {"image": image.name, "sliced": sliced}
    context = await browser.new_context(viewport=S.VIEWPORT)
    await context.add_init_script(S.INIT_SCRIPT)
    page = await context.new_page()
    page.set_default_timeout(timeout_ms)
    start = time.perf_counter()
    step = "open"
    try:
        await page.goto(url)
        await _wait_done(page, "Detect", 0, timeout_ms)
        rec["open"] = time.perf_counter() - start
        if sliced:
            step = "sliced mode"
            n0 = await _finished(page)
            await page.get_by_text("Sliced (tiles)").first.click()
            await _wait_done(page, "Detect", n0, timeout_ms)
        step = "upload"
        prev = await page.evaluate(S.FIRST_IMAGE_JS)
        n0 = await _finished(page)
        t0 = time.perf_counter()
        await page.locator("[data-testid='stMain'] input[type='file']").first.set_input_files(str(image))
        if sliced:  # the sliced view draws no overview: wait for the run to finish on the new image
            await page.wait_for_function(
                "([n0]) => window.__efpn.finished > n0 && window.__efpn.state === 'notRunning'",
                arg=[n0], polling=200, timeout=timeout_ms)
        else:
            await _wait_done(page, "Detect", n0, timeout_ms, prev)
        rec["Detect"] = time.perf_counter() - t0
        chosen = await page.get_by_role("combobox", name="Image").input_value()
        if chosen != f"upload {image.name}":
            raise RuntimeError(f"after the upload the sidebar shows {chosen!r}, not the uploaded image")
        if not sliced:
            for title in PAGES:
                step = title
                n0 = await _finished(page)
                t0 = time.perf_counter()
                await page.locator("[data-testid='stSidebarNav'] a").filter(has_text=title).first.click()
                await _wait_done(page, title, n0, timeout_ms, new_page=True)
                rec[title] = time.perf_counter() - t0
        rec["walk"] = time.perf_counter() - start
    except Exception as e:  # reported per session; the other sessions go on
        rec["error"] = f"{step}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
    finally:
        await context.close()
    return rec


def _images(folder: Path, n: int, size: int, start: int) -> list[Path]:
    paths = []
    for i in range(n):
        path = folder / f"load_{size}_{start + i:04d}.png"
        Image.fromarray(make_synthetic_sample(0, start + i, size).image).save(path)
        paths.append(path)
    return paths


def _big_image(folder: Path, size: int) -> Path:
    """A ``size`` x ``size`` image tiled from synthetic scenes (real content on every tile)."""
    tile = 640
    canvas = Image.new("RGB", (size, size))
    for k, (y, x) in enumerate((y, x) for y in range(0, size, tile) for x in range(0, size, tile)):
        canvas.paste(Image.fromarray(make_synthetic_sample(0, 5000 + k, tile).image), (x, y))
    path = folder / f"heavy_{size}.png"
    canvas.save(path)
    return path


async def _phase(args: argparse.Namespace, checkpoint: str, tmp: Path, heavy: bool) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    name = "heavy" if heavy else "plain"
    images = _images(tmp, args.sessions, args.size, IMAGE_INDEX + (500 if heavy else 0))
    big = _big_image(tmp, args.heavy_size) if heavy else None
    timeout_ms = args.timeout * 1e3
    out: dict[str, Any] = {"sessions": args.sessions, "heavy_request": heavy}
    with S.serve(checkpoint, tmp / f"server_{name}.log") as (url, proc):
        out["memory_idle"] = S.rss_mib(proc.pid)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(S.CHROMIUM), args=S.CHROMIUM_ARGS)
            try:
                tasks = []
                if big is not None:
                    tasks.append(session(browser, url, big, timeout_ms * 4, sliced=True))
                    await asyncio.sleep(args.heavy_lead)  # the heavy request is under way when the others arrive
                t0 = time.perf_counter()
                tasks += [session(browser, url, image, timeout_ms) for image in images]
                results = await asyncio.gather(*tasks)
                out["wall_s"] = round(time.perf_counter() - t0, 3)
            finally:
                await browser.close()
        out["memory_after"] = S.rss_mib(proc.pid)
    users = [r for r in results if not r["sliced"]]
    out["heavy"] = next((r for r in results if r["sliced"]), None)
    out["errors"] = [r["error"] for r in results if "error" in r]
    out["pages_s"] = {k: _stats([r[k] for r in users if k in r]) for k in ("open", "Detect", *PAGES, "walk")}
    out["users"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in results]
    H.log(f"{name}: {len(out['errors'])} errors; walk p50 {out['pages_s']['walk'].get('p50')} s, "
          f"p95 {out['pages_s']['walk'].get('p95')} s; server peak {out['memory_after'].get('peak')} MiB")
    return out


def _stats(samples: Sequence[float]) -> dict[str, float | int]:
    s = sorted(samples)
    if not s:
        return {"n": 0}
    return {"p50": round(statistics.median(s), 3), "p95": round(H._quantile(s, 0.95), 3), "max": round(s[-1], 3),
            "n": len(s)}


def render(payload: dict[str, Any], targets: Sequence[H.Target]) -> str:
    rows = []
    for name, ph in payload["phases"].items():
        for k, st in ph["pages_s"].items():
            if st.get("n"):
                rows.append([name, k, str(st["n"]), f"{st['p50']:.2f}", f"{st['p95']:.2f}", f"{st['max']:.2f}"])
    mem = [[name, f"{ph['memory_idle'].get('rss', 0):.0f}", f"{ph['memory_after'].get('peak', 0):.0f}",
            f"{ph['memory_after'].get('rss', 0):.0f}", str(len(ph["errors"]))]
           for name, ph in payload["phases"].items()]
    parts = [
        "# Studio under load",
        "",
        f"{payload['args']['sessions']} concurrent fresh sessions per phase, each uploading its own "
        f"{payload['args']['size']} px image on Detect and visiting {', '.join(PAGES)}; checkpoint: "
        f"{payload['checkpoint']['kind']}; a fresh server per phase; one shared headless Chromium on the same machine.",
        "",
        f"Machine: {H.machine_line(payload['machine'])}",
        "",
        "## Targets",
        "",
        H.markdown_table(H.TARGET_HEADERS, H.target_rows(targets)),
        "",
        "## Page times (s)",
        "",
        H.markdown_table(["phase", "step", "n", "p50", "p95", "max"], rows),
        "",
        "## Server memory (MiB) and errors",
        "",
        H.markdown_table(["phase", "RSS idle", "peak RSS", "RSS after", "errors"], mem),
    ]
    for name, ph in payload["phases"].items():
        if ph["errors"]:
            parts += ["", f"Errors in {name}:", ""] + [f"- {e}" for e in ph["errors"]]
        if ph.get("heavy"):
            h = ph["heavy"]
            parts += ["", f"Heavy request ({payload['args']['heavy_size']} px, sliced): "
                      + (f"upload -> done in {h['Detect']:.1f} s" if "Detect" in h else h.get("error", "?"))]
    if payload.get("notes"):
        parts += ["", "## Notes", ""] + [f"- {n}" for n in payload["notes"]]
    return "\n".join(parts)


def targets_of(payload: dict[str, Any]) -> list[H.Target]:
    out = []
    for name, ph in payload["phases"].items():
        n = ph["sessions"] + (1 if ph["heavy_request"] else 0)
        out.append(H.Target(f"sessions with an error ({name})", "with an error", "sessions", len(ph["errors"]), n,
                            "", len(ph["errors"]) / n, 0.0, ""))
    plain, heavy = payload["phases"].get("plain"), payload["phases"].get("heavy")
    if plain and heavy and plain["pages_s"]["walk"].get("n") and heavy["pages_s"]["walk"].get("n"):
        a, b = heavy["pages_s"]["walk"]["p95"], plain["pages_s"]["walk"]["p95"]
        out.append(H.Target("p95 walk with a heavy request", "with", "without", a, b, "s", a / b, HEAVY_BOUND,
                            "one sliced inference on a large image running"))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=10, help="concurrent sessions per phase (default 10)")
    ap.add_argument("--size", type=int, default=640, help="side of each session's image (default 640)")
    ap.add_argument("--heavy-size", type=int, default=2560, help="side of the heavy request's image (default 2560)")
    ap.add_argument("--heavy-lead", type=float, default=3.0,
                    help="seconds the heavy request runs before the sessions arrive (default 3)")
    ap.add_argument("--checkpoint", default=None, help="serve this .safetensors (default: the bundled default)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one page (default 300)")
    ap.add_argument("--skip-heavy", action="store_true", help="only the plain phase")
    ap.add_argument("--out", default="load", help="result name (default load)")
    args = ap.parse_args(argv)
    if args.sessions < 1:
        ap.error("--sessions must be at least 1")
    return args


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    missing = [] if S.CHROMIUM.is_file() else [f"Chromium at {S.CHROMIUM} (apt-get install -y chromium)"]
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright Python package")
    if missing:
        raise SystemExit(f"bench/load.py needs {' and '.join(missing)}")
    payload: dict[str, Any] = {"benchmark": "load", "args": vars(args), "machine": H.machine_info(2), "phases": {}}
    with tempfile.TemporaryDirectory(prefix="efpn-bench-load-") as tmp_name:
        tmp = Path(tmp_name)
        payload["checkpoint"] = S.resolve_checkpoint(args.checkpoint, tmp)
        H.log(f"checkpoint: {payload['checkpoint']['kind']}")
        others: dict[str, float | None] = {}
        for heavy in ([False] if args.skip_heavy else [False, True]):
            load = S.OtherLoad().start()
            payload["phases"]["heavy" if heavy else "plain"] = asyncio.run(_phase(args, payload["checkpoint"]["path"],
                                                                                  tmp, heavy))
            others["heavy" if heavy else "plain"] = load.cores()
    busy = {k: v for k, v in others.items() if v is not None and v > 0.25}
    payload["notes"] = [f"Other processes used CPU while this ran (cores): {busy}; times are inflated."] if busy else []
    targets = targets_of(payload)
    payload["targets"] = [t.to_dict() for t in targets]
    markdown = render(payload, targets)
    H.write_results(args.out, payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    run(sys.argv[1:])
