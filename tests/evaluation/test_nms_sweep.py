"""Choosing the NMS IoU threshold on a split: one prediction pass gives every threshold's predictions exactly, and
the sweep picks the threshold that keeps crowded objects when they are what the split holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import efpn
from efpn.data.records import ImageRecord
from efpn.data.splits import load_split
from efpn.data.synthetic import write_synthetic_dataset
from efpn.evaluation import nms_sweep, predict_records, predict_records_nms, sweep_nms_iou, validate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, list, list]:
    root = tmp_path_factory.mktemp("nms") / "synth"
    write_synthetic_dataset(root, num_images=4, image_size=96, seed=5, val_fraction=0.0, max_size=24)
    records, names, _ = load_split(root / "data.yaml", "train")
    torch.manual_seed(0)  # random weights: many overlapping candidates, so NMS has work at every threshold
    return efpn.build_model("tiny_efpn_n", num_classes=len(names)).eval(), records, names


def test_one_pass_equals_one_prediction_per_threshold(tiny) -> None:
    model, records, _ = tiny
    ious = (0.3, 0.5, 0.7)
    swept = predict_records_nms(model, records, 96, ious, score_thresh=0.01, max_det=1500)
    counts = []
    for iou in ious:
        single = predict_records(model, records, 96, score_thresh=0.01, max_det=1500, nms_iou=iou)
        assert swept[iou].keys() == single.keys()
        for image_id, det in single.items():
            for key in ("boxes", "scores", "labels"):
                np.testing.assert_array_equal(swept[iou][image_id][key], det[key], err_msg=f"{iou} {key}")
        counts.append(sum(len(d["scores"]) for d in single.values()))
    assert counts[0] < counts[-1]  # a higher threshold suppresses less: the thresholds really differed


def test_sweep_rows_are_validations_at_each_threshold(tiny) -> None:
    model, records, names = tiny
    sweep = sweep_nms_iou(model, records, names, ious=(0.45, 0.7), image_size=96)
    assert list(sweep.rows) == [0.45, 0.5, 0.7]  # the model's own threshold (0.5) is always scored
    assert sweep.current == model.config.postprocess.nms_iou == 0.5
    for iou, row in sweep.rows.items():
        assert row["AP"] == pytest.approx(validate(model, records, names, image_size=96, nms_iou=iou).metrics["AP"])
    best = max(row["AP"] for row in sweep.rows.values())
    assert sweep.rows[sweep.best]["AP"] >= best - 0.002
    assert sweep.best == 0.5 or sweep.gain >= 0.002  # moved off the model's threshold only for a real gain
    assert json.loads(json.dumps(sweep.to_json_dict()))["rows"]["0.45"]["AP"] == sweep.rows[0.45]["AP"]
    assert any("<- chosen" in line for line in sweep.table())
    with pytest.raises(ValueError, match="metric must be one of"):
        sweep_nms_iou(model, records, names, metric="F1")
    with pytest.raises(ValueError, match=r"IoU thresholds in \[0, 1\]"):
        sweep_nms_iou(model, records, names, ious=(0.5, 1.5))


def test_crowded_objects_pick_a_threshold_that_keeps_both(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ships side by side (IoU 0.54 between them), each detected: NMS at 0.5 suppresses the lower-scoring one
    (AP 0.5), any threshold from 0.55 keeps both (AP 1); the sweep takes the smallest of those, the closest to the
    model's 0.5."""
    from torchvision.ops import batched_nms

    model, _, names = tiny
    a, b = [20.0, 20.0, 60.0, 40.0], [32.0, 20.0, 72.0, 40.0]  # 40x20 each, IoU 28*20 / (2*800 - 560) = 0.54
    records = [ImageRecord(image_id=1, path=Path("crowd.png"), width=100, height=100,
                           boxes=np.array([a, b], np.float32), labels=np.zeros(2, np.int64))]
    candidates = {"boxes": torch.tensor([a, b]), "scores": torch.tensor([0.9, 0.8]),
                  "labels": torch.zeros(2, dtype=torch.int64)}

    def fake_predict(model, records, image_size, ious, **kw):  # what one pass + NMS per threshold returns
        out = {}
        for iou in ious:
            keep = batched_nms(candidates["boxes"], candidates["scores"], candidates["labels"], iou)
            out[iou] = {1: {k: v[keep].numpy() for k, v in candidates.items()}}
        return out

    monkeypatch.setattr(nms_sweep, "predict_records_nms", fake_predict)
    sweep = sweep_nms_iou(model, records, names)
    assert sweep.rows[0.5]["AP50"] == pytest.approx(0.5, abs=0.01)
    assert sweep.rows[0.55]["AP50"] == sweep.rows[0.75]["AP50"] == pytest.approx(1.0)
    assert sweep.best == 0.55 and sweep.gain > 0.4


def test_val_cli_scores_another_threshold_and_the_sweep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from efpn.checkpoint import save_checkpoint
    from efpn.cli.main import main

    write_synthetic_dataset(tmp_path / "synth", num_images=3, image_size=96, seed=7, max_size=24)
    torch.manual_seed(1)
    model = efpn.build_model("tiny_efpn_n", num_classes=3, class_names=("disc", "square", "cross"))
    ckpt = save_checkpoint(model.eval(), tmp_path / "tiny.safetensors", {"preset": "tiny_efpn_n"})
    data = tmp_path / "synth" / "data.yaml"
    out = tmp_path / "m.json"
    main(["val", "--weights", str(ckpt), "--data", str(data), "--split", "train", "--nms-iou", "0.7",
          "--json", str(out)])
    m = json.loads(out.read_text())
    records, names, _ = load_split(data, "train")
    assert m["nms_iou"] == 0.7 and "nms_sweep" not in m
    assert m["AP"] == pytest.approx(validate(model, records, names, nms_iou=0.7).metrics["AP"])
    main(["val", "--weights", str(ckpt), "--data", str(data), "--split", "train", "--nms-sweep", "--json", str(out)])
    swept = json.loads(out.read_text())
    assert swept["nms_iou"] == 0.5 and swept["nms_sweep"]["rows"]["0.7"]["AP"] == pytest.approx(m["AP"])
    assert "NMS IoU 0.5 (the checkpoint's)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["val", "--weights", str(ckpt), "--data", str(data), "--nms-iou", "0.6", "--nms-sweep"])
    assert "drop --nms-iou" in capsys.readouterr().err


def test_validate_and_the_sweep_honour_ignore_regions(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """A detection inside an ignore region (COCO ignore=1, VisDrone category 0) is neither a true nor a false
    positive in validate() and in the sweep, as in the VisDrone toolkit: here both objects are found at score 0.5 and
    the only other detection (score 0.9) lies in an ignore region, so AP50 is 1 (2/3 when it was counted)."""
    import importlib

    validate_module = importlib.import_module("efpn.evaluation.validate")  # the package exports the function
    model, _, names = tiny
    objects = np.array([[40, 40, 60, 60], [70, 20, 90, 36]], np.float32)
    records = [ImageRecord(image_id=7, path=Path("ignore.png"), width=100, height=100, boxes=objects,
                           labels=np.zeros(2, np.int64), ignore=[[0, 0, 30, 30]])]
    preds = {7: {"boxes": np.concatenate([objects, [[2, 2, 12, 12]]]).astype(np.float32),
                 "scores": np.array([0.5, 0.5, 0.9], np.float32), "labels": np.zeros(3, np.int64)}}
    monkeypatch.setattr(validate_module, "predict_records", lambda *a, **kw: preds)
    monkeypatch.setattr(nms_sweep, "predict_records_nms",
                        lambda model, recs, size, ious, **kw: dict.fromkeys(ious, preds))
    assert validate(model, records, names, image_size=96).metrics["AP50"] == pytest.approx(1.0)
    sweep = sweep_nms_iou(model, records, names, image_size=96, ious=(0.5,), metric="AP50")
    assert all(row["AP50"] == pytest.approx(1.0) for row in sweep.rows.values())
