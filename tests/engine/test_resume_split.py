"""A resumed run keeps the val split it recorded: a carve that moved because the loaded images changed is carved
again from the recorded ids, so the run never trains on images it validated on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from efpn.data.records import ImageRecord
from efpn.data.synthetic import write_synthetic_dataset
from efpn.engine.data import TrainData, keep_recorded_split
from efpn.engine.train import train
from tests.engine.test_train import _small


def _record(image_id: int) -> ImageRecord:
    return ImageRecord(image_id=image_id, path=Path(f"{image_id}.png"), width=8, height=8,
                       boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64))


def _data(train_ids: list[int], val_ids: list[int], source: str = "carved from train by the trainer") -> TrainData:
    split = {"val_source": source, "val_ids": val_ids, "train_ids": train_ids}
    return TrainData([_record(i) for i in train_ids], [_record(i) for i in val_ids], ["x"], None, split)  # type: ignore[arg-type]


def test_a_moved_carve_is_carved_again_from_the_recorded_ids(tmp_path: Path) -> None:
    recorded = tmp_path / "data_split.json"
    recorded.write_text(json.dumps({"val_source": "carved from train by the trainer", "val_ids": [2, 5],
                                    "train_ids": [4, 1, 3, 6]}))
    # now: image 6 is no longer loaded, image 7 is new, and the fresh carve picked 1 and 7
    data = _data([2, 3, 4, 5], [1, 7])
    kept_all = r"keeps its recorded val split \(2 images\); images new to the run, trained on: 1$"
    with pytest.warns(UserWarning, match=kept_all):
        kept = keep_recorded_split(data, recorded)
    assert [r.image_id for r in kept.val] == [2, 5]
    assert [r.image_id for r in kept.train] == [4, 1, 3, 7]  # the recorded order, then the image new to the run
    assert kept.split["val_ids"] == [2, 5] and kept.split["num_train"] == 4 and kept.split["val_kept_from"]


def test_a_recorded_val_image_no_longer_loaded_is_said(tmp_path: Path) -> None:
    recorded = tmp_path / "data_split.json"
    recorded.write_text(json.dumps({"val_source": "carved from train by the data YAML", "val_ids": [2, 9],
                                    "train_ids": [1, 3]}))
    with pytest.warns(UserWarning, match=r"val images not loaded now \(see the loader's report above\): 1"):
        kept = keep_recorded_split(_data([1, 2], [3], "carved from train by the data YAML"), recorded)
    assert [r.image_id for r in kept.val] == [2] and [r.image_id for r in kept.train] == [1, 3]


def test_an_unmoved_split_or_no_record_is_left_alone_and_an_own_val_source_is_only_warned_about(
        tmp_path: Path) -> None:
    data = _data([1, 2], [3])
    assert keep_recorded_split(data, tmp_path / "missing.json") is data
    same = tmp_path / "same.json"
    same.write_text(json.dumps({"val_source": "carved from train by the trainer", "val_ids": [3], "train_ids": [1, 2]}))
    assert keep_recorded_split(data, same) is data
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"val_source": "data YAML", "val_ids": [7], "train_ids": [1, 2]}))
    with pytest.warns(UserWarning, match="validation may score images the run trained on"):
        assert keep_recorded_split(_data([1, 2], [3], "data YAML"), own) is not None


def test_resume_after_an_image_was_added_validates_on_the_recorded_images(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_synthetic_dataset(root, 12, image_size=96, seed=3, min_size=4, max_size=20, objects_per_image=(2, 4),
                            val_fraction=0.0)
    first = train(_small(root / "data.yaml", tmp_path / "runs", val_split="val", val_fraction=0.25, epochs=2,
                         max_steps=1))
    recorded = json.loads((first.run_dir / "data_split.json").read_text())
    # a thirteenth image joins the data: the fresh carve (a permutation over 13 ids) moves
    coco_path = next(p for p in root.rglob("*.json"))
    coco = json.loads(coco_path.read_text())
    shutil.copy(root / "images" / "000000.png", root / "images" / "000012.png")
    coco["images"].append({**coco["images"][0], "id": 13, "file_name": "000012.png"})
    top = max(a["id"] for a in coco["annotations"])
    coco["annotations"] += [{**a, "id": top + k + 1, "image_id": 13}
                            for k, a in enumerate(x for x in coco["annotations"] if x["image_id"] == 1)]
    coco_path.write_text(json.dumps(coco))
    with pytest.warns(UserWarning, match="keeps its recorded val split"):
        second = train(_small(root / "data.yaml", tmp_path / "runs", val_split="val", val_fraction=0.25, epochs=2,
                              max_steps=2, resume=str(first.run_dir)))
    resumed = json.loads((second.run_dir / "data_split.json").read_text())
    assert sorted(resumed["val_ids"]) == sorted(recorded["val_ids"])
    assert set(resumed["train_ids"]) == set(recorded["train_ids"]) | {13}
