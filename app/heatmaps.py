"""Map pictures for the studio: heatmaps of feature maps, gates and kernels, and small colour thumbnails.

Pure builders (no Streamlit, no model): maps are drawn in their own cells (row i, column j), not over the image;
overlays on the image are in :mod:`app.figures`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from efpn.explain import normalize01

# ----------------------------------------------------------------------------------------------- heatmaps


def safe_colorscale(name: str | list) -> list:
    """A plotly colorscale with every colour as ``rgb(r, g, b)``. Streamlit's plotly theme sends its own colours as
    the placeholders ``#000001`` ... ``#000040`` and swaps them in the browser, so a scale that starts at
    ``#000004`` (Inferno, Magma) would draw its zero in a theme colour (a pink, not black); ``rgb()`` strings are
    left alone."""
    from plotly.colors import get_colorscale, hex_to_rgb

    scale = get_colorscale(name) if isinstance(name, str) else name
    out = []
    for pos, colour in scale:
        if isinstance(colour, str) and colour.startswith("#"):
            colour = "rgb({}, {}, {})".format(*hex_to_rgb(colour))
        out.append([float(pos), colour])
    return out



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


def maps_grid_figure(maps: Mapping[str, np.ndarray], colorscale: str = "Viridis", height: int = 260,
                     zmin: float | None = None, zmax: float | None = None, mark: tuple[int, int] | None = None,
                     colorbar_title: str | None = None) -> go.Figure:
    """Several (H, W) maps side by side, one subplot each, titled by key (RGB arrays as images). Titles are small,
    so several fit side by side on a narrow page; a ``<br>`` in a key breaks its title over two lines. ``mark``
    outlines cell (row, col) on every map (maps of one size)."""
    names = list(maps)
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, horizontal_spacing=0.02)
    for i, name in enumerate(names, start=1):
        a = np.asarray(maps[name])
        if a.ndim == 3:
            fig.add_trace(go.Image(z=a), row=1, col=i)
        else:
            fig.add_trace(go.Heatmap(z=a, colorscale=safe_colorscale(colorscale), zmin=zmin, zmax=zmax,
                                     showscale=i == len(names), colorbar=dict(thickness=10, title=colorbar_title),
                                     hovertemplate="x %{x}, y %{y}<br>%{z:.3g}<extra></extra>"), row=1, col=i)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{i if i > 1 else ''}", showticklabels=False,
                         showgrid=False, zeroline=False, ticks="", row=1, col=i)
        fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, ticks="", row=1, col=i)
        if mark is not None:
            _mark_cell(fig, mark, row=1, col=i)
    two_lines = any("<br>" in n for n in names)
    fig.update_layout(margin=dict(l=0, r=0, t=44 if two_lines else 30, b=0), height=height + (14 if two_lines else 0))
    for ann in fig.layout.annotations:
        ann.font.size = 12
    return fig


# ----------------------------------------------------------------------------------------------- thumbnails
# Plain PNGs (st.image) rather than plotly heatmaps: a dozen small pictures draw in the browser at once,
# where a dozen plotly charts take about a second (the Detect page's overview of the internals).

_LUTS: dict[str, np.ndarray] = {}


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


def kernel_grid_figure(rows: Mapping[str, np.ndarray | None], title: str | None = None,
                       cell_px: int = 86) -> go.Figure:
    """k x k kernels as annotated heatmaps: one row per kind (e.g. "D dynamic", "K guided", "S bank"),
    one column per group. Each value is (G, k, k); ``None`` rows are skipped."""
    kinds = [(name, np.asarray(v, dtype=float)) for name, v in rows.items() if v is not None]
    if not kinds:
        return go.Figure().update_layout(height=80, title="no kernels")
    groups = max(v.shape[0] for _, v in kinds)
    fig = make_subplots(
        rows=len(kinds), cols=groups, horizontal_spacing=0.01, vertical_spacing=0.08,
        subplot_titles=[f"{name} · g{g}" if g < v.shape[0] else "" for name, v in kinds for g in range(groups)],
    )
    for r, (name, v) in enumerate(kinds, start=1):
        lim = float(np.abs(v).max()) or 1.0
        signed = bool((v < 0).any())
        for g in range(v.shape[0]):
            fig.add_trace(go.Heatmap(
                z=v[g], zmin=-lim if signed else 0.0, zmax=lim,
                colorscale=safe_colorscale("RdBu_r" if signed else "Blues"), showscale=False,
                texttemplate="%{z:.3f}", textfont=dict(size=9),
                hovertemplate=f"{name} g{g}<br>row %{{y}}, col %{{x}}: %{{z:.4f}}<extra></extra>",
            ), row=r, col=g + 1)
    for i in range(1, len(kinds) * groups + 1):  # square cells whatever the page width
        fig.layout[f"yaxis{i if i > 1 else ''}"].update(scaleanchor=f"x{i if i > 1 else ''}", autorange="reversed",
                                                         showticklabels=False)
        fig.layout[f"xaxis{i if i > 1 else ''}"].update(showticklabels=False)
    fig.update_layout(margin=dict(l=0, r=0, t=40, b=0), height=max(160, cell_px * len(kinds) + 60), title=title)
    for ann in fig.layout.annotations:
        ann.font.size = 10
    return fig


def kernel_panels_figure(panels: Mapping[str, np.ndarray | None], diverging: tuple[str, ...] = (),
                         title: str | None = None, height: int = 300) -> go.Figure:
    """k x k kernels side by side and large, one panel each (e.g. D, K and S of one group), every value written in
    its cell. Panels with only non-negative values go from white (0) to dark blue (their largest value); panels named
    in ``diverging``, or holding a negative value, are red (positive) / blue (negative) around a white 0 on a
    symmetric range. ``None`` panels are skipped."""
    kinds = [(name, np.asarray(v, dtype=float)) for name, v in panels.items() if v is not None]
    if not kinds:
        return go.Figure().update_layout(height=80, title="no kernels")
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[n for n, _ in kinds], horizontal_spacing=0.04)
    for i, (name, v) in enumerate(kinds, start=1):
        lim = float(np.abs(v).max()) or 1.0
        signed = name in diverging or bool((v < 0).any())
        fig.add_trace(go.Heatmap(
            z=v, zmin=-lim if signed else 0.0, zmax=lim, showscale=False,
            colorscale=safe_colorscale("RdBu_r" if signed else "Blues"), texttemplate="%{z:.3f}",
            textfont=dict(size=14), xgap=1, ygap=1,
            hovertemplate=f"{name}<br>row %{{y}}, col %{{x}}: %{{z:.4f}}<extra></extra>",
        ), row=1, col=i)
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].update(scaleanchor=f"x{suffix}", autorange="reversed", showticklabels=False,
                                            showgrid=False, zeroline=False, ticks="")
        fig.layout[f"xaxis{suffix}"].update(showticklabels=False, showgrid=False, zeroline=False, ticks="")
    fig.update_layout(margin=dict(l=0, r=0, t=56 if title else 30, b=0), height=height, title=title,
                      plot_bgcolor="rgba(0,0,0,0)")
    for ann in fig.layout.annotations:
        ann.font.size = 14
    return fig
