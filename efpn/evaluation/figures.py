"""Figures of an evaluation (precision-recall curves, AP by object size) and a figure writer with fallbacks.

Kept apart from the metrics (:mod:`efpn.evaluation.coco`) so scoring a model never imports a plotting library.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from efpn.evaluation.coco import SIZE_SPLITS, SPLIT_LABELS, EvalResult

if TYPE_CHECKING:
    import plotly.graph_objects as go



def pr_curves_figure(result: EvalResult) -> go.Figure:
    """Plotly figure: precision vs recall at IoU 0.5, one line per class with GT (legend shows AP50)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, precision in result.pr_precision.items():
        ap50 = result.per_class_ap50.get(name)
        label = f"{name} (AP50 {ap50:.3f})" if ap50 is not None else name
        fig.add_trace(go.Scatter(x=result.recall_grid, y=precision, mode="lines", name=label))
    fig.update_layout(
        title=f"Precision-recall at IoU 0.5 (maxDets {result.max_dets})",
        xaxis_title="recall",
        yaxis_title="precision",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1.02],
        template="plotly_white",
    )
    return fig


def ap_by_size_figure(result: EvalResult) -> go.Figure:
    """Plotly bar chart: AP@[.5:.95] per size split (vt, t, s, m, l) for every maxDets; splits without GT
    are drawn as empty bars and named "no GT" on the axis."""
    import plotly.graph_objects as go

    splits = [s for s in SIZE_SPLITS if s != "all"]
    ticks = [f"{s}: {SPLIT_LABELS[s]}" + ("" if result.num_gt.get(s, 1) else " (no GT)") for s in splits]
    fig = go.Figure()
    for md, values in sorted(result.by_max_dets.items()):
        ys = [values.get(f"AP_{s}") for s in splits]
        fig.add_trace(
            go.Bar(
                x=ticks,
                y=[0.0 if y is None else y for y in ys],
                name=f"maxDets {md}",
                text=["n/a" if y is None else f"{y:.3f}" for y in ys],
            )
        )
    fig.update_layout(
        title="AP@[.50:.95] by object size (m is open-ended: >=32 px)",
        xaxis_title="size split (s = sqrt(w*h))",
        yaxis_title="AP",
        yaxis_range=[0, 1],
        barmode="group",
        template="plotly_white",
    )
    return fig


def plot_pr_curves(result: EvalResult, path: str | Path) -> Path:
    """Write :func:`pr_curves_figure` as an image; returns the path written (see :func:`write_figure`)."""
    return write_figure(pr_curves_figure(result), path)


def plot_ap_by_size(result: EvalResult, path: str | Path) -> Path:
    """Write :func:`ap_by_size_figure` as an image; returns the path written (see :func:`write_figure`)."""
    return write_figure(ap_by_size_figure(result), path)


_KALEIDO_FAILED: list[str] = []  # first failure message; kaleido is not retried in this process after one


def write_figure(fig: go.Figure, path: str | Path) -> Path:
    """Write a plotly figure to ``path`` (.png/.svg/.pdf/.jpg) and return the path actually written.

    Backends, first that works: plotly's ``write_image`` (kaleido >= 1 drives a Chrome/Chromium it must find
    on the machine; ``plotly_get_chrome`` installs one), then matplotlib (drawing the figure's line and bar
    traces; matplotlib comes with captum), then plotly HTML written to ``path`` with suffix ``.html`` (with a
    warning). A ``.html`` path is always written as interactive HTML.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".html", ".htm"):
        fig.write_html(path, include_plotlyjs=True)
        return path
    if not _KALEIDO_FAILED:
        try:
            fig.write_image(path)
            return path
        except Exception as e:  # kaleido raises RuntimeError/ValueError/ChromeNotFound... when it cannot render
            _KALEIDO_FAILED.append(f"{type(e).__name__}: {e}")
    try:
        _write_with_matplotlib(fig, path)
        return path
    except ImportError:
        pass
    html = path.with_suffix(".html")
    fig.write_html(html, include_plotlyjs=True)
    warnings.warn(
        f"could not render {path.name} as an image (kaleido: {_KALEIDO_FAILED[0][:200]}; matplotlib not "
        f"installed); wrote interactive HTML to {html} instead",
        RuntimeWarning,
        stacklevel=2,
    )
    return html


def _write_with_matplotlib(fig: go.Figure, path: Path) -> None:
    """Draw a plotly figure's Scatter (lines, or dots when its mode has no lines) and Bar traces with matplotlib's
    Agg backend."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in the app's threads

    mfig = Figure(figsize=(8, 5), dpi=100)
    ax = mfig.add_subplot()
    bars = [t for t in fig.data if t.type == "bar"]
    width = 0.8 / max(len(bars), 1)
    for trace in fig.data:
        if trace.type == "scatter":
            label = trace.name if trace.showlegend is not False else None
            if trace.mode and "lines" not in trace.mode:  # markers only: dots (a mean drawn as a short bar)
                marker = "_" if trace.marker and str(trace.marker.symbol or "").startswith("line-ew") else "o"
                ax.plot(list(trace.x), list(trace.y), linestyle="none", marker=marker, label=label,
                        markersize=14 if marker == "_" else 6, alpha=1.0 if marker == "_" else 0.7)
            else:
                ax.plot(list(trace.x), list(trace.y), label=label)
        elif trace.type == "bar":
            i = bars.index(trace)
            xs = np.arange(len(trace.x)) + (i - (len(bars) - 1) / 2) * width
            ax.bar(xs, list(trace.y), width=width, label=trace.name)
            ax.set_xticks(np.arange(len(trace.x)), list(trace.x), rotation=15, fontsize=8)
    layout = fig.layout
    ax.set_title(layout.title.text or "")
    ax.set_xlabel(layout.xaxis.title.text or "")
    ax.set_ylabel(layout.yaxis.title.text or "")
    if layout.xaxis.range is not None:
        ax.set_xlim(*layout.xaxis.range)
    if layout.yaxis.range is not None:
        ax.set_ylim(*layout.yaxis.range)
    ax.grid(alpha=0.3)
    if any(t.name and t.showlegend is not False for t in fig.data):
        ax.legend(fontsize=8)
    mfig.tight_layout()
    mfig.savefig(path)
