"""Pure builders behind the missed-objects views: rows, the rule table, picks, sorting, colours and marks."""

from __future__ import annotations

import numpy as np
from studio_helpers import REPO  # noqa: F401  (puts the repository on sys.path)

from app import charts, dataset_rows, figures, heatmaps, views
from efpn.explain import CAUSES, MissDiagnosis


def _miss(cause: str = "under_threshold", **kw) -> MissDiagnosis:
    base = dict(gt_index=3, box=[10.0, 10.0, 16.0, 16.0], label=1, size=6.0, bucket="vt",
                positives={"p2": 4, "p3": 0}, starved=False, gates={"p2": 0.6, "p3": 0.2}, cem_share={"p2": 0.01},
                best_score=0.12, best_level="p2", best_iou=0.4, best_box=[9.0, 9.0, 15.0, 15.0], passing_iou=0.0,
                cause=cause, why="why")
    base.update(kw)
    return MissDiagnosis(**base)


def test_miss_rows_are_flat_and_name_the_gt_class() -> None:
    row = views.miss_rows([_miss()], ["disc", "square", "cross", "square"])[0]
    assert row["class"] == "square" and row["GT"] == 3 and row["cause"] == "under_threshold"
    assert row["positives"] == "p2 4" and row["gates at centre"] == "p2 0.60 · p3 0.20"
    assert all(not isinstance(v, dict | list) for v in row.values())
    none = views.miss_rows([_miss(positives={"p2": 0}, gates={}, best_level=None)], ["a"] * 4)[0]
    assert none["positives"] == "none" and none["gates at centre"] == "no gate" and none["best level"] == "–"


def test_rule_rows_stop_at_the_cause() -> None:
    rows = views.rule_rows(_miss(), score_thresh=0.25, iou_thresh=0.5)
    verdicts = [r["verdict"] for r in rows]
    assert verdicts[:3] == ["passed", "passed", "passed"]
    assert verdicts[3] == "stopped here: under_threshold" and verdicts[4] == "not reached"
    starved = views.rule_rows(_miss("starved", starved=True), 0.25, 0.5)
    assert starved[0]["verdict"] == "stopped here: starved" and "none regular" in starved[0]["measured"]
    lost = views.rule_rows(_miss("lost_in_nms", best_score=0.9, passing_iou=0.7), 0.25, 0.5)
    assert lost[-1]["verdict"] == "lost_in_nms"
    assert views.rule_rows(_miss("mislocalised", best_score=0.9, passing_iou=0.3), 0.25, 0.5)[-1]["verdict"] == \
        "mislocalised"
    gated = views.rule_rows(_miss("gated_out", gates={"p2": 0.01}), 0.25, 0.5)
    assert gated[1]["verdict"] == "stopped here: gated_out"


def test_parse_pick_reads_both_views() -> None:
    assert views.parse_pick(4) == ("det", 4)
    assert views.parse_pick([4]) == ("det", 4)
    assert views.parse_pick(["det", 2]) == ("det", 2)
    assert views.parse_pick(["gt", 7]) == ("gt", 7)
    assert views.parse_pick(None) is None and views.parse_pick("x") is None


def test_bucket_rows_and_dataset_sorting() -> None:
    counts = {"vt": {"gt": 4, "found": 1, "missed": 3}, "t": {"gt": 0, "found": 0, "missed": 0}}
    rows = views.bucket_rows(counts, {"vt": 2})
    assert [r["size"] for r in rows] == ["vt", "t", "s", "m", "l"]
    assert rows[0]["recall"] == "25 %" and rows[0]["false alarms"] == 2 and rows[1]["recall"] == "–"
    images = [{"file": "b", "missed": 1, "missed tiny": 0}, {"file": "a", "missed": 2, "missed tiny": 1},
              {"file": "c", "missed": 3, "missed tiny": 1}]
    assert [r["file"] for r in dataset_rows.sort_dataset_rows(images, "most missed tiny objects first", False)] == \
        ["c", "a", "b"]
    assert [r["file"] for r in dataset_rows.sort_dataset_rows(images, "file name", True)] == ["a", "c"]


def test_matching_figure_styles_each_outcome() -> None:
    rgb = np.zeros((40, 60, 3), np.uint8)
    rows = [{"index": 0, "box": [1, 1, 9, 9], "class": "a", "score": 0.9, "size": 8.0, "level": "p2"},
            {"index": 1, "box": [30, 30, 38, 38], "class": "a", "score": 0.5, "size": 8.0, "level": "p3"}]
    gt = np.array([[1, 1, 9, 9], [40, 5, 44, 9]], np.float32)
    fig = figures.matching_figure(rgb, rows, gt, ["a", "b"], [0, -1], [1.0, 0.0], [0, -1], {1: "starved"},
                                  focus=1, focus_prior=[39, 4, 43, 8])
    lines = {t.name: t for t in fig.data if t.type == "scatter" and t.mode == "lines" and t.name}
    assert lines["found"].line.color == figures.FOUND_COLOUR and lines["found"].line.dash is None
    assert lines["false alarm"].line.color == figures.FALSE_ALARM_COLOUR and lines["false alarm"].line.dash == "dash"
    assert lines["missed"].line.color == figures.MISSED_COLOUR and lines["missed"].line.width > \
        lines["found"].line.width
    assert "focused object" in lines and "its best prior" in lines
    markers = [t for t in fig.data if t.type == "scatter" and t.mode == "markers"]
    assert [list(c) for t in markers for c in t.customdata] == [["det", 1], ["det", 0], ["gt", 1]]
    assert any("starved" in h for t in markers for h in t.text)


def test_colours_survive_the_streamlit_theme() -> None:
    """Streamlit swaps the hex colours #000001..#000040 for theme colours in the browser: Inferno starts at #000004,
    so every scale is sent as rgb() strings and a gate of 0 stays black."""
    scale = heatmaps.safe_colorscale("Inferno")
    assert scale[0] == [0.0, "rgb(0, 0, 4)"] and all(c.startswith("rgb(") for _, c in scale)
    fig = heatmaps.map_figure(np.zeros((3, 3)), colorscale="Inferno")
    overlay = figures.heatmap_overlay_figure(np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2)), 4, colorscale="Inferno")
    for f in (fig, overlay):
        heat = next(t for t in f.data if t.type == "heatmap")
        assert not any(str(c).startswith("#0000") for _, c in heat.colorscale)


def test_marks_kernel_panels_and_recall_chart() -> None:
    pic = np.zeros((100, 100, 3), np.uint8)
    marked = heatmaps.mark_cell(pic, (1, 2), (4, 4))  # 25 px cells: cell (1, 2) spans x 50-75, y 25-50
    assert marked[25:50, 50:75].max() == 255 and marked[80:, :30].max() == 0 and marked[37, 62].max() == 0
    assert heatmaps.thumbnail(np.zeros((4, 4)), side=40, mark=(0, 0)).max() == 255
    table = {b: {"gt": 2, "found": 1, **dict.fromkeys(CAUSES, 0)} for b in ("vt", "t", "s", "m", "l")}
    table["vt"]["starved"] = 1
    chart = charts.recall_cause_figure(table, CAUSES)
    names = [t.name for t in chart.data if t.type == "bar"]
    assert names[0] == "found" and names[1:] == [f"missed: {c}" for c in CAUSES]
    assert list(next(t for t in chart.data if t.type == "scatter").text) == ["50 %"] * 5
