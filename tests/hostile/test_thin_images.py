"""Images too thin for one network input (a 200x1 strip): named before any forward pass by validation and by
training (whose first validation would otherwise stop the run after an epoch, nothing saved); sliced evaluation
takes them tile by tile, without the whole-image pass that cannot."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import efpn
from efpn.cli.main import main
from efpn.config import TrainConfig
from efpn.data.splits import load_split
from efpn.data.synthetic import write_synthetic_dataset
from efpn.engine.train import train
from efpn.evaluation.validate import validate
from efpn.infer import sliced_predict


@pytest.fixture(scope="module")
def thin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A synthetic dataset whose second image is a 200x1 strip with a box on it, and a tiny checkpoint."""
    root = tmp_path_factory.mktemp("thin")
    write_synthetic_dataset(root / "ds", num_images=4, image_size=64, seed=0, val_fraction=0.5, max_size=12)
    doc = json.loads((root / "ds" / "annotations.json").read_text())
    entry = doc["images"][1]
    cv2.imwrite(str(root / "ds" / "images" / entry["file_name"]), np.full((1, 200, 3), 90, np.uint8))
    entry["width"], entry["height"] = 200, 1
    for ann in doc["annotations"]:
        if ann["image_id"] == entry["id"]:
            ann["bbox"] = [10, 0, 20, 1]
    (root / "ds" / "annotations.json").write_text(json.dumps(doc))
    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=3, class_names=("disc", "square", "cross"))
    ckpt = efpn.save_checkpoint(model.eval(), root / "tiny.safetensors")
    return root / "ds" / "data.yaml", ckpt, root / "ds" / "images" / entry["file_name"]


def _split_with(data: Path, strip: Path) -> str:
    for split in ("train", "val"):
        if any(r.path == strip for r in load_split(data, split)[0]):
            return split
    raise AssertionError("the strip is in no split")


def test_validation_names_the_strip_before_any_forward(thin) -> None:
    data, ckpt, strip = thin
    records, names, _ = load_split(data, _split_with(data, strip))
    model = efpn.load_model(ckpt)
    with pytest.raises(ValueError, match=rf"1 image\(s\) become thinner .*{strip.name} \(200x1\).*--slice"):
        validate(model, records, names)
    sliced = validate(model, records, names, slice_size=32, score_thresh=0.0)  # tiles take it
    assert sliced.num_images == len(records) and not sliced.skipped


def test_sliced_prediction_of_a_strip_leaves_out_the_whole_image_pass() -> None:
    model = efpn.build_model("tiny_efpn_n", num_classes=3).eval()
    out = sliced_predict(model, np.full((1, 200, 3), 90, np.uint8), tile=32, overlap=0.0, score_thresh=0.0)
    assert out["num_tiles"] == 7 and out["boxes"].shape[1] == 4


def test_val_cli_with_slice_reports_the_sliced_metrics_alone(thin, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    data, ckpt, strip = thin
    out = tmp_path / "m.json"
    main(["val", "--weights", str(ckpt), "--data", str(data), "--split", _split_with(data, strip), "--slice", "32",
          "--json", str(out)])
    m = json.loads(out.read_text())
    assert m["without_slicing"] is None and m["slicing"] == {"tile": 32, "overlap": 0.2} and "AP" in m
    assert "whole-image metrics are left out" in capsys.readouterr().err


def test_training_refuses_a_val_split_it_could_not_validate_before_the_first_step(thin, tmp_path: Path) -> None:
    data, _, strip = thin
    cfg = TrainConfig(model="tiny_efpn_n", data=str(data), image_size=64, epochs=1, batch_size=2, workers=0,
                      device="cpu", progress=False, out=str(tmp_path / "runs"), name="run",
                      train_split="val" if _split_with(data, strip) == "train" else "train",
                      val_split=_split_with(data, strip))
    with pytest.raises(ValueError, match=rf"the val split of .*data\.yaml: 1 image\(s\) .*{strip.name}.*--image-size"):
        train(cfg)
    assert not (tmp_path / "runs" / "run" / "metrics.csv").exists()
