"""The studio in a real browser: Playwright drives Debian's Chromium against `streamlit run`.

Chromium is the system package at /usr/bin/chromium (``apt-get install -y chromium``); Playwright's own browser
download is never used. Without it these tests skip with that instruction. Screenshots go to test-artifacts/
(gitignored). ``EFPN_STUDIO_SCREENSHOT=docs/studio.png`` also writes the Detect page there (the README's picture;
run it with ``EFPN_STUDIO_CHECKPOINT`` pointing at the bundled checkpoint for a trained model's boxes).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from studio_helpers import REPO, png_bytes

from app.serve import CHROMIUM_ARGS, studio_server
from efpn.data import make_synthetic_sample

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("EFPN_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "test-artifacts"
PAGE_TITLES = ("Detect", "Dataset", "Pyramid", "Gates", "Kernels", "Assignment", "Attribution", "Compare", "Learn")


@pytest.fixture(scope="module")
def server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run app/streamlit_app.py` on a free port of 127.0.0.1, on the tiny checkpoints."""
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM}; install Debian's chromium: apt-get install -y chromium")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    env = {"EFPN_CHECKPOINT_DIR": str(checkpoint_dir),
           "EFPN_CHECKPOINT": str(checkpoint_dir / "tiny_efpn_n.safetensors")}
    if os.environ.get("EFPN_STUDIO_CHECKPOINT"):  # screenshot runs on a real checkpoint
        env["EFPN_CHECKPOINT"] = os.environ["EFPN_STUDIO_CHECKPOINT"]
    with studio_server(env, tmp_path_factory.mktemp("streamlit") / "server.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server: str) -> Iterator[object]:
    """A fresh browser session (its own Streamlit session) on the Detect page."""
    context = browser.new_context(viewport={"width": 1440, "height": 1100})
    pg = context.new_page()
    pg.set_default_timeout(90_000)
    pg.goto(server)
    pg.get_by_role("heading", name="Detect", exact=True).wait_for()
    _settle(pg)
    yield pg
    context.close()


#: True while a script run is going on: stApp's script state (the status widget alone is not drawn by every
#: Streamlit version's minimal toolbar).
RUNNING_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const state = app ? app.getAttribute('data-test-script-state') : null;
  return (state !== null && state !== 'notRunning')
    || document.querySelector('[data-testid="stStatusWidget"]') !== null;
}"""


def _settle(pg, quiet: float = 1.5, timeout: float = 120.0) -> None:
    """Wait until the app has stopped running for ``quiet`` seconds."""
    time.sleep(0.5)  # a rerun shows its status widget only after a moment
    deadline = time.monotonic() + timeout
    calm_since = None
    while time.monotonic() < deadline:
        running = pg.evaluate(RUNNING_JS)
        if running:
            calm_since = None
        elif calm_since is None:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet:
            return
        time.sleep(0.2)
    raise TimeoutError("the app kept running")


def _no_exception(pg) -> None:
    exc = pg.locator("[data-testid='stException']")
    assert exc.count() == 0, exc.first.inner_text()


def _shot(pg, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path


def _set_slider_min(pg, label: str) -> None:
    """Move a sidebar slider to its minimum with the keyboard and wait for the rerun."""
    from playwright.sync_api import expect

    slider = pg.locator("[data-testid='stSlider']").filter(has_text=label)
    slider.locator("input[type='range']").first.focus()
    pg.keyboard.press("Home")
    expect(slider.locator("[data-testid='stSliderThumbValue']")).to_have_text("0.00")
    _settle(pg)


def _set_slider_end(pg, label: str, end: str, shown: str) -> None:
    """Move a main-area slider to one end (``end``: "Home" or "End") with the keyboard, check the value ``shown``
    and wait for the rerun."""
    from playwright.sync_api import expect

    slider = pg.locator("[data-testid='stMain'] [data-testid='stSlider']").filter(has_text=label)
    slider.locator("input[type='range']").first.focus()
    pg.keyboard.press(end)
    expect(slider.locator("[data-testid='stSliderThumbValue']")).to_have_text(shown)
    _settle(pg)


def _open(pg, title: str) -> None:
    pg.locator("[data-testid='stSidebarNav'] a").filter(has_text=title).first.click()
    pg.get_by_role("heading", name=title, exact=True, level=1).wait_for()  # the page's title (Assignment has an h3 too)
    _settle(pg)


def test_upload_an_image_and_see_detections(page, tmp_path: Path) -> None:
    rgb = make_synthetic_sample(5, 0, (192, 144), 3, 20, (5, 10)).image
    path = tmp_path / "street.png"
    path.write_bytes(png_bytes(rgb))
    page.locator("[data-testid='stMain'] input[type='file']").first.set_input_files(str(path))
    from playwright.sync_api import expect

    expect(page.get_by_role("combobox", name="Image")).to_have_value("upload street.png", timeout=90_000)
    _settle(page)
    _set_slider_min(page, "Score threshold")
    metric = page.locator("[data-testid='stMetric']").filter(has_text="Detections")
    expect(metric.locator("[data-testid='stMetricValue']")).not_to_have_text("0", timeout=90_000)
    assert int(metric.locator("[data-testid='stMetricValue']").inner_text()) > 0
    plot = page.locator("[data-testid='stMain'] .js-plotly-plot").first
    plot.wait_for()
    # boxes are drawn as plotly line traces, one per level, plus the image
    assert plot.locator(".scatterlayer .trace").count() >= 2
    _no_exception(page)
    _shot(page, "detect_upload")


def test_every_page_opens(page) -> None:
    _set_slider_min(page, "Score threshold")
    for title in PAGE_TITLES:
        _open(page, title)
        _no_exception(page)
        assert page.locator("[data-testid='stMain'] [data-testid='stAlert']").filter(has_text="could not").count() == 0
        _shot(page, f"page_{title.lower()}")


def test_click_a_pixel_on_the_kernels_page(page) -> None:
    _open(page, "Kernels")
    picked = page.locator("[data-testid='stMarkdownContainer']").filter(has_text="Picked pixel").first
    before = picked.inner_text()
    picture = page.locator("[data-testid='stMain'] .efpn-pick img").first
    box = picture.bounding_box()
    assert box is not None and box["width"] > 200, box  # the picture at column width, not a thumbnail
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.25 * box["height"])
    readout = page.locator("[data-testid='stMain'] .efpn-pick-read").first
    assert "click to pick" in readout.inner_text()  # the hover readout names the pixel under the cursor
    page.mouse.click(box["x"] + 0.2 * box["width"], box["y"] + 0.25 * box["height"])
    deadline = time.monotonic() + 60
    while picked.inner_text() == before and time.monotonic() < deadline:
        time.sleep(0.3)
    _settle(page)
    after = page.locator("[data-testid='stMarkdownContainer']").filter(has_text="Picked pixel").first.inner_text()
    assert after != before, after
    _no_exception(page)
    _shot(page, "kernels_click")


def test_detect_page_screenshot(page) -> None:
    """The README picture: the Detect page on a sample with its overview of the internals (copied to
    $EFPN_STUDIO_SCREENSHOT when set)."""
    if not os.environ.get("EFPN_STUDIO_CHECKPOINT"):
        _set_slider_min(page, "Score threshold")
    page.set_viewport_size({"width": 1440, "height": 1720})
    _settle(page)
    page.locator("[data-testid='stMain'] .js-plotly-plot image").first.wait_for()  # the picture is drawn
    page.locator("[data-testid='stMain'] [data-testid='stDataFrame']").first.wait_for()
    page.get_by_role("heading", name="Inside the network").wait_for()
    page.locator("[data-testid='stMain'] [data-testid='stImage'] img").first.wait_for()
    _settle(page, quiet=3.0)
    path = ARTIFACTS / "studio.png"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    target = os.environ.get("EFPN_STUDIO_SCREENSHOT")
    if target:
        shutil.copyfile(path, REPO / target)


def test_bad_upload_in_browser_keeps_session(page, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(png_bytes(np.full((32, 32, 3), 120, np.uint8), "JPEG")[:200])
    page.locator("[data-testid='stMain'] input[type='file']").first.set_input_files(str(bad))
    page.locator("[data-testid='stAlert']").filter(has_text="broken.jpg").first.wait_for()
    _settle(page)
    _no_exception(page)
    _open(page, "Pyramid")
    _no_exception(page)


def test_select_a_missed_object_and_see_it_on_another_page(page) -> None:
    """Click a row of the Detect page's missed-objects table: the Gates page then rings that object and names its
    cause; the Kernels picker sits on its centre."""
    from playwright.sync_api import expect

    table = page.locator(".st-key-miss_table [data-testid='stDataFrame']")
    table.scroll_into_view_if_needed()
    box = table.bounding_box()
    assert box is not None
    # first body row, in the row-selection column (a glide-data-grid canvas: rows are clicked by position)
    page.mouse.click(box["x"] + 16, box["y"] + 35 + 17)
    pick = page.get_by_role("combobox", name="Focus on")
    expect(pick).not_to_have_value("nothing (every page as usual)", timeout=60_000)
    _settle(page)
    chosen = pick.input_value()  # "GT 3 · disc · 5.0 px · never_scored"
    gt, cause = chosen.split(" · ")[0], chosen.split(" · ")[-1]
    assert gt.startswith("GT ") and cause
    _no_exception(page)
    _shot(page, "detect_focus")

    _open(page, "Gates")
    banner = page.locator("[data-testid='stMarkdownContainer']").filter(has_text="Focused missed object").first
    expect(banner).to_contain_text(f"{gt} ·")
    expect(banner).to_contain_text(cause)
    expect(page.locator("[data-testid='stMarkdownContainer']").filter(
        has_text="gate at the focused object's centre")).to_have_count(2)
    _no_exception(page)
    _shot(page, "gates_focus")

    _open(page, "Kernels")
    expect(page.locator("[data-testid='stMarkdownContainer']").filter(has_text="Focused missed object").first
           ).to_contain_text(f"{gt} ·")
    _no_exception(page)


def test_attribution_cancel(page) -> None:
    """LayerGradCAM shows without a button press; Integrated Gradients and Occlusion at their most passes start on
    Compute with a progress bar and a Cancel button; Cancel stops them: the page says so, shows no pixel map, does
    not start them again, and the next request runs to the end."""
    from playwright.sync_api import expect

    _set_slider_min(page, "Score threshold")  # detections to explain
    _open(page, "Attribution")
    page.get_by_role("heading", name="LayerGradCAM per pyramid level").wait_for()
    main = page.locator("[data-testid='stMain']")
    expect(main.get_by_text("Estimated on this machine")).to_be_visible(timeout=90_000)
    _set_slider_end(page, "IG steps", "End", "64")
    _set_slider_end(page, "Occlusion budget", "End", "400")
    page.get_by_role("button", name="Compute").click()
    bar = main.locator("[data-testid='stProgress']")
    expect(bar).to_contain_text("passes through the network", timeout=60_000)
    page.get_by_role("button", name="Cancel").click()
    cancelled = main.locator("[data-testid='stAlert']").filter(has_text="Cancelled after")
    expect(cancelled).to_be_visible(timeout=60_000)
    _settle(page, quiet=3.0)  # long enough for a restarted run to show its bar
    expect(bar).to_have_count(0)
    expect(cancelled).to_be_visible()
    assert main.locator(".st-key-attr_map_integrated_gradients").count() == 0
    _no_exception(page)
    _shot(page, "attribution_cancelled")

    # the app still works: a small request runs to the end and adds its maps and rows
    _set_slider_end(page, "IG steps", "Home", "4")
    _set_slider_end(page, "Occlusion budget", "Home", "16")
    page.get_by_role("button", name="Compute").click()
    expect(main.locator(".st-key-attr_map_integrated_gradients")).to_be_visible(timeout=120_000)
    _settle(page)
    expect(main.locator("[data-testid='stTable']").last).to_contain_text("Occlusion")
    expect(cancelled).to_have_count(0)
    _no_exception(page)
    _open(page, "Detect")
    _no_exception(page)


#: Controls of the main area (label, widget or link) whose box reaches past the window's right edge.
CUT_OFF_JS = """(vw) => {
  const ids = ['stSlider', 'stSelectbox', 'stMultiSelect', 'stButton', 'stRadio', 'stCheckbox', 'stNumberInput',
               'stFileUploader', 'stDownloadButton', 'stPageLink', 'stTable', 'stMetric'];
  const out = [];
  for (const id of ids) {
    for (const e of document.querySelectorAll(`[data-testid="stMain"] [data-testid="${id}"]`)) {
      const r = e.getBoundingClientRect();
      // content running past its own box (scrolled or clipped away), at any depth
      // (HTML only: plotly draws invisible drag layers past its plot; a slider's native input is transparent)
      const inner = [...e.querySelectorAll('*')].some(d => d instanceof HTMLElement && d.type !== 'range'
        && d.getBoundingClientRect().right > r.right + 1 && d.getBoundingClientRect().width > 0
        && d.checkVisibility({opacityProperty: true, visibilityProperty: true}));
      if (r.width > 0 && (r.left < -0.5 || r.right > vw + 0.5 || inner)) {
        out.push(`${id} ${(e.innerText || '').slice(0, 30)}: ${Math.round(r.left)}..${Math.round(r.right)} px`);
      }
    }
  }
  const main = document.querySelector('[data-testid="stMain"]');
  if (main.scrollWidth > main.clientWidth + 1) out.push(`main area ${main.scrollWidth} px wide`);
  return out;
}"""


def test_narrow_window_sidebar_and_dark_theme(browser, server: str) -> None:
    """At 800 px, in a browser that prefers dark: the studio is dark; the sidebar's collapse button shows without a
    hover, closes the sidebar (the page takes the whole width) and the expand button opens it again; on Detect and
    Attribution every control lies inside the window, sidebar open or closed."""
    from playwright.sync_api import expect

    width = 800
    context = browser.new_context(viewport={"width": width, "height": 1000}, color_scheme="dark")
    try:
        pg = context.new_page()
        pg.set_default_timeout(90_000)
        pg.goto(server)
        pg.get_by_role("heading", name="Detect", exact=True).wait_for()
        _settle(pg)
        background = pg.evaluate("getComputedStyle(document.querySelector('[data-testid=\"stApp\"]'))"
                                  ".backgroundColor")
        rgb = [int(v) for v in background[background.index("(") + 1:background.index(")")].split(",")[:3]]
        assert sum(rgb) < 3 * 80, background  # the dark theme, as the browser prefers
        sidebar = pg.locator("[data-testid='stSidebar']")
        collapse = pg.locator("[data-testid='stSidebarCollapseButton'] button")
        expand = pg.locator("[data-testid='stExpandSidebarButton']")
        for title in ("Detect", "Attribution"):
            if title != "Detect":
                _open(pg, title)
            expect(pg.get_by_role("combobox", name="Checkpoint")).to_be_in_viewport()  # the sidebar starts open
            assert pg.evaluate(CUT_OFF_JS, width) == [], title
            pg.mouse.move(width - 5, 500)  # the pointer away from the sidebar: no hover reveals the button
            expect(collapse).to_be_visible()
            collapse.click()
            expect(expand).to_be_visible()
            time.sleep(0.5)  # the sidebar slides out
            picker = pg.get_by_role("combobox", name="Checkpoint").bounding_box()
            assert picker is None or picker["x"] + picker["width"] <= 1, picker  # out of the window
            box = sidebar.bounding_box()
            assert box is None or box["x"] + box["width"] <= 1, box
            main = pg.locator("[data-testid='stMain']").bounding_box()
            assert main is not None and main["width"] >= width - 20, main
            _settle(pg)
            assert pg.evaluate(CUT_OFF_JS, width) == [], title
            _shot(pg, f"narrow_{title.lower()}_collapsed")
            expand.click()
            expect(pg.get_by_role("combobox", name="Checkpoint")).to_be_in_viewport()
            _no_exception(pg)
    finally:
        context.close()


def test_dataset_page_diagnoses_and_opens_an_image(page) -> None:
    """Dataset mode end to end in a browser: diagnose the bundled samples' images, see recall by size with causes,
    open the image with the most missed tiny objects, and find it with its ground truth on Detect."""
    from playwright.sync_api import expect

    _open(page, "Dataset")
    button = page.locator(".st-key-dsd_run button")
    expect(button).to_be_visible()
    button.click()
    _settle(page)
    _no_exception(page)
    main = page.locator("[data-testid='stMain']")
    expect(main.locator("[data-testid='stMetricLabel']").filter(has_text="Recall")).to_be_visible()
    expect(main.locator(".stPlotlyChart").first).to_be_visible()  # recall and causes by size
    expect(main.locator("[data-testid='stDataFrame']")).to_have_count(2)  # recall/causes by size, then the images
    expect(main.get_by_role("button", name="Misses (CSV)")).to_be_visible()
    _shot(page, "dataset_diagnosed")

    images = main.locator("[data-testid='stDataFrame']").nth(1)
    images.scroll_into_view_if_needed()
    box = images.bounding_box()
    assert box is not None
    # first body row (the image with the most missed tiny objects), in the row-selection column: the table is a
    # glide-data-grid canvas, so rows are clicked by position
    page.mouse.click(box["x"] + 16, box["y"] + 35 + 17)
    _settle(page)
    opened = main.locator("[data-testid='stAlertContentSuccess']")
    expect(opened).to_contain_text("is now the current image of every page")
    name = opened.inner_text().split(" is now")[0].strip("* \n")
    _no_exception(page)

    main.get_by_role("link", name="See its found and missed objects on Detect").click()
    page.get_by_role("heading", name="Detect", exact=True, level=1).wait_for()
    _settle(page)
    _no_exception(page)
    expect(page.get_by_role("combobox", name="Image")).to_have_value(f"samples {name}")  # the sidebar's image
    _shot(page, "dataset_opened_on_detect")
