"""AppTest of the detail pages: Gates, Kernels, Pyramid, Attribution, Compare and Learn (the random-weight
tiny_efpn_n of conftest; tests that need detections lower the score threshold to 0)."""

from __future__ import annotations

import pytest
from studio_helpers import errors as _errors
from studio_helpers import goto as _goto
from studio_helpers import metric as _metric
from studio_helpers import ok as _ok
from studio_helpers import studio_on


def test_gates_show_each_gate_beside_its_target(app) -> None:
    """Per gated level: the gate over the image (a chart) and, beside it, the gate and its FBSM target as pictures on
    the gate's [0, 1] scale."""
    _goto(app, "gates")
    _ok(app)
    overlays = [c for c in app.get("plotly_chart") if c.proto.id and "gate_" in (c.key or "")]
    side = [el for el in app.get("image") if [i.caption for i in el.proto.imgs][:1] == ["gate M"]]
    assert overlays and len(side) == len(overlays)
    for el in side:
        caps = [i.caption for i in el.proto.imgs]
        assert caps[0] == "gate M" and caps[1].startswith("FBSM target")


def test_attribution_for_a_selected_detection(app) -> None:
    """LayerGradCAM shows at once, timed, with an estimate of the long methods from its pass times; Compute runs
    Integrated Gradients and Occlusion and adds their maps, rows and curves; the result is kept for its request."""
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    _goto(app, "attribution")
    app.selectbox(key="attr_det").set_value(2).run()
    _ok(app)
    assert float(_metric(app, "Target score T")) > 0  # no button press needed for the fast default
    captions = [c.value for c in app.caption]
    assert any("forward+backward passes)" in c and "Computed in" in c for c in captions), captions
    assert any(c.startswith("Estimated on this machine") for c in captions)
    assert not any("minute" in c for c in captions)
    assert "a deletion AUC below the random pixel order's" in " ".join(captions)
    assert len(app.table[0].value) == 1  # LayerGradCAM's row
    app.slider(key="attr_ig_steps").set_value(4).run()
    app.slider(key="attr_occ_evals").set_value(16).run()
    app.button(key="attr_run").click().run()
    _ok(app)
    assert any("inside the box" in c.value and "computed in" in c.value for c in app.caption)
    table = app.table[0].value
    assert list(table.index) == ["LayerGradCAM, all levels", "Integrated Gradients", "Occlusion"]
    assert all(" · " in v for v in table["deletion AUC · random"])
    assert len(app.session_state["attr_results"]) == 1 and app.button(key="attr_run").disabled
    assert not any(c.value.startswith("Estimated on this machine") for c in app.caption)  # done: no estimate


def test_an_interrupted_attribution_is_not_restarted(app, monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit stops a script at its next call when the user presses Cancel (or any control): the stop comes out of
    the progress callback. The next run says so, keeps nothing and does not start the request again."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from app import analyses

    real = analyses.explain_long
    calls: list[int] = []

    def stopped_midway(*args, **kwargs):
        calls.append(1)
        progress = args[7] if len(args) >= 8 else kwargs["progress"]

        def tick(done: int, total: int) -> None:
            progress(done, total)
            if done >= 2:
                raise StopException  # what Streamlit raises in the script thread at a stop request

        return real(*args[:7], tick, *args[8:])

    monkeypatch.setattr(analyses, "explain_long", stopped_midway)
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    _goto(app, "attribution")
    app.multiselect(key="attr_methods").set_value(["integrated_gradients"]).run()
    app.button(key="attr_run").click().run()
    assert calls == [1]
    app.run()  # the rerun that follows (another control was used)
    _ok(app)
    assert calls == [1]  # not restarted
    assert any("Stopped after 2 of" in i.value for i in app.info), [i.value for i in app.info]
    assert not app.session_state["attr_results"] if "attr_results" in app.session_state else True
    assert not app.button(key="attr_run").disabled
    state = dict(app.session_state["attr_long"])
    app.session_state["attr_long"] = {**state, "state": "cancelled"}  # what Cancel's callback sets
    app.run()
    assert calls == [1]
    assert any("Cancelled after 2 of" in w.value for w in app.warning), [w.value for w in app.warning]
    assert not any(c.key and c.key.startswith("attr_map_") for c in app.get("plotly_chart"))


def test_kernels_pick_a_pixel(app) -> None:
    _goto(app, "kernels")
    app.number_input(key="kernel_x").set_value(10.0).run()
    app.number_input(key="kernel_y").set_value(200.0).run()
    _ok(app)
    assert any("(10, 200)" in m.value for m in app.markdown), [m.value for m in app.markdown]
    tables = [h.proto.body for h in app.get("html") if "efpn-kgrid" in h.proto.body]
    assert tables and "Kernels at (10, 200)" in tables[0] and "D dynamic (this pixel)" in tables[0]
    layers = app.selectbox(key="kernel_layer").options
    app.selectbox(key="kernel_layer").set_value(layers[-1]).run()
    app.radio(key="kernel_map").set_value("high-frequency energy").run()
    _ok(app)
    # the whole layer's entropy and high-frequency energy below, each captioned with its own range
    caps = [i.caption for el in app.get("image") for i in el.proto.imgs]
    assert [c.split(":")[0] for c in caps[-2:]] == ["entropy (nats, mean over groups)",
                                                     "high-frequency energy (mean over groups)"], caps
    assert all("dark purple →" in c and c.endswith("yellow") for c in caps[-2:])


def test_pyramid_reductions(app) -> None:
    _goto(app, "pyramid")
    for how in ("max", "pca"):
        app.radio(key="pyr_reduce").set_value(how).run()
        _ok(app)
    assert not [r for r in app.radio if r.key == "pyr_part"]  # gradient reach: not measured until opened
    app.session_state["pyr_reach_open"] = True
    app.run()
    app.radio(key="pyr_part").set_value("total").run()
    _ok(app)
    assert any("positive" in str(c.value) or "CEM" in str(c.value) for c in app.caption)


def test_compare_two_checkpoints(app) -> None:
    _goto(app, "compare")
    assert app.selectbox(key="cmp_b").value.endswith("tiny_yolov8_sgdm.safetensors")
    _ok(app)
    assert not _errors(app)
    assert any("Training telemetry" in h.value for h in app.subheader)
    assert any("synthetic (test) (val)" in c.value for c in app.caption)
    # the sample has ground truth: the per-object comparison is there (a table of differences, or none)
    assert any("one finds and the other misses" in h.value for h in app.subheader)
    assert any("Matched at IoU" in c.value for c in app.caption)


def test_learn_walks_every_step(app) -> None:
    """Nine steps, each with its "what to notice" sentence computed from this image's inspection."""
    _goto(app, "learn")
    notices = [next(i.value for i in app.info if "What to notice" in i.value)]
    for _ in range(8):
        app.button(key="learn_next").click().run()
        _ok(app)
        notices.append(next(i.value for i in app.info if "What to notice" in i.value))
    assert app.header[0].value.startswith("9")
    assert len(set(notices)) == 9, notices  # one distinct sentence per step


def test_compare_checkpoints_of_other_classes_matches_boxes(app_env, tmp_path, monkeypatch) -> None:
    """Checkpoints whose class lists differ: the per-object comparison says so and matches boxes alone (class k of
    A is not class k of B), instead of counting a box on the right object as missed."""

    import torch

    import efpn

    torch.manual_seed(1)
    efpn.save_checkpoint(efpn.build_model("tiny_efpn_n", num_classes=3, class_names=("ship", "boat", "buoy")),
                         tmp_path / "ships.safetensors")
    at = studio_on(tmp_path, app_env, monkeypatch)
    _goto(at, "compare")
    _ok(at)
    assert at.selectbox(key="cmp_b").value.endswith("ships.safetensors")
    assert any("matched here by boxes alone" in w.value for w in at.warning)
    assert any("any class" in c.value for c in at.caption)


def test_compare_names_the_checkpoint_that_does_not_load(app_env, tmp_path, monkeypatch) -> None:
    """B's weights are damaged (its card reads): B's column shows why it cannot be loaded, A is still drawn, and the
    per-object comparison says both must load, not "choose two different checkpoints"."""
    import shutil


    (tmp_path / "damaged.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    shutil.copy(app_env / "tiny_efpn_n.json", tmp_path / "damaged.json")  # same classes: B opens on it
    at = studio_on(tmp_path, app_env, monkeypatch)
    _goto(at, "compare")
    _ok(at)
    assert at.selectbox(key="cmp_b").value.endswith("damaged.safetensors")
    assert any("cannot be loaded" in e.value for e in at.error)
    assert any("Both checkpoints must load" in i.value for i in at.info)
    assert not any("Choose two different" in i.value for i in at.info)


def test_compare_on_an_image_too_elongated_for_one_input(app) -> None:
    """A 4000x30 panorama: every page says it cannot be inspected whole; Compare said so with a traceback."""
    import numpy as np
    from studio_helpers import png_bytes

    strip = np.tile((np.random.default_rng(0).random((30, 400, 3)) * 200).astype(np.uint8), (1, 10, 1))
    app.file_uploader(key="detect_uploader").set_value(("panorama.png", png_bytes(strip), "image/png")).run()
    _goto(app, "compare")
    _ok(app)
    assert sum("cannot run on this image" in e for e in _errors(app)) == 2  # both columns, each with the reason


def test_twelve_bit_data_in_a_sixteen_bit_png_is_named_on_the_page(app) -> None:
    """Infrared sensors store 12-bit values in 16-bit files: decoded they are nearly black. The library's warning
    went to the server log once per process; the page says it with every such image."""
    import cv2
    import numpy as np

    data = (np.random.default_rng(0).random((96, 128)) * 4000).astype(np.uint16)
    for name in ("ir_a.png", "ir_b.png"):  # the second such upload too, not only the first of the process
        data = data[::-1].copy()
        png = cv2.imencode(".png", data)[1].tobytes()
        app.file_uploader(key="detect_uploader").set_value((name, png, "image/png")).run()
        _ok(app)
        assert any("nearly black" in w.value and "12-bit" in w.value for w in app.warning), name


def test_learn_on_an_elongated_image_and_on_an_enlarged_one(app) -> None:
    """A strip too long for one input is named as such (Learn blamed the ground truth, which the upload has none
    of); an image smaller than the input is said to be enlarged, not that its objects shrink."""
    import numpy as np
    from studio_helpers import png_bytes

    strip = np.tile((np.random.default_rng(0).random((30, 400, 3)) * 200).astype(np.uint8), (1, 10, 1))
    app.file_uploader(key="detect_uploader").set_value(("panorama.png", png_bytes(strip), "image/png")).run()
    _goto(app, "learn")
    _ok(app)
    assert any("cannot be inspected" in e for e in _errors(app))
    assert not any("ground truth cannot be used" in w.value for w in app.warning)
    small = (np.random.default_rng(1).random((40, 48, 3)) * 200).astype(np.uint8)
    _goto(app, "detect")
    app.file_uploader(key="detect_uploader").set_value(("small.png", png_bytes(small), "image/png")).run()
    _goto(app, "learn")
    _ok(app)
    notice = next(i.value for i in app.info if "What to notice" in i.value)
    assert "enlarged" in notice and "shrink" not in notice, notice


def test_a_detection_selected_on_detect_stays_the_one_attribution_explains(app) -> None:
    """Attribution explained the clicked detection on its first visit only (its picker was reset when another page
    was shown), and the selection was an index: after an NMS change it named another box."""
    import efpn
    from app import views

    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    ctx = app.session_state["efpn_ctx"]
    model = efpn.load_model(ctx.checkpoint)
    ins = efpn.inspect(model, ctx.image.rgb, score_thresh=0.0, nms_iou=ctx.nms)
    rows = views.detection_rows(ins.detections, model.levels, ctx.class_names)
    assert len(rows) > 3
    app.session_state["selected_detection"] = (ctx.image.digest, 2, tuple(rows[2]["box"]))  # what a click writes
    for _ in range(2):  # every visit, not the first only
        _goto(app, "attribution")
        assert app.radio(key="attr_source").value == "a detection"  # no object focused: detections come first
        assert app.selectbox(key="attr_det").value == 2
        _goto(app, "detect")
        assert any(c.value.startswith("Selected #2") for c in app.caption)
    box = rows[2]["box"]
    app.sidebar.slider(key="nms_iou").set_value(0.05).run()  # renumbers (or drops) the detections
    caps = [c.value for c in app.caption if c.value.startswith("Selected #")]
    if caps:  # still there: the caption names the same box, wherever it now is in the list
        k = int(caps[0].split("#")[1].split(":")[0])
        ins2 = efpn.inspect(model, ctx.image.rgb, score_thresh=0.0, nms_iou=0.05)
        assert views.detection_rows(ins2.detections, model.levels, ctx.class_names)[k]["box"] == box


def test_pages_say_a_checkpoint_has_no_cem_instead_of_charting_it(app, app_env) -> None:
    """tiny_yolov8_sgdm has no CEM: Assignment showed 'E-FPN-BS' metrics and a 'with CEM' series for it."""
    app.sidebar.selectbox(key="checkpoint_choice").set_value(str(app_env / "tiny_yolov8_sgdm.safetensors")).run()
    _goto(app, "assignment")
    _ok(app)
    assert any("has no CEM, so it has no E-FPN-BS counterpart" in i.value for i in app.info)
    assert not any(m.label == "E-FPN-BS" for m in app.metric)
    _goto(app, "pyramid")  # each level once, not "before" and "after" a CEM it does not have
    _ok(app)
    assert any("so there is no before and after" in i.value for i in app.info)
    assert not any("with and without CEM" in h.value for h in app.subheader)


def test_attribution_says_when_deletion_cannot_tell_maps_apart(app) -> None:
    """On a 3x3 upload every deletion AUC was 1.000, the random order's too: the page showed them as a result."""
    import numpy as np
    from studio_helpers import png_bytes

    tiny = (np.random.default_rng(0).random((3, 3, 3)) * 255).astype(np.uint8)
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    app.file_uploader(key="detect_uploader").set_value(("tiny.png", png_bytes(tiny), "image/png")).run()
    _goto(app, "attribution")
    _ok(app)
    assert any("deletion test cannot tell the maps apart" in i.value for i in app.info)
