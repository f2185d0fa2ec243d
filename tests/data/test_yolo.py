"""YOLO loader: normalised cxcywh and polygons, header sizes, orphan label files, real COCO128 vs its JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from efpn.data import load_coco, load_yolo
from efpn.data.yolo import default_label_dir


def test_fixture(yolo_dir: Path) -> None:
    records, names, report = load_yolo(yolo_dir / "images" / "train", names=yolo_dir / "names.yaml")
    assert names == ["cat", "dog"]
    assert [r.image_id for r in records] == [1, 2, 3]  # numeric stems keep their number
    one, two, three = records
    assert (one.width, one.height) == (100, 50)  # from the PNG header
    np.testing.assert_allclose(one.boxes, [[40, 15, 60, 35], [10, 10, 30, 30], [85, 20, 100, 30]], atol=1e-4)
    np.testing.assert_array_equal(one.labels, [0, 1, 1])
    assert len(two.boxes) == 0
    assert (three.width, three.height) == (64, 48) and len(three.boxes) == 1  # truncated: header still readable
    assert report.counts() == {
        "clipped_boxes": 1,
        "unknown_class": 1,
        "malformed": 1,
        "malformed_image": 1,  # 000005: one line cannot be read, so the image is left out whole
        "label_without_image": 1,  # 000004.txt; classes.txt is not counted
        "image_without_labels": 1,
    }
    assert report.examples["label_without_image"] == ["000004.txt"]
    assert report.examples["malformed_image"] == ["000005.txt"]


def test_names_as_list_and_label_dir_inference(yolo_dir: Path) -> None:
    assert default_label_dir(yolo_dir / "images" / "train") == yolo_dir / "labels" / "train"
    records, names, _ = load_yolo(yolo_dir / "images" / "train", yolo_dir / "labels" / "train", names=["x", "y"])
    assert names == ["x", "y"] and len(records) == 3
    with pytest.raises(ValueError, match="no 'images' component"):
        default_label_dir(Path("/data/pictures"))
    with pytest.raises(FileNotFoundError, match="YOLO label folder"):
        load_yolo(yolo_dir / "images" / "train", yolo_dir / "nope", names=["x"])


def test_unreadable_header_is_dropped(yolo_dir: Path) -> None:
    (yolo_dir / "images" / "train" / "000009.png").write_bytes(b"not an image at all")
    records, _, report = load_yolo(yolo_dir / "images" / "train", names=["cat", "dog"])
    assert len(records) == 3 and report.unreadable_image == 1


@pytest.mark.realdata
def test_coco128_yolo_matches_json(shared_data: Path) -> None:
    root = shared_data / "coco128"
    records, names, report = load_yolo(root / "images" / "train2017", names=root / "names.yaml")
    assert len(records) == 128 and len(names) == 80
    assert report.boxes == 929
    # two label files whose image is absent (656, 659); two images without a label file (250, 508)
    assert report.label_without_image == 2 and report.image_without_labels == 2
    assert sorted(report.examples["label_without_image"]) == ["000000000656.txt", "000000000659.txt"]
    # independent check: every YOLO box equals a non-crowd box of the original COCO JSON (same class)
    coco, coco_names, _ = load_coco(root / "annotations" / "instances_train2017.json", root / "images" / "train2017")
    assert coco_names == names
    by_id = {r.image_id: r for r in coco}
    for rec in records:
        boxes, labels = by_id[rec.image_id].target_boxes()
        assert len(boxes) == len(rec.boxes)
        for box, label in zip(rec.boxes, rec.labels):
            err = np.abs(boxes - box).max(axis=1)
            err[labels != label] = np.inf
            assert err.min() < 0.01


def test_a_utf16_class_name_file_is_read_and_another_encoding_is_named(tmp_path: Path) -> None:
    """A classes.txt saved by Windows Notepad (UTF-16 with a BOM) gave "'utf-8' codec can't decode byte 0xff", naming
    no file."""
    from efpn.config.names import read_names

    (tmp_path / "u16.txt").write_bytes("cat\r\ndog\r\n".encode("utf-16"))
    assert read_names(tmp_path / "u16.txt") == ["cat", "dog"]
    (tmp_path / "latin.txt").write_bytes("chat\nc\xe9pe\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"class-name file .*latin.txt is not UTF-8 text .*save it as UTF-8"):
        read_names(tmp_path / "latin.txt")


def test_pixel_coordinates_are_named_as_such(tmp_path: Path) -> None:
    """'0 50 25 10 10' (pixels) lost every box as 'entirely outside the image' and kept the image as background."""
    from efpn.data.records import SkipReport
    from efpn.data.yolo import parse_yolo_labels

    report = SkipReport()
    boxes, _ = parse_yolo_labels("0 50 25 10 10\n0 1.02 0.5 0.1 0.1\n", 100, 50, 1, report, "a.txt")
    assert len(boxes) == 1 and report.malformed == 1  # the second reaches past the right edge: kept, clipped later
    assert "a value of 50: YOLO coordinates are fractions" in report.examples["malformed"][0]
