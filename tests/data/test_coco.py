"""COCO loader: category mapping, crowd / ignore routing, counted skips, real SSDD and COCO128 counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from efpn.data import load_coco, records_to_coco


def test_fixture_counts_and_mapping(coco_dir: Path) -> None:
    records, names, report = load_coco(coco_dir / "annotations" / "train.json", coco_dir / "images")
    assert names == ["a", "b"]  # category ids 3, 7 in id order
    assert [r.image_id for r in records] == [1, 2, 4]  # image 3's file is missing
    a, b, d = records
    # target 'b' (id 7 -> label 1), crowd 'a', the clipped 'a'; the ignore=1 box is a region
    np.testing.assert_array_equal(a.boxes, [[10, 10, 30, 20], [0, 0, 40, 40], [90, 60, 100, 70]])
    np.testing.assert_array_equal(a.labels, [1, 0, 0])
    np.testing.assert_array_equal(a.iscrowd, [False, True, False])
    np.testing.assert_array_equal(a.ignore, [[50, 50, 55, 55]])
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    assert (b.width, b.height, len(b.boxes)) == (50, 50, 0)
    assert len(d.boxes) == 0
    assert report.counts() == {
        "zero_size_boxes": 1,
        "clipped_boxes": 1,
        "ignored_regions": 1,
        "crowd": 1,
        "unknown_class": 1,
        "malformed": 1,
        "malformed_image": 1,  # image 5: one annotation cannot be read, so it is left out whole
        "label_without_image": 2,  # image 3 (file missing) + the annotation of unknown image id 42
        "image_without_labels": 1,
    }
    assert (report.images, report.boxes, report.ignore) == (3, 2, 2)


def test_crowd_policies(coco_dir: Path) -> None:
    ann = coco_dir / "annotations" / "train.json"
    ignore = load_coco(ann, coco_dir / "images", crowd="ignore")[0][0]
    assert len(ignore.boxes) == 2 and len(ignore.ignore) == 2
    drop = load_coco(ann, coco_dir / "images", crowd="drop")[0][0]
    assert len(drop.boxes) == 2 and len(drop.ignore) == 1
    target = load_coco(ann, coco_dir / "images", crowd="target")[0][0]
    assert not target.iscrowd.any() and target.num_targets == 3
    with pytest.raises(ValueError, match="crowd='nope' is not a valid policy"):
        load_coco(ann, crowd="nope")  # type: ignore[arg-type]


def test_boxes_only_without_images(coco_dir: Path) -> None:
    records, _, report = load_coco(coco_dir / "annotations" / "train.json")
    assert [r.image_id for r in records] == [1, 2, 3, 4] and all(r.path is None for r in records)
    assert report.label_without_image == 1  # only the annotation of unknown image id 42


def test_missing_images_are_counted_per_image(coco_dir: Path) -> None:
    """label_without_image counts images, whatever their number of annotations (as the other loaders count label
    files): a missing file with two annotations is one, an unknown image id with three annotations is one."""
    ann = coco_dir / "annotations" / "train.json"
    data = json.loads(ann.read_text())
    box = {"category_id": 3, "bbox": [1, 1, 2, 2], "iscrowd": 0}
    data["annotations"] += [{"id": 10, "image_id": 3, **box}, {"id": 11, "image_id": 42, **box},
                            {"id": 12, "image_id": "42", **box}]
    ann.write_text(json.dumps(data))
    _, _, report = load_coco(ann, coco_dir / "images")
    assert report.label_without_image == 2  # image 3 (file missing) + unknown image id 42
    assert len(report.examples["label_without_image"]) == 2


def test_not_coco_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_coco(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco(bad)
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="'images' and 'categories'"):
        load_coco(bad)


def test_records_to_coco_round_trip(coco_dir: Path, tmp_path: Path) -> None:
    records, names, _ = load_coco(coco_dir / "annotations" / "train.json", coco_dir / "images")
    out = tmp_path / "rt.json"
    out.write_text(json.dumps(records_to_coco(records, names)))
    again, names2, report = load_coco(out, coco_dir / "images")
    assert names2 == names
    for r1, r2 in zip(records, again):
        np.testing.assert_allclose(r2.boxes, r1.boxes)
        np.testing.assert_array_equal(r2.labels, r1.labels)
        np.testing.assert_array_equal(r2.iscrowd, r1.iscrowd)
    # the one ignore region becomes one crowd+ignore box per category (2), read back as 2 ignore regions
    assert len(again[0].ignore) == len(names)
    assert report.zero_size_boxes == 0


@pytest.mark.realdata
def test_ssdd(shared_data: Path) -> None:
    root = shared_data / "ssdd"
    records, names, report = load_coco(root / "annotations" / "instances_train.json", root / "images")
    assert names == ["ship"]
    assert len(records) == 928 and sum(len(r.boxes) for r in records) == 2007
    assert report.counts() == {}  # nothing to skip in SSDD
    assert all(r.path is not None and r.path.is_file() for r in records[:5])
    # independent check against the raw JSON: boxes are bbox xywh -> xyxy
    raw = json.loads((root / "annotations" / "instances_train.json").read_text())
    first = raw["annotations"][0]
    x, y, w, h = first["bbox"]
    rec = next(r for r in records if r.image_id == first["image_id"])
    assert [x, y, x + w, y + h] in rec.boxes.tolist()


@pytest.mark.realdata
def test_coco128(shared_data: Path) -> None:
    root = shared_data / "coco128"
    records, names, report = load_coco(root / "annotations" / "instances_train2017.json", root / "images" / "train2017")
    assert len(names) == 80 and names[0] == "person" and names[-1] == "toothbrush"
    assert len(records) == 128
    assert report.crowd == 10 and sum(int(r.iscrowd.sum()) for r in records) == 10
    assert report.boxes == 929  # 939 annotations - 10 crowd
    assert report.image_without_labels == 2
    empty = sorted(r.path.name for r in records if len(r.boxes) == 0 and r.path is not None)
    assert empty == ["000000000250.jpg", "000000000508.jpg"]
    assert int(max(r.labels.max() for r in records if len(r.labels))) <= 79


def test_stated_size_checked_against_the_file(tmp_path: Path) -> None:
    """A JSON whose width/height disagree with the file (an EXIF rotation, a resized export): the record takes the
    file's size, the box is kept as annotated, and the report names the image and both sizes."""
    from PIL import Image

    from efpn.data import DetectionDataset

    root = tmp_path / "c"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (60, 40)).save(root / "images" / "same.png")
    Image.new("RGB", (50, 30)).save(root / "images" / "resized.png")
    rotated = Image.new("RGB", (40, 20))  # stored 40x20, shown 20x40 (EXIF orientation 6: rotate 90°)
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(root / "images" / "rotated.jpg", exif=exif)
    data = {
        "images": [{"id": 1, "file_name": "same.png", "width": 60, "height": 40},
                   {"id": 2, "file_name": "resized.png", "width": 100, "height": 60},
                   {"id": 3, "file_name": "rotated.jpg", "width": 40, "height": 20}],
        "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 10], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "ship"}],
    }
    (root / "a.json").write_text(json.dumps(data))
    records, _, report = load_coco(root / "a.json", root / "images")
    assert [(r.width, r.height) for r in records] == [(60, 40), (50, 30), (20, 40)]
    np.testing.assert_array_equal(records[1].boxes, [[10, 10, 30, 20]])
    assert report.size_mismatch == 2
    assert report.examples["size_mismatch"] == ["resized.png (annotated 100x60, file 50x30)",
                                                "rotated.jpg (annotated 40x20, file 20x40)"]
    assert "kept at the file's size" in report.summary() and "EXIF rotation" in report.summary()
    image, _ = DetectionDataset(records)[2]
    assert tuple(image.shape[-2:]) == (40, 20)  # decoded as the record says: no second warning at load time
    # without checking the files, nothing is opened: the JSON's sizes stand
    unchecked = load_coco(root / "a.json", root / "images", check_images=False)[0]
    assert [(r.width, r.height) for r in unchecked] == [(60, 40), (100, 60), (40, 20)]


def test_crowd_and_ignore_flags_written_as_strings_read_as_numbers(tmp_path: Path) -> None:
    """``"iscrowd": "0"`` was a truth test, so every such object became a crowd box (nothing left to score); a flag
    is read as pycocotools' ``int()`` reads it, and one that is not 0/1 makes its annotation malformed."""
    anns = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [i * 10, 5, 8, 8], "iscrowd": crowd, "ignore": ignore}
            for i, (crowd, ignore) in enumerate([("0", "false"), (0.0, "0"), ("1", None), (True, 0), ("no", "")], 1)]
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 40},
                       {"id": 2, "file_name": "b.png", "width": 100, "height": 40}],
            "annotations": [*anns, {"id": 9, "image_id": 2, "category_id": 1, "bbox": [5, 5, 8, 8],
                                    "iscrowd": "maybe"}],
            "categories": [{"id": 1, "name": "ship"}]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    (record,), _, report = load_coco(tmp_path / "a.json")
    np.testing.assert_array_equal(record.iscrowd, [False, False, True, True, False])
    assert len(record.ignore) == 0 and report.crowd == 2
    assert report.malformed == 1 and report.malformed_image == 1  # image 2's flag "maybe": left out whole


def test_windows_file_names_find_their_images(tmp_path: Path) -> None:
    """Names written on Windows ('C:\\Users\\me\\a.png', 'images\\b.png') were 'labelled images whose file is
    missing'."""
    from tests.data.conftest import write_image

    for name in ("a.png", "b.png"):
        write_image(tmp_path / "images" / name, 20, 20)
    doc = {"images": [{"id": 1, "file_name": "C:\\Users\\me\\data\\a.png", "width": 20, "height": 20},
                      {"id": 2, "file_name": "images\\b.png", "width": 20, "height": 20}],
           "annotations": [{"id": 1, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in (1, 2)],
           "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    records, _, report = load_coco(tmp_path / "a.json", tmp_path / "images")
    assert [r.path.name for r in records] == ["a.png", "b.png"] and report.label_without_image == 0


def test_one_image_listed_under_two_ids_is_read_once(tmp_path: Path) -> None:
    """The same file under ids 1 and 2 was two images: its objects scored twice, and a val carve could put one copy
    in train and the other in val."""
    from tests.data.conftest import write_image

    write_image(tmp_path / "images" / "a.png", 20, 20)
    doc = {"images": [{"id": i, "file_name": "a.png", "width": 20, "height": 20} for i in (1, 2)],
           "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in (1, 2)],
           "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    for images in (tmp_path / "images", None):
        records, _, report = load_coco(tmp_path / "a.json", images)
        assert [r.image_id for r in records] == [1] and report.malformed == 1
        assert "a.png listed again as image 2 (first as 1)" in report.examples["malformed"][0]


def test_boxes_only_images_without_file_names_are_all_read(tmp_path: Path) -> None:
    """Entries without a file_name (boxes only) shared the empty name and all but the first were 'listed again'."""
    from efpn.data.coco import parse_coco

    doc = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
           "categories": [{"id": 1, "name": "a"}],
           "annotations": [{"id": i, "image_id": i, "bbox": [10, 10, 5, 5], "category_id": 1} for i in (1, 2)]}
    records, _, report = parse_coco(doc, None)
    assert [r.image_id for r in records] == [1, 2] and report.malformed == 0
