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


def _record(name: str, image_id: int, root: Path) -> ImageRecord:
    return ImageRecord(image_id=image_id, path=root / f"{name}.png", width=8, height=8,
                       boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64))


def _data(root: Path, train: str, val: str, source: str = "carved from train by the trainer") -> TrainData:
    """Records named by letters, their ids their positions in sorted order (as for YOLO, VOC, DOTA, masks)."""
    ids = {n: i for i, n in enumerate(sorted(train + val))}
    split = {"data": str(root / "data.yaml"), "val_source": source, "val_ids": [ids[n] for n in val],
             "train_ids": [ids[n] for n in train], "val_files": [f"{n}.png" for n in val],
             "train_files": [f"{n}.png" for n in train]}
    return TrainData([_record(n, ids[n], root) for n in train], [_record(n, ids[n], root) for n in val], ["x"],
                     None, split)  # type: ignore[arg-type]


def _recorded(root: Path, train: str, val: str, source: str = "carved from train by the trainer") -> Path:
    path = root / "data_split.json"
    split = _data(root, train, val, source).split
    path.write_text(json.dumps(split))
    return path


def test_a_moved_carve_is_carved_again_from_the_recorded_files_not_the_shifted_ids(tmp_path: Path) -> None:
    recorded = _recorded(tmp_path, "fbcg", "de")
    # now "a" was added (every id after it shifts by one), "g" is no longer loaded, and the fresh carve took b and h
    now = _data(tmp_path, "acdef", "bh")
    assert now.split["val_ids"] != [3, 4]  # the ids the run recorded for d and e now name other images
    with pytest.warns(UserWarning, match=r"keeps its recorded val split \(2 images\); images new to the run, "
                                         r"trained on: 2$"):
        kept = keep_recorded_split(now, recorded)
    assert [r.path.stem for r in kept.val] == ["d", "e"]
    assert [r.path.stem for r in kept.train] == ["f", "b", "c", "a", "h"]  # the recorded order, then the new ones
    assert kept.split["val_files"] == ["d.png", "e.png"] and kept.split["num_train"] == 5
    assert kept.split["val_ids"] == [r.image_id for r in kept.val] and kept.split["val_kept_from"]


def test_a_recorded_val_image_no_longer_loaded_is_said(tmp_path: Path) -> None:
    recorded = _recorded(tmp_path, "ac", "bd", "carved from train by the data YAML")
    with pytest.warns(UserWarning, match=r"val images not loaded now \(see the loader's report above\): 1"):
        kept = keep_recorded_split(_data(tmp_path, "ab", "c", "carved from train by the data YAML"), recorded)
    assert [r.path.stem for r in kept.val] == ["b"] and [r.path.stem for r in kept.train] == ["a", "c"]


def test_an_unmoved_split_or_no_record_is_left_alone_and_the_rest_only_warned_about(tmp_path: Path) -> None:
    data = _data(tmp_path, "ab", "c")
    assert keep_recorded_split(data, tmp_path / "missing.json") is data
    assert keep_recorded_split(data, _recorded(tmp_path, "ba", "c")) is data  # the same files in val
    own = _recorded(tmp_path, "ab", "d", "data YAML")  # its own val source: nothing to carve again
    with pytest.warns(UserWarning, match="validation may score images the run trained on"):
        assert keep_recorded_split(_data(tmp_path, "ab", "c", "data YAML"), own).split["val_files"] == ["c.png"]
    old = tmp_path / "old.json"  # a record written before file names were: ids alone cannot say what moved
    old.write_text(json.dumps({"val_source": "carved from train by the trainer", "val_ids": [7], "train_ids": [0]}))
    with pytest.warns(UserWarning, match="validation may score images the run trained on"):
        assert keep_recorded_split(data, old) is data


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
    assert resumed["val_files"] == recorded["val_files"] and resumed["val_ids"] == recorded["val_ids"]
    assert set(resumed["train_files"]) == set(recorded["train_files"]) | {"images/000012.png"}
