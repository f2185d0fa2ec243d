"""`efpn ship`: a run becomes a checkpoint with verified metrics and a sanity set that reproduces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import efpn
from efpn.cli.ship import load_sanity_image, ship
from efpn.config import TrainConfig
from efpn.data.synthetic import write_synthetic_dataset
from efpn.engine.train import train
from efpn.infer.predict import predict_image


def test_ship_run_to_checkpoint(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "synth", num_images=16, image_size=128, seed=3, max_size=24)
    yaml = tmp_path / "synth" / "data.yaml"
    result = train(TrainConfig(model="tiny_yolov8_sgdm", data=str(yaml), image_size=128, epochs=1, batch_size=4,
                               max_steps=3, workers=0, out=str(tmp_path / "runs"), name="t", progress=False,
                               val_every=1))
    path = ship(result.run_dir, "tiny_synth", out_dir=tmp_path / "ckpt", progress=False)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["storage"] in ("int8", "fp16", "fp32") and card["name"] == "tiny_synth"
    trials = card["storage_trials"]
    assert set(trials) >= {"fp32", "int8"} and card["metrics"]["AP"] == trials[card["storage"]]
    if card["storage"] != "fp32":  # a smaller storage is kept only when it loses nothing measurable
        assert abs(trials[card["storage"]] - trials["fp32"]) <= 0.002
    assert set(card["metrics"]) >= {"AP", "AP50", "AP_vt", "AP_t", "AP_s", "AP_m"}
    assert card["val_image_ids"] and card["sanity"]["images"]
    model = efpn.load_model(path)
    for entry in card["sanity"]["images"]:
        assert "synthetic" in entry  # regenerable on any machine
        image = load_sanity_image(entry)
        det = predict_image(model, image, score_thresh=card["sanity"]["score_thresh"],
                            image_size=card["sanity"]["image_size"])
        assert abs(len(det["scores"]) - entry["count"]) <= max(1, entry["count"] // 10)


def test_ship_int8_on_request(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "synth", num_images=12, image_size=128, seed=4, max_size=24)
    result = train(TrainConfig(model="tiny_efpn_n", data=str(tmp_path / "synth" / "data.yaml"), image_size=128,
                               epochs=1, batch_size=4, max_steps=2, workers=0, out=str(tmp_path / "runs"), name="t",
                               progress=False, val_every=1))
    path = ship(result.run_dir, "tiny_int8", out_dir=tmp_path / "ckpt", progress=False, storage="int8")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):  # an existing checkpoint is not replaced silently
        ship(result.run_dir, "tiny_int8", out_dir=tmp_path / "ckpt", progress=False, storage="fp32")
    with pytest.raises(ValueError, match="plain file name"):  # nor written outside --out
        ship(result.run_dir, "../escaped", out_dir=tmp_path / "ckpt", progress=False)
    assert path.read_bytes() == before and not (tmp_path / "escaped.safetensors").exists()
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["storage"] == "int8" and card["weights_dtype"] == "int8-weights"
    assert set(card["storage_trials"]) == {"fp32", "int8"}
    model = efpn.load_model(path)
    for entry in card["sanity"]["images"]:  # the counts are those of the stored (int8) weights
        det = predict_image(model, load_sanity_image(entry), score_thresh=card["sanity"]["score_thresh"],
                            image_size=card["sanity"]["image_size"])
        assert len(det["scores"]) == entry["count"]


def test_auto_storage_judges_ap50_and_tiny_objects_too() -> None:
    from efpn.cli.ship import storage_keeps_accuracy

    fp32 = {"AP": 0.331, "AP50": 0.854, "AP_vt": 0.300, "AP_t": 0.492}
    assert storage_keeps_accuracy({**fp32, "AP": 0.332}, fp32)
    # the int8 of fpn_mv2_sirst: AP +0.002 but AP50 -0.025
    assert not storage_keeps_accuracy({"AP": 0.333, "AP50": 0.828, "AP_vt": 0.304, "AP_t": 0.487}, fp32)
    assert not storage_keeps_accuracy({**fp32, "AP_vt": 0.290}, fp32)
    assert storage_keeps_accuracy({**fp32, "AP_t": None}, fp32)  # a size with no objects is not judged
    # nor one with too few to measure (SSDD's 2 very tiny ships), while the others still are
    counted = {**fp32, "num_gt": {"all": 274, "vt": 2, "t": 33}}
    assert storage_keeps_accuracy({**fp32, "AP_vt": 0.325}, counted)
    assert not storage_keeps_accuracy({**fp32, "AP_vt": 0.325, "AP_t": 0.480}, counted)
    # a split with no ground truth measures nothing: nothing shows a smaller storage keeps the accuracy
    empty = dict.fromkeys(fp32)
    assert not storage_keeps_accuracy(empty, empty)


def test_ship_chooses_or_sets_the_nms_iou_and_the_card_carries_it(tmp_path: Path) -> None:
    from efpn.evaluation import validate
    from efpn.evaluation.nms_sweep import NMS_SWEEP_IOUS

    write_synthetic_dataset(tmp_path / "synth", num_images=12, image_size=128, seed=6, max_size=24)
    result = train(TrainConfig(model="tiny_efpn_n", data=str(tmp_path / "synth" / "data.yaml"), image_size=128,
                               epochs=1, batch_size=4, max_steps=2, workers=0, out=str(tmp_path / "runs"), name="t",
                               progress=False, val_every=1))
    auto = ship(result.run_dir, "tiny_auto", out_dir=tmp_path / "ckpt", progress=False, storage="fp32",
                nms_iou="auto")
    card = json.loads(auto.with_suffix(".json").read_text())
    sweep = card["nms_sweep"]
    assert set(sweep["rows"]) == {f"{v:g}" for v in NMS_SWEEP_IOUS} and sweep["current"] == 0.5
    assert card["config"]["postprocess"]["nms_iou"] == sweep["best"]
    assert card["metrics"]["AP"] == pytest.approx(sweep["rows"][f"{sweep['best']:g}"]["AP"])
    assert efpn.load_model(auto).config.postprocess.nms_iou == sweep["best"]

    fixed = ship(result.run_dir, "tiny_065", out_dir=tmp_path / "ckpt", progress=False, storage="fp32", nms_iou=0.65)
    card = json.loads(fixed.with_suffix(".json").read_text())
    model = efpn.load_model(fixed)
    assert model.config.postprocess.nms_iou == card["config"]["postprocess"]["nms_iou"] == 0.65
    assert "nms_sweep" not in card
    from efpn.cli.ship import _recorded_records

    split = json.loads((Path(result.run_dir) / "data_split.json").read_text())
    records, names, missing = _recorded_records(split["data"], split)
    assert not missing and [r.image_id for r in records] == split["val_ids"]
    assert len(records) == card["data"]["num_val_images"] > 0
    assert card["metrics"]["AP"] == pytest.approx(validate(model, records, names, image_size=128).metrics["AP"])
    with pytest.raises(ValueError, match="'auto' or a number"):
        ship(result.run_dir, "tiny_bad", out_dir=tmp_path / "ckpt", progress=False, nms_iou="best")

    # a val split whose images hold no boxes measures nothing: refused, nothing written
    data = json.loads((tmp_path / "synth" / "annotations.json").read_text())
    data["annotations"] = []
    (tmp_path / "synth" / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="hold no object boxes"):
        ship(result.run_dir, "tiny_empty", out_dir=tmp_path / "ckpt", progress=False, storage="auto")
    assert not (tmp_path / "ckpt" / "tiny_empty.safetensors").exists()


def test_ship_guards_every_file_it_writes_and_measures_the_runs_own_split(tmp_path: Path) -> None:
    """ship replaced a lone NAME.json and NAME.telemetry.jsonl without --overwrite, left a replaced model's telemetry
    beside a new one (read by efpn report as its own), shipped an unvalidated run's last weights without a word and
    validated on whatever part of the recorded val images was left."""
    write_synthetic_dataset(tmp_path / "synth", num_images=12, image_size=128, seed=4, max_size=24)
    data = tmp_path / "synth" / "data.yaml"
    result = train(TrainConfig(model="tiny_efpn_n", data=str(data), image_size=128, epochs=1, batch_size=4,
                               max_steps=1, workers=0, out=str(tmp_path / "runs"), name="t", progress=False))
    assert not (result.run_dir / "best.safetensors").exists()  # stopped before its epoch ended
    own = (result.run_dir / "last.safetensors").read_bytes()
    with pytest.raises(ValueError, match="is a file of the run"):  # even with --overwrite: int8 over its fp32
        ship(result.run_dir, "last", out_dir=result.run_dir, progress=False, overwrite=True)
    assert (result.run_dir / "last.safetensors").read_bytes() == own
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "m.json").write_text('{"mine": "precious"}')
    with pytest.raises(FileExistsError, match=r"m\.json exists"):
        ship(result.run_dir, "m", out_dir=ckpt, progress=False, storage="fp32")
    assert (ckpt / "m.json").read_text() == '{"mine": "precious"}'
    with pytest.raises(ValueError, match="without a suffix .*use --name m"):
        ship(result.run_dir, "m.safetensors", out_dir=ckpt, progress=False)
    (ckpt / "m.telemetry.jsonl").write_text('{"epoch": 1, "of": "another model"}\n')
    (result.run_dir / "telemetry.jsonl").unlink()  # this run has none
    with pytest.warns(UserWarning, match="no best.safetensors .*shipping its last weights"):
        ship(result.run_dir, "m", out_dir=ckpt, progress=False, storage="fp32", overwrite=True)
    assert not (ckpt / "m.telemetry.jsonl").exists()  # not left to be read as this model's
    split = json.loads((result.run_dir / "data_split.json").read_text())
    split["val_files"] = [*split["val_files"], "images/gone.png"]  # one recorded val image is gone from the data
    (result.run_dir / "data_split.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match=r"1 of the \d+ validation images .* are not among the images .*gone\.png"):
        ship(result.run_dir, "m2", out_dir=ckpt, progress=False)
    del split["val_files"]  # a run recorded before file names were: its ids say which images
    split["val_ids"] = [*split["val_ids"], 10**6]
    (result.run_dir / "data_split.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match=r"1 of the \d+ validation images .* are not among the images"):
        ship(result.run_dir, "m2", out_dir=ckpt, progress=False)
