"""Image figures for the studio: a picture in its own pixels with boxes, maps and pick targets drawn over it.

Pure plotly builders: arrays and dicts in, ``go.Figure`` out (no Streamlit, no model). Every figure here uses the
pixels of the image it shows, with pixel ``(row i, col j)`` covering ``[j, j+1) x [i, i+1)`` so xyxy boxes line
up exactly; a map of stride ``s`` is placed over the image pixels it covers (cell ``(i, j)`` spans
``[j*s, (j+1)*s)``). Large images are sent downscaled (a PNG data URI) but keep their original coordinates.
Charts are in :mod:`app.charts`, map pictures and thumbnails in :mod:`app.heatmaps`.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from app.heatmaps import encode_png, safe_colorscale
from efpn import level_colour
from efpn.explain import resize_map

#: Longest side (px) of an image sent to the browser; larger images are downscaled for display only.
DISPLAY_MAX_SIDE = 1024
#: Longest side (cells) of an attribution map sent to the browser.
ATTRIBUTION_MAX_SIDE = 256
GT_COLOUR = "#00e5ff"
STARVED_COLOUR = "#ff00ff"
FED_COLOUR = "#00e5ff"
#: Matching detections to ground truth: found objects, false alarms, missed objects (the captions name them so).
FOUND_COLOUR = "#00e676"
FALSE_ALARM_COLOUR = "#ff9100"
MISSED_COLOUR = "#ff1744"
#: The focused object (a missed one chosen on the Detect page) on every page.
FOCUS_COLOUR = "#ffffff"


# ----------------------------------------------------------------------------------------------- images


#: Encoded pictures kept by :func:`png_data_uri` (a few images: every page draws the same one again and again).
PNG_CACHE_SIZE = 8
_png_cache: OrderedDict[bytes, str] = OrderedDict()
_png_cache_lock = threading.Lock()


def png_data_uri(rgb: np.ndarray) -> str:
    """``rgb`` as a PNG data URI. Encoding a 640 px picture takes 15-55 ms and every image figure of every page run
    needs one, almost always of the same picture: the URIs are kept by content (a hash of the pixels, ~1 ms), last
    used first, so one image is encoded once per server, not once per figure per run."""
    arr = np.ascontiguousarray(rgb)
    h = hashlib.blake2b(repr((arr.shape, arr.dtype.str)).encode(), digest_size=16)
    h.update(arr.data)
    key = h.digest()
    with _png_cache_lock:
        hit = _png_cache.get(key)
        if hit is not None:
            _png_cache.move_to_end(key)
            return hit
    uri = "data:image/png;base64," + base64.b64encode(encode_png(arr)).decode("ascii")
    with _png_cache_lock:  # sessions run in threads of one process
        _png_cache[key] = uri
        while len(_png_cache) > PNG_CACHE_SIZE:
            _png_cache.popitem(last=False)
    return uri


def image_picture(rgb: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> dict[str, Any]:
    """An RGB (H, W, 3) uint8 image as a plotly layout image under the traces, in its own pixel coordinates: pixel
    ``(i, j)`` covers ``[j, j+1) x [i, i+1)`` (downscaled for transfer, stretched back over the same extent).

    A layout image rather than an ``Image`` trace: plotly places it without a trace's calc and autorange, and the
    figure's axes carry no tick labels to measure (the two cut drawing a 640 px image figure in Chromium from ~90 to
    ~30 ms). app/studio.css draws it pixelated, as the trace was, so a zoomed tiny object keeps its pixels."""
    h, w = rgb.shape[:2]
    k = max(1.0, max(h, w) / max_side)
    shown = rgb
    if k > 1.0:
        shown = np.asarray(Image.fromarray(rgb).resize((max(1, round(w / k)), max(1, round(h / k))), Image.BILINEAR))
    return dict(source=png_data_uri(shown), xref="x", yref="y", x=0, y=0, sizex=w, sizey=h, sizing="stretch",
                xanchor="left", yanchor="top", layer="below")


#: Legends of image figures: one row under the picture (clear of the toolbar that plotly shows over its top
#: right), on a dark strip so white marks (the focused object) show in the key as on the image.
IMAGE_LEGEND = dict(orientation="h", yref="container", y=0.0, yanchor="bottom", x=0, xanchor="left",
                    bgcolor="#31333f", font=dict(color="white", size=12))
#: Room under an image figure for the legend strip.
IMAGE_LEGEND_MARGIN = 36


def _image_layout(fig: go.Figure, hw: tuple[int, int], height: int | None, title: str | None = None) -> go.Figure:
    h, w = hw
    # no tick labels, as image viewers show none (map hovers give x, y): plotly measures every label in the DOM
    fig.update_xaxes(range=[0, w], showgrid=False, zeroline=False, constrain="domain", showticklabels=False, ticks="")
    fig.update_yaxes(range=[h, 0], showgrid=False, zeroline=False, scaleanchor="x", constrain="domain",
                     showticklabels=False, ticks="")
    fig.update_layout(
        margin=dict(l=0, r=0, t=30 if title else 0, b=IMAGE_LEGEND_MARGIN),
        height=(height or int(min(720, max(320, 640 * h / max(w, 1))))) + IMAGE_LEGEND_MARGIN,
        title=title,
        legend=IMAGE_LEGEND,
        hovermode="closest",
    )
    return fig


def image_figure(rgb: np.ndarray, height: int | None = None, title: str | None = None) -> go.Figure:
    """A bare image figure (axes in image pixels, y down): the picture as a layout image, traces go over it."""
    fig = go.Figure(layout=dict(images=[image_picture(rgb)]))
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


def matching_figure(
    rgb: np.ndarray,
    rows: Sequence[Mapping[str, Any]],
    gt_boxes: np.ndarray,
    gt_names: Sequence[str],
    gt_match: Sequence[int],
    gt_iou: Sequence[float],
    det_match: Sequence[int],
    causes: Mapping[int, str] | None = None,
    focus: int | None = None,
    focus_prior: Sequence[float] | None = None,
    height: int | None = None,
    tiles: np.ndarray | None = None,
) -> go.Figure:
    """The image with every object and detection drawn by what matching made of it: objects found (their GT box,
    solid green), false alarms (detections that found no object, dashed orange) and missed objects (GT box, thick
    solid red). ``rows`` as for :func:`detections_figure`; ``gt_match`` (M,) the detection that found each GT or -1,
    ``gt_iou`` its IoU, ``det_match`` (D,) the GT each detection found or -1; ``causes``: GT index -> cause of its
    miss (hover). Centre markers carry ``["det", i]`` (found: the detection that found it) or ``["gt", j]``
    (missed) as ``customdata``. ``focus``: a GT index ringed in white, with ``focus_prior`` (the best prior covering
    it, xyxy) dotted."""
    fig = image_figure(rgb, height)
    if tiles is not None and len(tiles):
        xs, ys = _outline(tiles)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="white", width=1, dash="dot"),
                                 hoverinfo="skip", name="tiles"))
    gt = np.asarray(gt_boxes, dtype=float).reshape(-1, 4)
    sizes = np.sqrt(np.clip(gt[:, 2] - gt[:, 0], 0, None) * np.clip(gt[:, 3] - gt[:, 1], 0, None))
    gt_match = [int(v) for v in gt_match]
    by_index = {int(r["index"]): r for r in rows}
    found = [j for j, d in enumerate(gt_match) if d >= 0]
    missed = [j for j, d in enumerate(gt_match) if d < 0]
    alarms = [r for r in rows if int(det_match[int(r["index"])]) == -1]  # not those in an ignore region (-2)

    def _gt_hover(j: int) -> str:
        head = f"GT {j} {gt_names[j]}<br>size {sizes[j]:.1f} px"
        d = gt_match[j]
        if d >= 0 and d in by_index:
            r = by_index[d]
            return f"{head}<br>found by #{d}: score {r['score']:.3f}, {r['level']}<br>IoU {float(gt_iou[j]):.2f}"
        cause = (causes or {}).get(j)
        return f"{head}<br>missed" + (f": {cause}" if cause else "")

    if alarms:
        add_boxes(fig, np.array([r["box"] for r in alarms]), FALSE_ALARM_COLOUR, "false alarm", width=2, dash="dash",
                  hover=[f"#{r['index']} {r['class']}<br>score {r['score']:.3f}<br>size {r['size']:.1f} px<br>"
                         f"level {r['level']}<br>false alarm: no object matched" for r in alarms],
                  customdata=[["det", int(r["index"])] for r in alarms])
    if found:
        add_boxes(fig, gt[found], FOUND_COLOUR, "found", width=2, hover=[_gt_hover(j) for j in found],
                  customdata=[["det", gt_match[j]] for j in found])
    if missed:
        add_boxes(fig, gt[missed], MISSED_COLOUR, "missed", width=3.5, hover=[_gt_hover(j) for j in missed],
                  customdata=[["gt", j] for j in missed], marker_size=9)
    if focus is not None and 0 <= focus < len(gt):
        add_focus_ring(fig, gt[focus])
        if focus_prior is not None:
            xs, ys = _outline(np.asarray([focus_prior], dtype=float))
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=FOCUS_COLOUR, width=1.5, dash="dot"),
                                     name="its best prior", hoverinfo="skip"))
    return fig


def focus_marker(x: float, y: float, size: int = 22, name: str = "focused object") -> list[go.Scatter]:
    """A white ring on a black one at (x, y), readable on light and dark maps: the focused object's centre. Two
    traces (add both; no legend entry, the pages' captions name it)."""
    return [go.Scatter(x=[x], y=[y], mode="markers", name=name, hoverinfo="skip", showlegend=False,
                       marker=dict(symbol="circle-open", size=size, color=colour, line=dict(width=w, color=colour)))
            for colour, w in (("black", 5), (FOCUS_COLOUR, 2.5))]


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
        z=z, x0=stride / 2, dx=stride, y0=stride / 2, dy=stride, opacity=opacity,
        colorscale=safe_colorscale(colorscale), zmin=zmin, zmax=zmax, colorbar=dict(title=colorbar_title, thickness=12),
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


# ----------------------------------------------------------------------------------------------- assignment


def assignment_figure(
    rgb: np.ndarray,
    gt_boxes: np.ndarray,
    gt_hover: Sequence[str],
    starved: Sequence[int],
    positives: Mapping[str, np.ndarray],
    height: int | None = None,
    positive_gt: Mapping[str, np.ndarray] | None = None,
    focus: int | None = None,
) -> go.Figure:
    """The image with GT boxes (starved ones thick magenta) and, per level, the positive priors' boxes.

    ``positives``: level -> (P_l, 4) prior boxes in image px (zero-size boxes are drawn as points). With ``focus``
    (a GT index) and ``positive_gt`` (level -> (P_l,) the GT each positive serves), that GT is ringed in white, its
    own positives drawn thick and every other positive faded.
    """
    fig = image_figure(rgb, height)
    for lv, boxes in positives.items():
        b = np.asarray(boxes, dtype=float).reshape(-1, 4)
        if not len(b):
            continue
        owners = np.asarray(positive_gt[lv]) if (positive_gt is not None and lv in positive_gt) else None
        mine = (owners == focus) if (focus is not None and owners is not None and len(owners) == len(b)) else None
        point = (b[:, 2] - b[:, 0] < 1e-6) & (b[:, 3] - b[:, 1] < 1e-6)
        groups = [(np.ones(len(b), bool), f"{lv} positives", 0.8, 1.0)] if mine is None else [
            (~mine, f"{lv} positives (other GTs)", 0.25, 1.0), (mine, f"{lv} positives of GT {focus}", 1.0, 2.5)]
        for sel, name, opacity, width in groups:
            if (sel & ~point).any():
                xs, ys = _outline(b[sel & ~point])
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=level_colour(lv), width=width),
                                         opacity=opacity, name=name, legendgroup=name, hoverinfo="skip"))
            if (sel & point).any():
                fig.add_trace(go.Scatter(x=b[sel & point, 0], y=b[sel & point, 1], mode="markers", name=name,
                                         marker=dict(color=level_colour(lv), size=6 + 2 * width, symbol="x"),
                                         opacity=opacity, legendgroup=name, hoverinfo="skip"))
    gt = np.asarray(gt_boxes, dtype=float).reshape(-1, 4)
    starved_set = set(int(i) for i in starved)
    fed = [i for i in range(len(gt)) if i not in starved_set]
    hungry = [i for i in range(len(gt)) if i in starved_set]
    if fed:
        add_boxes(fig, gt[fed], FED_COLOUR, "GT with positives", hover=[gt_hover[i] for i in fed], width=1.5)
    if hungry:
        add_boxes(fig, gt[hungry], STARVED_COLOUR, "starved GT", hover=[gt_hover[i] for i in hungry], width=3)
    if focus is not None and 0 <= focus < len(gt):
        add_focus_ring(fig, gt[focus])
    return fig


def add_focus_ring(fig: go.Figure, box: Sequence[float], name: str = "focused object") -> go.Figure:
    """A white square (black-edged) around ``box`` (xyxy), padded so a 4 px object's ring is still seen."""
    x1, y1, x2, y2 = (float(v) for v in box)
    pad = max(4.0, 0.6 * max(x2 - x1, y2 - y1))
    xs, ys = _outline(np.array([[x1 - pad, y1 - pad, x2 + pad, y2 + pad]]))
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="black", width=4), hoverinfo="skip",
                             showlegend=False, legendgroup=name))
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=FOCUS_COLOUR, width=2), hoverinfo="skip",
                             name=name, legendgroup=name))
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


# ----------------------------------------------------------------------------------------------- attribution


def attribution_grid(
    picture_hw: tuple[int, int], max_side: int = ATTRIBUTION_MAX_SIDE
) -> tuple[tuple[int, int], float]:
    """How an attribution map over a picture of ``picture_hw`` (H, W) is sent to the browser: the (h', w') cells it
    is resized to (long side ``max_side``) and the picture pixels one cell spans."""
    h, w = picture_hw
    k = max_side / max(h, w)
    return (max(1, round(h * k)), max(1, round(w * k))), 1 / k


def zoom_window(box: Sequence[float], hw: tuple[int, int], factor: float = 8.0,
                min_side: float = 64.0) -> tuple[float, float, float, float]:
    """A square view (x1, y1, x2, y2) around an xyxy ``box`` of an (H, W) picture: side ``factor`` times the box's
    longer side, at least ``min_side`` px, at most the picture's shorter side; centred on the box and shifted to stay
    inside the picture. A tiny object's attribution lives in a few pixels: seen over the whole picture it is a dot."""
    h, w = hw
    x1, y1, x2, y2 = (float(v) for v in box)
    side = min(max(factor * max(x2 - x1, y2 - y1), min_side), float(h), float(w))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    vx = min(max(cx - side / 2, 0.0), w - side)
    vy = min(max(cy - side / 2, 0.0), h - side)
    return vx, vy, vx + side, vy + side


def attribution_figure(rgb: np.ndarray, attribution: np.ndarray, boxes: np.ndarray, title: str,
                       height: int = 380, view: Sequence[float] | None = None) -> go.Figure:
    """A signed attribution map over the (H, W, 3) picture it explains (same pixels): red positive, blue negative on
    a symmetric scale (the map's largest |value|), sent at :func:`attribution_grid` cells, with ``boxes`` (M, 4) in
    the picture's pixels (no legend: the box drawn is the one explained). ``view`` (x1, y1, x2, y2, e.g.
    :func:`zoom_window`) opens the figure on that part of the picture; plotly's autoscale shows all of it."""
    cells, cell_px = attribution_grid(rgb.shape[:2])
    lim = float(np.abs(attribution).max()) or 1.0
    fig = heatmap_overlay_figure(rgb, resize_map(attribution, cells), cell_px, 0.6, colorscale="RdBu_r", zmin=-lim,
                                 zmax=lim, boxes=boxes, box_colour="#00e676", height=height, title=title)
    if view is not None:
        vx1, vy1, vx2, vy2 = (float(v) for v in view)
        fig.update_xaxes(range=[vx1, vx2])
        fig.update_yaxes(range=[vy2, vy1])  # y down, as the picture
    # the colour key lies under the picture, across: in a narrow column a key beside it would take the picture's
    # width, and a key as tall as the figure would dwarf a picture the column's width has made short
    fig.update_traces(colorbar=dict(orientation="h", thickness=10, len=1.0, x=0, xanchor="left", y=0,
                                    yref="container", yanchor="bottom", title=None), selector=dict(type="heatmap"))
    fig.update_layout(margin=dict(b=IMAGE_LEGEND_MARGIN + 24), height=fig.layout.height + 24)
    return fig.update_layout(showlegend=False)  # the one box is the one explained; the title keeps the top
