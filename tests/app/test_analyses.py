"""app/analyses.py: cached library calls on the shared inspection (no second forward), and dataset accounting."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from studio_helpers import REPO

import efpn
from app import analyses, views
from efpn.data import SYNTH_CLASSES, load_split
from efpn.det import assign_tal
from efpn.infer import boxes_to_network

APP_DIR = REPO / "app"


@pytest.fixture(scope="module")
def models() -> dict[str, efpn.Detector]:
    torch.manual_seed(0)
    return {p: efpn.build_model(p, num_classes=3, class_names=SYNTH_CLASSES).eval()
            for p in ("tiny_efpn_n", "tiny_yolov8_sgdm")}


def _gt() -> tuple:
    """Three GT boxes of the 96 x 128 sample (a tiny one last), as the pages key them."""
    boxes = np.array([[10, 12, 18, 20], [40, 30, 60, 52], [90, 70, 94, 75]], np.float32)
    return analyses.gt_key(boxes, np.array([0, 2, 1]))


@pytest.mark.parametrize("preset", ["tiny_efpn_n", "tiny_yolov8_sgdm"])
def test_model_assignment_reuses_the_inspection(models, sample_rgb: np.ndarray, preset: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's own assignment equals the one efpn.inspect makes with targets, TAL equals TAL on a fresh decode,
    and neither runs the model again; positives come back in the image's pixels."""
    model = models[preset]
    gt = _gt()
    t = {"boxes": np.asarray(gt[0], np.float32), "labels": np.asarray(gt[1])}
    own = efpn.inspect(model, sample_rgb, targets=t).assignment
    prep = analyses.prepared(model, sample_rgb)
    with torch.no_grad():
        run = model.run(prep.tensor, decode=True)
    boxes, scores = run.decoded
    tal = assign_tal(run.priors, boxes_to_network(t["boxes"], prep.scale), torch.as_tensor(t["labels"]),
                     scores[0].float(), boxes[0].float())

    ins = efpn.inspect(model, sample_rgb)
    monkeypatch.setattr(model, "run", lambda *a, **k: pytest.fail("a second forward"))
    summary = analyses.model_assignment(model, f"{preset}-key", ins, "digest", gt, tal=False)
    assert summary.name == f"model ({model.config.head.assigner})" and summary.note is None
    assert summary.accounting["positives_per_level"] == own.accounting.positives_per_level
    assert summary.accounting["starved"] == own.accounting.to_dict()["starved"]
    got = analyses.model_assignment(model, f"{preset}-key", ins, "digest", gt, tal=True)
    assert got.name == "tal" and "TAL" in (got.note or "")
    assert sum(len(v) for v in got.positives.values()) == len(tal.prior_idx)
    ref = ins.to_image(ins.priors.boxes[tal.prior_idx]).numpy()
    np.testing.assert_allclose(np.sort(np.concatenate(list(got.positives.values())), axis=0), np.sort(ref, axis=0))
    h, w = sample_rgb.shape[:2]
    for b in summary.positives.values():  # image px, clipped to the image
        assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= w).all() and (b[:, 1::2] <= h).all()


def test_box_protocols_on_the_resized_image(sample_rgb: np.ndarray) -> None:
    gt = _gt()
    s = analyses.box_assignment("fcos", gt, sample_rgb.shape[:2], 64)
    assert s.network_hw == (48, 64) and s.name == "fcos" and s.accounting["num_gt"] == 3
    pts = np.concatenate([b for b in s.positives.values()])
    assert len(pts) and (pts[:, 0] == pts[:, 2]).all()  # points, in the 128 x 96 image's pixels
    boxes = np.asarray(gt[0])
    inside = [(boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3]) for x, y in pts[:, :2]]
    assert all(m.any() for m in inside)  # FCOS positives lie inside a GT box


def test_dataset_accounting_over_the_samples() -> None:
    records, _, _ = load_split(REPO / "app" / "samples" / "data.yaml", "train")
    steps = list(analyses.iter_dataset_accounting(records, "maxiou", 128))
    assert [i for i, _ in steps] == list(range(1, len(records) + 1))
    total = steps[-1][1].to_dict()
    assert total["num_images"] == len(records) and total["num_gt"] == sum(len(r.boxes) for r in records)
    assert total["zero_high_level_share"]["p5"] > 0.9  # tiny objects: no positive on p5+ (SPEC §1)
    native = list(analyses.iter_dataset_accounting(records[:1], "fcos", None))[-1][1]
    assert native.num_gt == len(records[0].boxes)


# ----------------------------------------------------------------------------------------------- attribution


def test_fast_gradcam_times_a_pass_and_brings_the_random_baseline(models, sample_rgb: np.ndarray) -> None:
    """The page's default: LayerGradCAM on every level with its deletion curve and the random order's, timed per
    pass (the base of the long methods' estimate); no pixel method."""
    model = models["tiny_efpn_n"]
    ex = analyses.explain_gradcam(model, "tiny-key", sample_rgb, "digest", (40.0, 30.0, 60.0, 52.0), 1)
    assert not ex.maps and set(ex.gradcam) == set(model.levels)
    assert set(ex.deletion) == {"gradcam", "random"} and {"gradcam", "box_area"} <= set(ex.mass_inside)
    assert ex.pass_ms["forward_backward"] > 0 and ex.pass_ms["forward"] > 0


def test_long_plan_counts_what_explain_long_runs(models, sample_rgb: np.ndarray) -> None:
    """The plan (what the estimate and the progress text read) adds up to the total explain_long reports, part by
    part in the order it runs; the long run brings no random curve of its own (the fast one has it)."""
    model = models["tiny_efpn_n"]
    box, methods = (40.0, 30.0, 60.0, 52.0), ["occlusion", "integrated_gradients"]
    plan = analyses.long_plan(model, sample_rgb, box, methods, 4, 16)
    assert [part for part, _ in plan] == ["clean", "integrated_gradients", "occlusion", "deletion"]
    assert dict(plan)["integrated_gradients"] == {"forward_backward": 4, "forward": 0}
    calls: list[tuple[int, int]] = []
    ex = analyses.explain_long(model, sample_rgb, box, 1, methods, 4, 16, lambda d, t: calls.append((d, t)))
    total = views.plan_images(plan)
    assert calls[-1] == (total, total) and all(t == total for _, t in calls)
    assert set(ex.maps) == {"integrated_gradients", "occlusion"} and "random" not in ex.deletion


# ----------------------------------------------------------------------------------------------- boundaries


def _app_files() -> list[Path]:
    return sorted(p for p in APP_DIR.rglob("*.py"))


def test_app_imports_only_public_names() -> None:
    """``import efpn`` / ``from efpn[.package] import X`` with X in that package's ``__all__``; no module paths."""
    import importlib

    for path in _app_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                bad = [a.name for a in node.names if a.name.startswith("efpn.")]
                assert not bad, f"{path.name}: import {bad}"
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "efpn":
                mod = importlib.import_module(node.module)
                assert Path(mod.__file__).name == "__init__.py", f"{path.name}: from {node.module} import"
                private = [a.name for a in node.names if a.name not in mod.__all__]
                assert not private, f"{path.name}: {private} are not in {node.module}.__all__"


def test_pages_do_no_coordinate_arithmetic_and_no_model_internals() -> None:
    arithmetic = re.compile(r"[*/]\s*(ins|prep)\.scale\b|\b(ins|prep)\.scale\s*[*/]|\bint\([^)]*//")
    for path in [*(APP_DIR / "app_pages").glob("*.py"), APP_DIR / "state.py", APP_DIR / "views.py"]:
        text = path.read_text()
        assert not arithmetic.search(text), (path.name, arithmetic.search(text).group(0))
    for path in _app_files():
        text = path.read_text()
        for internal in ("forward_intermediates", ".decoder(", "_model.decoder", "assign_tal(", "efpn.det.assign "):
            assert internal not in text, (path.name, internal)


def test_heavy_slot_queues_the_second_request_and_always_releases() -> None:
    """One heavy request at a time: a second one waits (calling ``waiting`` meanwhile) until the first ends; a block
    that raises still gives its slot back."""
    import threading
    import time

    from app import analyses

    assert analyses.HEAVY_SLOTS == 1
    entered = threading.Event()
    leave = threading.Event()

    def first() -> None:
        with analyses.heavy_slot():
            entered.set()
            leave.wait(5)

    t = threading.Thread(target=first)
    t.start()
    assert entered.wait(5)
    polls: list[float] = []

    def waiting() -> None:
        polls.append(time.monotonic())
        if len(polls) == 3:
            leave.set()  # the first request ends while the second waits

    with analyses.heavy_slot(waiting, interval=0.02):
        assert len(polls) >= 3
    t.join(5)
    with pytest.raises(RuntimeError):
        with analyses.heavy_slot():
            raise RuntimeError("the computation failed")
    with analyses.heavy_slot(lambda: pytest.fail("the slot was not released")):  # free again at once
        pass


def test_a_bad_heavy_slots_setting_keeps_the_default(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A typo in EFPN_STUDIO_HEAVY_SLOTS is logged and ignored: raised at import it took every page down."""
    from app import analyses

    monkeypatch.setenv("EFPN_STUDIO_HEAVY_SLOTS", "two")
    assert analyses._slots_from_env() == 1
    assert "EFPN_STUDIO_HEAVY_SLOTS='two'" in caplog.text
    monkeypatch.setenv("EFPN_STUDIO_HEAVY_SLOTS", " 3 ")
    assert analyses._slots_from_env() == 3
    monkeypatch.setenv("EFPN_STUDIO_HEAVY_SLOTS", "0")
    assert analyses._slots_from_env() == 1


def test_checkpoints_sharing_a_name_are_told_apart() -> None:
    from app.state import checkpoint_labels

    entries = [{"path": "/c/a.safetensors", "name": "ship"}, {"path": "/c/b.safetensors", "name": "ship"},
               {"path": "/c/c.safetensors", "name": "other"}, {"path": "/c/d.safetensors", "name": "d", "error": "x"}]
    assert checkpoint_labels(entries) == {"/c/a.safetensors": "ship (a.safetensors)",
                                          "/c/b.safetensors": "ship (b.safetensors)",
                                          "/c/c.safetensors": "other", "/c/d.safetensors": "d (unreadable card)"}


def test_merged_diagnoses_keep_the_settings_their_parts_ran_with() -> None:
    """The Dataset page's JSON download says the NMS IoU (and tiles) the per-image diagnoses used, not null."""
    from efpn.explain import DatasetDiagnosis

    parts = [DatasetDiagnosis(nms_iou=0.45, slice_size=256, overlap=0.2, tiles_only=[(7, "a.png", "too thin")]),
             DatasetDiagnosis(nms_iou=0.45, slice_size=256, overlap=0.2)]
    merged = analyses.merge_diagnoses(parts, 0.25, 0.5, ["ship"])
    report = merged.to_json()
    assert (report["nms_iou"], report["slice"], report["overlap"]) == (0.45, 256, 0.2)
    assert [t["image_id"] for t in report["tiles_only"]] == [7]
