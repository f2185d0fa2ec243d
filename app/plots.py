"""Pure plotly figure builders for the studio: arrays and dicts in, ``go.Figure`` out (no Streamlit, no model).

Coordinates: every image figure uses the pixels of the image it shows, with pixel ``(row i, col j)``
covering ``[j, j+1) x [i, i+1)`` so xyxy boxes line up exactly; a map of stride ``s`` is placed over the
input pixels it covers (cell ``(i, j)`` spans ``[j*s, (j+1)*s)``). Large images are sent downscaled (a PNG
data URI) but keep their original coordinates.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from efpn.explain.maps import level_colour, normalize01
from efpn.vocab import BUCKET_LABELS, BUCKETS

#: Longest side (px) of an image sent to the browser; larger images are downscaled for display only.
DISPLAY_MAX_SIDE = 1024
GT_COLOUR = "#00e5ff"
STARVED_COLOUR = "#ff00ff"
FED_COLOUR = "#00e5ff"


# ----------------------------------------------------------------------------------------------- images


def _png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_trace(rgb: np.ndarray, max_side: int = DISPLAY_MAX_SIDE, opacity: float = 1.0) -> go.Image:
    """An RGB (H, W, 3) uint8 image as a trace in its own pixel coordinates (downscaled for transfer)."""
    h, w = rgb.shape[:2]
    k = max(1.0, max(h, w) / max_side)
    shown = rgb
    if k > 1.0:
        shown = np.asarray(Image.fromarray(rgb).resize((max(1, round(w / k)), max(1, round(h / k))), Image.BILINEAR))
    dx, dy = w / shown.shape[1], h / shown.shape[0]
    return go.Image(source=_png_data_uri(shown), x0=dx / 2, y0=dy / 2, dx=dx, dy=dy, opacity=opacity, hoverinfo="skip")


def _image_layout(fig: go.Figure, hw: tuple[int, int], height: int | None, title: str | None = None) -> go.Figure:
    h, w = hw
    fig.update_xaxes(range=[0, w], showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(range=[h, 0], showgrid=False, zeroline=False, scaleanchor="x", constrain="domain")
    fig.update_layout(
        margin=dict(l=0, r=0, t=30 if title else 0, b=0),
        height=height or int(min(720, max(320, 640 * h / max(w, 1)))),
        title=title,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        hovermode="closest",
    )
    return fig


def image_figure(rgb: np.ndarray, height: int | None = None, title: str | None = None) -> go.Figure:
    """A bare image figure (axes in image pixels, y down)."""
    fig = go.Figure(image_trace(rgb))
    return _image_layout(fig, rgb.shape[:2], height, title)


def _outline(boxes: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Closed rectangles as one polyline with ``None`` breaks."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=float).reshape(-1, 4).tolist():
        xs += [x1, x2, x2, x1, x1, None]
        ys += [y1, y1, y2, y2, y1, None]
    return xs, ys


def add_boxes(
    fig: go.Figure,
    boxes: np.ndarray,
    colour: str,
    name: str,
    hover: Sequence[str] | None = None,
    width: float = 2.0,
    dash: str | None = None,
    customdata: Sequence[Any] | None = None,
    showlegend: bool = True,
    marker_size: int = 7,
) -> go.Figure:
    """Outline ``boxes`` (M, 4) and put a hoverable (and selectable) marker at each centre."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    if len(b) == 0:
        return fig
    xs, ys = _outline(b)
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="lines", line=dict(color=colour, width=width, dash=dash), hoverinfo="skip",
        name=name, legendgroup=name, showlegend=showlegend,
    ))
    fig.add_trace(go.Scatter(
        x=(b[:, 0] + b[:, 2]) / 2, y=(b[:, 1] + b[:, 3]) / 2, mode="markers",
        marker=dict(color=colour, size=marker_size, opacity=0.55, line=dict(width=1, color="black")),
        text=list(hover) if hover is not None else None, hovertemplate="%{text}<extra></extra>",
        customdata=list(customdata) if customdata is not None else None,
        name=name, legendgroup=name, showlegend=False,
    ))
    return fig


def detections_figure(
    rgb: np.ndarray,
    rows: Sequence[Mapping[str, Any]],
    gt_boxes: np.ndarray | None = None,
    height: int | None = None,
    title: str | None = None,
    tiles: np.ndarray | None = None,
) -> go.Figure:
    """The image with detections coloured by the level that produced them.

    ``rows``: one mapping per detection with ``box`` (xyxy), ``class``, ``score``, ``size`` (sqrt(wh)),
    ``level`` and ``index``. Hover shows class, score, size and level; each centre marker carries the
    detection index as ``customdata`` (so a click can select it). Optional GT boxes (dashed) and slicing tiles.
    """
    fig = image_figure(rgb, height, title)
    if tiles is not None and len(tiles):
        xs, ys = _outline(tiles)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="white", width=1, dash="dot"),
                                 hoverinfo="skip", name="tiles"))
    if gt_boxes is not None and len(gt_boxes):
        add_boxes(fig, gt_boxes, GT_COLOUR, "ground truth", hover=[f"GT {i}" for i in range(len(gt_boxes))],
                  width=1.5, dash="dash", marker_size=4)
    levels = sorted({r["level"] for r in rows}, key=lambda s: (len(s), s))
    for lv in levels:
        sel = [r for r in rows if r["level"] == lv]
        hover = [
            f"#{r['index']} {r['class']}<br>score {r['score']:.3f}<br>size {r['size']:.1f} px<br>level {lv}"
            for r in sel
        ]
        add_boxes(fig, np.array([r["box"] for r in sel]), level_colour(lv), lv, hover=hover,
                  customdata=[r["index"] for r in sel])
    return fig


def heatmap_overlay_figure(
    rgb: np.ndarray,
    z: np.ndarray,
    stride: float,
    opacity: float = 0.5,
    colorscale: str = "Turbo",
    zmin: float | None = None,
    zmax: float | None = None,
    boxes: np.ndarray | None = None,
    box_colour: str = GT_COLOUR,
    height: int | None = None,
    title: str | None = None,
    colorbar_title: str | None = None,
) -> go.Figure:
    """The image with a (h, w) map of ``stride`` px per cell drawn over it at ``opacity``."""
    fig = image_figure(rgb, height, title)
    z = np.asarray(z, dtype=float)
    fig.add_trace(go.Heatmap(
        z=z, x0=stride / 2, dx=stride, y0=stride / 2, dy=stride, opacity=opacity, colorscale=colorscale,
        zmin=zmin, zmax=zmax, colorbar=dict(title=colorbar_title, thickness=12),
        hovertemplate="x %{x:.0f}, y %{y:.0f}<br>value %{z:.3g}<extra></extra>",
    ))
    if boxes is not None and len(boxes):
        add_boxes(fig, boxes, box_colour, "boxes", width=1.5, marker_size=3)
    return fig


def pick_grid_trace(hw: tuple[int, int], stride: float, max_points: int = 40_000) -> go.Scattergl:
    """Invisible markers at the centre of every ``stride`` cell of an (H, W) image, so a click anywhere
    selects the cell under the cursor (plotly selects points, not image pixels). Coarsened past
    ``max_points``."""
    h, w = hw
    s = float(stride)
    while (h / s) * (w / s) > max_points:
        s *= 2
    xs = np.arange(s / 2, w, s)
    ys = np.arange(s / 2, h, s)
    gx, gy = np.meshgrid(xs, ys)
    return go.Scattergl(
        x=gx.ravel(), y=gy.ravel(), mode="markers", marker=dict(size=max(4, min(30, s)), opacity=0.0),
        hovertemplate="x %{x:.0f}, y %{y:.0f}<extra>click to pick</extra>", name="pick", showlegend=False,
    )


def map_figure(a: np.ndarray, title: str | None = None, colorscale: str = "Viridis", height: int = 240,
               zmid: float | None = None) -> go.Figure:
    """A small picture of one map: (H, W) heatmap or (H, W, 3) uint8 RGB."""
    a = np.asarray(a)
    if a.ndim == 3:
        fig = go.Figure(go.Image(z=a, hovertemplate="x %{x}, y %{y}<extra></extra>"))
    else:
        fig = go.Figure(go.Heatmap(z=a, colorscale=colorscale, zmid=zmid, colorbar=dict(thickness=10),
                                   hovertemplate="x %{x}, y %{y}<br>%{z:.3g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(margin=dict(l=0, r=0, t=28 if title else 0, b=0), height=height, title=title)
    return fig


def maps_grid_figure(maps: Mapping[str, np.ndarray], colorscale: str = "Viridis", height: int = 260,
                     zmin: float | None = None, zmax: float | None = None) -> go.Figure:
    """Several (H, W) maps side by side, one subplot each, titled by key (RGB arrays as images)."""
    names = list(maps)
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, horizontal_spacing=0.02)
    for i, name in enumerate(names, start=1):
        a = np.asarray(maps[name])
        if a.ndim == 3:
            fig.add_trace(go.Image(z=a), row=1, col=i)
        else:
            fig.add_trace(go.Heatmap(z=a, colorscale=colorscale, zmin=zmin, zmax=zmax, showscale=i == len(names),
                                     colorbar=dict(thickness=10),
                                     hovertemplate="x %{x}, y %{y}<br>%{z:.3g}<extra></extra>"), row=1, col=i)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{i if i > 1 else ''}", showticklabels=False,
                         row=1, col=i)
        fig.update_xaxes(showticklabels=False, row=1, col=i)
    fig.update_layout(margin=dict(l=0, r=0, t=30, b=0), height=height)
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
    [0, 1] for gates, so two images compare); otherwise robust percentiles (``efpn.explain.maps.normalize01``)."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"colorize needs a (H, W) map, got shape {a.shape}")
    if zmin is not None and zmax is not None and zmax > zmin:
        u = np.clip((np.nan_to_num(a, nan=zmin) - zmin) / (zmax - zmin), 0.0, 1.0)
    else:
        u = normalize01(a)
    return colour_lut(colorscale)[np.rint(u * 255).astype(np.int64)]


def thumbnail(a: np.ndarray, colorscale: str = "Viridis", side: int = 160, zmin: float | None = None,
              zmax: float | None = None) -> np.ndarray:
    """A map (H, W) or an RGB (H, W, 3) uint8 picture as a small RGB uint8 image whose long side is about
    ``side`` px: coarse maps are enlarged by an integer factor (nearest, cells stay square), large ones shrunk."""
    a = np.asarray(a)
    rgb = a if (a.ndim == 3 and a.dtype == np.uint8) else colorize(a, colorscale, zmin, zmax)
    h, w = rgb.shape[:2]
    k = side / max(h, w, 1)
    if k >= 2:
        f = int(k)
        return np.ascontiguousarray(rgb.repeat(f, axis=0).repeat(f, axis=1))
    if k < 1:
        size = (max(1, round(w * k)), max(1, round(h * k)))
        return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.BILINEAR))
    return np.ascontiguousarray(rgb)


def level_summary_figure(levels: Sequence[str], detections: Mapping[str, int], positives: Mapping[str, int] | None,
                         height: int = 260) -> go.Figure:
    """Per level: detections kept after NMS and, when given, the positives the model's assigner gives the
    boxes. Zero bars are labelled "0", so a level that never sees an object stands out."""
    traces = [go.Bar(x=list(levels), y=[detections.get(lv, 0) for lv in levels], name="detections",
                     marker_color=[level_colour(lv) for lv in levels], text=[detections.get(lv, 0) for lv in levels],
                     textposition="outside", hovertemplate="%{x}: %{y} detections<extra></extra>")]
    if positives is not None:
        traces.append(go.Bar(x=list(levels), y=[positives.get(lv, 0) for lv in levels], name="positive anchors",
                             marker_color="#9e9e9e", text=[positives.get(lv, 0) for lv in levels],
                             textposition="outside", hovertemplate="%{x}: %{y} positive priors<extra></extra>"))
    fig = go.Figure(traces)
    fig.update_layout(barmode="group", height=height, margin=dict(l=0, r=0, t=10, b=0),
                      legend=dict(orientation="h", y=-0.15), yaxis=dict(rangemode="tozero"))
    return fig


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
                z=v[g], zmin=-lim if signed else 0.0, zmax=lim, colorscale="RdBu_r" if signed else "Blues",
                showscale=False, texttemplate="%{z:.3f}", textfont=dict(size=9),
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


# ----------------------------------------------------------------------------------------------- assignment


def positives_bar_figure(accounting: Mapping[str, Any], title: str = "Positives per level") -> go.Figure:
    """Stacked bars per level: regular positives and fallback (low-quality) ones."""
    levels = list(accounting["levels"])
    pos = [accounting["positives_per_level"][lv] for lv in levels]
    fb = [accounting["fallback_per_level"].get(lv, 0) for lv in levels]
    reg = [p - f for p, f in zip(pos, fb)]
    fig = go.Figure([
        go.Bar(x=levels, y=reg, name="regular", marker_color=[level_colour(lv) for lv in levels],
               hovertemplate="%{x}: %{y} regular positives<extra></extra>"),
        go.Bar(x=levels, y=fb, name="fallback (low-quality)", marker_color="#9e9e9e",
               hovertemplate="%{x}: %{y} fallback positives<extra></extra>"),
    ])
    fig.update_layout(barmode="stack", title=title, height=300, margin=dict(l=0, r=0, t=40, b=0),
                      yaxis_title="positive (prior, GT) pairs", legend=dict(orientation="h", y=-0.2))
    return fig


def level_bucket_figure(accounting: Mapping[str, Any], title: str = "Positives: level x object size") -> go.Figure:
    """Heatmap of positives per (level, size bucket), counts written in the cells."""
    levels = list(accounting["levels"])
    z = np.array([[accounting["per_level_bucket"][lv].get(b, 0) for b in BUCKETS] for lv in levels], dtype=float)
    fig = go.Figure(go.Heatmap(
        z=z, x=[BUCKET_LABELS[b] for b in BUCKETS], y=levels, colorscale="Blues", texttemplate="%{z:.0f}",
        hovertemplate="%{y} x %{x}: %{z:.0f} positives<extra></extra>", showscale=False,
    ))
    fig.update_layout(title=title, height=60 + 42 * len(levels), margin=dict(l=0, r=0, t=40, b=0))
    fig.update_yaxes(autorange="reversed")
    return fig


def histogram_figure(histogram: Sequence[int], title: str = "Positives per GT") -> go.Figure:
    """Bar chart of how many GTs got exactly k positives (k = 0 are the starved ones)."""
    ks = list(range(len(histogram)))
    colours = [STARVED_COLOUR if k == 0 else "#5c6bc0" for k in ks]
    fig = go.Figure(go.Bar(x=ks, y=list(histogram), marker_color=colours,
                           hovertemplate="%{y} GTs with %{x} positives<extra></extra>"))
    fig.update_layout(title=title, height=260, margin=dict(l=0, r=0, t=40, b=0),
                      xaxis_title="positives of a GT", yaxis_title="GTs")
    return fig


def assignment_figure(
    rgb: np.ndarray,
    gt_boxes: np.ndarray,
    gt_hover: Sequence[str],
    starved: Sequence[int],
    positives: Mapping[str, np.ndarray],
    height: int | None = None,
) -> go.Figure:
    """The image with GT boxes (starved ones thick red) and, per level, the positive priors' boxes.

    ``positives``: level -> (P_l, 4) prior boxes in image px (zero-size boxes are drawn as points).
    """
    fig = image_figure(rgb, height)
    for lv, boxes in positives.items():
        b = np.asarray(boxes, dtype=float).reshape(-1, 4)
        if not len(b):
            continue
        point = (b[:, 2] - b[:, 0] < 1e-6) & (b[:, 3] - b[:, 1] < 1e-6)
        if (~point).any():
            xs, ys = _outline(b[~point])
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=level_colour(lv), width=1),
                                     opacity=0.8, name=f"{lv} positives", legendgroup=lv, hoverinfo="skip"))
        if point.any():
            fig.add_trace(go.Scatter(x=b[point, 0], y=b[point, 1], mode="markers", name=f"{lv} positives",
                                     marker=dict(color=level_colour(lv), size=6, symbol="x"),
                                     legendgroup=lv, hoverinfo="skip"))
    gt = np.asarray(gt_boxes, dtype=float).reshape(-1, 4)
    starved_set = set(int(i) for i in starved)
    fed = [i for i in range(len(gt)) if i not in starved_set]
    hungry = [i for i in range(len(gt)) if i in starved_set]
    if fed:
        add_boxes(fig, gt[fed], FED_COLOUR, "GT with positives", hover=[gt_hover[i] for i in fed], width=1.5)
    if hungry:
        add_boxes(fig, gt[hungry], STARVED_COLOUR, "starved GT", hover=[gt_hover[i] for i in hungry], width=3)
    return fig


def draw_gt_figure(rgb: np.ndarray, gt_boxes: np.ndarray, height: int | None = None) -> go.Figure:
    """The image with the current GT boxes, in box-select mode: drag a rectangle to add a box."""
    fig = image_figure(rgb, height)
    h, w = rgb.shape[:2]
    fig.add_trace(pick_grid_trace((h, w), max(2.0, max(h, w) / 64)))
    if len(gt_boxes):
        add_boxes(fig, gt_boxes, GT_COLOUR, "ground truth", hover=[f"GT {i}" for i in range(len(gt_boxes))])
    fig.update_layout(dragmode="select", newselection=dict(line=dict(color=GT_COLOUR, width=2)))
    return fig


# ----------------------------------------------------------------------------------------------- gradients


_PLACES = {"head_input": "head input", "feature": "feature (all paths)", "output_conv": "output conv θ"}


def gradient_reach_figure(
    with_cem: Mapping[str, float], without_cem: Mapping[str, float] | None, part: str = "positive",
    title: str | None = None,
) -> go.Figure:
    """Grouped bars of ‖∂L/∂·‖ at each level and place, with CEM and with CEM bypassed (log scale).

    Inputs are :func:`efpn.explain.gradient.gradient_reach` dicts; ``part`` is ``"positive"`` or ``"total"``.
    Exact zeros are drawn at the bottom of the axis and labelled "0".
    """
    keys = [k for k in with_cem if k.endswith(f".{part}") and not k.startswith("loss.")]
    labels = [f"{k.split('.')[0]} · {_PLACES.get(k.split('.')[1], k.split('.')[1])}" for k in keys]
    series = [("with CEM", with_cem, "#3949ab")]
    if without_cem is not None:
        series.append(("CEM bypassed (baseline FPN)", without_cem, "#9e9e9e"))
    positive_vals = [v for _, d, _ in series for k in keys if (v := d.get(k, 0.0)) > 0]
    floor = (min(positive_vals) / 10) if positive_vals else 1e-12
    fig = go.Figure()
    for name, d, colour in series:
        vals = [d.get(k, 0.0) for k in keys]
        fig.add_trace(go.Bar(
            x=labels, y=[v if v > 0 else floor for v in vals], name=name, marker_color=colour,
            text=["0" if v == 0 else f"{v:.2e}" for v in vals], textposition="outside", textfont=dict(size=9),
            hovertemplate="%{x}<br>%{text}<extra>" + name + "</extra>",
        ))
    fig.update_layout(
        barmode="group", height=340, margin=dict(l=0, r=0, t=40, b=0), legend=dict(orientation="h", y=-0.35),
        title=title or f"Gradient norm reaching the coarse levels ({part} loss)", yaxis_type="log",
        yaxis_title="‖gradient‖",
    )
    return fig


# ----------------------------------------------------------------------------------------------- attribution


def deletion_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    aucs: Mapping[str, float] | None = None) -> go.Figure:
    """Deletion curves: target score vs share of pixels removed (most important first)."""
    fig = go.Figure()
    for name, (fr, sc) in curves.items():
        label = f"{name} (AUC {aucs[name]:.2f})" if aucs and name in aucs else name
        fig.add_trace(go.Scatter(x=[100 * f for f in fr], y=list(sc), mode="lines+markers", name=label,
                                 line=dict(dash="dot" if name == "random" else "solid")))
    fig.update_layout(title="Deletion curve (lower = the map found what the score depends on)", height=320,
                      xaxis_title="% of pixels removed", yaxis_title="target score",
                      margin=dict(l=0, r=0, t=40, b=0), legend=dict(orientation="h", y=-0.3))
    return fig


# ----------------------------------------------------------------------------------------------- compare / learn


def ap_by_size_figure(metrics: Mapping[str, Mapping[str, Any]]) -> go.Figure:
    """Grouped bars of AP per size bucket, one series per checkpoint (missing values skipped)."""
    keys = [f"AP_{b}" for b in BUCKETS]
    fig = go.Figure()
    for name, m in metrics.items():
        ys = [m.get(k) for k in keys]
        fig.add_trace(go.Bar(x=[BUCKET_LABELS[b] for b in BUCKETS], y=[y if y is not None else 0 for y in ys],
                             text=["n/a" if y is None else f"{y:.3f}" for y in ys], textposition="outside",
                             name=name))
    fig.update_layout(barmode="group", title="AP@[.50:.95] by object size", yaxis_title="AP", height=340,
                      margin=dict(l=0, r=0, t=40, b=0), legend=dict(orientation="h", y=-0.25))
    return fig


def counts_by_level_figure(counts: Mapping[str, Mapping[str, int]], title: str = "Detections per level") -> go.Figure:
    """Grouped bars: per series (e.g. checkpoint), the number of detections per level."""
    fig = go.Figure()
    for name, per_level in counts.items():
        fig.add_trace(go.Bar(x=list(per_level), y=list(per_level.values()), name=name))
    fig.update_layout(barmode="group", title=title, height=280, margin=dict(l=0, r=0, t=40, b=0),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def candidates_figure(before_nms: Mapping[str, int], after_nms: Mapping[str, int]) -> go.Figure:
    """Locations above the score threshold per level, and detections kept after NMS."""
    levels = list(before_nms)
    fig = go.Figure([
        go.Bar(x=levels, y=[before_nms[lv] for lv in levels], name="above threshold (before NMS)",
               marker_color="#90caf9"),
        go.Bar(x=levels, y=[after_nms.get(lv, 0) for lv in levels], name="kept after NMS",
               marker_color=[level_colour(lv) for lv in levels]),
    ])
    fig.update_layout(barmode="group", height=300, margin=dict(l=0, r=0, t=40, b=0),
                      title="Decoding and NMS per level", legend=dict(orientation="h", y=-0.3))
    return fig
