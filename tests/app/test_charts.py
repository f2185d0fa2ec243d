"""app/charts.py: bars and curves show the numbers they are given (exact zeros included)."""

from __future__ import annotations

from studio_helpers import REPO  # noqa: F401  (puts the repository on sys.path)

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
    fig = charts.level_summary_figure(["p2", "p3"], {"p2": 4}, {"p2": 0, "p3": 7})
    assert list(fig.data[0].text) == ["4", "0"] and list(fig.data[1].y) == [0, 7]


def test_gradient_reach_figure_shows_exact_zeros() -> None:
    with_cem = {"p5.output_conv.positive": 1e-3, "p5.output_conv.total": 2e-3, "loss.positive": 1.0}
    without = {"p5.output_conv.positive": 0.0, "p5.output_conv.total": 2e-3}
    fig = charts.gradient_reach_figure(with_cem, without, "positive")
    assert [t.text[0] for t in fig.data] == ["1.00e-03", "0"]
    assert fig.data[1].y[0] > 0  # drawn on the log axis
