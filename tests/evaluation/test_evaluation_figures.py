"""Evaluation figures: the traces carry the metrics, and the writer falls back from kaleido to matplotlib to HTML."""

from __future__ import annotations

import numpy as np
import pytest
from torch.testing import assert_close

from efpn.data.records import ImageRecord
from efpn.evaluation import EvalResult, evaluate_detections, figures, plot_ap_by_size, plot_pr_curves

CLASSES = ["car", "person"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result() -> EvalResult:
    """Two images, a tiny car (6 px), a small person (20 px) and a medium car (40 px); one of each is found."""
    recs = [
        ImageRecord(image_id=1, path="a.png", width=100, height=100,
                    boxes=np.array([[10, 10, 16, 16], [40, 40, 60, 60]], np.float32), labels=np.array([0, 1])),
        ImageRecord(image_id=2, path="b.png", width=100, height=100,
                    boxes=np.array([[20, 20, 60, 60]], np.float32), labels=np.array([0])),
    ]
    preds = {
        1: {"boxes": np.array([[10, 10, 16, 16], [0, 0, 5, 5]]), "scores": np.array([0.9, 0.8]),
            "labels": np.array([0, 1])},
        2: {"boxes": np.array([[20, 20, 60, 60]]), "scores": np.array([0.7]), "labels": np.array([0])},
    }
    return evaluate_detections(recs, preds, CLASSES)


def test_plot_figures(result: EvalResult) -> None:
    bars = figures.ap_by_size_figure(result).data
    assert [t.name for t in bars] == ["maxDets 100", "maxDets 1500"]
    expected = [result.metrics[f"AP_{s}"] for s in ("vt", "t", "s", "m", "l")]
    assert_close(list(bars[1].y), [0.0 if v is None else v for v in expected])
    assert [t.name.split()[0] for t in figures.pr_curves_figure(result).data] == CLASSES


def test_plots_with_matplotlib(result: EvalResult, tmp_path, monkeypatch) -> None:
    # the fallback when kaleido cannot find a Chrome/Chromium
    monkeypatch.setattr(figures, "_KALEIDO_FAILED", ["RuntimeError: no Chrome"])
    for fn, name in ((plot_pr_curves, "pr.png"), (plot_ap_by_size, "size.png")):
        out = fn(result, tmp_path / name)
        assert out == tmp_path / name and out.read_bytes()[:8] == PNG_MAGIC


def test_plot_default_chain_writes_png(result: EvalResult, tmp_path) -> None:
    # kaleido where a Chromium is installed (one browser start, a few seconds), else matplotlib
    out = plot_ap_by_size(result, tmp_path / "size.png")
    assert out == tmp_path / "size.png" and out.read_bytes()[:8] == PNG_MAGIC


def test_plot_falls_back_to_html(result: EvalResult, tmp_path, monkeypatch) -> None:
    def no_matplotlib(fig, path):
        raise ImportError("no matplotlib")

    monkeypatch.setattr(figures, "_KALEIDO_FAILED", ["RuntimeError: no Chrome"])
    monkeypatch.setattr(figures, "_write_with_matplotlib", no_matplotlib)
    with pytest.warns(RuntimeWarning, match="HTML"):
        out = plot_pr_curves(result, tmp_path / "pr.png")
    assert out == tmp_path / "pr.html" and "plotly" in out.read_text()
