"""VisDrone loader: ignore regions (category 0, score 0), 'others' policy, sizes with and without images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from efpn.data import VISDRONE_CLASSES, DetectionDataset, load_visdrone


def test_fixture_boxes_only_with_sizes(visdrone_dir: Path) -> None:
    records, names, report = load_visdrone(visdrone_dir / "annotations", image_sizes=visdrone_dir / "sizes.json")
    assert names == list(VISDRONE_CLASSES)
    a, b = records
    assert a.path is None and (a.width, a.height) == (200, 100)  # from sizes.json
    np.testing.assert_array_equal(a.boxes, [[10, 10, 30, 20], [190, 50, 200, 70]])  # car, clipped van
    np.testing.assert_array_equal(a.labels, [3, 4])
    # category-0 region, the score-0 pedestrian, and 'others' (default policy: ignore)
    np.testing.assert_array_equal(a.ignore, [[0, 0, 50, 50], [60, 60, 65, 70], [70, 10, 78, 18]])
    assert (b.width, b.height) == (40, 60)  # estimated from the box extent
    np.testing.assert_array_equal(b.labels, [8])
    assert report.counts() == {
        "zero_size_boxes": 1,  # b's zero-height region
        "clipped_boxes": 1,
        "ignored_regions": 2,
        "score_zero": 1,
        "others": 1,
        "unknown_class": 1,
        "malformed": 1,
        "malformed_image": 1,  # c.txt: one line cannot be read, so it is left out whole
        "estimated_size": 1,
    }


def test_others_as_class_and_with_images(visdrone_dir: Path) -> None:
    records, names, _ = load_visdrone(visdrone_dir / "annotations", others="target")
    assert names[-1] == "others" and len(names) == 11
    assert 10 in records[0].labels.tolist()
    records, _, report = load_visdrone(visdrone_dir / "annotations", visdrone_dir / "images")
    assert len(records) == 1 and records[0].path == visdrone_dir / "images" / "a.jpg"
    assert report.label_without_image == 1  # b.txt has no image
    with pytest.raises(ValueError, match="boxes-only"):
        DetectionDataset(load_visdrone(visdrone_dir / "annotations")[0])


@pytest.mark.realdata
def test_visdrone_annotations(shared_data: Path) -> None:
    root = shared_data / "visdrone-annotations"
    sizes = root / "visdrone2019-det-train-first50image.json"
    records, names, report = load_visdrone(root / "train", image_sizes=sizes)
    assert len(records) == 1000 and names == list(VISDRONE_CLASSES)
    # independent reading: 74470 lines; category 0: 2879 (all score 0); category 11: 186 (all score 0);
    # one zero-height category-0 region (0000293_03401_d_0000939.txt: 1008,374,3,0)
    lines = [line.split(",") for f in sorted((root / "train").glob("*.txt")) for line in f.read_text().split()]
    cats = np.array([int(v[5]) for v in lines])
    scores = np.array([int(v[4]) for v in lines])
    assert len(lines) == 74470
    assert report.ignored_regions == int((cats == 0).sum()) == 2879
    assert report.others == int((cats == 11).sum()) == 186
    assert report.score_zero == int(((scores == 0) & (cats >= 1) & (cats <= 10)).sum()) == 0
    assert report.zero_size_boxes == 1
    # two objects are written twice in the same file (0000137_02220_d_0000163, 0000140_00118_d_0000002): one each
    assert report.duplicate_boxes == 2
    assert report.boxes + report.duplicate_boxes == int(((cats >= 1) & (cats <= 10)).sum()) == 71405
    assert report.ignore == 2879 + 186 - 1
    # 11 of the 50 images in the JSON are among these 1000 files; the rest get sizes from their boxes
    assert report.estimated_size == 989
    assert all(r.path is None for r in records)
    raw = json.loads(sizes.read_text())["images"]
    json_sizes = {Path(im["file_name"]).stem: (im["width"], im["height"]) for im in raw}
    stems = sorted(f.stem for f in (root / "train").glob("*.txt"))
    matched = {s: (r.width, r.height) for s, r in zip(stems, records) if s in json_sizes}
    assert len(matched) == 11 and all(json_sizes[s] == wh for s, wh in matched.items())


def test_lines_that_are_not_visdrone_fields_are_malformed(tmp_path: Path) -> None:
    """More than the format's 8 fields (another tool's line) or a field that is not a whole number (4.5, nan) is a
    malformed line, not a box read by truncation."""
    (tmp_path / "a.txt").write_text("10,10,5,5,1,4,0,0\n10,10,5,5,1,4,0,0,99,extra\n10,10,5,5,1,4.5,0,0\n"
                                    "10,nan,5,5,1,4,0,0\n")
    records, _, report = load_visdrone(tmp_path, image_sizes=None)
    assert not records and report.malformed == 3 and report.malformed_image == 1


def test_bad_entries_of_the_image_sizes_json_are_skipped_and_named(tmp_path: Path) -> None:
    """A string, an infinite or a text width stopped the whole load with a traceback (AttributeError, OverflowError);
    each bad entry is now skipped and counted, and its image sized from its boxes as an unlisted one is."""
    import json

    (tmp_path / "a.txt").write_text("10,20,30,40,1,4,0,0\n")
    (tmp_path / "b.txt").write_text("10,20,30,40,1,4,0,0\n")
    (tmp_path / "sizes.json").write_text(json.dumps({"images": [
        "a.jpg", {"file_name": "a.jpg", "width": 1e400, "height": 10}, {"file_name": "x.jpg", "width": "640px"},
        {"file_name": "y.jpg", "width": -640, "height": 480}, {"file_name": "b.jpg", "width": 640, "height": 480}]}))
    records, _, report = load_visdrone(tmp_path, image_sizes=tmp_path / "sizes.json")
    assert [(r.width, r.height) for r in records] == [(40, 60), (640, 480)]  # a from its box, b from the JSON
    assert report.malformed == 4 and report.estimated_size == 1 and not report.malformed_image
    assert report.examples["malformed"][0].startswith("sizes.json: image entry")


def test_an_empty_field_inside_a_line_is_malformed_and_a_trailing_comma_is_not(tmp_path: Path) -> None:
    """Empty fields were dropped anywhere in the line, so '10,,10,5,5,1,4,0' was read shifted, as a car at y = 10."""
    (tmp_path / "a.txt").write_text("10,20,5,5,1,4,0,0,\n")
    (tmp_path / "b.txt").write_text("10,20,5,5,1,4,0,0\n10,,10,5,5,1,4,0\n")
    records, _, report = load_visdrone(tmp_path, image_sizes=None)
    assert len(records) == 1 and len(records[0].boxes) == 1  # a.txt; b.txt left out whole for its shifted line
    assert report.malformed == 1 and report.malformed_image == 1
