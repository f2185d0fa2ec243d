"""app/resources.py helpers that need no Streamlit session: annotation parsing and dataset accounting."""

from __future__ import annotations

import json

import numpy as np
import pytest
from studio_helpers import REPO

from app import resources
from efpn.data.config import load_split

RGB = np.zeros((100, 200, 3), np.uint8)
NAMES = ["disc", "square", "cross"]


def test_coco_json_entry_is_matched_by_file_name() -> None:
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 100},
                   {"id": 2, "file_name": "b.png", "width": 400, "height": 200}],
        "annotations": [{"id": 1, "image_id": 2, "category_id": 3, "bbox": [40, 20, 20, 10]}],
        "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}, {"id": 3, "name": "cross"}],
    }
    got = resources.parse_annotation("gt.json", json.dumps(doc).encode(), RGB, "upload b.png", NAMES)
    assert got.fmt == "COCO JSON" and got.labels.tolist() == [2]
    np.testing.assert_allclose(got.boxes, [[20, 10, 30, 15]])  # annotated at 400x200, shown at 200x100
    with pytest.raises(resources.AnnotationError, match="none is named"):
        resources.parse_annotation("gt.json", json.dumps(doc).encode(), RGB, "upload c.png", NAMES)


def test_yolo_txt_uses_the_model_classes() -> None:
    got = resources.parse_annotation("x.txt", b"2 0.5 0.5 0.1 0.2\n9 0.5 0.5 0.1 0.1\n", RGB, "upload x.png", NAMES)
    assert got.labels.tolist() == [2] and "not among the class names" in got.report  # class 9: dropped, reported
    np.testing.assert_allclose(got.boxes, [[90, 40, 110, 60]])


def test_voc_xml_maps_class_names() -> None:
    xml = b"""<annotation><filename>x.png</filename><size><width>200</width><height>100</height></size>
    <object><name>square</name><difficult>0</difficult><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>30</xmax>
    <ymax>40</ymax></bndbox></object></annotation>"""
    got = resources.parse_annotation("x.xml", xml, RGB, "sample x.png", NAMES)
    assert got.fmt == "VOC XML" and got.labels.tolist() == [1] and got.class_names == NAMES
    np.testing.assert_allclose(got.boxes, [[10, 20, 30, 40]])


@pytest.mark.parametrize("name, data", [("a.json", b"{oops"), ("a.xml", b"<annotation><object>"),
                                        ("a.csv", b"x,y"), ("a.json", b'{"images": []}')])
def test_bad_annotations_raise_one_error_type(name: str, data: bytes) -> None:
    with pytest.raises(resources.AnnotationError):
        resources.parse_annotation(name, data, RGB, "upload a.png", NAMES)


def test_dataset_accounting_over_the_samples() -> None:
    records, _, _ = load_split(REPO / "app" / "samples" / "data.yaml", "train")
    steps = list(resources.iter_dataset_accounting(records, "maxiou", 128))
    assert [i for i, _ in steps] == list(range(1, len(records) + 1))
    total = steps[-1][1].to_dict()
    assert total["num_images"] == len(records) and total["num_gt"] == sum(len(r.boxes) for r in records)
    assert total["zero_high_level_share"]["p5"] > 0.9  # tiny objects: no positive on p5+ (SPEC §1)
