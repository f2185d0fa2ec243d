"""DOTA loader: header lines skipped, 8-coordinate polygons -> xyxy, difficult, real DOTA sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from efpn.data import DOTA_V1_CLASSES, load_dota
from efpn.data.dota import polygon_to_xyxy


def test_polygon_to_xyxy() -> None:
    assert polygon_to_xyxy([10, 20, 30, 15, 35, 40, 12, 45]) == [10, 15, 35, 45]


def test_fixture_with_images(dota_dir: Path) -> None:
    records, names, report = load_dota(dota_dir / "labelTxt", dota_dir / "images")
    assert names == list(DOTA_V1_CLASSES)
    (p1,) = records
    assert (p1.width, p1.height) == (100, 80)
    np.testing.assert_array_equal(p1.boxes, [[10, 15, 35, 45], [90, 70, 100, 80]])
    np.testing.assert_array_equal(p1.labels, [DOTA_V1_CLASSES.index("plane"), DOTA_V1_CLASSES.index("ship")])
    np.testing.assert_array_equal(p1.iscrowd, [False, True])
    assert report.counts() == {
        "clipped_boxes": 1,
        "difficult": 1,
        "unknown_class": 1,
        "malformed": 1,
        "malformed_image": 1,  # p3.txt: one line cannot be read, so its image is left out whole
        "label_without_image": 1,  # p2.txt
    }


def test_fixture_boxes_only_and_names(dota_dir: Path) -> None:
    records, _, report = load_dota(dota_dir / "labelTxt", difficult="target")
    assert len(records) == 2 and all(r.path is None for r in records)
    assert (records[0].width, records[0].height) == (105, 85)  # unknown size: box extent, nothing clipped
    assert not records[0].iscrowd.any() and report.estimated_size == 2
    records, names, report = load_dota(dota_dir / "labelTxt", names=["plane", "ship", "ufo", "small-vehicle"])
    assert names[2] == "ufo" and report.unknown_class == 0


@pytest.mark.realdata
def test_dota_sample(shared_data: Path) -> None:
    root = shared_data / "dota-sample"
    records, _, report = load_dota(root / "labelTxt")  # boxes-only: all 7 label files
    assert len(records) == 7 and report.estimated_size == 7
    # independent reading: 2 header lines per file, then 10-token object lines
    objects = difficult = 0
    for f in sorted((root / "labelTxt").glob("*.txt")):
        lines = f.read_text().splitlines()
        assert lines[0].startswith("imagesource:") and lines[1].startswith("gsd:")
        rows = [line.split() for line in lines[2:] if line.strip()]
        objects += len(rows)
        difficult += sum(r[9] == "1" for r in rows)
    assert (objects, difficult) == (984, 67)
    assert report.boxes + report.ignore == objects and report.difficult == difficult
    assert report.malformed == 0 and report.unknown_class == 0

    records, _, report = load_dota(root / "labelTxt", root / "images")
    assert sorted(r.path.name for r in records if r.path) == ["P0706.png", "P1888.png"]
    assert report.label_without_image == 5
    p0706 = records[0]
    assert (p0706.width, p0706.height) == (1111, 1182)
    # first object: "1054 1028 1063 1011 1111 1040 1112 1062 ship 1" -> [1054, 1011, 1112, 1062], clipped at x=1111
    assert [1054, 1011, 1111, 1062] in p0706.boxes.tolist()
    assert report.clipped_boxes == 1 and len(p0706.boxes) == 536


def test_a_difficulty_flag_that_is_not_0_or_1_is_malformed(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("1 1 9 1 9 9 1 9 plane 0\n1 1 9 1 9 9 1 9 plane 1\n1 1 9 1 9 9 1 9 plane nan\n"
                                    "1 1 9 1 9 9 1 9 plane 2\n")
    records, _, report = load_dota(tmp_path)
    assert report.malformed == 2 and report.malformed_image == 1 and not records  # the image is left out whole
    (tmp_path / "a.txt").write_text("1 1 9 1 9 9 1 9 plane 0\n1 1 9 1 9 9 1 9 plane 1\n")
    records, _, report = load_dota(tmp_path)
    assert report.malformed == 0 and report.difficult == 1 and len(records[0].boxes) == 2
