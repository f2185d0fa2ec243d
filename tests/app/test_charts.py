"""app/charts.py: bars and curves show the numbers they are given (exact zeros included)."""

from __future__ import annotations

import re

import pytest
from studio_helpers import REPO, html_bars  # noqa: F401  (REPO puts the repository on sys.path)

from app import charts
from efpn import level_colour

ACC = {"levels": ["p3", "p4"], "positives_per_level": {"p3": 5, "p4": 1}, "fallback_per_level": {"p3": 2, "p4": 0},
       "per_level_bucket": {"p3": {"vt": 5}, "p4": {"t": 1}}}


def test_positives_per_level_and_bucket() -> None:
    bar = charts.positives_bar_figure(ACC)
    assert list(bar.data[0].y) == [3, 1] and list(bar.data[1].y) == [2, 0]
    assert list(bar.data[0].marker.color) == [level_colour("p3"), level_colour("p4")]
    assert charts.level_bucket_figure(ACC).data[0].z[0][0] == 5


def test_level_summary_labels_zero_bars() -> None:
    page = charts.level_summary_html(["p2", "p3"], {"p2": 4}, {"p2": 0, "p3": 7}, height=140)
    assert html_bars(page) == {"detections": {"p2": 4, "p3": 0}, "positive anchors": {"p2": 0, "p3": 7}}
    # every value written over its bar, the zeros as "0"; each level's bar in its own colour; heights to scale
    assert re.findall(r"<span>(\d+)</span>", page) == ["4", "0", "0", "7"]
    assert f'background:{level_colour("p2")};' in page and 'title="p2: 4 detections"' in page
    heights = {(s, c): float(h) for h, s, c in
               re.findall(r'height:([\d.]+)px;[^>]*data-series="([^"]*)" data-category="([^"]*)"', page)}
    assert heights[("positive anchors", "p3")] == 140 and heights[("detections", "p3")] == 0
    assert heights[("detections", "p2")] == pytest.approx(140 * 4 / 7, abs=0.1)


def test_stacked_bars_add_up_and_escape_names() -> None:
    page = charts.found_missed_html({"vt": {"found": 2, "missed": 3}, "s": {"found": 1}}, height=100)
    bars = html_bars(page)
    assert bars["found"]["vt"] == 2 and bars["missed"]["vt"] == 3 and bars["missed"]["s"] == 0
    stack = page.split('data-category="vt"', 1)[0].rsplit('<div class="efpn-bars-stack">', 1)[1]
    assert "missed" in stack and "found" not in stack  # top-down in the page: missed above found
    heights = {(s, c): float(h) for h, s, c in
               re.findall(r'height:([\d.]+)px;[^>]*data-series="([^"]*)" data-category="([^"]*)"', page)}
    assert heights[("found", "vt")] == 40 and heights[("missed", "vt")] == 60 and heights[("found", "s")] == 20
    assert "<span>3</span>" in page  # a segment of 60 px holds its count
    evil = charts.bars_html(["<b>x</b>"], [("a&b", [1], "red")])
    assert "&lt;b&gt;x&lt;/b&gt;" in evil and "<b>" not in evil and "a&amp;b" in evil


def test_gradient_reach_figure_shows_exact_zeros() -> None:
    with_cem = {"p5.output_conv.positive": 1e-3, "p5.output_conv.total": 2e-3, "loss.positive": 1.0}
    without = {"p5.output_conv.positive": 0.0, "p5.output_conv.total": 2e-3}
    fig = charts.gradient_reach_figure(with_cem, without, "positive")
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.text[0] for t in bars] == ["1.00e-03", "0"]
    assert bars[1].y[0] > 0  # placed on the log axis (where its "0" is written) ...
    assert bars[1].marker.color[0] == "rgba(0,0,0,0)" and bars[0].marker.color[0] != "rgba(0,0,0,0)"  # ... no bar
    keys = [t for t in fig.data if t.showlegend is not False]  # the legend's swatches keep the series' colours
    assert [(t.name, t.marker.color) for t in keys] == [("with CEM", "#5c6bc0"), ("CEM bypassed (baseline FPN)",
                                                                                   "#9e9e9e")]


def test_gradient_reach_figure_of_one_model_has_no_legend() -> None:
    fig = charts.gradient_reach_figure({"p5.output_conv.positive": 0.0, "p6.output_conv.positive": 2e-3}, None)
    assert [t.type for t in fig.data] == ["bar"] and fig.data[0].showlegend is False
    assert list(fig.data[0].text) == ["0", "2.00e-03"]


def test_bars_html_log_scale_heights_and_zero() -> None:
    out = charts.bars_html(["a", "b", "c"], [("s", [1e-4, 1e-1, 0.0], "#5c6bc0")], height=100, log=True)
    heights = [float(h) for h in re.findall(r"height:([0-9.]+)px", out)]
    # floor = 1e-5: 1e-4 is one decade of four above it, 1e-1 the top; 0 has no bar
    assert heights == [25.0, 100.0, 0.0]
    assert 'data-value="0"' in out
    with pytest.raises(ValueError, match="grouped"):
        charts.bars_html(["a"], [("s", [1.0], "red")], stacked=True, log=True)


def test_gradient_reach_html_writes_exact_zeros_on_one_scale() -> None:
    with_cem = {"p5.output_conv.positive": 1e-3, "p5.output_conv.total": 2e-3, "loss.positive": 1.0}
    without = {"p5.output_conv.positive": 0.0, "p5.output_conv.total": 2e-3}
    out = charts.gradient_reach_html(with_cem, without, "positive")
    assert 'data-series="with CEM" data-category="p5 · output conv θ" data-value="1.0e-3"' in out
    assert 'data-series="CEM bypassed (baseline FPN)" data-category="p5 · output conv θ" data-value="0"' in out
    assert "loss" not in out.split("efpn-bars-names")[1]  # loss values are not bars
    one = charts.gradient_reach_html(with_cem, None, "total")
    assert "CEM bypassed" not in one and 'data-value="2.0e-3"' in one
    assert 'data-series="this model (no CEM)"' in one and "with CEM" not in one  # one series: the model itself
