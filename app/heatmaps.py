"""Map pictures for the studio: heatmaps of feature maps, gates and kernels, and small colour thumbnails.

Pure builders (no Streamlit, no model): maps are drawn in their own cells (row i, column j), not over the image;
overlays on the image are in :mod:`app.figures`.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Mapping

import cv2
import numpy as np
import plotly.graph_objects as go
from PIL import Image

from efpn.explain import normalize01

# ----------------------------------------------------------------------------------------------- heatmaps


def safe_colorscale(name: str | list) -> list:
    """A plotly colorscale with every colour as ``rgb(r, g, b)``. Streamlit's plotly theme sends its own colours as
    the placeholders ``#000001`` ... ``#000040`` and swaps them in the browser, so a scale that starts at
    ``#000004`` (Inferno, Magma) would draw its zero in a theme colour (a pink, not black); ``rgb()`` strings are
    left alone."""
    if isinstance(name, str):  # named scales are converted once (a page asks for the same few dozens of times)
        return [list(step) for step in _named_colorscale(name)]
    return [list(step) for step in _convert_colorscale(name)]


@functools.lru_cache(maxsize=64)
def _named_colorscale(name: str) -> tuple[tuple[float, str], ...]:
    from plotly.colors import get_colorscale

    return _convert_colorscale(get_colorscale(name))


def _convert_colorscale(scale: list) -> tuple[tuple[float, str], ...]:
    from plotly.colors import hex_to_rgb

    out = []
    for pos, colour in scale:
        if isinstance(colour, str) and colour.startswith("#"):
            colour = "rgb({}, {}, {})".format(*hex_to_rgb(colour))
        out.append((float(pos), colour))
    return tuple(out)


# ----------------------------------------------------------------------------------------------- fast subplots
# Grids of small heatmaps (a kernel page draws 24 + 6 of them) cost ~10 ms per subplot through plotly's checked
# setters: make_subplots alone is ~70 ms for 3 x 8. The figures below are the same figures built from plain dicts:
# make_subplots' layout computed once per grid shape and titles and copied, traces written as dicts, and the
# figure created without plotly re-checking every property (the same JSON reaches the browser; tests compare).


#: Outline of a marked cell (the focused object's, the picked pixel's): white over black, seen on any colour scale.
MARK_COLOUR = "#ffffff"


def _mark_cell(fig: go.Figure, cell: tuple[int, int], **where: int) -> None:
    """Outline map cell (row, col) of a heatmap drawn in cell coordinates (cell centres on integers)."""
    r, c = cell
    for colour, width in (("black", 4), (MARK_COLOUR, 2)):
        fig.add_shape(type="rect", x0=c - 0.5, x1=c + 0.5, y0=r - 0.5, y1=r + 0.5, line=dict(color=colour, width=width),
                      **where)


def map_figure(a: np.ndarray, title: str | None = None, colorscale: str = "Viridis", height: int = 240,
               zmid: float | None = None, mark: tuple[int, int] | None = None) -> go.Figure:
    """A small picture of one map: (H, W) heatmap or (H, W, 3) uint8 RGB; ``mark`` outlines cell (row, col)."""
    a = np.asarray(a)
    if a.ndim == 3:
        fig = go.Figure(go.Image(z=a, hovertemplate="x %{x}, y %{y}<extra></extra>"))
    else:
        fig = go.Figure(go.Heatmap(z=a, colorscale=safe_colorscale(colorscale), zmid=zmid, colorbar=dict(thickness=10),
                                   hovertemplate="x %{x}, y %{y}<br>%{z:.3g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(margin=dict(l=0, r=0, t=28 if title else 0, b=0), height=height, title=title)
    if mark is not None:
        _mark_cell(fig, mark)
    return fig


# ----------------------------------------------------------------------------------------------- thumbnails
# Plain PNGs (st.image) rather than plotly heatmaps: a dozen small pictures draw in the browser at once,
# where a dozen plotly charts take about a second (the Detect page's overview of the internals).

_LUTS: dict[str, np.ndarray] = {}


def encode_png(picture: np.ndarray) -> bytes:
    """A grey (H, W), RGB or RGBA uint8 picture as PNG bytes, losslessly (a 1 px target keeps its pixels).

    OpenCV at zlib level 1: about half the time of Pillow's default level for ~20 % more bytes, which a browser on
    the same network takes faster than the saved encoding time (a 640 px photo: ~16 ms instead of ~33 ms)."""
    arr = np.ascontiguousarray(picture)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"encode_png needs a (H, W), (H, W, 3) or (H, W, 4) uint8 picture, got {arr.shape} "
                         f"{arr.dtype}")
    if arr.ndim == 3:  # OpenCV writes BGR(A)
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, png = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV writes every array the check above lets through
        raise ValueError(f"OpenCV could not encode a {arr.shape} picture as PNG")
    return png.tobytes()


def colour_lut(colorscale: str) -> np.ndarray:
    """A plotly named colorscale sampled at 256 points -> (256, 3) uint8 lookup table (cached per name)."""
    if colorscale not in _LUTS:
        from plotly.colors import sample_colorscale, unlabel_rgb

        rgb = [unlabel_rgb(c) for c in sample_colorscale(colorscale, list(np.linspace(0.0, 1.0, 256)))]
        _LUTS[colorscale] = np.clip(np.rint(np.asarray(rgb, dtype=np.float64)), 0, 255).astype(np.uint8)
    return _LUTS[colorscale]


def colorize(a: np.ndarray, colorscale: str = "Viridis", zmin: float | None = None,
             zmax: float | None = None) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8 RGB through ``colorscale``. With ``zmin``/``zmax`` the range is fixed (e.g.
    [0, 1] for gates, so two images compare); otherwise robust percentiles (``efpn.explain.normalize01``)."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"colorize needs a (H, W) map, got shape {a.shape}")
    if zmin is not None and zmax is not None and zmax > zmin:
        u = np.clip((np.nan_to_num(a, nan=zmin) - zmin) / (zmax - zmin), 0.0, 1.0)
    else:
        u = normalize01(a)
    return colour_lut(colorscale)[np.rint(u * 255).astype(np.int64)]


def thumbnail(a: np.ndarray, colorscale: str = "Viridis", side: int = 160, zmin: float | None = None,
              zmax: float | None = None, mark: tuple[int, int] | None = None) -> np.ndarray:
    """A map (H, W) or an RGB (H, W, 3) uint8 picture as a small RGB uint8 image whose long side is about
    ``side`` px: coarse maps are enlarged by an integer factor (nearest, cells stay square), large ones shrunk.
    ``mark`` outlines map cell (row, col) in white on black (at least 21 px wide, so a small cell stays visible)."""
    a = np.asarray(a)
    rgb = a if (a.ndim == 3 and a.dtype == np.uint8) else colorize(a, colorscale, zmin, zmax)
    h, w = rgb.shape[:2]
    k = side / max(h, w, 1)
    if k >= 2:
        f = int(k)
        out = np.ascontiguousarray(rgb.repeat(f, axis=0).repeat(f, axis=1))
    elif k < 1:
        size = (max(1, round(w * k)), max(1, round(h * k)))
        out = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.BILINEAR))
    else:
        out = np.ascontiguousarray(rgb)
    return out if mark is None else mark_cell(out, mark, (h, w))


def mark_cell(picture: np.ndarray, cell: tuple[int, int], grid_hw: tuple[int, int]) -> np.ndarray:
    """A copy of an RGB picture of a (rows, cols) = ``grid_hw`` map with cell (row, col) outlined: a white square
    inside a black one, at least 21 px wide (a thumbnail is often shown at a third of its size)."""
    out = np.array(picture, copy=True)
    ph, pw = out.shape[:2]
    sy, sx = ph / grid_hw[0], pw / grid_hw[1]
    cy, cx = (cell[0] + 0.5) * sy, (cell[1] + 0.5) * sx
    hy, hx = max(10.5, sy / 2 + 1), max(10.5, sx / 2 + 1)
    for colour, grow in ((0, 3), (255, 0)):
        y1, y2 = int(max(0, cy - hy - grow)), int(min(ph - 1, cy + hy + grow))
        x1, x2 = int(max(0, cx - hx - grow)), int(min(pw - 1, cx + hx + grow))
        t = 3
        out[y1:y1 + t + grow, x1:x2 + 1] = colour
        out[max(y1, y2 - t - grow + 1):y2 + 1, x1:x2 + 1] = colour
        out[y1:y2 + 1, x1:x1 + t + grow] = colour
        out[y1:y2 + 1, max(x1, x2 - t - grow + 1):x2 + 1] = colour
    return out


def mark_box(picture: np.ndarray, box: tuple[float, float, float, float] | np.ndarray,
             hw: tuple[int, int]) -> np.ndarray:
    """A copy of an RGB picture of an (H, W) = ``hw`` map with the xyxy ``box`` (that map's pixels) outlined: a white
    rectangle inside a black one, around the box and at least 21 px wide on the picture (a tiny object's box would
    be a dot), so the evidence inside it stays visible."""
    out = np.array(picture, copy=True)
    ph, pw = out.shape[:2]
    ky, kx = ph / hw[0], pw / hw[1]  # picture px per map px
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=float).reshape(4))
    cx, cy = (x1 + x2) / 2 * kx, (y1 + y2) / 2 * ky
    hx = max(10.5, (x2 - x1) / 2 * kx + 3)  # half sides on the picture, padded outside the box
    hy = max(10.5, (y2 - y1) / 2 * ky + 3)
    t = 2
    for colour, grow in ((0, 2), (255, 0)):
        a, b = int(max(0, cy - hy - grow)), int(min(ph - 1, cy + hy + grow))
        c, d = int(max(0, cx - hx - grow)), int(min(pw - 1, cx + hx + grow))
        out[a:a + t + grow, c:d + 1] = colour
        out[max(a, b - t - grow + 1):b + 1, c:d + 1] = colour
        out[a:b + 1, c:c + t + grow] = colour
        out[a:b + 1, max(c, d - t - grow + 1):d + 1] = colour
    return out


# ----------------------------------------------------------------------------------------------- kernels


# Tables, not charts: nine numbers per kernel read best as text on their colours, and an HTML table is drawn by the
# browser at once where a Plotly chart of three heatmaps cost about a third of a second of the Kernels page.

#: The colour of a kernel weight: sequential (white 0 to dark blue, all weights >= 0) or diverging (blue -, white 0,
#: red +, on a symmetric range).
KERNEL_SCALES = {False: "Blues", True: "RdBu_r"}


def _kernel_colour(value: float, lim: float, signed: bool) -> tuple[int, int, int]:
    u = (value / lim + 1.0) / 2.0 if signed else value / lim  # position on the scale, 0..1
    r, g, b = colour_lut(KERNEL_SCALES[signed])[int(round(min(max(u, 0.0), 1.0) * 255))]
    return int(r), int(g), int(b)


def _kernel_table(v: np.ndarray, lim: float, signed: bool, name: str) -> str:
    """One k x k kernel as an HTML table: every weight written on its colour (black or white text, whichever reads
    on it), its exact value in the cell's tooltip."""
    k = v.shape[0]
    size = max(2.4, 12.6 / k)  # rem per cell: a 3 x 3 kernel ~200 px wide, a 7 x 7 one no wider than ~270 px
    rows = []
    for i in range(k):
        cells = []
        for j in range(v.shape[1]):
            r, g, b = _kernel_colour(float(v[i, j]), lim, signed)
            ink = "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else "#fff"
            cells.append(f'<td style="background:rgb({r},{g},{b});color:{ink};width:{size:.1f}rem;'
                         f'height:{size:.1f}rem" title="{html.escape(name)} row {i}, col {j}: {v[i, j]:.4f}">'
                         f"{v[i, j]:.3f}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="efpn-kgrid" aria-label="{html.escape(name)}">' + "".join(rows) + "</table>"


def _kernel_key(lim: float, signed: bool) -> str:
    """The colour key under a kernel: a gradient bar with the values at its ends (and 0 in the middle)."""
    stops = np.linspace(-lim if signed else 0.0, lim, 7)
    bar = ", ".join("rgb({},{},{})".format(*_kernel_colour(float(t), lim, signed)) for t in stops)
    labels = (f"<span>−{lim:.3f} blue</span><span>0 white</span><span>+{lim:.3f} red</span>" if signed
              else f"<span>0 white</span><span>{lim:.3f} dark blue</span>")
    return (f'<div class="efpn-kkey"><div class="efpn-kbar" style="background:linear-gradient(to right, {bar})">'
            f'</div><div class="efpn-klabels">{labels}</div></div>')


def _kernel_panel(name: str, v: np.ndarray, lim: float, signed: bool) -> str:
    return (f'<figure class="efpn-kpanel"><figcaption>{html.escape(name)}</figcaption>'
            f"{_kernel_table(v, lim, signed, name)}{_kernel_key(lim, signed)}</figure>")


def kernel_panels_html(panels: Mapping[str, np.ndarray | None], diverging: tuple[str, ...] = (),
                       title: str | None = None) -> str:
    """k x k kernels side by side (e.g. D, K and S of one group) as HTML for ``st.html``: every weight written in its
    cell, each panel with its own colour key. Panels with only non-negative values go from white (0) to dark blue
    (their largest value); panels named in ``diverging``, or holding a negative value, are red (positive) / blue
    (negative) around a white 0 on a symmetric range. ``None`` panels are skipped; they wrap on a narrow page."""
    kinds = [(name, np.asarray(v, dtype=float)) for name, v in panels.items() if v is not None]
    body = "".join(_kernel_panel(name, v, float(np.abs(v).max()) or 1.0, name in diverging or bool((v < 0).any()))
                   for name, v in kinds) or "<p>no kernels</p>"
    head = f'<div class="efpn-ktitle">{html.escape(title)}</div>' if title else ""
    return f'<div class="efpn-kernels">{head}<div class="efpn-kpanels">{body}</div></div>'


def kernel_grid_html(rows: Mapping[str, np.ndarray | None], first_group: int = 0) -> str:
    """Every group's k x k kernels as HTML: one line per kind (e.g. "D dynamic", "K guided", "S bank"), one panel per
    group, all of a kind on one colour scale (so groups compare). Each value is (G, k, k); ``None`` rows are skipped.
    ``first_group``: the index of the first group in the labels (a slice of the groups drawn on its own)."""
    lines = []
    for name, v in rows.items():
        if v is None:
            continue
        v = np.asarray(v, dtype=float)
        lim, signed = float(np.abs(v).max()) or 1.0, bool((v < 0).any())
        lines.append('<div class="efpn-kpanels">' + "".join(
            _kernel_panel(f"{name} · g{first_group + g}", v[g], lim, signed) for g in range(v.shape[0])) + "</div>")
    return '<div class="efpn-kernels">' + ("".join(lines) or "<p>no kernels</p>") + "</div>"
