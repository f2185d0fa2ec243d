"""Data YAML: every format through load_split, clear errors for bad YAML, the deterministic split."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import yaml

from efpn.config.data import FORMATS, OPTIONS
from efpn.data import ImageRecord, load_data_config, load_split, split_records
from efpn.data.splits import LOADERS


def _yaml(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_coco_yaml_root_relative_to_file(coco_dir: Path, tmp_path: Path) -> None:
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    path = _yaml(
        cfg_dir / "d.yaml",
        {
            "format": "coco",
            "root": "../coco",
            "train": {"annotations": "annotations/train.json", "images": "images"},
        },
    )
    cfg = load_data_config(path)
    assert cfg.root == coco_dir.resolve() and cfg.name == "d"
    records, names, report = load_split(path, "train")
    assert names == ["a", "b"] and len(records) == 3 and report.dataset == "d/train"


def test_every_format_loads(coco_dir: Path, yolo_dir: Path, voc_dir: Path, visdrone_dir: Path, dota_dir: Path,
                            tmp_path: Path) -> None:
    import cv2

    masks_dir = tmp_path / "masks_set"
    for stem in ("a", "b"):
        (masks_dir / "images").mkdir(parents=True, exist_ok=True)
        (masks_dir / "masks").mkdir(exist_ok=True)
        cv2.imwrite(str(masks_dir / "images" / f"{stem}.png"), np.full((16, 16, 3), 30, np.uint8))
        mask = np.zeros((16, 16), np.uint8)
        mask[3:5, 3:6] = 255
        cv2.imwrite(str(masks_dir / "masks" / f"{stem}_pixels0.png"), mask)
    cases = {
        "coco": (coco_dir, {"train": {"annotations": "annotations/train.json", "images": "images"}}, 3),
        "yolo": (
            yolo_dir,
            {"train": {"images": "images/train", "labels": "labels/train"}, "names": "names.yaml"},
            3,
        ),
        "voc": (voc_dir, {"train": {"list": "ImageSets/Main/train.txt"}}, 2),
        "visdrone": (
            visdrone_dir,
            {"train": {"annotations": "annotations", "images": None, "image_sizes": "sizes.json"}},
            2,
        ),
        "dota": (
            dota_dir,
            {"train": {"labels": "labelTxt", "images": "images"}, "options": {"difficult": "ignore"}},
            1,
        ),
        "masks": (masks_dir, {"train": {"images": "images", "masks": "masks"}}, 2),
    }
    assert set(cases) == set(FORMATS)
    for fmt, (root, extra, n) in cases.items():
        path = _yaml(root / f"{fmt}.yaml", {"format": fmt, **extra})
        records, names, _ = load_split(path)
        assert len(records) == n, fmt
        assert all(isinstance(r, ImageRecord) for r in records) and names


def test_voc_names_agree_across_splits(voc_dir: Path) -> None:
    path = _yaml(
        voc_dir / "d.yaml",
        {
            "format": "voc",
            "train": {"list": "ImageSets/Main/train.txt"},
            "val": {"list": "ImageSets/Main/val.txt"},
        },
    )
    train_names = load_split(path, "train")[1]
    val_records, val_names, _ = load_split(path, "val")
    assert train_names == val_names == ["Platelets", "RBC", "WBC"]
    assert val_records[0].labels.tolist() == [0]


def test_val_fraction_split(coco_dir: Path) -> None:
    path = _yaml(
        coco_dir / "d.yaml",
        {
            "format": "coco",
            "val_fraction": 0.34,
            "split_seed": 3,
            "train": {"annotations": "annotations/train.json", "images": "images"},
        },
    )
    train, _, _ = load_split(path, "train")
    val, _, _ = load_split(path, "val")
    assert len(val) == 1 and len(train) == 2
    assert not {r.image_id for r in train} & {r.image_id for r in val}
    # a test source is its own split: val_fraction carves train and val only, and never reads test into them
    import json

    coco = json.loads((coco_dir / "annotations" / "train.json").read_text())
    coco["images"] = [im for im in coco["images"] if im["file_name"] == "b.png"]  # image 2 alone
    (coco_dir / "annotations" / "test.json").write_text(json.dumps(coco))
    doc = yaml.safe_load(path.read_text())
    doc["test"] = {"annotations": "annotations/test.json", "images": "images"}
    path = _yaml(coco_dir / "d.yaml", doc)
    assert [r.image_id for r in load_split(path, "test")[0]] == [2]
    assert [r.image_id for r in load_split(path, "val")[0]] == [r.image_id for r in val]
    assert [r.image_id for r in load_split(path, "train")[0]] == [r.image_id for r in train]


def test_split_records_deterministic() -> None:
    records = [ImageRecord(i, None, 10, 10) for i in range(100)]
    train, val = split_records(records, 0.2, seed=1)
    assert len(val) == 20 and len(train) == 80
    again = split_records(list(reversed(records)), 0.2, seed=1)[1]
    assert sorted(r.image_id for r in again) == sorted(r.image_id for r in val)  # order-independent
    assert [r.image_id for r in split_records(records, 0.2, seed=1)[1]] == [r.image_id for r in val]
    assert {r.image_id for r in split_records(records, 0.2, seed=2)[1]} != {r.image_id for r in val}
    assert len(split_records(records[:3], 0.01)[1]) == 1  # at least one val image
    assert split_records(records, 0.0)[1] == []
    with pytest.raises(ValueError, match="unique image ids"):
        split_records(records + records[:1], 0.2)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ("format: [coco\n", ValueError, r"not valid YAML at line 2, column 1: expected .,. or .\]."),
        ("a: 1\n b: 2\n", ValueError, "not valid YAML at line 2, column 3: mapping values are not allowed"),
        ("- a\n- b\n", ValueError, "expected a mapping"),
        ({"root": "."}, ValueError, "missing key 'format'.*coco, yolo, voc, visdrone, dota"),
        ({"format": "kitti", "train": {}}, ValueError, "unknown format 'kitti'; valid formats: coco, yolo"),
        ({"format": "coco", "trian": {}}, ValueError, r"unknown key\(s\) \['trian'\]; valid keys"),
        ({"format": "coco"}, ValueError, "missing key 'train'"),
        ({"format": "coco", "train": {"images": "images"}}, ValueError, "'train.annotations' is required"),
        (
            {"format": "coco", "train": {"annotations": "nope.json"}},
            FileNotFoundError,
            r"'train.annotations: nope.json' -> .*nope.json is not an existing file.*relative to root",
        ),
        (
            {"format": "coco", "root": "missing_dir", "train": {}},
            FileNotFoundError,
            "'root: missing_dir' -> .* is not an existing folder",
        ),
        (
            {"format": "coco", "train": {"annotations": "annotations/train.json", "imgs": "x"}},
            ValueError,
            r"unknown key\(s\) \['imgs'\] in 'train' for format coco; valid keys: annotations, images",
        ),
        ({"format": "yolo", "train": {"images": "images"}}, ValueError, "format yolo needs 'names'"),
        (
            {
                "format": "coco",
                "train": {"annotations": "annotations/train.json"},
                "options": {"difficult": "x"},
            },
            ValueError,
            r"unknown option\(s\) \['difficult'\] for format coco; valid options: crowd",
        ),
        (
            {"format": "coco", "train": {"annotations": "annotations/train.json"}, "val_fraction": 1.5},
            ValueError,
            "val_fraction",
        ),
        (  # option values of the wrong type are named where the YAML is read, not inside a loader or OpenCV
            {"format": "masks", "train": {"images": "images", "masks": "images"},
             "options": {"mask_suffix": 5, "connectivity": 8.0, "instances": "false"}},
            ValueError,
            r"options.connectivity must be a whole number \(4 or 8\), got 8.0; options.instances must be true or "
            r"false, got 'false'; options.mask_suffix must be text, got 5",
        ),
        (
            {"format": "coco", "train": {"annotations": "annotations/train.json"}, "options": {"crowd": 1}},
            ValueError,
            r"bad.yaml: options.crowd must be text \(target or crowd or ignore or drop\), got 1",
        ),
        (
            {"format": "masks", "train": {"images": "images", "masks": "images"}, "options": {"connectivity": 6}},
            ValueError,
            "options.connectivity must be one of 4, 8, got 6",
        ),
        (
            {"format": "coco", "train": {"annotations": "annotations/train.json"}, "val_fraction": 0.2,
             "split_seed": -1},
            ValueError,
            r"'split_seed' must be a whole number >= 0, got -1",
        ),
        (
            {"format": "coco", "train": {"annotations": "annotations/train.json"}, "names": ["a"], "nc": 2},
            ValueError,
            "'nc: 2' does not match",
        ),
    ],
)
def test_bad_yaml(coco_dir: Path, data: dict | str, error: type[Exception], match: str) -> None:
    path = _yaml(coco_dir / "bad.yaml", data)
    with pytest.raises(error, match=match):
        load_data_config(path)


def test_bad_split_requests(coco_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data YAML .* does not exist"):
        load_data_config(tmp_path / "nope.yaml")
    path = _yaml(coco_dir / "d.yaml", {"format": "coco", "train": {"annotations": "annotations/train.json"}})
    with pytest.raises(ValueError, match="no 'val' split; add a 'val:' source or 'val_fraction:'"):
        load_split(path, "val")
    with pytest.raises(ValueError, match="no 'test' split; add a 'test:' source"):
        load_split(path, "test")
    with pytest.raises(ValueError, match="unknown split 'minival'; valid splits: train, val, test"):
        load_split(path, "minival")
    wrong = _yaml(
        coco_dir / "w.yaml",
        {"format": "coco", "names": ["x", "y"], "train": {"annotations": "annotations/train.json"}},
    )
    with pytest.raises(ValueError, match="'names'.*do not match"):
        load_split(wrong)


def test_options_are_loader_keywords() -> None:
    for fmt, options in OPTIONS.items():
        params = inspect.signature(LOADERS[fmt]).parameters
        assert all(o in params for o in options), fmt


@pytest.mark.realdata
def test_real_yamls(shared_data: Path, tmp_path: Path) -> None:
    ssdd = _yaml(
        tmp_path / "ssdd.yaml",
        {
            "format": "coco",
            "root": str(shared_data / "ssdd"),
            "val_fraction": 0.1,
            "train": {"annotations": "annotations/instances_train.json", "images": "images"},
        },
    )
    train, names, _ = load_split(ssdd, "train")
    val, _, _ = load_split(ssdd, "val")
    assert names == ["ship"] and (len(train), len(val)) == (835, 93)
    coco128 = _yaml(
        tmp_path / "c.yaml",
        {
            "format": "yolo",
            "root": str(shared_data / "coco128"),
            "names": "names.yaml",
            "train": {"images": "images/train2017"},
        },
    )
    records, names, report = load_split(coco128)
    assert (len(records), len(names), report.boxes) == (128, 80, 929)


@pytest.mark.parametrize(("categories", "match"), [
    ([], "the data defines no classes"),
    ([{"id": 1, "name": "car"}, {"id": 2, "name": "car"}], r"class names \['car'\] appear more than once"),
])
def test_data_without_usable_classes_is_refused(tmp_path: Path, categories: list, match: str) -> None:
    """No classes, or one name for two classes: refused when the split loads, before any model is built from it."""
    import json as _json

    (tmp_path / "images").mkdir()
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], "annotations": [],
           "categories": categories}
    (tmp_path / "a.json").write_text(_json.dumps(doc))
    path = _yaml(tmp_path / "d.yaml", {"format": "coco", "train": {"annotations": "a.json", "images": "images"}})
    with pytest.raises(ValueError, match=match):
        load_split(path, "train")


def test_category_ids_for_a_models_classes_go_by_name() -> None:
    """A ship model on data with boat = 3 and ship = 9 writes ship as 9; a class the data lacks has no id."""
    from efpn.data import category_ids_for

    assert category_ids_for(["ship"], ["boat", "ship"], [3, 9]) == [9]
    assert category_ids_for(["car", "ship"], ["boat", "ship"], None) == [None, 2]  # no ids: index + 1
    assert category_ids_for([], ["boat", "ship"], [3, 9]) == [3, 9]  # an unnamed model: the data's classes
