"""COCO image ids: every image keeps its file's id (integer, string or a mix of both) wherever results name it, and
an id that two image entries share leaves both out instead of giving one the other's objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from efpn.data import load_coco
from efpn.data.coco import image_id_map, parse_coco
from tests.data.conftest import write_image

FILES = ("a.png", "b.png", "c.png")


def _doc(ids: list[Any], sizes: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """A COCO dict of the images ``FILES`` with ``ids``, one object per image at ``x = 10 * (index + 1)`` (so an
    object read under the wrong image shows), category id 3."""
    sizes = sizes or [(100, 50)] * len(ids)
    return {"images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, (w, h) in zip(ids, FILES, sizes)],
            "annotations": [{"id": k + 1, "image_id": i, "category_id": 3, "bbox": [10 * (k + 1), 5, 4, 4]}
                            for k, i in enumerate(ids)],
            "categories": [{"id": 3, "name": "target"}]}


def _written(record: Any) -> Any:
    """The id results written for COCO tools give the record's image (as the diagnose results do)."""
    return record.source_id if record.source_id is not None else record.image_id


@pytest.mark.parametrize("ids", [[1, 2, 3], [7, 1, 2], ["x", "y", "z"], ["x", 1, 2], [1, "x", 2], ["0042", "x", 1],
                                 [2, "b", 1]], ids=str)
def test_each_image_keeps_its_own_id(tmp_path: Path, ids: list[Any]) -> None:
    """A file mixing integer and string ids had every id renumbered 1, 2, ... while only the string ones were written
    back as spelled: images "x", 1, 2 were written as "x", 2, 3 (image 1's results under image 2's id)."""
    for name in FILES:
        write_image(tmp_path / "images" / name, 100, 50)
    (tmp_path / "a.json").write_text(json.dumps(_doc(ids)))
    for images in (tmp_path / "images", None):
        records, _, report = load_coco(tmp_path / "a.json", images)
        assert [_written(r) for r in records] == ids
        assert len({r.image_id for r in records}) == len(ids)  # still one image per id inside
        for k, r in enumerate(records):  # each image has its own object, not a neighbour's
            np.testing.assert_array_equal(r.boxes, [[10 * (k + 1), 5, 10 * (k + 1) + 4, 9]])
        if images is not None:
            assert [r.path.name for r in records if r.path is not None] == list(FILES)
        assert report.counts() == {}


def test_integer_ids_are_never_renumbered_and_names_go_around_them() -> None:
    """In a mixed file the integer ids are themselves; the string ids take the smallest free numbers, and an
    annotation's integer image id that no image has stays unknown (never a string-id image's number)."""
    to_id = image_id_map([{"id": "x"}, {"id": 1}, {"id": "y"}, {"id": 3.0}, {"id": "4"}, {"id": "x"}])
    assert [to_id(v) for v in ("x", 1, "1", "y", 3, "3", 4, 4.0)] == [2, 1, 1, 5, 3, 3, 4, 4]
    assert to_id(2) is None and to_id(5) is None and to_id("zz") is None and to_id(None) is None
    only_names = image_id_map([{"id": "b"}, {"id": "a"}])
    assert (only_names("b"), only_names("a")) == (1, 2)  # a file of names only: 1, 2, ... in its order

    doc = _doc(["x", 2])
    doc["annotations"].append({"id": 9, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]})
    records, _, report = parse_coco(doc, None)
    assert [len(r.boxes) for r in records] == [1, 1]  # image "x" (numbered 1) did not take image id 1's object
    assert report.label_without_image == 1


@pytest.mark.parametrize(("ids", "shown"), [([1, 1, 2], "1"), (["f", "f", 2], '"f"'), ([1, "1", 2], "1"),
                                             ([1.0, 1, 2], "1.0"), ([2, 1, 1], "1")], ids=str)
def test_an_id_two_images_share_leaves_both_out(ids: list[Any], shown: str) -> None:
    """Two image entries with id 1 (000002.jpg, 000003.jpg): the first was read with both images' objects and the
    second dropped as a 'duplicate'. Whose objects are whose cannot be told: both are left out, named (the id as the
    file's first such entry spells it, and both file names) in the report, and the rest of the file loads."""
    doc = _doc(ids)
    shared = [k for k, i in enumerate(ids) if k != ids.index(2)]
    for k, name in zip(shared, ("000002.jpg", "000003.jpg")):
        doc["images"][k]["file_name"] = name
    records, _, report = parse_coco(doc, None)
    (kept,) = records
    assert _written(kept) == 2 and len(kept.boxes) == 1 and report.images == 1
    np.testing.assert_array_equal(kept.boxes, [[10 * (ids.index(2) + 1), 5, 10 * (ids.index(2) + 1) + 4, 9]])
    assert report.malformed == 2 and report.label_without_image == 0  # two entries; their objects are not orphans
    assert report.examples["malformed"] == [
        f"image id {shown} given to 2 image entries (000002.jpg, 000003.jpg): all left out with the 2 annotations of "
        "that id, which cannot be told apart; give each image its own id"]
    assert "000003.jpg" in report.summary()


def test_shared_ids_are_each_reported(tmp_path: Path) -> None:
    """Several shared ids: each named with its files; an entry without an id is still its own malformed entry."""
    doc = _doc([5, 5, 6])
    doc["images"] += [{"id": 6, "file_name": "d.png", "width": 10, "height": 10},
                      {"file_name": "e.png", "width": 10, "height": 10},
                      {"id": 8, "file_name": "f.png", "width": 10, "height": 10}]
    (tmp_path / "a.json").write_text(json.dumps(doc))
    records, _, report = load_coco(tmp_path / "a.json")
    assert [r.image_id for r in records] == [8] and report.image_without_labels == 1
    assert report.malformed == 5  # 2 + 2 entries sharing ids 5 and 6, and e.png without an id
    assert report.examples["malformed"][:2] == [
        "image id 5 given to 2 image entries (a.png, b.png): all left out with the 2 annotations of that id, which "
        "cannot be told apart; give each image its own id",
        "image id 6 given to 2 image entries (c.png, d.png): all left out with the 1 annotations of that id, which "
        "cannot be told apart; give each image its own id",
    ]


def test_diagnose_results_name_every_image_of_a_mixed_id_file_by_its_own_id(tmp_path: Path) -> None:
    """End to end: ``efpn diagnose --coco`` on images "x", 1, 2 wrote image 1's detections under id 2 and image 2's
    under id 3, which the file does not have. Images of different shapes show whose detections each id holds."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    import efpn
    from efpn.cli.main import main

    sizes = [(48, 48), (64, 24), (24, 64)]  # b.png wide and low, c.png narrow and tall
    for name, (w, h) in zip(FILES, sizes):
        write_image(tmp_path / "images" / name, w, h)
    doc = _doc(["x", 1, 2], sizes)
    for ann in doc["annotations"]:
        ann["bbox"] = [2, 2, 6, 6]
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    (tmp_path / "data.yaml").write_text("format: coco\nval:\n  annotations: ann.json\n  images: images\n")
    model = efpn.build_model("tiny_efpn_n", num_classes=1, class_names=("target",))
    weights = efpn.save_checkpoint(model, tmp_path / "m.safetensors")
    out = tmp_path / "res.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["diagnose", "--weights", str(weights), "--data", str(tmp_path / "data.yaml"), "--score", "0.0",
              "--image-size", "64", "--coco", str(out)])
    results = json.loads(out.read_text())
    assert {r["image_id"] for r in results} == {"x", 1, 2}
    for r in results:
        x, y, w, h = r["bbox"]
        width, height = sizes[["x", 1, 2].index(r["image_id"])]
        assert x + w <= width + 0.01 and y + h <= height + 0.01  # inside the image the id names
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "ann.json"))
        assert len(gt.loadRes(str(out)).getAnnIds()) == len(results)
