"""A picture that says where it was clicked: the Kernels page's pixel picker.

One PNG (the image, with a per-cell map blended over it when asked) in an ``<img>``; over it, a vector layer with
the picked pixel's cross, its cell and the focused object's box; under it, a readout of the pixel under the cursor
and the map's colour key. A few lines of JavaScript through Streamlit's components v2 report a click as image
pixels. No chart library and no WebGL context: the Plotly figure this replaces (an invisible marker per cell,
because Plotly selects points, not pixels) cost ~0.25 s of the browser's main thread per draw on a 2-core machine.

Zoom is a window of the image around the picked pixel, enlarged by the browser with square pixels, so a 10 px
target can be picked cell by cell; at 4x and more the cell grid is drawn.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from app.figures import png_data_uri
from app.heatmaps import colorize, colour_lut

#: Zoom factors offered; 1 = the whole image.
ZOOMS = (1, 2, 4, 8)
#: Long side of the PNG sent for a window (larger windows are shrunk: the browser shows it at column width anyway).
MAX_SIDE = 1024
#: Grid lines are drawn only when a window holds at most this many cells per side (denser grids hide the image).
MAX_GRID_LINES = 48

_CSS = """
.efpn-pick { position: relative; line-height: 0; user-select: none; }
.efpn-pick img { width: 100%; height: auto; image-rendering: pixelated; cursor: crosshair; display: block; }
.efpn-pick svg { position: absolute; left: 0; top: 0; width: 100%; height: 100%; pointer-events: none; }
.efpn-pick-read { font-size: 0.85rem; line-height: 1.4; margin-top: 0.3rem; min-height: 1.2rem;
  font-variant-numeric: tabular-nums; color: var(--st-text-color); }
.efpn-pick-key { font-size: 0.8rem; line-height: 1.3; margin-top: 0.25rem; color: var(--st-text-color); }
.efpn-pick-bar { height: 0.6rem; border: 1px solid rgba(128, 128, 128, 0.6); margin-top: 0.15rem; }
.efpn-pick-ends { display: flex; justify-content: space-between; }
"""

# Called by Streamlit with the mounting data on every run of the page: it builds its elements once per mount and
# updates them in place afterwards (a rerun never stacks a second picture).
_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const NS = 'http://www.w3.org/2000/svg';
  let root = parentElement.querySelector('.efpn-pick-root');
  if (!root) {
    root = document.createElement('div');
    root.className = 'efpn-pick-root';
    root.innerHTML = '<div class="efpn-pick"><img alt=""><svg xmlns="' + NS + '"></svg></div>'
      + '<div class="efpn-pick-read"></div><div class="efpn-pick-key"></div>';
    parentElement.appendChild(root);
  }
  const img = root.querySelector('img'), svg = root.querySelector('svg');
  const read = root.querySelector('.efpn-pick-read'), key = root.querySelector('.efpn-pick-key');
  const [x0, y0, x1, y1] = data.window, ww = x1 - x0, wh = y1 - y0;
  if (img.getAttribute('src') !== data.src) img.setAttribute('src', data.src);
  img.alt = data.alt;
  svg.setAttribute('viewBox', x0 + ' ' + y0 + ' ' + ww + ' ' + wh);
  svg.setAttribute('preserveAspectRatio', 'none');
  const el = (tag, attrs) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    e.setAttribute('vector-effect', 'non-scaling-stroke');
    return e;
  };
  svg.replaceChildren();
  if (data.grid) {
    const c = data.grid;
    for (let x = Math.ceil(x0 / c) * c; x <= x1; x += c)
      svg.appendChild(el('line', {x1: x, y1: y0, x2: x, y2: y1, stroke: 'rgba(255,255,255,0.35)', 'stroke-width': 1}));
    for (let y = Math.ceil(y0 / c) * c; y <= y1; y += c)
      svg.appendChild(el('line', {x1: x0, y1: y, x2: x1, y2: y, stroke: 'rgba(255,255,255,0.35)', 'stroke-width': 1}));
  }
  if (data.box) {
    const [bx1, by1, bx2, by2] = data.box;
    for (const [colour, width] of [['black', 4], ['white', 2]])
      svg.appendChild(el('rect', {x: bx1, y: by1, width: bx2 - bx1, height: by2 - by1, fill: 'none',
                                  stroke: colour, 'stroke-width': width, 'stroke-dasharray': '6 3'}));
  }
  if (data.cell) {
    const [cx, cy, cs] = data.cell;
    for (const [colour, width] of [['black', 3], ['#ffd400', 1.5]])
      svg.appendChild(el('rect', {x: cx, y: cy, width: cs, height: cs, fill: 'none', stroke: colour,
                                  'stroke-width': width}));
  }
  if (data.marker) {
    const [mx, my] = data.marker, arm = Math.max(ww, wh) / 30;
    for (const [colour, width] of [['black', 5], ['white', 2]]) {
      svg.appendChild(el('line', {x1: mx - arm, y1: my, x2: mx + arm, y2: my, stroke: colour, 'stroke-width': width}));
      svg.appendChild(el('line', {x1: mx, y1: my - arm, x2: mx, y2: my + arm, stroke: colour, 'stroke-width': width}));
    }
  }
  const at = (ev) => {
    const r = img.getBoundingClientRect();
    const u = Math.min(Math.max((ev.clientX - r.left) / r.width, 0), 0.99999);
    const v = Math.min(Math.max((ev.clientY - r.top) / r.height, 0), 0.99999);
    return [x0 + u * ww, y0 + v * wh];
  };
  const describe = (x, y) => {
    let s = 'x ' + Math.floor(x) + ', y ' + Math.floor(y);
    const m = data.map;
    if (m) {
      const r = Math.min(Math.floor(y / m.cell), m.rows - 1), c = Math.min(Math.floor(x / m.cell), m.cols - 1);
      const val = m.values[r * m.cols + c];
      s += ' · cell (row ' + r + ', col ' + c + ') · ' + m.name + ' ' + (val === null ? 'n/a' : val.toPrecision(3));
    }
    return s;
  };
  read.textContent = data.idle;
  img.onmousemove = (ev) => { const [x, y] = at(ev); read.textContent = describe(x, y) + ' · click to pick'; };
  img.onmouseleave = () => { read.textContent = data.idle; };
  img.onclick = (ev) => {
    const [x, y] = at(ev);
    read.textContent = describe(x, y) + ' · picked';
    setTriggerValue('pick', {x: Math.round(x * 10) / 10, y: Math.round(y * 10) / 10});
  };
  key.replaceChildren();
  if (data.key) {
    const k = data.key;
    key.innerHTML = '<div></div><div class="efpn-pick-bar"></div><div class="efpn-pick-ends"><span></span>'
      + '<span></span></div>';
    key.children[0].textContent = k.title;
    key.children[1].style.background = 'linear-gradient(to right, ' + k.stops + ')';
    key.children[2].children[0].textContent = k.lo;
    key.children[2].children[1].textContent = k.hi;
  }
}
"""

_component: Callable[..., Any] | None = None


def _renderer() -> Callable[..., Any]:
    """The registered component (registered once per process: a second registration would replace the first)."""
    global _component
    if _component is None:
        _component = st.components.v2.component("efpn_pixel_picker", css=_CSS, js=_JS, isolate_styles=False)
    return _component


@dataclass(frozen=True)
class CellMap:
    """A per-cell map to blend over the picture and read under the cursor: ``values`` (rows, cols), one cell =
    ``cell_px`` image pixels from the top-left corner; ``name`` labels the readout and ``title`` the colour key."""

    values: np.ndarray
    cell_px: float
    name: str
    title: str
    colorscale: str = "Viridis"
    alpha: float = 0.45


def window(hw: tuple[int, int], centre: tuple[float, float], zoom: int) -> tuple[int, int, int, int]:
    """The image window ``(x0, y0, x1, y1)`` (pixels, exclusive ends) shown at ``zoom``: 1/zoom of each side,
    centred on ``centre`` and shifted inside the image."""
    if zoom < 1:
        raise ValueError(f"zoom must be >= 1, got {zoom}")
    h, w = hw
    ww, wh = max(1, round(w / zoom)), max(1, round(h / zoom))
    x0 = int(min(max(round(centre[0] - ww / 2), 0), w - ww))
    y0 = int(min(max(round(centre[1] - wh / 2), 0), h - wh))
    return x0, y0, x0 + ww, y0 + wh


def finite_range(values: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of the finite values of a map, or None when it has none (NaN and infinities are left out)."""
    v = np.asarray(values, dtype=np.float32)
    finite = v[np.isfinite(v)]
    return (float(finite.min()), float(finite.max())) if finite.size else None


def picture(rgb: np.ndarray, win: tuple[int, int, int, int], cell_map: CellMap | None = None,
            max_side: int = MAX_SIDE) -> np.ndarray:
    """The RGB (h, w, 3) uint8 picture of window ``win`` of ``rgb`` (H, W, 3): ``cell_map`` blended over it, each
    image pixel taking its cell's colour (cells clipped to the map's last row and column), shrunk to ``max_side``."""
    x0, y0, x1, y1 = win
    crop = rgb[y0:y1, x0:x1].astype(np.float32)  # (h, w, 3)
    if cell_map is not None:
        v = np.asarray(cell_map.values, dtype=np.float32)
        lo, hi = finite_range(v) or (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0  # a constant map: one colour, not a division by zero
        colours = colorize(v, cell_map.colorscale, lo, hi).astype(np.float32)  # (rows, cols, 3)
        rows = np.minimum((np.arange(y0, y1) + 0.5) // cell_map.cell_px, v.shape[0] - 1).astype(np.int64)
        cols = np.minimum((np.arange(x0, x1) + 0.5) // cell_map.cell_px, v.shape[1] - 1).astype(np.int64)
        over = colours[rows[:, None], cols[None, :]]  # (h, w, 3)
        crop = (1.0 - cell_map.alpha) * crop + cell_map.alpha * over
    out = np.clip(np.rint(crop), 0, 255).astype(np.uint8)
    h, w = out.shape[:2]
    k = max(h, w) / max_side
    if k > 1.0:
        out = np.asarray(Image.fromarray(out).resize((max(1, round(w / k)), max(1, round(h / k))), Image.BILINEAR))
    return out


def _colour_stops(colorscale: str, n: int = 9) -> str:
    lut = colour_lut(colorscale)
    picks = np.linspace(0, 255, n).round().astype(int)
    return ", ".join(f"rgb({r},{g},{b}) {100 * i / (n - 1):.0f}%" for i, (r, g, b) in enumerate(lut[picks]))


def payload(rgb: np.ndarray, marker: tuple[float, float], zoom: int = 1, cell_map: CellMap | None = None,
            cell: tuple[int, int] | None = None, cell_px: float | None = None,
            box: tuple[float, float, float, float] | None = None, alt: str = "image") -> dict[str, Any]:
    """What the picker draws, as JSON-ready data: the picture of the window around ``marker`` at ``zoom``, the
    picked pixel (``marker``, image pixels), its ``cell`` (row, col) of ``cell_px`` image pixels, the focused
    object's ``box`` (xyxy image pixels), the hover map and the colour key of ``cell_map``."""
    h, w = rgb.shape[:2]
    win = window((h, w), marker, zoom)
    data: dict[str, Any] = {
        # encoded once per distinct picture (reruns that move nothing, e.g. a group or kernel switch, reuse it)
        "src": png_data_uri(picture(rgb, win, cell_map)), "window": list(win), "alt": alt,
        "marker": [float(marker[0]), float(marker[1])],
        "idle": f"picked x {marker[0]:.0f}, y {marker[1]:.0f} · hover for a pixel's value, click to pick it",
        "box": [float(v) for v in box] if box is not None else None,
    }
    size = cell_px if cell_px is not None else (cell_map.cell_px if cell_map is not None else None)
    if cell is not None and size is not None:
        data["cell"] = [cell[1] * size, cell[0] * size, size]
    if size is not None and max(win[2] - win[0], win[3] - win[1]) / size <= MAX_GRID_LINES and zoom >= 4:
        data["grid"] = size
    if cell_map is not None:
        v = np.asarray(cell_map.values, dtype=np.float32)
        data["map"] = {"rows": int(v.shape[0]), "cols": int(v.shape[1]), "cell": float(cell_map.cell_px),
                       "name": cell_map.name,  # NaN is no JSON: a cell without a value reads "n/a"
                       "values": [float(f"{x:.4g}") if np.isfinite(x) else None for x in v.ravel()]}
        lo, hi = finite_range(v) or (0.0, 0.0)
        data["key"] = {"title": cell_map.title, "lo": f"{lo:.3g}", "hi": f"{hi:.3g}",
                       "stops": _colour_stops(cell_map.colorscale)}
    json.dumps(data, allow_nan=False)  # fail here, with the data at hand, rather than in the browser
    return data


def pixel_picker(key: str, data: dict[str, Any], on_pick: Callable[[], None]) -> None:
    """Mount the picker with :func:`payload`'s ``data``. A click calls ``on_pick`` before the next run of the page,
    with the clicked pixel in ``st.session_state[key]["pick"]`` as ``{"x": .., "y": ..}`` (image pixels)."""
    _renderer()(key=key, data=data, on_pick_change=on_pick, height="content")


def clicked(key: str) -> tuple[float, float] | None:
    """The pixel of the click that triggered this run (image pixels), or None."""
    value = st.session_state.get(key)
    pick = value.get("pick") if hasattr(value, "get") else None
    if not pick:
        return None
    return float(pick["x"]), float(pick["y"])
