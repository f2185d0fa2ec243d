"""AppTest of the studio: every page renders without an exception, and the main interactions work.

The app runs on a random-weight tiny_efpn_n (128 px input): its scores sit near the focal prior (about 0.01), so
tests that need detections lower the score threshold to 0.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from studio_helpers import APP, PAGES, SHARED_BROKEN, html_bars, png_bytes
from studio_helpers import errors as _errors
from studio_helpers import goto as _goto
from studio_helpers import metric as _metric
from studio_helpers import ok as _ok

# ----------------------------------------------------------------------------------------------- smoke


@pytest.mark.parametrize("score", [0.25, 0.0], ids=["default-threshold", "all-detections"])
def test_every_page_renders(app, score: float) -> None:
    """Each page, on the default sample and checkpoint, with no and with many detections."""
    app.sidebar.slider(key="score_thresh").set_value(score).run()
    for page in PAGES:
        _goto(app, page)
        _ok(app)
        assert app.title[0].value.lower() == page, (page, [t.value for t in app.title])
        assert not _errors(app), (page, _errors(app))


def test_every_page_on_a_yolo_checkpoint(app, app_env: Path) -> None:
    """tiny_yolov8_sgdm: a PAN neck without CEM/FBSM, TAL assignment, anchor-free head."""
    app.sidebar.selectbox(key="checkpoint_choice").set_value(str(app_env / "tiny_yolov8_sgdm.safetensors")).run()
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    for page in PAGES:
        _goto(app, page)
        _ok(app)
        assert not _errors(app), (page, _errors(app))
    assert any("no FBSM" in i.value for i in _goto(app, "gates").info)


def test_every_page_without_ground_truth(app, sample_rgb: np.ndarray) -> None:
    """An uploaded image has no GT: pages fall back to detections or say what to do."""
    app.file_uploader(key="detect_uploader").set_value(("mine.png", png_bytes(sample_rgb), "image/png")).run()
    assert app.sidebar.selectbox(key="image_choice").value == "upload mine.png"
    for score in (0.25, 0.0):
        app.sidebar.slider(key="score_thresh").set_value(score).run()
        for page in PAGES:
            _goto(app, page)
            _ok(app)
            assert not _errors(app), (page, _errors(app))


# ----------------------------------------------------------------------------------------------- detect


def test_upload_many_formats(app, sample_rgb: np.ndarray) -> None:
    """PNG, JPEG, BMP, 16-bit grayscale TIFF and an 8-bit grayscale PNG all become images of the session."""
    gray16 = (sample_rgb.mean(axis=2) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, format="TIFF")
    files = [
        ("a.png", png_bytes(sample_rgb), "image/png"),
        ("b.jpg", png_bytes(sample_rgb, "JPEG", quality=90), "image/jpeg"),
        ("c.bmp", png_bytes(sample_rgb, "BMP"), "image/bmp"),
        ("d.tiff", buf.getvalue(), "image/tiff"),
        ("e.png", png_bytes(sample_rgb[..., 0]), "image/png"),
    ]
    app.file_uploader(key="detect_uploader").set_value(files).run()
    _ok(app)
    assert not _errors(app)
    options = app.sidebar.selectbox(key="image_choice").options
    assert all(f"upload {name}" in options for name, _, _ in files), options
    assert app.sidebar.selectbox(key="image_choice").value == "upload e.png"  # the last upload is current
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    _ok(app)
    assert int(_metric(app, "Detections")) > 0
    assert any("uploaded images" in e.label for e in app.expander)  # the multi-image summary
    assert not [d for d in app.dataframe if "best score" in d.value.columns]  # closed: nothing run
    app.session_state["detect_all_open"] = True
    app.run()
    _ok(app)
    summary = next(d.value for d in app.dataframe if "best score" in d.value.columns)
    assert len(summary) == len(files) and int(summary["detections"].sum()) > 0, summary


def test_threshold_slider_changes_detections(app) -> None:
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    many = int(_metric(app, "Detections"))
    assert many > 0
    app.sidebar.slider(key="score_thresh").set_value(0.99).run()
    assert int(_metric(app, "Detections")) == 0
    assert any("lower it" in i.value for i in app.info)
    app.sidebar.slider(key="nms_iou").set_value(0.2).run()
    _ok(app)



def test_detect_overview_shows_the_internals_of_the_same_forward(app, app_env: Path) -> None:
    """Next to the detections: positives per level from the model's own assigner on the sample's GT, and one
    picture per CEM target level, FBSM gate and SGDM layer."""

    import efpn
    from efpn.data import load_coco, read_image

    _ok(app)
    assert any(h.value == "Inside the network" for h in app.subheader)
    chart = next(h for h in app.get("html") if 'data-series="positive anchors"' in h.proto.body)
    bars = html_bars(chart.proto.body)

    samples_dir = Path(APP).parent / "samples"
    records, _, _ = load_coco(samples_dir / "annotations.json", samples_dir / "images")
    first = sorted(records, key=lambda r: r.path.name)[0]
    assert app.sidebar.selectbox(key="image_choice").value == f"sample {first.path.name}"
    model = efpn.load_model(app_env / "tiny_efpn_n.safetensors").eval()
    boxes, labels = first.target_boxes()
    ins = efpn.inspect(model, read_image(first.path), targets={"boxes": boxes, "labels": labels})
    assert bars["positive anchors"] == ins.assignment.accounting.positives_per_level  # every level, 0 included
    starved = len(ins.assignment.accounting.starved)
    assert any(f"{starved} of {len(boxes)} boxes starved" in c.value for c in app.caption)

    captions = [img.caption for el in app.get("image") for img in el.proto.imgs]
    expected = [*ins.cem_fused, *ins.gates, *ins.kernels]
    assert len(captions) == len(expected) and len(expected) >= 3
    for name, caption in zip(expected, captions):
        assert caption.startswith(name), (name, caption)

def test_downloads_hold_detections(app) -> None:
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    labels = [b.label for b in app.get("download_button")]
    assert "Download JSON" in labels and "Download drawn image (PNG)" in labels


def test_sliced_inference(app) -> None:
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    app.radio(key="detect_mode").set_value("Sliced (tiles)").run()
    app.slider(key="tile_side").set_value(128).run()
    _ok(app)
    assert int(_metric(app, "Detections")) > 0
    assert any("tiles" in c.value for c in app.caption)
    _goto(app, "gates")
    _goto(app, "detect")
    assert app.radio(key="detect_mode").value == "Sliced (tiles)"  # kept when the page is left (it was reset)


def test_corrupt_and_fake_images_are_reported(app) -> None:
    """A truncated JPEG and a text file named .png give an error each; the session goes on."""
    truncated = SHARED_BROKEN.read_bytes() if SHARED_BROKEN.is_file() else png_bytes(
        np.full((64, 64, 3), 90, np.uint8), "JPEG")[:300]
    app.file_uploader(key="detect_uploader").set_value([
        ("truncated.jpg", truncated, "image/jpeg"), ("notes.png", b"this is not an image", "image/png"),
    ]).run()
    _ok(app)
    errors = _errors(app)
    assert len(errors) == 2 and "truncated.jpg" in errors[0] and "notes.png" in errors[1], errors
    assert app.sidebar.selectbox(key="image_choice").value.startswith("sample")
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()  # still working
    _ok(app)
    assert int(_metric(app, "Detections")) > 0


def test_oversized_image_is_downscaled(app, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EFPN_STUDIO_MAX_PIXELS", str(80 * 80))
    big = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    app.file_uploader(key="detect_uploader").set_value(("big.png", png_bytes(big), "image/png")).run()
    _ok(app)
    assert any("downscaled" in w.value for w in app.warning), [w.value for w in app.warning]


def test_decompression_bomb_is_refused_before_decoding(app) -> None:
    buf = io.BytesIO()
    Image.new("L", (16_000, 16_000)).save(buf, format="PNG")  # 256 MP of zeros, a few hundred kB
    app.file_uploader(key="detect_uploader").set_value(("bomb.png", buf.getvalue(), "image/png")).run()
    _ok(app)
    assert any("bomb.png" in e and "MP" in e for e in _errors(app)), _errors(app)


# ----------------------------------------------------------------------------------------------- checkpoints


def test_pickle_checkpoint_is_refused(app) -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    octet, js = "application/octet-stream", "application/json"
    app.sidebar.file_uploader(key="ckpt_upload_weights").set_value(("model.pt", buf.getvalue(), octet))
    app.sidebar.file_uploader(key="ckpt_upload_card").set_value(("model.json", b'{"format": "efpn"}', js))
    app.sidebar.button(key="ckpt_upload_go").click().run()
    _ok(app)
    errors = [e.value for e in app.sidebar.error]
    assert errors and "unpickle" in errors[0], errors
    assert app.sidebar.selectbox(key="checkpoint_choice").value.endswith("tiny_efpn_n.safetensors")
    _ok(app.sidebar.slider(key="score_thresh").set_value(0.0).run())


def test_uploaded_safetensors_checkpoint_is_used(app, app_env: Path) -> None:
    weights = (app_env / "tiny_yolov8_sgdm.safetensors").read_bytes()
    card = (app_env / "tiny_yolov8_sgdm.json").read_bytes()
    octet = "application/octet-stream"
    app.sidebar.file_uploader(key="ckpt_upload_weights").set_value(("mine.safetensors", weights, octet))
    app.sidebar.file_uploader(key="ckpt_upload_card").set_value(("mine.json", card, "application/json"))
    app.sidebar.button(key="ckpt_upload_go").click().run()
    _ok(app)
    assert not [e.value for e in app.sidebar.error]
    assert Path(app.sidebar.selectbox(key="checkpoint_choice").value).stem == "mine"


def test_mismatched_card_shows_error_and_recovers(app, app_env: Path) -> None:
    app.sidebar.selectbox(key="checkpoint_choice").set_value(str(app_env / "zz_mismatched.safetensors")).run()
    _ok(app)
    assert any("does not match" in e for e in _errors(app)), _errors(app)
    app.sidebar.selectbox(key="checkpoint_choice").set_value(str(app_env / "tiny_efpn_n.safetensors")).run()
    _ok(app)
    assert not _errors(app)
    assert app.title[0].value == "Detect"


def test_no_checkpoint_shows_how_to_train(app_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("EFPN_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.delenv("EFPN_CHECKPOINT")
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    _ok(at)
    assert any("No checkpoint found" in w.value and "efpn train" in w.value for w in at.warning)


# ----------------------------------------------------------------------------------------------- assignment


def test_assignment_every_assigner(app) -> None:
    _goto(app, "assignment")
    radio = app.radio(key="assigner")
    for option in radio.options:
        app.radio(key="assigner").set_value(option).run()
        _ok(app)
        assert int(_metric(app, "GT boxes")) > 0, option
        assert int(_metric(app, "Positive pairs")) > 0, option


def test_assignment_annotation_upload(app) -> None:
    _goto(app, "assignment")
    app.file_uploader(key="gt_upload_0").set_value(("000000.txt", b"1 0.5 0.5 0.1 0.1\n0 0.2 0.3 0.05 0.05\n",
                                                    "text/plain")).run()
    _ok(app)
    assert any("2 boxes from uploaded YOLO txt" in c.value for c in app.caption), [c.value for c in app.caption]
    assert _metric(app, "GT boxes") == "2"


def test_ground_truth_of_other_classes_is_said(app) -> None:
    """A COCO file with a category the checkpoint does not have (it predicts disc, square, cross): the pages say how
    that box is treated instead of silently taking it for one of the model's classes."""
    doc = (b'{"images": [{"id": 1, "file_name": "000000.png", "width": 512, "height": 512}], "annotations": ['
           b'{"id": 1, "image_id": 1, "category_id": 5, "bbox": [100, 100, 12, 12]}, '
           b'{"id": 2, "image_id": 1, "category_id": 9, "bbox": [300, 200, 10, 10]}], '
           b'"categories": [{"id": 5, "name": "ship"}, {"id": 9, "name": "disc"}]}')
    _goto(app, "assignment")
    app.file_uploader(key="gt_upload_0").set_value(("gt.json", doc, "application/json")).run()
    _ok(app)
    _goto(app, "gates")
    _ok(app)
    caps = [c.value for c in app.caption]
    assert any("1 of them carry a class this checkpoint does not predict (it has 3)" in c for c in caps), [
        c for c in caps if "Boxes" in c]


@pytest.mark.parametrize("name, data, fmt", [
    ("gt.json", b'{"images": [{"id": 7, "file_name": "000000.png", "width": 512, "height": 512}, '
                b'{"id": 8, "file_name": "other.png", "width": 64, "height": 64}], '
                b'"annotations": [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [100, 100, 40, 20]}, '
                b'{"id": 2, "image_id": 8, "category_id": 1, "bbox": [1, 1, 5, 5]}], '
                b'"categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]}', "COCO JSON"),
    ("gt.xml", b"<annotation><size><width>256</width><height>256</height></size><object><name>cross</name>"
               b"<bndbox><xmin>50</xmin><ymin>60</ymin><xmax>58</xmax><ymax>66</ymax></bndbox></object></annotation>",
     "VOC XML"),
])
def test_assignment_annotation_upload_coco_and_voc(app, name: str, data: bytes, fmt: str) -> None:
    """The COCO entry named like the sample (annotated at twice its size) and a VOC file give one box each."""
    _goto(app, "assignment")
    app.file_uploader(key="gt_upload_0").set_value((name, data, "application/octet-stream")).run()
    _ok(app)
    assert not _errors(app), _errors(app)
    assert any(f"1 boxes from uploaded {fmt}" in c.value for c in app.caption), [c.value for c in app.caption]
    assert _metric(app, "GT boxes") == "1"


def test_assignment_bad_annotation_keeps_gt(app) -> None:
    _goto(app, "assignment")
    before = _metric(app, "GT boxes")
    app.file_uploader(key="gt_upload_0").set_value(("broken.json", b"{not json", "application/json")).run()
    _ok(app)
    assert any("could not be parsed" in e for e in _errors(app)), _errors(app)
    assert _metric(app, "GT boxes") == before


@pytest.mark.parametrize("name, data", [
    ("bad.txt", b"0 nan 0.5 0.1 0.1\n9 0.5 0.5 0.1 0.1\nnot a box\n"),
    ("bin.txt", bytes(range(256)) * 8),
])
def test_assignment_annotation_with_nothing_usable_keeps_gt(app, name: str, data: bytes) -> None:
    """A file whose every entry is refused is not an image without objects: the ground truth stays, and the page
    says why (an empty label file, which is one, is still accepted as zero boxes)."""
    _goto(app, "assignment")
    before = _metric(app, "GT boxes")
    assert int(before) > 0
    app.file_uploader(key="gt_upload_0").set_value((name, data, "text/plain")).run()
    _ok(app)
    assert any(f"Nothing usable in {name}" in e and "unchanged" in e for e in _errors(app)), _errors(app)
    assert _metric(app, "GT boxes") == before
    app.file_uploader(key="gt_upload_0").set_value(("empty.txt", b"", "text/plain")).run()
    _ok(app)
    assert any("0 boxes from uploaded YOLO txt" in c.value for c in app.caption), [c.value for c in app.caption]


def test_assignment_table_editor_and_reset(app) -> None:
    _goto(app, "assignment")
    app.button(key="gt_from_det").click().run()  # threshold 0.25: no detection -> empty GT
    _ok(app)
    assert any("Add at least one" in i.value for i in app.info)
    app.button(key="gt_reset").click().run()
    _ok(app)
    assert int(_metric(app, "GT boxes")) > 0


def test_assignment_dataset_mode(app) -> None:
    _goto(app, "assignment")
    app.number_input(key="ds_limit").set_value(2).run()
    app.button(key="ds_run").click().run()
    _ok(app)
    assert _metric(app, "Images") == "2"
    # datasets are chosen among the project's data YAMLs, never typed in as a server path
    assert not app.text_input
    options = app.selectbox(key="ds_yaml").options  # as shown: "ssdd (recipes/data)", ...
    assert "samples (app/samples)" in options and all(o.endswith(")") for o in options)


def test_assignment_dataset_mode_failure_clears_the_earlier_result(app, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset that fails to load shows its error alone, not under the numbers of the dataset run before it."""
    samples = APP.parent / "samples"
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "zbroken.yaml").write_text(
        f"format: coco\nroot: {samples.resolve()}\ntrain:\n  annotations: {tmp_path / 'broken.json'}\n"
        "  images: images\n")
    monkeypatch.setenv("EFPN_DATA_DIR", str(tmp_path))
    _goto(app, "assignment")
    app.number_input(key="ds_limit").set_value(2).run()
    app.button(key="ds_run").click().run()
    assert _metric(app, "Images") == "2"
    box = app.selectbox(key="ds_yaml")
    box.select_index(box.options.index("zbroken (EFPN_DATA_DIR)")).run()
    app.button(key="ds_run").click().run()
    _ok(app)
    assert any("could not be loaded" in e for e in _errors(app)), _errors(app)
    assert not [m for m in app.metric if m.label == "Images"]


# ----------------------------------------------------------------------------------------------- sessions


def test_sessions_are_isolated(app, app_env: Path, sample_rgb: np.ndarray) -> None:
    """One user's uploads, broken files and ground truth never reach another session."""
    from streamlit.testing.v1 import AppTest

    other = AppTest.from_file(str(APP), default_timeout=180).run()
    app.file_uploader(key="detect_uploader").set_value([
        ("mine.png", png_bytes(sample_rgb), "image/png"), ("bad.png", b"nope", "image/png")]).run()
    _goto(app, "assignment")
    app.file_uploader(key="gt_upload_0").set_value(("mine.txt", b"0 0.5 0.5 0.2 0.2\n", "text/plain")).run()
    assert _metric(app, "GT boxes") == "1"
    other.run()
    _ok(other)
    assert not _errors(other)
    assert "upload mine.png" not in other.sidebar.selectbox(key="image_choice").options
    _goto(other, "assignment")
    assert int(_metric(other, "GT boxes")) > 1  # the sample's own annotation


def test_a_failing_upload_can_be_removed(app, sample_rgb: np.ndarray) -> None:
    """A 20000x8 strip decodes but cannot be detected on as a whole: the page says why, and the upload can be
    removed from the session, after which the session works as before."""
    strip = np.full((8, 20000, 3), 120, np.uint8)
    app.file_uploader(key="detect_uploader").set_value([("strip.png", png_bytes(strip), "image/png")]).run()
    _ok(app)
    assert app.sidebar.selectbox(key="image_choice").value == "upload strip.png"
    assert any("strip.png" in e and "Remove this upload" in e for e in _errors(app)), _errors(app)
    app.radio(key="detect_mode").set_value("Sliced (tiles)").run()  # tile by tile it works
    _ok(app)
    assert not _errors(app)
    # with a second upload, the all-uploads table runs every other image and names the strip instead of failing
    app.file_uploader(key="detect_uploader").set_value([("fine.png", png_bytes(sample_rgb), "image/png")]).run()
    app.session_state["detect_all_open"] = True
    app.run()
    _ok(app)
    summary = next(d.value for d in app.dataframe if "best score" in d.value.columns)
    assert list(summary["image"]) == ["upload fine.png"]
    assert any("strip.png" in w.value and "Sliced" in w.value for w in app.warning), [w.value for w in app.warning]
    app.session_state["detect_all_open"] = False
    app.sidebar.selectbox(key="image_choice").set_value("upload strip.png").run()
    app.radio(key="detect_mode").set_value("Whole image").run()
    app.sidebar.button(key="remove_upload").click().run()
    _ok(app)
    assert "upload strip.png" not in app.sidebar.selectbox(key="image_choice").options
    assert app.sidebar.selectbox(key="image_choice").value.startswith("sample")
    app.sidebar.slider(key="score_thresh").set_value(0.0).run()
    _ok(app)
    assert int(_metric(app, "Detections")) > 0


def test_uploads_are_bounded_per_session(app, sample_rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the per-session count, the oldest uploads go, and the page says which."""
    from app import state

    monkeypatch.setattr(state, "MAX_UPLOADED_IMAGES", 2)
    files = [(f"u{i}.png", png_bytes(np.roll(sample_rgb, i, axis=1)), "image/png") for i in range(3)]
    app.file_uploader(key="detect_uploader").set_value(files).run()
    _ok(app)
    options = app.sidebar.selectbox(key="image_choice").options
    assert "upload u0.png" not in options and {"upload u1.png", "upload u2.png"} <= set(options), options
    assert any("the oldest were removed (u0.png)" in i.value for i in app.info), [i.value for i in app.info]


def test_detect_opens_any_internal_map_full_size(app) -> None:
    """Every thumbnail of "Inside the network" can be opened full size over the image: CEM, gates, kernels. The
    expander is lazy: nothing of it is built until it is opened."""
    _ok(app)
    assert not [s for s in app.selectbox if s.key == "detect_full_map"]  # closed: not built
    app.session_state["detect_full_open"] = True  # what opening it in the browser does
    app.run()
    _ok(app)
    options = app.selectbox(key="detect_full_map").options
    assert any(o.startswith("FBSM gate M on") for o in options), options
    assert any(o.startswith("CEM fused context F on") for o in options), options
    gate = next(o for o in options if o.startswith("FBSM gate M on"))
    app.selectbox(key="detect_full_map").set_value(gate).run()
    _ok(app)
    assert app.selectbox(key="detect_full_map").value == gate
