"""Hostile annotation values in every text format: non-finite numbers are malformed (counted, never kept), and the
good annotations beside them load."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from efpn.data import load_coco, load_visdrone, load_voc, load_yolo


def _image(path: Path, w: int = 40, h: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 100, np.uint8))


@pytest.mark.parametrize("bad", [[float("nan"), 10, 5, 5], [1, float("inf"), 5, 5], [1, 1, "x", 5], [1, 1, 5],
                                 [1e400, 1, 5, 5], None, "1,2,3,4"])
def test_coco_non_finite_or_odd_boxes_are_malformed(tmp_path: Path, bad: object) -> None:
    _image(tmp_path / "images" / "a.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
           "categories": [{"id": 1, "name": "t"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bad},
                           {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 2, 6, 6]}]}
    (tmp_path / "a.json").write_text(json.dumps(doc).replace("Infinity", "1e999").replace("NaN", "NaN"))
    records, _, report = load_coco(tmp_path / "a.json", tmp_path / "images")
    # the image is left out whole: kept, the object of the unread box would count as background
    assert not records and report.malformed == 1 and report.malformed_image == 1
    doc["annotations"] = doc["annotations"][1:]
    (tmp_path / "a.json").write_text(json.dumps(doc))
    records, _, report = load_coco(tmp_path / "a.json", tmp_path / "images")
    assert len(records[0].boxes) == 1 and np.isfinite(records[0].boxes).all() and report.malformed == 0


def test_voc_and_visdrone_and_yolo_non_finite(tmp_path: Path) -> None:
    _image(tmp_path / "voc" / "JPEGImages" / "a.png")
    (tmp_path / "voc" / "Annotations").mkdir(parents=True)
    (tmp_path / "voc" / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>inf</width><height>30</height></size>"
        "<object><name>t</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>inf</xmax><ymax>5</ymax></bndbox></object>"
        "<object><name>t</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>8</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>")
    records, _, report = load_voc(tmp_path / "voc")
    assert not records and report.malformed == 1 and report.malformed_image == 1  # left out whole

    _image(tmp_path / "vd" / "images" / "a.png")
    (tmp_path / "vd" / "ann").mkdir(parents=True)
    (tmp_path / "vd" / "ann" / "a.txt").write_text("1,1,inf,5,1,1,0,0\nnan,1,2,3,1,1,0,0\n2,2,6,6,1,1,0,0\n")
    records, _, report = load_visdrone(tmp_path / "vd" / "ann", tmp_path / "vd" / "images")
    assert not records and report.malformed == 2 and report.malformed_image == 1

    _image(tmp_path / "y" / "images" / "a.png")
    (tmp_path / "y" / "labels").mkdir(parents=True)
    (tmp_path / "y" / "labels" / "a.txt").write_text("0 nan 0.5 0.1 0.1\n0 0.5 0.5 inf 0.1\n0 0.5 0.5 0.2 0.2\n")
    records, _, report = load_yolo(tmp_path / "y" / "images", tmp_path / "y" / "labels", names=["t"])
    assert not records and report.malformed == 2 and report.malformed_image == 1


def test_coco_ids_as_strings_boxes_from_segmentation_and_entries_without_ids(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    for name in ("a.png", "b.png", "c.png", "d.png"):
        _image(tmp_path / "images" / name)
    square = np.zeros((30, 40), np.uint8, order="F")
    square[5:15, 20:32] = 1  # x 20..32, y 5..15
    rle = mask_utils.encode(square)
    rle["counts"] = rle["counts"].decode()
    doc = {"images": [{"id": "frame_a", "file_name": "a.png"}, {"id": "frame_b", "file_name": "b.png"},
                      {"file_name": "c.png"}, {"id": "frame_d", "file_name": "d.png"}],
           "categories": [{"id": "2", "name": "t"}],
           "annotations": [
               {"id": 1, "image_id": "frame_a", "category_id": "2", "bbox": [1, 2, 3, 4]},
               {"id": 2, "image_id": "frame_a", "category_id": 2, "segmentation": [[10, 10, 20, 10, 20, 18],
                                                                                   [12, 5, 14, 6, 13, 8]]},
               {"id": 3, "image_id": "frame_b", "category_id": 2, "segmentation": rle},
               {"id": 4, "image_id": "frame_b", "category_id": None, "bbox": [1, 1, 2, 2]},
               {"id": 5, "category_id": 2, "bbox": [1, 1, 2, 2]},
               {"id": 6, "image_id": "frame_d", "category_id": 2, "segmentation": [[1, "x"]]}]}
    (tmp_path / "s.json").write_text(json.dumps(doc))
    records, names, report = load_coco(tmp_path / "s.json", tmp_path / "images")
    assert names == ["t"] and [r.image_id for r in records] == [1, 2]  # numbered in the order of 'images'
    np.testing.assert_allclose(records[0].boxes, [[1, 2, 4, 6], [10, 5, 20, 18]])
    np.testing.assert_allclose(records[1].boxes, [[20, 5, 32, 15]])
    assert report.malformed == 3 and report.unknown_class == 1  # entry without id, ann without image_id, bad polygon
    assert report.malformed_image == 1  # frame_d, whose only annotation is the bad polygon

    doc["categories"] = [{"name": "no id"}]
    (tmp_path / "s.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"category \{'name': 'no id'\} has no integer 'id'"):
        load_coco(tmp_path / "s.json", tmp_path / "images")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_label_text_with_a_byte_order_mark_or_windows_line_ends(tmp_path: Path, encoding: str) -> None:
    from efpn.data.records import decode_text

    text = "0 0.5 0.5 0.2 0.4\r\n1 0.25 0.5 0.1 0.2\r\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data  # the big-endian mark, as Windows tools write it
    assert decode_text(data).splitlines() == text.splitlines()
    _image(tmp_path / "images" / "a.png", 100, 50)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_bytes(data)
    records, _, report = load_yolo(tmp_path / "images", names=["x", "y"])
    np.testing.assert_allclose(records[0].boxes, [[40, 15, 60, 35], [20, 20, 30, 30]], atol=1e-4)
    assert report.malformed == 0


def test_coco_odd_ids_null_boxes_and_fractional_sizes(tmp_path: Path) -> None:
    from efpn.data.coco import parse_coco

    doc = {"images": [{"id": "frame_a", "file_name": "a.png", "width": 100.5, "height": "80"},
                      {"id": 3.0, "file_name": "b.png", "width": 40, "height": 30}],
           "categories": [{"id": 1, "name": "t"}],
           "annotations": [{"id": 1, "image_id": "frame_a", "category_id": 1, "bbox": None,
                            "segmentation": [[10, 10, 20, 10, 20, 18]]},
                           {"id": 2, "image_id": "3", "category_id": 1, "bbox": [],
                            "segmentation": [[1, 1, 5, 1, 5, 4]]},
                           {"id": 3, "image_id": "frame_zzz", "category_id": 1, "bbox": [1, 1, 2, 2]},
                           {"id": 4, "image_id": "--5", "category_id": "²", "bbox": [1, 1, 2, 2]}]}
    records, _, report = parse_coco(doc, None, source="odd.json")
    assert [(r.width, r.height) for r in records] == [(100, 80), (40, 30)]  # sizes as floats and strings
    np.testing.assert_allclose(records[0].boxes, [[10, 10, 20, 18]])
    np.testing.assert_allclose(records[1].boxes, [[1, 1, 5, 4]])  # '3' and 3.0 are one image
    assert report.label_without_image == 2  # 'frame_zzz' and '--5' are ids no image has, not missing ids
    assert "frame_zzz" in report.examples["label_without_image"][0]
