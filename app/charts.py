"""Charts for the studio: bars, histograms and curves of counts and measurements (no image coordinates).

Pure builders: dicts in, a ``go.Figure`` (or, for a handful of bars that need no zoom, static HTML for
``st.html``: less browser work than a plotly chart, measured under the profiler) out; no Streamlit, no model. Bars of
a pyramid level take the level's colour (``efpn.level_colour``), as its boxes do in :mod:`app.figures`.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from app.figures import FOUND_COLOUR, MISSED_COLOUR, STARVED_COLOUR
from app.heatmaps import safe_colorscale
from efpn import BUCKET_LABELS, BUCKETS, level_colour

#: A legend in one row between the title and the plot: clear of tick labels that rotate on narrow pages.
_LEGEND_ON_TOP = dict(orientation="h", yanchor="bottom", y=1.0, x=0, xanchor="left")
#: Top margin that holds a title and, below it, a legend on top.
_TOP_WITH_LEGEND = 72


# ----------------------------------------------------------------------------------------------- detections


#: One series of :func:`bars_html`: its name, one value per category, and its colour (one, or one per category).
BarSeries = tuple[str, Sequence[float], "str | Sequence[str]"]


def _ink(colour: str) -> str:
    """Black or white text, whichever reads on a ``#rrggbb`` colour (white on anything else)."""
    if len(colour) == 7 and colour.startswith("#"):
        r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
        return "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else "#fff"
    return "#fff"


def _num(v: float) -> str:
    return f"{v:g}" if float(v).is_integer() else f"{v:.3g}"


def bars_html(categories: Sequence[str], series: Sequence[BarSeries], *, stacked: bool = False, height: int = 150,
              label: str = "bar chart", log: bool = False, fmt: Callable[[float], str] | None = None,
              upright: bool = False) -> str:
    """Bars per category as static HTML for ``st.html`` (styled by ``.efpn-bars`` in app/studio.css): grouped side
    by side, or ``stacked``. Every bar has its value written on it (above a grouped bar, inside a stacked segment
    tall enough) and a hover title; a zero is written "0" on the baseline, so a category with nothing stands out.
    The legend sits on top; ``height`` (px) is the tallest bar's. Text takes the theme's colour. Each bar carries
    ``data-series``, ``data-category`` and ``data-value``. ``label``: what a screen reader says the chart is.
    ``log`` (grouped bars only): heights on a log scale from a tenth of the smallest value above 0 (so that value
    still has a bar) up to the largest; a 0 has no bar and is written "0" on the baseline, as on a linear scale.
    ``fmt`` writes the values (default: up to 3 significant digits); ``upright`` writes them bottom to top over their
    bars, for many bars on a narrow page."""
    num = fmt or _num
    if log and stacked:
        raise ValueError("bars_html: a log scale applies to grouped bars only (stacked segments would not add up)")
    n = len(categories)
    tops = ([sum(float(s[1][i]) for s in series) for i in range(n)] if stacked
            else [float(v) for s in series for v in s[1]])
    top = max([*tops, 0.0]) or 1.0
    above = [v for v in tops if v > 0]
    floor = min(above) / 10 if above else 1.0

    def scaled(v: float) -> float:  # the bar's share of ``height``
        if not log:
            return v / top
        return 0.0 if v <= 0 else float(np.log10(v / floor) / np.log10(top / floor))

    def colours(s: BarSeries) -> list[str]:  # one per category, or the series' one colour
        return [s[2]] if isinstance(s[2], str) else list(s[2])

    def bar(s: BarSeries, i: int) -> str:
        v = float(s[1][i])
        cs = colours(s)
        colour = cs[i % len(cs)]
        name, cat = html.escape(s[0]), html.escape(categories[i])
        h = round(height * scaled(v), 1)
        inside = f"<span>{num(v)}</span>" if stacked and h >= 16 else ""
        return (f'<div class="efpn-bar" style="height:{h}px;background:{colour};color:{_ink(colour)}" '
                f'title="{cat}: {num(v)} {name}" '
                f'data-series="{name}" data-category="{cat}" data-value="{num(v)}">{inside}</div>')

    keys = []
    for s in series:  # one swatch per series, split between its first (up to) 3 colours
        cs = colours(s)[:3]
        swatch = "".join(f'<i style="background:{c};width:{0.9 / len(cs):.2f}rem"></i>' for c in cs)
        keys.append(f'<span class="efpn-bars-key">{swatch}{html.escape(s[0])}</span>')
    legend = "".join(keys)
    cells = []
    for i in range(n):
        if stacked:  # segments bottom-up in series order
            body = '<div class="efpn-bars-stack">' + "".join(bar(s, i) for s in reversed(series)) + "</div>"
        else:
            body = "".join(f'<div class="efpn-bars-one"><span>{num(float(s[1][i]))}</span>{bar(s, i)}</div>'
                           for s in series)
        cells.append(f'<div class="efpn-bars-plot">{body}</div>')
    names = "".join(f"<div>{html.escape(cat)}</div>" for cat in categories)
    # upright values: many grouped bars on a narrow page have no room for "2.5e-4" side by side, and a value written
    # over its neighbour's reads as one number
    kind = "efpn-bars efpn-bars-upright" if upright else "efpn-bars"
    return (f'<div class="{kind}" role="img" aria-label="{html.escape(label)}">'
            f'<div class="efpn-bars-legend">{legend}</div><div class="efpn-bars-row">{"".join(cells)}</div>'
            f'<div class="efpn-bars-names">{names}</div></div>')


def level_summary_html(levels: Sequence[str], detections: Mapping[str, int], positives: Mapping[str, int] | None,
                      height: int = 140) -> str:
    """Per level: detections kept after NMS (bars in the level's colour) and, when given, the positives the model's
    assigner gives the boxes (grey), as :func:`bars_html`. Zero bars are written "0", so a level that never sees an
    object stands out."""
    series: list[BarSeries] = [("detections", [detections.get(lv, 0) for lv in levels],
                                [level_colour(lv) for lv in levels])]
    if positives is not None:
        series.append(("positive anchors", [positives.get(lv, 0) for lv in levels], "#9e9e9e"))
    return bars_html(levels, series, height=height, label="Detections and positive anchors per level")


def found_missed_html(counts: Mapping[str, Mapping[str, int]], height: int = 130) -> str:
    """Stacked bars per size bucket (vt ... l): objects found (green) and missed (red), the colours of the image's
    boxes, as :func:`bars_html`; the count is written in each segment."""
    series: list[BarSeries] = [
        ("found", [counts.get(b, {}).get("found", 0) for b in BUCKETS], FOUND_COLOUR),
        ("missed", [counts.get(b, {}).get("missed", 0) for b in BUCKETS], MISSED_COLOUR),
    ]
    return bars_html(list(BUCKETS), series, stacked=True, height=height,
                    label="Objects found and missed per size bucket")


#: One colour per miss cause (``efpn.explain.CAUSES``): reds for the score, the assignment's magenta for starved.
#: Mid tones, at least 3:1 against the dark theme's background as against the light one's.
CAUSE_COLOURS: dict[str, str] = {
    "starved": STARVED_COLOUR, "gated_out": "#8d6e63", "never_scored": "#d32f2f", "under_threshold": "#ff5252",
    "lost_in_nms": "#ffab40", "mislocalised": "#90a4ae",
}


def count_axis(largest: float, **extra: Any) -> dict[str, Any]:
    """Axis settings for counts up to ``largest``: whole-number ticks from 0 (plotly's own choice for a small
    range is 0.5 steps, and "1.5 GTs" reads as a fraction of an object), plus ``extra`` (title, ...)."""
    top = max(1.0, float(largest))
    step = next((s for s in (1, 2, 5) if top / s <= 8), None)  # None: plotly's steps, whole at this range
    ticks = dict(tickmode="linear", tick0=0, dtick=step) if step is not None else {}
    return {"rangemode": "tozero", "tickformat": ",d", **ticks, **extra}


def recall_cause_figure(table: Mapping[str, Mapping[str, int]], causes: Sequence[str],
                        height: int = 340) -> go.Figure:
    """A dataset's objects per size bucket: found, then the misses split by cause (one stacked segment each), with
    the recall written above each bar. ``table`` is ``efpn.explain.recall_by_bucket_and_cause``'s."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=list(BUCKETS), y=[table[b]["found"] for b in BUCKETS], name="found",
                         marker_color=FOUND_COLOUR, hovertemplate="%{x}: %{y} found<extra></extra>"))
    for c in causes:
        fig.add_trace(go.Bar(x=list(BUCKETS), y=[table[b][c] for b in BUCKETS], name=f"missed: {c}",
                             marker_color=CAUSE_COLOURS.get(c, MISSED_COLOUR),
                             hovertemplate="%{x}: %{y} missed, " + c + "<extra></extra>"))
    totals = [table[b]["gt"] for b in BUCKETS]
    fig.add_trace(go.Scatter(
        x=list(BUCKETS), y=totals, mode="text", showlegend=False, textposition="top center", hoverinfo="skip",
        text=[f"{100 * table[b]['found'] / t:.0f} %" if t else "" for b, t in zip(BUCKETS, totals)],
    ))
    fig.update_layout(barmode="stack", height=height, margin=dict(l=0, r=0, t=60, b=0),
                      legend=dict(orientation="v", x=1.01, xanchor="left", y=1, yanchor="top", traceorder="normal"),
                      title=dict(text="Objects by size: found, and why the rest were missed",
                                 subtitle=dict(text="recall above each bar")),
                      yaxis=count_axis(max(totals + [1]) * 1.15, title="objects"))
    fig.update_yaxes(range=[0, max(totals + [1]) * 1.15])
    return fig


# ----------------------------------------------------------------------------------------------- assignment


def positives_bar_figure(accounting: Mapping[str, Any], title: str = "Positives per level",
                         subtitle: str | None = None) -> go.Figure:
    """Stacked bars per level: regular positives and fallback (low-quality) ones; ``subtitle`` in small print under
    the title (e.g. the assigner), so a title stays short in a narrow column."""
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
    # the legend on top, under the title: below the plot it met the level names on a short, narrow chart
    fig.update_layout(barmode="stack", title=dict(text=title, subtitle=dict(text=subtitle)),
                      height=300 + (30 if subtitle else 0) + 32,
                      margin=dict(l=0, r=0, t=_TOP_WITH_LEGEND + (30 if subtitle else 0), b=0),
                      yaxis=count_axis(max(pos, default=0), title="positive (prior, GT) pairs"),
                      legend={**_LEGEND_ON_TOP, "traceorder": "normal"})
    return fig


def level_bucket_figure(accounting: Mapping[str, Any], title: str = "Positives: level x object size") -> go.Figure:
    """Heatmap of positives per (level, size bucket), counts written in the cells."""
    levels = list(accounting["levels"])
    z = np.array([[accounting["per_level_bucket"][lv].get(b, 0) for b in BUCKETS] for lv in levels], dtype=float)
    fig = go.Figure(go.Heatmap(
        z=z, x=[BUCKET_LABELS[b] for b in BUCKETS], y=levels, colorscale=safe_colorscale("Blues"),
        texttemplate="%{z:.0f}",
        hovertemplate="%{y} x %{x}: %{z:.0f} positives<extra></extra>", showscale=False,
    ))
    fig.update_layout(title=title, height=60 + 42 * len(levels), margin=dict(l=0, r=0, t=40, b=0))
    fig.update_yaxes(autorange="reversed")
    return fig


def histogram_figure(histogram: Sequence[int], title: str = "Positives per GT") -> go.Figure:
    """Bar chart of how many GTs got exactly k positives, fallback matches included; k = 0 (no positive at all) in
    the starved colour. A GT with fallback matches only is starved too (no regular positive) but sits at k > 0: the
    starved list beside the chart names them all."""
    ks = list(range(len(histogram)))
    colours = [STARVED_COLOUR if k == 0 else "#5c6bc0" for k in ks]
    fig = go.Figure(go.Bar(x=ks, y=list(histogram), marker_color=colours,
                           hovertemplate="%{y} GTs with %{x} positives (fallback included)<extra></extra>"))
    fig.update_layout(title=title, height=260, margin=dict(l=0, r=0, t=40, b=0),
                      xaxis=count_axis(len(ks) - 1, title="positives of a GT (fallback included)"),
                      yaxis=count_axis(max(histogram, default=0), title="GTs"))
    return fig


# ----------------------------------------------------------------------------------------------- gradients


_PLACES = {"head_input": "head input", "feature": "feature (all paths)", "output_conv": "output conv θ"}


def _reach_rows(reach: Mapping[str, float], part: str) -> tuple[list[str], list[str]]:
    """The keys of one ``part`` of a :func:`efpn.explain.gradient_reach` dict (loss values left out) and their
    labels ("p5 · output conv θ")."""
    keys = [k for k in reach if k.endswith(f".{part}") and not k.startswith("loss.")]
    return keys, [f"{k.split('.')[0]} · {_PLACES.get(k.split('.')[1], k.split('.')[1])}" for k in keys]


def gradient_reach_figure(
    with_cem: Mapping[str, float], without_cem: Mapping[str, float] | None, part: str = "positive",
    title: str | None = None,
) -> go.Figure:
    """Grouped bars of ‖∂L/∂·‖ at each level and place, with CEM and with CEM bypassed (log scale).

    Inputs are :func:`efpn.explain.gradient_reach` dicts; ``part`` is ``"positive"`` or ``"total"``.
    An exact zero has no bar (a log axis has no zero to draw one from; a stub would read as "some gradient"): its
    place at the bottom of the axis holds the word "0" only.
    """
    keys, labels = _reach_rows(with_cem, part)
    series = [("with CEM", with_cem, "#5c6bc0")]  # indigo that keeps 3.7:1 on the dark theme too
    if without_cem is not None:
        series.append(("CEM bypassed (baseline FPN)", without_cem, "#9e9e9e"))
    positive_vals = [v for _, d, _ in series for k in keys if (v := d.get(k, 0.0)) > 0 and np.isfinite(v)]
    floor = (min(positive_vals) / 10) if positive_vals else 1e-12
    fig = go.Figure()
    for name, d, colour in series:
        vals = [d.get(k, 0.0) for k in keys]
        fig.add_trace(go.Bar(
            x=labels, y=[v if v > 0 else floor for v in vals], name=name,
            marker=dict(color=[colour if v > 0 else "rgba(0,0,0,0)" for v in vals], line=dict(width=0)),
            # upright and 11 px: side by side at 9 px they ran into each other on a narrow page
            text=["0" if v == 0 else f"{v:.2e}" for v in vals], textposition="outside", textangle=-90,
            textfont=dict(size=11), cliponaxis=False,
            hovertemplate="%{x}<br>%{text}<extra>" + name + "</extra>", legendgroup=name, showlegend=False,
        ))
        if without_cem is None:
            continue  # one series: no legend
        # the legend's swatch: a bar's takes its first point's colour, which is clear when that value is 0
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name, legendgroup=name,
                                 marker=dict(symbol="square", size=11, color=colour), hoverinfo="skip"))
    fig.update_layout(
        barmode="group", height=340 + (32 if without_cem is not None else 0),
        margin=dict(l=0, r=0, t=_TOP_WITH_LEGEND if without_cem is not None else 40, b=0), legend=_LEGEND_ON_TOP,
        title=title or f"Gradient norm reaching the coarse levels ({part} loss)", yaxis_type="log",
        yaxis_title="‖gradient‖",
    )
    top = max(positive_vals, default=floor * 10)
    # room above the tallest bar for its upright value (~1.3 decades at this height); the range is in log10 units
    fig.update_yaxes(range=[float(np.log10(floor)), float(np.log10(top)) + 1.3], dtick=1)  # decades only
    return fig


def gradient_reach_html(with_cem: Mapping[str, float], without_cem: Mapping[str, float] | None,
                        part: str = "positive", height: int = 170) -> str:
    """:func:`gradient_reach_figure`'s numbers as static grouped bars (:func:`bars_html`, log scale, one scale for
    both series): the value written over every bar, an exact zero written "0" on the baseline with no bar.
    ``without_cem`` None: a model without CEM, one series named as such."""
    keys, labels = _reach_rows(with_cem, part)
    # without a baseline the model has no CEM: its one series is the model itself, not "with CEM"
    name = "with CEM" if without_cem is not None else "this model (no CEM)"
    series: list[BarSeries] = [(name, [with_cem.get(k, 0.0) for k in keys], "#5c6bc0")]
    if without_cem is not None:
        series.append(("CEM bypassed (baseline FPN)", [without_cem.get(k, 0.0) for k in keys], "#9e9e9e"))
    return bars_html(labels, series, height=height, log=True, fmt=_sci, upright=True,
                     label=f"Gradient norm reaching the coarse levels ({part} loss)")


def _sci(v: float) -> str:
    """A gradient norm in few characters (two bars side by side share ~50 px on a narrow page): 2.5e-4, 0."""
    if v == 0:
        return "0"
    mantissa, exponent = f"{v:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# ----------------------------------------------------------------------------------------------- attribution


#: A colour per attribution map on the deletion chart, legible on the light and the dark theme alike (mid-tone
#: hues; the random reference is a grey dotted line).
DELETION_COLOURS: dict[str, str] = {"gradcam": "#f57c00", "integrated_gradients": "#7986cb", "occlusion": "#26a69a",
                                    "random": "#8a8a8a"}


#: (dash, marker) of the deletion curves, in their order: told apart where they lie on each other
_CURVE_STYLES: tuple[tuple[str, str], ...] = (("solid", "circle"), ("dash", "square"), ("dashdot", "diamond"),
                                              ("longdash", "triangle-up"))


def deletion_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    aucs: Mapping[str, float] | None = None,
                    names: Mapping[str, str] | None = None) -> go.Figure:
    """Deletion curves on one axis: the target score vs the share of pixels removed, most attributed first, for each
    map in ``curves`` (method -> (fractions, scores)); ``"random"`` (the seeded random pixel order) is the reference,
    drawn grey and dotted, last in the legend. Legend entries carry each curve's AUC from ``aucs``; ``names`` gives
    display names (default: the keys)."""
    fig = go.Figure()
    order = [k for k in curves if k != "random"] + (["random"] if "random" in curves else [])
    for i, name in enumerate(order):
        fr, sc = curves[name]
        shown = (names or {}).get(name, name)
        label = f"{shown} · AUC {aucs[name]:.3f}" if aucs and name in aucs else shown
        # two methods often give nearly the same curve: each has its own dash and marker, and the earlier ones are
        # drawn wider, so a curve under another still shows at its edges
        dash, symbol = ("dot", "x") if name == "random" else _CURVE_STYLES[i % len(_CURVE_STYLES)]
        fig.add_trace(go.Scatter(
            x=[100 * f for f in fr], y=list(sc), mode="lines+markers", name=label,
            line=dict(color=DELETION_COLOURS.get(name), dash=dash,
                      width=2 if name == "random" else max(2.0, 5 - 1.5 * i)),
            marker=dict(size=8 if i == 0 else 6, symbol=symbol),
            hovertemplate="%{x:.2g} % removed: T = %{y:.4f}<extra>" + shown + "</extra>",
        ))
    fig.update_layout(title=dict(text="Deletion curves", subtitle=dict(text="pixels removed, most attributed first")),
                      height=380, xaxis_title="% of pixels removed", yaxis=dict(title="target score T",
                                                                                 rangemode="tozero"),
                      margin=dict(l=0, r=0, t=60, b=0),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, x=0, xanchor="left", traceorder="normal"))
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
    fig.update_layout(barmode="group", title="AP@[.50:.95] by object size", yaxis_title="AP", height=360,
                      margin=dict(l=0, r=0, t=_TOP_WITH_LEGEND, b=0), legend=_LEGEND_ON_TOP)
    return fig


def counts_by_level_figure(counts: Mapping[str, Mapping[str, int]], title: str = "Detections per level") -> go.Figure:
    """Grouped bars: per series (e.g. checkpoint), the number of detections per level."""
    fig = go.Figure()
    for name, per_level in counts.items():
        fig.add_trace(go.Bar(x=list(per_level), y=list(per_level.values()), name=name))
    largest = max((v for per_level in counts.values() for v in per_level.values()), default=0)
    fig.update_layout(barmode="group", title=title, height=280, margin=dict(l=0, r=0, t=40, b=0),
                      legend=dict(orientation="h", y=-0.3), yaxis=count_axis(largest, title="detections"))
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
                      title="Decoding and NMS per level", legend=dict(orientation="h", y=-0.3),
                      yaxis=count_axis(max([*before_nms.values(), *after_nms.values()], default=0),
                                       title="locations / detections"))
    return fig
