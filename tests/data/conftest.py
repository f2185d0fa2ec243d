"""Tiny datasets in every supported format, written to tmp_path, with known quirks and known counts.

Each builder returns the dataset folder; the docstring lists what the folder contains so tests can state
exact expectations without the real data in ../shared/data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, width: int, height: int, value: int = 128) -> Path:
    """A flat RGB image (PNG or JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path)
    return path


def write_truncated_jpeg(path: Path, width: int = 64, height: int = 48) -> Path:
    """A JPEG cut in half: the header is intact, the pixel data is not."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    """COCO: categories ids 7 ('b') and 3 ('a') -> labels a=0, b=1.

    images: 1 a.png 100x80 (4 anns: normal, crowd, ignore=1, past the right edge), 2 b.png 50x50 (no anns),
    3 c.png listed but missing, 4 d.png 60x40 (zero-size box, unknown category 99), 5 e.png 30x30 (a normal box
    and a bad bbox: left out whole); one annotation of unknown image id 42.
    """
    root = tmp_path / "coco"
    write_image(root / "images" / "a.png", 100, 80)
    write_image(root / "images" / "b.png", 50, 50)
    write_image(root / "images" / "d.png", 60, 40)
    write_image(root / "images" / "e.png", 30, 30)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 40], "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [50, 50, 5, 5], "iscrowd": 0, "ignore": 1},
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [90, 60, 30, 10], "iscrowd": 0},
        {"id": 5, "image_id": 4, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0},
        {"id": 6, "image_id": 4, "category_id": 99, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        {"id": 7, "image_id": 5, "category_id": 3, "bbox": [5, 5], "iscrowd": 0},
        {"id": 10, "image_id": 5, "category_id": 3, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        {"id": 8, "image_id": 42, "category_id": 3, "bbox": [1, 1, 2, 2], "iscrowd": 0},
        {"id": 9, "image_id": 3, "category_id": 3, "bbox": [1, 1, 2, 2], "iscrowd": 0},
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 2, "file_name": "b.png", "width": 50, "height": 50},
            {"id": 3, "file_name": "c.png", "width": 50, "height": 50},
            {"id": 4, "file_name": "d.png", "width": 60, "height": 40},
            {"id": 5, "file_name": "e.png", "width": 30, "height": 30},
        ],
        "annotations": anns,
        "categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "train.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def yolo_dir(tmp_path: Path) -> Path:
    """YOLO: names [cat, dog] in names.yaml.

    images/train: 000001.png 100x50 (labels: normal, class 5 unknown, polygon, past the edge),
    000002.png 40x40 (no label file), 000003.jpg truncated (header fine: loads; decoding fails later),
    000005.png 20x20 (a normal and a malformed line: left out whole);
    labels/train: 000004.txt has no image; classes.txt (LabelImg) is not a label file.
    """
    root = tmp_path / "yolo"
    write_image(root / "images" / "train" / "000001.png", 100, 50)
    write_image(root / "images" / "train" / "000002.png", 40, 40)
    write_truncated_jpeg(root / "images" / "train" / "000003.jpg")
    labels = root / "labels" / "train"
    labels.mkdir(parents=True)
    (labels / "000001.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"  # -> [40, 15, 60, 35]
        "5 0.5 0.5 0.1 0.1\n"  # unknown class
        "1 0.1 0.2 0.3 0.2 0.3 0.6\n"  # polygon -> [10, 10, 30, 30]
        "1 0.95 0.5 0.2 0.2\n"  # past the right edge -> [85, 20, 100, 30]
        "\n"
    )
    (labels / "000003.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (labels / "000004.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    write_image(root / "images" / "train" / "000005.png", 20, 20)
    (labels / "000005.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.5 oops 0.1\n")  # malformed
    (labels / "classes.txt").write_text("cat\ndog\n")
    (root / "names.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    return root


def _voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, list[int], int]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
        f"<depth>3</depth></size>{objs}</annotation>"
    )


@pytest.fixture
def voc_dir(tmp_path: Path) -> Path:
    """VOC: train list [img1, img2, img3], val list [img4].

    img1 80x60: RBC normal, WBC difficult, RBC zero-size, RBC past the bottom edge.
    img2: no <size> (read from the 30x20 image), no objects.  img3: XML but no image.  img4 (val): 'Platelets'.
    """
    root = tmp_path / "voc"
    ann, img, sets = root / "Annotations", root / "JPEGImages", root / "ImageSets" / "Main"
    for d in (ann, img, sets):
        d.mkdir(parents=True)
    write_image(img / "img1.jpg", 80, 60)
    write_image(img / "img2.jpg", 30, 20)
    write_image(img / "img4.jpg", 40, 40)
    objs1 = [
        ("RBC", [10, 10, 20, 20], 0),
        ("WBC", [30, 30, 50, 50], 1),
        ("RBC", [5, 5, 5, 9], 0),
        ("RBC", [60, 50, 70, 70], 0),
    ]
    (ann / "img1.xml").write_text(_voc_xml("img1.jpg", 80, 60, objs1))
    (ann / "img2.xml").write_text("<annotation><filename>img2.jpg</filename></annotation>")
    (ann / "img3.xml").write_text(_voc_xml("img3.jpg", 10, 10, [("RBC", [1, 1, 5, 5], 0)]))
    (ann / "img4.xml").write_text(_voc_xml("img4.jpg", 40, 40, [("Platelets", [1, 1, 5, 5], 0)]))
    (sets / "train.txt").write_text("img1\nimg2\nimg3\n")
    (sets / "val.txt").write_text("img4\n")
    return root


@pytest.fixture
def visdrone_dir(tmp_path: Path) -> Path:
    """VisDrone: a.txt (image 200x100 in images/ and in sizes.json), b.txt (no image, not in sizes.json).

    a.txt: car; category 0 region; pedestrian with score 0; others (11); category 12 (unknown); van past the right
    edge. b.txt: bus [10, 20, 40, 60] and a zero-height category 0 region. c.txt: a car and a malformed line (left
    out whole).
    """
    root = tmp_path / "visdrone"
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / "a.txt").write_text(
        "10,10,20,10,1,4,0,0\n"
        "0,0,50,50,0,0,0,0\n"
        "60,60,5,10,0,1,0,0\n"
        "70,10,8,8,0,11,0,0\n"
        "80,10,8,8,1,12,0,0\n"
        "190,50,30,20,1,5,0,0,\n"
    )
    (ann / "b.txt").write_text("10,20,30,40,1,9,0,0\n5,5,3,0,0,0,0,0\n")
    (ann / "c.txt").write_text("10,10,20,10,1,4,0,0\noops\n")
    write_image(root / "images" / "a.jpg", 200, 100)
    (root / "sizes.json").write_text(
        json.dumps({"images": [{"id": 1, "file_name": "images/a.jpg", "width": 200, "height": 100}]})
    )
    return root


@pytest.fixture
def dota_dir(tmp_path: Path) -> Path:
    """DOTA: p1.txt (image 100x80): header, plane polygon, difficult ship past the edge, unknown 'ufo';
    p2.txt: no image, one small-vehicle; p3.txt (image 50x50): a plane and a malformed line (left out whole)."""
    root = tmp_path / "dota"
    lbl = root / "labelTxt"
    lbl.mkdir(parents=True)
    (lbl / "p1.txt").write_text(
        "imagesource:GoogleEarth\n"
        "gsd:0.5\n"
        "10 20 30 15 35 40 12 45 plane 0\n"  # -> [10, 15, 35, 45]
        "90 70 105 70 105 85 90 85 ship 1\n"  # -> [90, 70, 100, 80] clipped, difficult
        "1 1 2 1 2 2 1 2 ufo 0\n"
    )
    (lbl / "p3.txt").write_text("10 20 30 15 35 40 12 45 plane 0\n1 2 3 plane\n")
    (lbl / "p2.txt").write_text("imagesource:GF\ngsd:1\n0 0 10 0 10 10 0 10 small-vehicle 0\n")
    write_image(root / "images" / "p1.png", 100, 80)
    write_image(root / "images" / "p3.png", 50, 50)
    return root


@pytest.fixture
def truncated_jpeg(tmp_path: Path) -> Path:
    """A 64x48 JPEG whose second half is missing (readable header, undecodable pixels)."""
    return write_truncated_jpeg(tmp_path / "truncated" / "t.jpg")
