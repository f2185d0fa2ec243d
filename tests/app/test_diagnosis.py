"""AppTest of "why was this object missed?" in the studio: matching on Detect, the missed-objects table, the focused
object on the other pages, and the dataset mode.

The app runs on a random-weight tiny_efpn_n whose scores sit near the focal prior (about 0.01): at the default
threshold every object is missed, at threshold 0 every object is found by some detection.
"""

from __future__ import annotations

import json

import pytest
from studio_helpers import APP

import efpn
from efpn.data import load_coco, read_image
from efpn.explain import CAUSES, diagnose_image


def _ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error], [e.value for e in at.error]


def _metric(at, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return found[0]


def _goto(at, page: str):
    return at.switch_page(f"app_pages/{page}.py").run()


def _first_sample():
    samples = APP.parent / "samples"
    records, names, _ = load_coco(samples / "annotations.json", samples / "images")
    return sorted(records, key=lambda r: r.path.name)[0], names


def _figure(at, key: str) -> dict:
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key) or f"-{key}-" in c.proto.id)
    return json.loads(chart.proto.spec)


def _table(at, column: str):
    """The first dataframe with ``column`` (AppTest keeps keys only of dataframes with a selection)."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no table with {column!r}"
    return found[0]


def _traces(spec: dict) -> dict[str, dict]:
    return {t["name"]: t for t in spec["data"] if t.get("mode") == "lines" and t.get("name")}


def test_detect_matches_detections_to_the_samples_ground_truth(app, app_env) -> None:
    """The counts, the missed table and the drawn boxes agree with efpn.explain.diagnose_image on the same image."""
    _ok(app)
    record, _ = _first_sample()
    boxes, labels = record.target_boxes()
    model = efpn.load_model(app_env / "tiny_efpn_n.safetensors").eval()
    ins = efpn.inspect(model, read_image(record.path), score_thresh=0.25)
    diag = diagnose_image(model, ins, boxes, labels, 0.25, 0.5, True)
    missed = int(diag.matching.missed.sum())
    assert missed == len(boxes)  # random weights: nothing clears 0.25
    assert _metric(app, "Found") == f"0 of {len(boxes)}"
    assert _metric(app, "Missed") == str(missed)
    table = app.dataframe(key="miss_table").value
    assert list(table["GT"]) == [m.gt_index for m in diag.misses]
    assert list(table["cause"]) == [m.cause for m in diag.misses]
    assert set(table["cause"]) <= set(CAUSES)
    assert list(table["best score"]) == pytest.approx([round(m.best_score, 3) for m in diag.misses], abs=1e-3)
    buckets = _table(app, "false alarms")
    counts = diag.matching.counts_by_bucket()
    assert list(buckets["objects"]) == [counts[b]["gt"] for b in counts]
    lines = _traces(_figure(app, "detect_fig"))
    assert "missed" in lines and "found" not in lines
    assert lines["missed"]["line"]["color"] == "#ff1744" and lines["missed"]["line"]["width"] > 2
    assert any("thick red" in c.value and "IoU ≥ 0.5" in c.value for c in app.caption)


def test_detect_iou_slider_and_class_toggle_change_the_matching(app) -> None:
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    _ok(app)
    found_strict = int(_metric(app, "Found").split()[0])
    lines = _traces(_figure(app, "detect_fig"))
    assert lines["false alarm"]["line"]["dash"] == "dash" and lines["false alarm"]["line"]["color"] == "#ff9100"
    app.slider(key="match_iou").set_value(0.1).run()
    app.toggle(key="match_class_aware").set_value(False).run()
    _ok(app)
    found_loose = int(_metric(app, "Found").split()[0])
    assert found_loose >= found_strict and found_loose > 0
    assert "found" in _traces(_figure(app, "detect_fig"))
    assert any("any class" in c.value and "IoU ≥ 0.1" in c.value for c in app.caption)
    # the settings survive a trip to another page
    _goto(app, "gates")
    _goto(app, "detect")
    assert app.slider(key="match_iou").value == pytest.approx(0.1)
    assert app.toggle(key="match_class_aware").value is False


def test_level_view_and_sliced_mode_still_work(app) -> None:
    app.radio(key="detect_view").set_value("pyramid level").run()
    _ok(app)
    assert "missed" not in _traces(_figure(app, "detect_fig"))
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    app.radio(key="detect_mode").set_value("Sliced (tiles)").run()
    app.slider(key="tile_side").set_value(128).run()
    _ok(app)
    assert int(_metric(app, "Detections")) > 0
    assert len(_table(app, "false alarms")) == 5
