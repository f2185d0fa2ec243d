"""Ground truth given in the studio (whose it is, what the reader assumed) and the sidebar's per-checkpoint
settings."""

from __future__ import annotations

import pytest
from studio_helpers import goto as _goto
from studio_helpers import ok as _ok
from studio_helpers import studio_on


def test_ground_truth_of_another_image_is_said(app) -> None:
    """A COCO file of one other image, annotated at another size: its boxes are applied (the user may mean it), and
    the page says whose they are and that they were stretched, for the user to check; a box that clipping leaves
    under a pixel is counted, not silently dropped."""
    doc = (b'{"images": [{"id": 1, "file_name": "holiday_0042.jpg", "width": 1000, "height": 1000}], '
           b'"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 100, 100, 100]}, '
           b'{"id": 2, "image_id": 1, "category_id": 1, "bbox": [999.5, 10, 50, 50]}], '
           b'"categories": [{"id": 1, "name": "disc"}]}')
    _goto(app, "assignment")
    app.file_uploader(key="gt_upload_0").set_value(("gt.json", doc, "application/json")).run()
    _ok(app)
    said = " ".join(w.value for w in app.warning)
    assert "describes 'holiday_0042.jpg'" in said and "annotates a 1000x1000 image" in said, said
    assert "1 box(es) of the file left out: under 1 px" in said, said


def test_ground_truth_given_to_an_upload_leaves_a_sample_with_its_bytes_alone(app) -> None:
    """Ground truth was kept by file content: given to an upload with the bytes of a bundled sample, it replaced the
    sample's own annotation too (16 boxes became 1)."""
    from pathlib import Path

    from studio_helpers import APP

    sample = next(o for o in app.selectbox(key="image_choice").options if o.startswith("sample"))
    before = len(app.session_state["efpn_ctx"].gt.boxes)
    data = (Path(APP).parent / "samples" / "images" / sample.split(" ", 1)[1]).read_bytes()
    app.file_uploader(key="detect_uploader").set_value(("my_copy.png", data, "image/png")).run()
    _goto(app, "assignment")
    app.file_uploader(key="gt_upload_0").set_value(("my_copy.txt", b"0 0.5 0.5 0.1 0.1\n", "text/plain")).run()
    _ok(app)
    assert len(app.session_state["efpn_ctx"].gt.boxes) == 1
    app.selectbox(key="image_choice").set_value(sample).run()
    assert len(app.session_state["efpn_ctx"].gt.boxes) == before > 1


def test_each_checkpoint_opens_at_its_own_nms_iou(app_env, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The NMS slider kept the first checkpoint's default for every checkpoint chosen after it (an SSDD checkpoint
    shipped at 0.75 ran at 0.5, with other detections than the CLI and the Dataset page)."""
    import dataclasses

    import efpn

    wide = efpn.build_model("tiny_efpn_n", num_classes=3, class_names=("disc", "square", "cross"))
    wide.config = dataclasses.replace(wide.config, postprocess=dataclasses.replace(wide.config.postprocess,
                                                                                   nms_iou=0.75))
    efpn.save_checkpoint(wide, tmp_path / "wide.safetensors")
    at = studio_on(tmp_path, app_env, monkeypatch)
    assert at.sidebar.slider(key="nms_iou").value == pytest.approx(0.5)
    at.sidebar.slider(key="nms_iou").set_value(0.3).run()  # the user's value holds while the checkpoint does
    _goto(at, "gates")
    assert at.sidebar.slider(key="nms_iou").value == pytest.approx(0.3)
    at.sidebar.selectbox(key="checkpoint_choice").set_value(str(tmp_path / "wide.safetensors")).run()
    _ok(at)
    assert at.sidebar.slider(key="nms_iou").value == pytest.approx(0.75)
    at.sidebar.selectbox(key="checkpoint_choice").set_value(str(tmp_path / "tiny_efpn_n.safetensors")).run()
    assert at.sidebar.slider(key="nms_iou").value == pytest.approx(0.5)
