"""AppTest of "why was this object missed?" in the studio: matching on Detect, the missed-objects table, the focused
object on the other pages, and the dataset mode.

The app runs on a random-weight tiny_efpn_n whose scores sit near the focal prior (about 0.01): at the default
threshold every object is missed, at threshold 0 every object is found by some detection.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from studio_helpers import APP, errors, ok
from studio_helpers import goto as _goto
from studio_helpers import metric as _metric

import efpn
from efpn.data import load_coco, read_image
from efpn.explain import CAUSES, diagnose_image


def _ok(at) -> None:
    ok(at)
    assert not errors(at), errors(at)


def _first_sample():
    samples = APP.parent / "samples"
    records, names, _ = load_coco(samples / "annotations.json", samples / "images")
    return sorted(records, key=lambda r: r.path.name)[0], names


def _figure(at, key: str) -> dict:
    chart = next(c for c in at.get("plotly_chart") if c.proto.id.endswith(key) or f"-{key}-" in c.proto.id)
    return json.loads(chart.proto.spec)


def _table(at, column: str):
    """The first dataframe or static table with ``column`` (AppTest keeps keys only of dataframes with a
    selection)."""
    found = [d.value for d in [*at.dataframe, *at.table] if column in d.value.columns]
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


def test_focusing_a_miss_shows_its_rule_and_reaches_every_page(app) -> None:
    table = app.dataframe(key="miss_table").value
    g = int(table["GT"].iloc[-1])
    cause = table["cause"].iloc[-1]
    best = table["best score"].iloc[-1]
    app.selectbox(key="miss_focus_pick").set_value(g).run()
    _ok(app)
    rule = _table(app, "verdict")
    assert f"stopped here: {cause}" in set(rule["verdict"]) or cause in set(rule["verdict"])
    assert any(f"GT {g}" in m.value and cause in m.value for m in app.markdown)
    assert "focused object" in _traces(_figure(app, "detect_fig"))
    record, _ = _first_sample()
    x1, y1, x2, y2 = record.target_boxes()[0][g].tolist()
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2

    def banner(at) -> bool:
        return any("Focused missed object" in m.value and f"GT {g}" in m.value and cause in m.value
                   for m in at.markdown)

    _goto(app, "assignment")
    _ok(app)
    assert banner(app)
    names = {t.get("name") for t in _figure(app, "asg_image")["data"]}
    assert "focused object" in names and any(f"of GT {g}" in (n or "") for n in names), names
    assert any(f"Focused GT {g}" in c.value for c in app.caption)

    _goto(app, "gates")
    _ok(app)
    assert banner(app)
    assert sum("gate at the focused object's centre" in m.value for m in app.markdown) == 2  # p2, p3
    rings = [t for t in _figure(app, "gate_p2")["data"] if t.get("marker", {}).get("symbol") == "circle-open"]
    assert rings and rings[0]["x"] == [pytest.approx(cx)] and rings[0]["y"] == [pytest.approx(cy)]

    _goto(app, "kernels")
    _ok(app)
    assert banner(app)
    assert app.number_input(key="kernel_x").value == pytest.approx(cx)
    assert app.number_input(key="kernel_y").value == pytest.approx(cy)

    _goto(app, "attribution")
    _ok(app)
    assert banner(app)
    assert app.radio(key="attr_source").value == "the focused object's best prior"
    assert any(f"best prior covering GT {g}" in c.value for c in app.caption)
    app.multiselect(key="attr_methods").set_value(["occlusion"]).run()
    app.slider(key="attr_occ_evals").set_value(16).run()
    app.button(key="attr_run").click().run()
    _ok(app)
    # the prior explained is the one the miss table named: its score is the table's best covering score
    assert float(_metric(app, "Target score T")) == pytest.approx(float(best), abs=6e-4)

    _goto(app, "pyramid")
    _ok(app)
    assert banner(app)
    assert any("focused object in cell" in m.value for m in app.markdown)

    _goto(app, "detect")
    assert app.selectbox(key="miss_focus_pick").value == g  # the focus is kept


def test_clearing_the_focus_restores_the_pages(app) -> None:
    g = int(app.dataframe(key="miss_table").value["GT"].iloc[0])
    app.selectbox(key="miss_focus_pick").set_value(g).run()
    _goto(app, "gates")
    app.button(key="focus_clear").click().run()
    _ok(app)
    assert not any("Focused missed object" in m.value for m in app.markdown)
    _goto(app, "detect")
    assert app.selectbox(key="miss_focus_pick").value == -1


def test_focus_drops_when_the_image_changes(app, sample_rgb) -> None:
    from studio_helpers import png_bytes

    g = int(app.dataframe(key="miss_table").value["GT"].iloc[0])
    app.selectbox(key="miss_focus_pick").set_value(g).run()
    app.file_uploader(key="detect_uploader").set_value(("mine.png", png_bytes(sample_rgb), "image/png")).run()
    _goto(app, "gates")
    _ok(app)
    assert not any("Focused missed object" in m.value for m in app.markdown)


# ----------------------------------------------------------------------------------------------- dataset mode


@pytest.fixture
def data_dir(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """EFPN_DATA_DIR with one YAML whose data is present (the bundled samples) and one whose data is not."""
    samples = (APP.parent / "samples").resolve()
    (tmp_path / "mine.yaml").write_text(
        f"format: coco\nroot: {samples}\ntrain:\n  annotations: annotations.json\n  images: images\n"
        "val_fraction: 0.5\nsplit_seed: 1\n")
    (tmp_path / "gone.yaml").write_text(
        f"format: coco\nroot: {tmp_path / 'nowhere'}\ntrain:\n  annotations: a.json\n  images: images\n")
    monkeypatch.setenv("EFPN_DATA_DIR", str(tmp_path))
    return tmp_path


def _choose(at, key: str, label: str) -> None:
    """Pick an option of a selectbox by the label it shows (its values are server paths)."""
    box = at.selectbox(key=key)
    box.select_index(box.options.index(label)).run()


def test_dataset_page_lists_choices_and_diagnoses_n_images(app, data_dir) -> None:
    _goto(app, "dataset")
    _ok(app)
    labels = app.selectbox(key="dsd_choice").options  # as shown
    assert "samples (app/samples)" in labels and "mine (EFPN_DATA_DIR)" in labels, labels
    assert any(o.endswith("(recipes/data)") for o in labels)
    assert "gone (EFPN_DATA_DIR)" not in labels  # no data: listed apart, with the reason
    assert any("gone (EFPN_DATA_DIR)" in m.value and "nowhere" in m.value for m in app.markdown)
    assert not app.text_input  # never a typed-in path
    _choose(app, "dsd_choice", "mine (EFPN_DATA_DIR)")
    app.number_input(key="dsd_n_mine (EFPN_DATA_DIR)").set_value(2).run()
    app.button(key="dsd_run").click().run()
    _ok(app)
    assert _metric(app, "Images") == "2"
    recall = _table(app, "never_scored")
    assert len(recall) == 5 and sum(recall["objects"]) > 0
    downloads = {b.label for b in app.get("download_button")}
    assert {"COCO results", "Misses (CSV)"} <= downloads
    assert len(_table(app, "missed tiny")) == 2
    app.selectbox(key="dsd_sort").set_value("most missed tiny objects first").run()
    app.toggle(key="dsd_only").set_value(True).run()
    _ok(app)
    ordered = _table(app, "missed tiny")
    assert list(ordered["missed tiny"]) == sorted(ordered["missed tiny"], reverse=True)
    assert all(v > 0 for v in ordered["missed tiny"])


def test_dataset_image_opens_on_detect_with_its_ground_truth(app, data_dir) -> None:
    _goto(app, "dataset")
    _choose(app, "dsd_choice", "mine (EFPN_DATA_DIR)")
    first = app.selectbox(key="dsd_open").options[1]  # a file name
    app.selectbox(key="dsd_open").select_index(1).run()
    _ok(app)
    assert any("now the current image" in s.value for s in app.success)
    image = app.sidebar.selectbox(key="image_choice").value
    assert image == f"mine {first}"
    _goto(app, "detect")
    _ok(app)
    assert int(_metric(app, "Missed")) > 0  # random weights: its annotation's objects are all missed


def test_dataset_of_other_classes_is_diagnosed_by_boxes(app, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset whose classes are not the checkpoint's: the page says so and diagnoses by boxes alone (class-aware
    diagnosis would refuse), instead of failing when Diagnose is pressed."""
    import json

    samples = (APP.parent / "samples").resolve()
    doc = json.loads((samples / "annotations.json").read_text())
    for c in doc["categories"]:
        c["name"] = f"ship{c['id']}"
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    (tmp_path / "ships.yaml").write_text(
        f"format: coco\nroot: {tmp_path}\ntrain:\n  annotations: ann.json\n  images: {samples / 'images'}\n"
        "val_fraction: 0.5\nsplit_seed: 1\n")
    monkeypatch.setenv("EFPN_DATA_DIR", str(tmp_path))
    _goto(app, "dataset")
    _choose(app, "dsd_choice", "ships (EFPN_DATA_DIR)")
    _ok(app)
    assert any("judged here by boxes alone" in w.value for w in app.warning)
    app.number_input(key="dsd_n_ships (EFPN_DATA_DIR)").set_value(1).run()
    app.button(key="dsd_run").click().run()
    _ok(app)
    assert _metric(app, "Images") == "1"
    # one of its images opened with its ground truth: by class name none is the checkpoint's, and the pages say so
    app.selectbox(key="dsd_open").select_index(1).run()
    _goto(app, "gates")
    _ok(app)
    assert any("carry a class this checkpoint does not predict" in c.value for c in app.caption)


def test_images_that_cannot_be_diagnosed_are_named(app, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One image of the dataset is a 600x1 strip (too thin for the network): the others are diagnosed and the page
    names it with the reason, instead of a smaller image count and no word."""
    import shutil

    import cv2

    samples = (APP.parent / "samples").resolve()
    shutil.copytree(samples / "images", tmp_path / "images")
    first = sorted((tmp_path / "images").iterdir())[0]
    cv2.imwrite(str(first), np.full((1, 600, 3), 90, np.uint8))
    (tmp_path / "strip.yaml").write_text(
        f"format: coco\nroot: {tmp_path}\ntrain:\n  annotations: {samples / 'annotations.json'}\n  images: images\n")
    monkeypatch.setenv("EFPN_DATA_DIR", str(tmp_path))
    _goto(app, "dataset")
    _choose(app, "dsd_choice", "strip (EFPN_DATA_DIR)")
    total = len(list((tmp_path / "images").iterdir()))
    app.number_input(key="dsd_n_strip (EFPN_DATA_DIR)").set_value(total).run()
    app.button(key="dsd_run").click().run()
    _ok(app)
    assert _metric(app, "Images") == str(total - 1)
    assert any(first.name in w.value and "could not be diagnosed" in w.value and "minimum" in w.value
               for w in app.warning), [w.value for w in app.warning]


def test_an_empty_split_says_why_with_the_loaders_report(app, data_dir) -> None:
    """A val split whose annotation file lists no image: the page said "annotations only" and stopped before the
    loader's report; it now says what can make a split empty and shows the report."""
    import json

    (data_dir / "empty.json").write_text(json.dumps({"images": [], "annotations": [],
                                                     "categories": [{"id": 1, "name": "disc"}]}))
    samples = (APP.parent / "samples").resolve()
    (data_dir / "hollow.yaml").write_text(
        f"format: coco\nroot: {samples}\ntrain:\n  annotations: annotations.json\n  images: images\n"
        f"val:\n  annotations: {data_dir / 'empty.json'}\n  images: images\n")
    _goto(app, "dataset")
    _choose(app, "dsd_choice", "hollow (EFPN_DATA_DIR)")
    app.selectbox(key="dsd_split").set_value("val").run()
    _ok(app)
    said = " ".join(i.value for i in app.info)
    assert "holds no image to show" in said and "0 images" in said, said


def test_detections_in_a_dataset_images_ignored_area_are_no_false_alarms(app, data_dir) -> None:
    """COCO ignore=1 (VisDrone's ignored areas): a dataset image opened on Detect counts no detection inside such an
    area as a false alarm, as val and the VisDrone toolkit do not."""
    import json

    samples = (APP.parent / "samples").resolve()
    doc = json.loads((samples / "annotations.json").read_text())
    first = doc["images"][0]
    doc["annotations"].append({"id": 10**6, "image_id": first["id"], "category_id": doc["categories"][0]["id"],
                               "bbox": [0, 0, first["width"], first["height"]], "ignore": 1})
    (data_dir / "ign.json").write_text(json.dumps(doc))
    (data_dir / "ign.yaml").write_text(f"format: coco\nroot: {samples}\ntrain:\n  annotations: {data_dir / 'ign.json'}"
                                       "\n  images: images\n")
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()  # random weights: every detection is unmatched
    _goto(app, "dataset")
    _choose(app, "dsd_choice", "ign (EFPN_DATA_DIR)")
    app.selectbox(key="dsd_open").set_value(first["file_name"]).run()
    _goto(app, "detect")
    _ok(app)
    assert int(_metric(app, "Detections")) > 0 and int(_metric(app, "False alarms")) == 0
