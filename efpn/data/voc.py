"""Pascal VOC XML annotations -> :class:`~efpn.data.records.ImageRecord`.

Layout: ``Annotations/<id>.xml``, ``JPEGImages/<id>.<ext>``, and split lists ``ImageSets/Main/<split>.txt``
(one id per line; a second column, as in the per-class lists, is ignored).

Contract of :func:`load_voc`:

* coordinates are taken as written (``xmin ymin xmax ymax`` in pixels), clipped to ``<size>``; zero-size boxes
  (e.g. BCCD ``BloodImage_00338.xml``) are dropped and counted;
* ``<difficult>1</difficult>`` objects follow the ``difficult`` policy (default ``"crowd"``: kept, flagged,
  not trained on - the VOC evaluation also ignores them);
* the image is ``JPEGImages/<id>.<any image ext>``, else the XML ``<filename>``; if neither exists the entry
  is dropped (``label_without_image``); a missing or zero ``<size>`` is read from the image header;
* class names: given, or discovered as the sorted set of names in the loaded files (pass ``names`` to keep
  the same indices across splits; :func:`efpn.data.splits.load_split` does this for you);
* a file whose root element is not ``<annotation>`` (an HTML or SVG file among the XML) is ``malformed`` and left
  out, like XML that does not parse: read as VOC it would be an image without ground truth.
"""

from __future__ import annotations

import glob
import math
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from efpn.config.names import ClassNames, read_names
from efpn.data.images import IMAGE_EXTENSIONS
from efpn.data.records import (
    ImageRecord,
    Policy,
    SkipReport,
    assign_image_ids,
    check_policy,
    checked_size,
    dropped_as_malformed,
    make_record,
    read_text,
)

__all__ = ["load_voc", "parse_voc", "read_voc_list"]


@dataclass
class _VocFile:
    stem: str
    filename: str
    width: int
    height: int
    objects: list[tuple[str, list[float], bool]] = field(default_factory=list)  # (name, xyxy, difficult)
    bad_objects: int = 0


def read_voc_list(list_file: str | Path) -> list[str]:
    """Ids from an ``ImageSets`` list file (first column; blank lines and repeats skipped: an image listed twice
    would be trained twice and its objects counted twice by evaluation)."""
    p = Path(list_file)
    if not p.is_file():
        raise FileNotFoundError(f"VOC split list {p} does not exist")
    return list(dict.fromkeys(line.split()[0] for line in read_text(p).splitlines() if line.strip()))


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text else None


#: The XML declaration's encoding, at the very start of a document (expat's own rule for where it may stand).
_DECLARED_ENCODING = re.compile(
    rb"""^(?:\xef\xbb\xbf)?<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]{1,40})["'][^>]*\?>""")


def parse_xml_document(data: bytes | str) -> ET.Element:
    """The root element of an XML document, in any encoding Python knows.

    Expat reads UTF-8, UTF-16, ISO-8859-1 and ASCII itself and stops at a declared multi-byte encoding (GBK, GB2312,
    Shift_JIS, Big5: what labelling tools write in those locales) with a ValueError, and at an unknown one with a
    LookupError. Such a document is decoded here with Python's codecs and parsed without its declaration. Anything
    that still cannot be read raises ``ET.ParseError`` saying why, so callers count one bad file and go on.
    """
    try:
        return ET.fromstring(data)
    except (ValueError, LookupError) as e:
        match = _DECLARED_ENCODING.match(data) if isinstance(data, bytes) else None
        if match is None:
            raise ET.ParseError(f"not readable as XML ({e})") from None
        encoding = match.group(1).decode("ascii")
        try:
            text = data[match.end():].decode(encoding)
        except (LookupError, UnicodeDecodeError) as decode_error:
            raise ET.ParseError(f"declares encoding {encoding!r}, which it is not readable in ({decode_error}); "
                                "save it as UTF-8") from None
        return ET.fromstring(text)


class NotVocError(ET.ParseError):
    """Well-formed XML whose root element is not Pascal VOC's ``<annotation>`` (an HTML, XHTML or SVG file, another
    tool's XML): read as VOC it would be an image without objects, so it is refused like XML that does not parse."""


#: What a Pascal VOC annotation looks like, for the reason a document of another kind is refused with.
_VOC_SHAPE = "a Pascal VOC file is <annotation> holding <size> and one <object> (<name>, <bndbox>) per box"


def _parse_xml(path: Path) -> _VocFile:
    return _parse_root(parse_xml_document(path.read_bytes()), path.stem)


def _voc_root(root: ET.Element) -> ET.Element:
    """``root`` if it is a VOC ``<annotation>`` (any case; under a namespace, whose prefix is then dropped from every
    tag so the VOC children are found), else :class:`NotVocError` naming the root element found."""
    local = root.tag.rpartition("}")[2]
    if local.lower() != "annotation":
        raise NotVocError(f"the root element is <{local}>, not <annotation>: {_VOC_SHAPE}")
    if root.tag.startswith("{"):
        for element in root.iter():
            if isinstance(element.tag, str):
                element.tag = element.tag.rpartition("}")[2]
    return root


def _parse_root(root: ET.Element, stem: str) -> _VocFile:
    root = _voc_root(root)
    size = root.find("size")

    def dim(tag: str) -> int:
        try:
            return int(float(_text(size, tag) or 0))
        except (ValueError, OverflowError):  # "abc", "nan", "inf": unknown size
            return 0

    out = _VocFile(stem, _text(root, "filename") or "", dim("width"), dim("height"))
    for obj in root.iter("object"):
        bnd = obj.find("bndbox")
        cls = _text(obj, "name")
        try:
            box = [float(_text(bnd, k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            box = []
        if cls is None or len(box) != 4 or not all(math.isfinite(v) for v in box):
            out.bad_objects += 1
            continue
        out.objects.append((cls, box, (_text(obj, "difficult") or "0") not in ("0", "false", "False")))
    return out


def _find_image(images: Path, stem: str, filename: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        p = images / f"{stem}{ext}"
        if p.is_file():
            return p
    p = images / filename if filename else None
    return p if p is not None and p.is_file() else None


def warn_if_mask_dataset(ann_dir: Path, stems: list[str]) -> None:
    """Warn when the XML files sit beside target masks (``<stem>_pixels0.png``, the SIRST layout): there each
    XML holds ONE box per image that often encloses several targets, so its boxes are not the objects."""
    beside = [s for s in stems[:50] if any(ann_dir.glob(f"{glob.escape(s)}_pixels*.png"))]
    if beside:
        warnings.warn(
            f"{ann_dir} holds target masks beside the VOC files (e.g. {beside[0]}_pixels0.png): in this layout "
            "(SIRST and other infrared small-target sets) each XML has ONE box per image that often encloses "
            "several targets. Load the masks instead: format 'masks' in the data YAML (see recipes/data/sirst.yaml) "
            "or efpn.data.load_masks.",
            UserWarning,
            stacklevel=3,
        )


def load_voc(
    root: str | Path,
    list_file: str | Path | None = None,
    *,
    names: ClassNames | None = None,
    difficult: Policy = "crowd",
    annotations: str | Path = "Annotations",
    images: str | Path = "JPEGImages",
    name: str | None = None,
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Load a Pascal VOC split.

    Args:
        root: the VOC folder (``VOC2007``, ``bccd``, ...).
        list_file: ``ImageSets/Main/<split>.txt`` (relative to ``root`` or absolute); ``None`` = every XML.
        names: class names (list or file); ``None`` = sorted names found in the loaded files.
        difficult: policy for difficult objects.
        annotations, images: the XML and image folders, relative to ``root`` or absolute.
        name: dataset name for the report (default: ``root`` folder name, plus the list stem).

    Returns:
        ``(records, class_names, report)`` in list order (sorted XML order without a list).
    """
    check_policy("difficult", difficult)
    root = Path(root)
    ann_dir, img_dir = root / annotations, root / images
    for what, d in (("annotation", ann_dir), ("image", img_dir)):
        if not d.is_dir():
            raise FileNotFoundError(f"VOC {what} folder {d} does not exist")
    if list_file is not None:
        stems = read_voc_list(root / list_file)
    else:
        stems = sorted(p.stem for p in ann_dir.glob("*.xml"))
    warn_if_mask_dataset(ann_dir, stems)
    report = SkipReport(dataset=name or (root.name + (f"/{Path(list_file).stem}" if list_file else "")))

    parsed: list[tuple[int, _VocFile, Path]] = []
    for image_id, stem in zip(assign_image_ids(stems), stems):
        xml_path = ann_dir / f"{stem}.xml"
        if not xml_path.is_file():
            report.add("malformed", 1, f"{stem}.xml (listed but missing)")
            continue
        try:
            voc = _parse_xml(xml_path)
        except ET.ParseError as e:
            report.add("malformed", 1, f"{xml_path.name} ({e})")
            continue
        report.add("malformed", voc.bad_objects, xml_path.name)
        if dropped_as_malformed(report, report.malformed - voc.bad_objects, xml_path.name):
            continue
        img = _find_image(img_dir, stem, voc.filename)
        if img is None:
            report.add("label_without_image", 1, xml_path.name)
            continue
        size = checked_size(img, voc.width, voc.height, report, img.name)  # the file's header, checked against the XML
        if size is None:
            continue
        voc.width, voc.height = size
        parsed.append((image_id, voc, img))

    return _records(parsed, names, difficult, report)


def _records(
    parsed: list[tuple[int, _VocFile, Path | None]], names: ClassNames | None, difficult: Policy, report: SkipReport
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Records of parsed XML files (each with its id and image, sizes known) under the class names and policy."""
    if names is not None:
        class_names = read_names(names)
    else:
        class_names = sorted({cls for _, voc, _ in parsed for cls, _, _ in voc.objects})
    label_of = {n: i for i, n in enumerate(class_names)}

    records: list[ImageRecord] = []
    for image_id, voc, img in parsed:
        boxes, labels, roles = [], [], []
        for cls, box, is_difficult in voc.objects:
            if cls not in label_of:
                report.add("unknown_class", 1, f"{voc.stem}.xml ({cls})")
                continue
            role = "target"
            if is_difficult:
                report.add("difficult", 1, f"{voc.stem}.xml")
                role = difficult
            boxes.append(box), labels.append(label_of[cls]), roles.append(role)
        if not voc.objects:
            report.add("image_without_labels", 1, f"{voc.stem}.xml")
        records.append(
            make_record(image_id, img, voc.width, voc.height, boxes, labels, roles, report, f"{voc.stem}.xml")
        )
    return records, class_names, report.tally(records)


def parse_voc(
    data: bytes | str,
    stem: str,
    image_hw: tuple[int, int] | None = None,
    *,
    names: ClassNames | None = None,
    difficult: Policy = "crowd",
    name: str | None = None,
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """One Pascal VOC XML document held in memory (e.g. an upload) -> ``(records, class_names, report)``.

    What :func:`load_voc` does for the file ``<stem>.xml``, boxes-only (``path=None``, ``image_id`` 0): a missing
    or zero ``<size>`` is taken from ``image_hw`` (H, W). XML that does not parse, a document whose root is not
    ``<annotation>`` (HTML, SVG, ...), or one with no size at all, gives no record and is counted as ``malformed``;
    ``name`` is the report's dataset (default the file).
    """
    check_policy("difficult", difficult)
    source = name or f"{stem}.xml"  # the document, as its reader knows it (an upload: its own file name)
    report = SkipReport(dataset=source)
    try:
        voc = _parse_root(parse_xml_document(data), stem)
    except NotVocError as e:  # well-formed, but another kind of document (HTML, SVG, ...)
        report.add("malformed", 1, f"{source}: not a Pascal VOC annotation ({e})")
        return [], read_names(names) if names is not None else [], report.tally([])
    except ET.ParseError as e:  # not XML, cut short, or entities (refused: the parser expands none)
        report.add("malformed", 1, f"{source}: not well-formed XML ({e})")
        return [], read_names(names) if names is not None else [], report.tally([])
    report.add("malformed", voc.bad_objects, source)
    if (voc.width <= 0 or voc.height <= 0) and image_hw is not None:
        voc.height, voc.width = int(image_hw[0]), int(image_hw[1])
    if voc.width <= 0 or voc.height <= 0:
        report.add("malformed", 1, f"{source} (no <size> and no image size)")
        return [], read_names(names) if names is not None else [], report.tally([])
    return _records([(0, voc, None)], names, difficult, report)
