"""ImageRecord contracts, make_record cleaning and counting, SkipReport arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from efpn.data.records import REASONS, ImageRecord, SkipReport, assign_image_ids, make_record


def test_record_coerces_and_validates() -> None:
    rec = ImageRecord(7, "a.jpg", 10, 20, boxes=[[1, 2, 3, 4]], labels=[2])
    assert rec.path == Path("a.jpg")
    assert rec.boxes.dtype == np.float32 and rec.boxes.shape == (1, 4)
    assert rec.labels.dtype == np.int64 and rec.iscrowd.dtype == bool and not rec.iscrowd.any()
    assert rec.ignore.shape == (0, 4) and rec.ignore.dtype == np.float32
    with pytest.raises(ValueError, match="same length"):
        ImageRecord(1, None, 10, 10, boxes=[[1, 2, 3, 4]], labels=[0, 1])
    with pytest.raises(ValueError, match="size must be positive"):
        ImageRecord(1, None, 0, 10)


def test_target_and_ignore_split() -> None:
    rec = ImageRecord(
        1,
        None,
        50,
        50,
        boxes=[[0, 0, 5, 5], [10, 10, 20, 20]],
        labels=[0, 1],
        iscrowd=[False, True],
        ignore=[[30, 30, 40, 40]],
    )
    boxes, labels = rec.target_boxes()
    np.testing.assert_array_equal(boxes, [[0, 0, 5, 5]])
    np.testing.assert_array_equal(labels, [0])
    np.testing.assert_array_equal(rec.ignore_regions(), [[30, 30, 40, 40], [10, 10, 20, 20]])
    assert rec.num_targets == 1


def test_make_record_counts_each_box_once() -> None:
    report = SkipReport()
    boxes = [
        [1, 1, 5, 5],  # fine
        [5, 5, 5, 9],  # zero width in the file
        [-4, 2, 6, 8],  # clipped on the left
        [20, 20, 30, 30],  # entirely outside a 10x10 image
        [0, 0, 10, 10.0005],  # past the edge by rounding only: clipped silently
        [2, 2, 4, 4],  # dropped by policy
        [3, 3, 6, 6],  # ignore region
    ]
    roles = ["target", "target", "crowd", "target", "target", "drop", "ignore"]
    rec = make_record(3, None, 10, 10, boxes, [0, 0, 1, 0, 1, -1, -1], roles, report, source="x.txt")
    np.testing.assert_array_equal(rec.boxes, [[1, 1, 5, 5], [0, 2, 6, 8], [0, 0, 10, 10]])
    np.testing.assert_array_equal(rec.labels, [0, 1, 1])
    np.testing.assert_array_equal(rec.iscrowd, [False, True, False])
    np.testing.assert_array_equal(rec.ignore, [[3, 3, 6, 6]])
    assert report.counts() == {"zero_size_boxes": 1, "outside_image": 1, "clipped_boxes": 1}
    assert report.examples["clipped_boxes"] == ["x.txt"]


def test_report_add_merge_summary() -> None:
    a = SkipReport(dataset="ds", images=2, boxes=5)
    a.add("crowd", 2, "f1.json")
    a.add("crowd", 1, "f1.json")  # examples are unique
    b = SkipReport(dataset="ds", images=1)
    b.add("crowd", 1, "f2.json")
    b.add("unknown_class", 4)
    merged = a.merge(b)
    assert (merged.images, merged.boxes, merged.crowd, merged.unknown_class) == (3, 5, 4, 4)
    assert merged.examples["crowd"] == ["f1.json", "f2.json"] and merged.dataset == "ds"
    text = merged.summary()
    assert text.splitlines()[0] == "ds: 3 images, 5 target boxes, 0 ignore regions and crowd boxes"
    assert "4 " + REASONS["crowd"] in text and "f2.json" in text
    assert "nothing skipped" in SkipReport().summary()
    with pytest.raises(ValueError, match="unknown skip reason"):
        a.add("typo")


def test_assign_image_ids() -> None:
    assert assign_image_ids(["000000000009", "000000000025"]) == [9, 25]
    assert assign_image_ids(["a", "b", "c"]) == [0, 1, 2]
    assert assign_image_ids(["01", "1"]) == [0, 1]  # numeric but not unique


def test_an_object_written_twice_is_one_object() -> None:
    """A repeated label line (same class, same box) was a second ground-truth object no detection can match after NMS
    (AP50 1.00 -> 0.61 on four SIRST images with every line doubled); copies are dropped and counted."""
    report = SkipReport()
    boxes = [[10, 10, 20, 20], [10, 10, 20, 20.0000001], [10, 10, 20, 20], [30, 30, 40, 40], [30, 30, 40, 40],
             [30, 30, 40, 40]]
    record = make_record(0, None, 100, 100, boxes, [0, 0, 1, -1, -1, 0], ["target", "target", "target", "ignore",
                                                                        "ignore", "crowd"], report)
    assert record.labels.tolist() == [0, 1, 0]  # the copy of class 0 dropped; class 1 on the same box is another object
    assert record.iscrowd.tolist() == [False, False, True] and len(record.ignore) == 2  # regions are left as they are
    assert report.duplicate_boxes == 1 and "1 objects annotated twice" in report.summary()
