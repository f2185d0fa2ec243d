"""VOC loader: split lists, difficult policy, zero-size boxes, sizes from the header, real BCCD counts."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from efpn.data import load_voc


def test_fixture(voc_dir: Path) -> None:
    records, names, report = load_voc(voc_dir, "ImageSets/Main/train.txt")
    assert names == ["RBC", "WBC"]  # discovered from the loaded files, sorted
    assert [r.path.name for r in records if r.path] == ["img1.jpg", "img2.jpg"]
    img1, img2 = records
    np.testing.assert_array_equal(img1.boxes, [[10, 10, 20, 20], [30, 30, 50, 50], [60, 50, 70, 60]])
    np.testing.assert_array_equal(img1.iscrowd, [False, True, False])  # WBC is difficult
    assert (img2.width, img2.height) == (30, 20)  # no <size>: read from the image header
    assert report.counts() == {
        "zero_size_boxes": 1,
        "clipped_boxes": 1,
        "difficult": 1,
        "label_without_image": 1,  # img3
        "image_without_labels": 1,  # img2
    }


def test_difficult_policies_and_names(voc_dir: Path) -> None:
    rec = load_voc(voc_dir, "ImageSets/Main/train.txt", difficult="drop")[0][0]
    assert len(rec.boxes) == 2
    rec = load_voc(voc_dir, "ImageSets/Main/train.txt", difficult="ignore")[0][0]
    assert len(rec.boxes) == 2 and len(rec.ignore) == 1
    records, names, report = load_voc(voc_dir, "ImageSets/Main/val.txt", names=["RBC", "WBC"])
    assert names == ["RBC", "WBC"] and report.unknown_class == 1 and len(records[0].boxes) == 0
    all_records, all_names, _ = load_voc(voc_dir)  # no list: every XML
    assert len(all_records) == 3 and all_names == ["Platelets", "RBC", "WBC"]


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="VOC annotation folder"):
        load_voc(tmp_path)


@pytest.mark.realdata
def test_bccd(shared_data: Path) -> None:
    root = shared_data / "bccd"
    splits = {
        s: load_voc(root, f"ImageSets/Main/{s}.txt", names=["Platelets", "RBC", "WBC"])
        for s in ("train", "val", "test")
    }
    assert {s: len(r[0]) for s, r in splits.items()} == {"train": 205, "val": 87, "test": 72}
    # independent reading of the XML files of the train list
    objects = zero = 0
    for stem in (root / "ImageSets/Main/train.txt").read_text().split():
        for obj in ET.parse(root / "Annotations" / f"{stem}.xml").getroot().iter("object"):
            b = [float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects += 1
            zero += b[2] <= b[0] or b[3] <= b[1]
    train_report = splits["train"][2]
    assert train_report.boxes == objects - zero and train_report.zero_size_boxes == zero == 1
    # BloodImage_00338.xml (val) has the other zero-size box; over all files 4888 objects, 2 of them zero-size
    assert splits["val"][2].zero_size_boxes == 1
    assert "BloodImage_00338.xml" in splits["val"][2].examples["zero_size_boxes"]
    records, names, report = load_voc(root)
    assert names == ["Platelets", "RBC", "WBC"]
    assert (len(records), report.boxes, report.zero_size_boxes) == (364, 4886, 2)
    assert all((r.width, r.height) == (640, 480) for r in records)


@pytest.mark.realdata
def test_broken_voc_is_loaded(shared_data: Path) -> None:
    """The truncated JPEG's header is readable, so loading works; decoding fails later (test_dataset)."""
    records, names, _ = load_voc(shared_data / "broken", annotations=".", images=".")
    assert names == ["kangaroo"] and len(records) == 1 and len(records[0].boxes) == 3
    assert records[0].path is not None and records[0].path.name == "truncated.jpg"


def test_stated_size_checked_against_the_file(voc_dir: Path) -> None:
    """An XML <size> that disagrees with its image: the file's size is used and the report says so."""
    xml = voc_dir / "Annotations" / "img1.xml"
    xml.write_text(xml.read_text().replace("<width>80</width>", "<width>160</width>"))
    records, _, report = load_voc(voc_dir, "ImageSets/Main/train.txt")
    first = next(r for r in records if r.path is not None and r.path.stem == "img1")
    assert (first.width, first.height) == (80, 60)
    assert report.size_mismatch == 1 and report.examples["size_mismatch"] == ["img1.jpg (annotated 160x60, file 80x60)"]


def test_an_id_listed_twice_is_one_record(tmp_path) -> None:
    """A repeated line in an ImageSets list trained the image twice and counted its objects twice in evaluation."""
    from efpn.data.voc import read_voc_list

    lst = tmp_path / "train.txt"
    lst.write_text("a\nb 1\n\na\nc\n")
    assert read_voc_list(lst) == ["a", "b", "c"]


def test_an_object_that_cannot_be_read_leaves_its_image_out(voc_dir: Path) -> None:
    """An <object> without <bndbox> was dropped and its image kept (and called an image 'without any annotation'):
    its object would then be trained on as background and a detection of it scored as a false alarm."""
    (voc_dir / "Annotations" / "img1.xml").write_text(
        "<annotation><filename>img1.jpg</filename><size><width>80</width><height>60</height></size>"
        "<object><name>RBC</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>RBC</name></object></annotation>")
    records, _, report = load_voc(voc_dir, "ImageSets/Main/train.txt")
    assert [r.path.name for r in records if r.path] == ["img2.jpg"]
    assert report.malformed == 1 and report.malformed_image == 1 and report.examples["malformed_image"] == ["img1.xml"]
    assert report.image_without_labels == 1  # img2 only


def _voc_xml(encoding: str, name: str) -> str:
    return (f'<?xml version="1.0" encoding="{encoding}"?>\n<annotation><filename>x.jpg</filename><size><width>64'
            f"</width><height>48</height><depth>3</depth></size><object><name>{name}</name><bndbox><xmin>4</xmin>"
            "<ymin>5</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object></annotation>")


def test_xml_in_a_multi_byte_or_unknown_encoding_is_read_or_counted_not_fatal(tmp_path: Path) -> None:
    """Labelling tools in Chinese or Japanese locales write GBK / Shift_JIS XML, which expat refuses ('multi-byte
    encodings are not supported', naming no file), and an unknown declared encoding raised a bare LookupError: one such
    file stopped the whole split."""
    from efpn.data.voc import parse_voc

    ann, img = tmp_path / "Annotations", tmp_path / "JPEGImages"
    ann.mkdir()
    img.mkdir()
    for stem in ("gbk", "sjis", "bogus", "plain"):
        cv2.imwrite(str(img / f"{stem}.jpg"), np.zeros((48, 64, 3), np.uint8))
    (ann / "gbk.xml").write_bytes(_voc_xml("GBK", "红细胞").encode("gbk"))
    (ann / "sjis.xml").write_bytes(_voc_xml("Shift_JIS", "赤血球").encode("shift_jis"))
    (ann / "bogus.xml").write_bytes(_voc_xml("nonsense-enc", "cell").encode())
    (ann / "plain.xml").write_text(_voc_xml("utf-8", "cell"), encoding="utf-8")
    records, names, report = load_voc(tmp_path)
    assert sorted(names) == sorted(["红细胞", "赤血球", "cell"])
    assert sorted(r.path.stem for r in records if r.path) == ["gbk", "plain", "sjis"]
    assert report.counts().get("malformed") == 1
    assert any("bogus.xml" in e and "nonsense-enc" in e for e in report.examples["malformed"])
    got, found, _ = parse_voc(_voc_xml("GB2312", "白细胞").encode("gb2312"), "up", (48, 64))  # an upload
    assert found == ["白细胞"] and len(got) == 1 and got[0].boxes.tolist() == [[4.0, 5.0, 20.0, 30.0]]
    none, _, rep = parse_voc(_voc_xml("nonsense-enc", "cell").encode(), "up", (48, 64))
    assert none == [] and rep.counts() == {"malformed": 1}


def test_a_document_whose_root_is_not_annotation_is_malformed_and_the_split_loads(tmp_path: Path) -> None:
    """An HTML or SVG file among the annotations was read as an image without objects; VOC's root is <annotation>
    (any case, also under a namespace), anything else is counted as malformed with the root it has."""
    from efpn.data.voc import parse_voc

    ann, img = tmp_path / "Annotations", tmp_path / "JPEGImages"
    ann.mkdir()
    img.mkdir()
    for stem in ("page", "drawing", "plain", "upper", "spaced"):
        cv2.imwrite(str(img / f"{stem}.jpg"), np.zeros((48, 64, 3), np.uint8))
    (ann / "page.xml").write_bytes(b"<html><head><title>x</title></head><body><object>x</object></body></html>")
    (ann / "drawing.xml").write_bytes(b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="3"/></svg>')
    (ann / "plain.xml").write_text(_voc_xml("utf-8", "cell"), encoding="utf-8")
    (ann / "upper.xml").write_text(_voc_xml("utf-8", "cell").replace("annotation>", "Annotation>"), encoding="utf-8")
    (ann / "spaced.xml").write_text(_voc_xml("utf-8", "cell").replace("<annotation>", '<annotation xmlns="urn:x">'),
                                    encoding="utf-8")
    records, names, report = load_voc(tmp_path)
    assert names == ["cell"] and sorted(r.path.stem for r in records if r.path) == ["plain", "spaced", "upper"]
    assert all(len(r.boxes) == 1 for r in records)
    assert report.malformed == 2 and report.counts().get("image_without_labels") is None
    assert sorted(report.examples["malformed"]) == [
        "drawing.xml (the root element is <svg>, not <annotation>: a Pascal VOC file is <annotation> holding <size> "
        "and one <object> (<name>, <bndbox>) per box)",
        "page.xml (the root element is <html>, not <annotation>: a Pascal VOC file is <annotation> holding <size> "
        "and one <object> (<name>, <bndbox>) per box)",
    ]
    none, _, rep = parse_voc(b"<html><body/></html>", "up", (48, 64))
    assert none == [] and rep.counts() == {"malformed": 1}
    assert "up.xml: not a Pascal VOC annotation (the root element is <html>" in rep.examples["malformed"][0]
