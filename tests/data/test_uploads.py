"""parse_annotation_bytes: one image's ground truth from an uploaded COCO JSON, YOLO txt or VOC XML, in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from efpn.data import AnnotationError, parse_annotation_bytes, parse_coco, parse_voc, parse_yolo
from efpn.data.coco import parse_json

HW = (100, 200)  # the image the boxes are for: H x W
NAMES = ["disc", "square", "cross"]
COCO = {
    "images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 100},
               {"id": 2, "file_name": "dir/b.jpg", "width": 400, "height": 200}],
    "annotations": [{"id": 1, "image_id": 2, "category_id": 3, "bbox": [40, 20, 20, 10]},
                    {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 8, 8], "iscrowd": 1},
                    {"id": 3, "image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4]}],
    "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}, {"id": 3, "name": "cross"}],
}
VOC = b"""<annotation><filename>x.png</filename><size><width>400</width><height>200</height></size>
<object><name>square</name><difficult>0</difficult><bndbox><xmin>20</xmin><ymin>40</ymin><xmax>60</xmax>
<ymax>80</ymax></bndbox></object>
<object><name>boat</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object>
<object><name>cross</name><difficult>1</difficult><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>10</xmax><ymax>10</ymax>
</bndbox></object>
<object><name>disc</name><bndbox><xmin>oops</xmin></bndbox></object></annotation>"""


def test_coco_entry_by_file_name_rescaled_to_the_image() -> None:
    got = parse_annotation_bytes(json.dumps(COCO).encode(), "gt.json", "b.png", HW, NAMES)
    assert got.fmt == "COCO JSON" and got.class_names == NAMES
    assert got.labels.tolist() == [2]  # the crowd box is not a target
    np.testing.assert_allclose(got.boxes, [[20, 10, 30, 15]])  # annotated at 400x200, the image is 200x100
    assert got.boxes.dtype == np.float32 and got.labels.dtype == np.int64
    assert "crowd" in got.report
    assert got.notes == ["gt.json annotates a 400x200 image and this one is 200x100: its boxes were stretched to fit. "
                         "Check that the file belongs to this image."]
    # annotated on the file that the studio downscaled to 200x100 after reading it: expected, nothing to check
    assert parse_annotation_bytes(json.dumps(COCO).encode(), "gt.json", "b.png", HW, NAMES,
                                  original_hw=(200, 400)).notes == []


def test_coco_categories_map_onto_the_class_names_by_name() -> None:
    """The file lists its categories in another order and one the model does not have: names decide the labels."""
    doc = {"images": [{"id": 1, "file_name": "b.png", "width": 200, "height": 100}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 10, "bbox": [1, 2, 3, 4]},
                           {"id": 2, "image_id": 1, "category_id": 20, "bbox": [5, 6, 3, 4]},
                           {"id": 3, "image_id": 1, "category_id": 30, "bbox": [9, 9, 3, 4]}],
           "categories": [{"id": 10, "name": "cross"}, {"id": 20, "name": "ship"}, {"id": 30, "name": "disc"}]}
    got = parse_annotation_bytes(json.dumps(doc).encode(), "gt.json", "b.png", HW, NAMES)
    assert got.class_names == [*NAMES, "ship"] and got.labels.tolist() == [2, 3, 0]


def test_coco_single_entry_is_used_whatever_its_name() -> None:
    one = {**COCO, "images": COCO["images"][:1]}
    got = parse_annotation_bytes(json.dumps(one).encode(), "gt.json", "photo.png", HW, NAMES)
    np.testing.assert_allclose(got.boxes, [[1, 2, 4, 6]])
    assert got.labels.tolist() == [1]
    assert len(got.notes) == 1 and "describes 'a.png', not 'photo.png'" in got.notes[0]  # said, for the user to check
    assert parse_annotation_bytes(json.dumps(one).encode(), "gt.json", "a.jpg", HW, NAMES).notes == []


@pytest.mark.parametrize("data, match", [
    (json.dumps(COCO).encode(), "none is named like 'c'"),
    (b"{oops", "gt.json could not be parsed: gt.json is not valid JSON"),
    (b'{"images": []}', "not a COCO detection file"),
    (json.dumps({"images": [], "categories": []}).encode(), "holds no image entries"),
    (b'{"images": [{"file_name": "c.png"}], "categories": []}', "no usable .*without an id"),
])
def test_coco_errors_name_the_file_and_what_to_upload(data: bytes, match: str) -> None:
    with pytest.raises(AnnotationError, match=match) as err:
        parse_annotation_bytes(data, "gt.json", "c.png", HW, NAMES)
    assert isinstance(err.value, ValueError) and "gt.json" in str(err.value)
    assert "upload" in str(err.value)


def test_yolo_ids_index_the_class_names_and_bad_lines_are_reported() -> None:
    text = b"2 0.5 0.5 0.1 0.2\n9 0.5 0.5 0.1 0.1\n\nnot a line\n0 0.1 0.2 0.1 0.2 0.2 0.3\n"
    got = parse_annotation_bytes(text, "x.txt", "x.png", HW, NAMES)
    assert got.fmt == "YOLO txt" and got.class_names == NAMES
    assert got.labels.tolist() == [2, 0]
    np.testing.assert_allclose(got.boxes, [[90, 40, 110, 60], [20, 20, 40, 30]], atol=1e-4)  # box, then polygon
    assert "not among the class names" in got.report and "could not be parsed" in got.report
    assert got.dropped == 2  # the unknown class and the unparsable line: what a page needs to refuse an all-bad file


def test_yolo_empty_file_is_an_image_without_boxes() -> None:
    got = parse_annotation_bytes(b"\n", "x.txt", "x.png", HW, NAMES)
    assert got.boxes.shape == (0, 4) and got.labels.shape == (0,)
    assert "without a label file or any annotation" in got.report and got.dropped == 0


def test_more_objects_than_one_image_may_hold_are_refused() -> None:
    from efpn.data import MAX_OBJECTS_PER_IMAGE

    def lines(n: int) -> bytes:  # n distinct small boxes (a repeated line would be one object)
        return b"".join(f"0 {0.1 + i * 8e-5:.6f} 0.5 0.01 0.01\n".encode() for i in range(n))

    assert len(parse_annotation_bytes(lines(MAX_OBJECTS_PER_IMAGE), "x.txt", "x.png", HW, NAMES).boxes) == (
        MAX_OBJECTS_PER_IMAGE)
    with pytest.raises(AnnotationError, match=f"x.txt gives this image {MAX_OBJECTS_PER_IMAGE + 1:,} objects"):
        parse_annotation_bytes(lines(MAX_OBJECTS_PER_IMAGE + 1), "x.txt", "x.png", HW, NAMES)


def test_yolo_without_class_names_is_refused() -> None:
    with pytest.raises(AnnotationError, match="x.txt: YOLO labels are class ids"):
        parse_annotation_bytes(b"0 0.5 0.5 0.1 0.1\n", "x.txt", "x.png", HW, [])


def test_voc_names_map_onto_the_class_names() -> None:
    got = parse_annotation_bytes(VOC, "x.xml", "x.png", HW, NAMES)
    assert got.fmt == "VOC XML" and got.class_names == [*NAMES, "boat"]
    assert got.labels.tolist() == [1, 3]  # square; "boat" is not a model class: after the model's, never one of them
    np.testing.assert_allclose(got.boxes, [[10, 20, 30, 40], [0, 0, 5, 5]])  # <size> 400x200 -> 200x100
    assert "difficult" in got.report and "could not be parsed" in got.report


def test_voc_without_size_takes_the_image_size() -> None:
    xml = b"<annotation><object><name>disc</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax>" \
          b"</bndbox></object></annotation>"
    got = parse_annotation_bytes(xml, "y.xml", "y.png", HW, [])
    assert got.class_names == ["disc"] and got.labels.tolist() == [0]
    np.testing.assert_allclose(got.boxes, [[1, 2, 3, 4]])


@pytest.mark.parametrize("name, data, match", [
    ("a.xml", b"<annotation><object>", r"a.xml could not be read as Pascal VOC XML \(a.xml: not well-formed XML "
                                       r"\(no element found"),
    ("up.xml", b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/hostname">]><annotation>&x;'
               b"</annotation>", r"up.xml could not be read as Pascal VOC XML \(up.xml: .*entity"),  # never fetched
    ("a.csv", b"x,y", "a.csv: unknown annotation type"),
])
def test_bad_files(name: str, data: bytes, match: str) -> None:
    with pytest.raises(AnnotationError, match=match):
        parse_annotation_bytes(data, name, "a.png", HW, NAMES)


def test_yolo_undecodable_bytes_are_a_malformed_line() -> None:
    """Bytes that are not UTF-8 are replaced, as the folder loader reads label files: one line it cannot parse."""
    got = parse_annotation_bytes(b"\xff\xfe0 0.5\n", "a.txt", "a.png", HW, NAMES)
    assert len(got.boxes) == 0 and "could not be parsed" in got.report


def test_from_memory_entry_points_match_the_folder_contract() -> None:
    records, names, report = parse_coco(COCO, name="mem")
    assert names == NAMES and [r.image_id for r in records] == [1, 2] and records[0].path is None
    assert report.dataset == "mem" and report.crowd == 1
    with pytest.raises(ValueError, match="up.json is not valid JSON"):
        parse_json(b"[", "up.json")
    (rec,), names, report = parse_yolo("1 0.5 0.5 1.2 0.2\n", (10, 20), names=["a", "b"], source="l.txt")
    np.testing.assert_allclose(rec.boxes, [[0, 4, 20, 6]])  # clipped to the 20 x 10 image, and counted
    assert report.clipped_boxes == 1 and report.examples["clipped_boxes"] == ["l.txt"]
    records, names, report = parse_voc(b"<annotation>", "z")
    assert records == [] and report.malformed == 1
    records, _, report = parse_voc(b"<annotation/>", "z")  # no size anywhere
    assert records == [] and "no <size>" in report.summary()


def test_coco_with_string_image_ids_finds_the_image_by_name() -> None:
    text = json.dumps(COCO).replace('"image_id": 2', '"image_id": "img_b"')
    named = json.loads(text.replace('"id": 2, "file_name"', '"id": "img_b", "file_name"'))
    assert named["images"][1]["id"] == "img_b"
    got = parse_annotation_bytes(json.dumps(named).encode(), "gt.json", "b.jpg", (200, 400), NAMES)
    np.testing.assert_allclose(got.boxes, [[40, 20, 60, 30]])


def test_a_coco_upload_keeps_an_images_readable_objects_as_yolo_and_voc_uploads_do() -> None:
    """One image's upload keeps its readable objects and counts the rest (the page shows both), in all three formats;
    a COCO file written on Windows names its images with backslashes, and they are matched by their stem."""
    doc = json.loads(json.dumps(COCO))
    doc["annotations"].append({"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5]})
    got = parse_annotation_bytes(json.dumps(doc).encode(), "gt.json", "b.png", HW, NAMES)
    assert got.labels.tolist() == [2] and got.dropped == 1 and "could not be parsed" in got.report
    doc["images"] = [{**e, "file_name": "C:\\data\\" + e["file_name"].split("/")[-1]} for e in doc["images"]]
    got = parse_annotation_bytes(json.dumps(doc).encode(), "gt.json", "b.png", HW, NAMES)
    assert got.labels.tolist() == [2]  # found by its stem, not taken as another image's file
    assert not any("describes" in note for note in got.notes)


def test_a_coco_entry_whose_id_another_entry_shares_is_named_as_such() -> None:
    doc = {**COCO, "images": [*COCO["images"], {"id": 2, "file_name": "c.png", "width": 200, "height": 100}]}
    with pytest.raises(AnnotationError, match="the entry of 'c' shares its image id with another entry"):
        parse_annotation_bytes(json.dumps(doc).encode(), "gt.json", "c.png", HW, NAMES)


def _refuse_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the format parsers fail the test if called: an oversized file must be refused on its raw bytes."""
    import efpn.data.uploads as uploads

    def parsed(*args: object, **kwargs: object) -> None:
        raise AssertionError("an oversized annotation was parsed")

    monkeypatch.setattr(uploads, "parse_yolo", parsed)
    monkeypatch.setattr(uploads, "parse_voc", parsed)


def test_an_oversized_yolo_txt_is_refused_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 50 MB label file took seconds and ~1 GB to parse before the object limit refused it."""
    from efpn.data import MAX_OBJECTS_PER_IMAGE

    _refuse_parsing(monkeypatch)
    line = b"0 0.5 0.5 0.01 0.01"
    no_last_newline = b"\n".join([line] * (MAX_OBJECTS_PER_IMAGE + 1))  # the last line has no line break
    with pytest.raises(AnnotationError, match=f"x.txt gives this image {MAX_OBJECTS_PER_IMAGE + 1:,} objects, more "
                                              f"than the {MAX_OBJECTS_PER_IMAGE:,}"):
        parse_annotation_bytes(no_last_newline, "x.txt", "x.png", HW, NAMES)
    utf16 = ("\r\n".join(["0 0.5 0.5 0.01 0.01"] * (MAX_OBJECTS_PER_IMAGE + 1)) + "\r\n").encode("utf-16")
    with pytest.raises(AnnotationError, match=f"gives this image {MAX_OBJECTS_PER_IMAGE + 1:,} objects"):
        parse_annotation_bytes(utf16, "x.txt", "x.png", HW, NAMES)


def test_blank_lines_and_line_endings_do_not_count_as_objects() -> None:
    """The raw count is of non-blank lines: CRLF endings, blank lines and a last line without a break are no objects."""
    from efpn.data import MAX_OBJECTS_PER_IMAGE

    lines = [f"0 {0.1 + i * 8e-5:.6f} 0.5 0.01 0.01".encode() for i in range(MAX_OBJECTS_PER_IMAGE)]
    text = b"\r\n".join(lines[:-1]) + b"\r\n  \r\n\r\n\t\r\n" + b"\n" * 20 + lines[-1]  # no break after the last
    got = parse_annotation_bytes(text, "x.txt", "x.png", HW, NAMES)
    assert len(got.boxes) == MAX_OBJECTS_PER_IMAGE


def test_an_oversized_voc_xml_is_refused_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    from efpn.data import MAX_OBJECTS_PER_IMAGE

    _refuse_parsing(monkeypatch)
    box = "<object><name>disc</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object>"
    xml = f"<annotation><size><width>200</width><height>100</height></size>{box * (MAX_OBJECTS_PER_IMAGE + 1)}" \
          "</annotation>"
    for data in (xml.encode(), xml.encode("utf-16")):
        with pytest.raises(AnnotationError, match=f"x.xml gives this image {MAX_OBJECTS_PER_IMAGE + 1:,} objects"):
            parse_annotation_bytes(data, "x.xml", "x.png", HW, NAMES)


def test_voc_at_the_object_limit_is_read() -> None:
    """``<objects>`` or ``<object_id>`` tags are not objects; the limit itself is allowed."""
    from efpn.data import MAX_OBJECTS_PER_IMAGE

    boxes = "".join(f"<object><name>disc</name><bndbox><xmin>{i % 190}</xmin><ymin>{i // 190}</ymin><xmax>"
                    f"{i % 190 + 5}</xmax><ymax>{i // 190 + 5}</ymax></bndbox></object>"
                    for i in range(MAX_OBJECTS_PER_IMAGE))
    xml = f"<annotation><objects>1</objects><object_id/><size><width>200</width><height>100</height></size>{boxes}" \
          "</annotation>"
    assert len(parse_annotation_bytes(xml.encode(), "x.xml", "x.png", HW, NAMES).boxes) == MAX_OBJECTS_PER_IMAGE


@pytest.mark.parametrize("data, root", [
    (b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><body><p>hi</p></body></html>', "html"),
    (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="5" height="5"/></svg>', "svg"),
])
def test_an_xml_file_that_is_not_voc_is_refused_not_read_as_an_image_without_objects(data: bytes, root: str) -> None:
    """Read as VOC, an XHTML or SVG upload was an image without ground truth: every detection a false positive."""
    with pytest.raises(AnnotationError, match=rf"page.xml could not be read as Pascal VOC XML \(page.xml: not a Pascal "
                                              rf"VOC annotation \(the root element is <{root}>, not <annotation>"):
        parse_annotation_bytes(data, "page.xml", "a.png", HW, NAMES)
