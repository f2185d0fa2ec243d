"""Ground truth of one image from an annotation file held in memory (an upload): COCO JSON, YOLO txt, VOC XML.

:func:`parse_annotation_bytes` reads the bytes with the format loaders' own per-record parsing
(:func:`~efpn.data.coco.parse_coco`, :func:`~efpn.data.yolo.parse_yolo`, :func:`~efpn.data.voc.parse_voc`), so an
upload is cleaned, clipped and reported like a dataset on disk, with one difference: where a dataset's loader leaves
out an image whose annotation has entries it cannot read, an upload keeps the image's readable objects and counts the
rest (``dropped``), for the page to show both; nothing is written to disk.

Contract:

* the format is chosen by the file's suffix: ``.json`` COCO, ``.txt`` YOLO, ``.xml`` Pascal VOC;
* COCO: the entry whose ``file_name`` has the image's stem (also written with Windows separators), else the only
  entry; crowd boxes are not targets;
* YOLO: class ids index ``class_names`` (the model's), coordinates are relative to ``image_hw``;
* VOC: difficult objects are not targets; a missing ``<size>`` is ``image_hw``;
* COCO and VOC: category names found in ``class_names`` take their index there; the file's other names come after
  them (index ``len(class_names)`` on), so a class the model does not know never poses as one it does;
* boxes annotated at another size than ``image_hw`` (COCO ``width``/``height``, VOC ``<size>``) are rescaled to it;
* anything unusable raises :class:`AnnotationError` (a ``ValueError``) naming the file, what was wrong and what to
  upload instead; entries skipped along the way are in ``ParsedAnnotation.report``;
* a YOLO txt with more non-blank lines, or a VOC XML with more ``<object`` tags, than
  :data:`MAX_OBJECTS_PER_IMAGE` is refused before it is parsed (counted on the raw bytes: a 50 MB file no longer
  takes seconds and hundreds of MB to refuse); a COCO JSON is refused once parsed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import numpy as np

from efpn.data.coco import image_id_map, parse_coco, parse_json
from efpn.data.records import ImageRecord, SkipReport, decode_text
from efpn.data.voc import parse_voc
from efpn.data.yolo import parse_yolo

__all__ = ["ANNOTATION_FORMATS", "MAX_OBJECTS_PER_IMAGE", "AnnotationError", "ParsedAnnotation", "map_class_names",
           "parse_annotation_bytes"]

#: File suffix -> the format it is read as (what an uploader should accept).
ANNOTATION_FORMATS: dict[str, str] = {".json": "COCO JSON", ".txt": "YOLO txt", ".xml": "VOC XML"}

#: The most objects (boxes + ignore regions) one image's annotation may hold. Dense scenes stay far below it (AI-TOD
#: evaluates up to 1,500 detections per image; DOTA's densest images hold a few thousand objects); beyond it every view
#: of the image would draw, match and diagnose tens of thousands of boxes on each interaction.
MAX_OBJECTS_PER_IMAGE = 10_000

_WHAT_TO_UPLOAD = (
    "upload a COCO JSON, a YOLO txt (class cx cy w h, normalised) or a Pascal VOC XML of this image"
)


class AnnotationError(ValueError):
    """An annotation file that cannot be used; the message names the file, says why and what to upload."""


@dataclass
class ParsedAnnotation:
    """The ground truth of one image read from an annotation file, in the image's pixels."""

    boxes: np.ndarray  # (M, 4) float32 xyxy
    labels: np.ndarray  # (M,) int64, indices into class_names
    class_names: list[str]
    fmt: str  # a value of ANNOTATION_FORMATS
    report: str  # SkipReport.summary() of the file: what was skipped or changed
    dropped: int = 0  # entries refused (malformed, unknown class, no area, outside the image): not boxes of it
    #: what the reader had to assume, for the user to check (a file describing another image, or another size)
    notes: list[str] = field(default_factory=list)


#: the SkipReport reasons that drop an annotated object (the others keep it, re-route it or note something)
DROPPING = ("malformed", "unknown_class", "zero_size_boxes", "outside_image", "label_without_image")


def parse_annotation_bytes(
    data: bytes,
    file_name: str,
    image_name: str,
    image_hw: tuple[int, int],
    class_names: Sequence[str],
    original_hw: tuple[int, int] | None = None,
) -> ParsedAnnotation:
    """Read the ground truth of the image ``image_name`` (H, W = ``image_hw``) from the annotation file
    ``file_name`` whose content is ``data`` (see the module docstring for each format).

    Boxes annotated at another size are scaled to ``image_hw`` (``original_hw``: the size of the file on disk when
    the image was downscaled after reading; annotations made at either size are expected). ``notes`` says when the
    file describes an image of another name (a COCO JSON of one image) or of a size that is neither.

    ``class_names``: the classes boxes are labelled in (the model's); YOLO ids index them, VOC names map onto them.
    Raises :class:`AnnotationError` for an unknown suffix, a file that does not parse, one without this image, or
    one giving it more than :data:`MAX_OBJECTS_PER_IMAGE` objects.
    """
    suffix = Path(file_name).suffix.lower()
    if suffix not in ANNOTATION_FORMATS:
        raise AnnotationError(f"{file_name}: unknown annotation type; upload .json (COCO), .txt (YOLO) or .xml "
                              "(Pascal VOC)")
    stem = Path(image_name).stem
    h, w = int(image_hw[0]), int(image_hw[1])
    names = list(class_names)
    try:
        notes: list[str] = []
        if suffix == ".json":
            record, found, report, described = _coco(data, file_name, stem)
            if _stem(described) != stem:
                notes.append(f"{file_name} describes '{described}', not '{image_name}': its only image was taken "
                             "for this one. Check that its boxes belong to this image.")
        elif suffix == ".txt":
            if not names:
                raise AnnotationError(f"{file_name}: YOLO labels are class ids, and there are no class names to "
                                      "read them with; upload a COCO JSON or a Pascal VOC XML instead")
            _refuse_too_many(file_name, _yolo_entries(data))
            records, found, report = parse_yolo(decode_text(data), (h, w), names=names,
                                                source=file_name)
            record = records[0]
        else:
            _refuse_too_many(file_name, _voc_objects(data))
            records, found, report = parse_voc(data, stem, (h, w), name=file_name)
            if not records:  # the parser's own reason when it gave one (a syntax error, a refused entity)
                why = (report.examples.get("malformed") or [report.summary()])[0]
                raise AnnotationError(f"{file_name} could not be read as Pascal VOC XML ({why}); {_WHAT_TO_UPLOAD}")
            record = records[0]
    except AnnotationError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, ET.ParseError, UnicodeDecodeError, RecursionError) as e:
        raise AnnotationError(f"{file_name} could not be parsed: {e}; {_WHAT_TO_UPLOAD}") from e
    boxes, labels = record.target_boxes()
    _refuse_too_many(file_name, len(record.boxes) + len(record.ignore))
    found = list(found)
    if suffix in (".json", ".xml") and names:  # class names, not the file's own order, decide the label
        labels, found = map_class_names(names, found, labels)
    if (record.width, record.height) != (w, h):
        if original_hw is None or (record.height, record.width) != tuple(original_hw):
            notes.append(f"{file_name} annotates a {record.width}x{record.height} image and this one is {w}x{h}: its "
                         "boxes were stretched to fit. Check that the file belongs to this image.")
        sx, sy = w / record.width, h / record.height
        boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    return ParsedAnnotation(boxes.astype(np.float32).reshape(-1, 4), labels.astype(np.int64).reshape(-1), found,
                            ANNOTATION_FORMATS[suffix], report.summary(),
                            sum(int(getattr(report, reason)) for reason in DROPPING), notes)


def map_class_names(names: list[str], found: list[str], labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Labels indexing the file's class names ``found`` -> labels indexing ``names`` (the model's), the file's other
    classes after them (index ``len(names)`` on, in the file's order): a class the model does not know never takes
    the index of one it does. Returns the labels and the names they index."""
    lookup = {n: i for i, n in enumerate(names)}
    extra = list(dict.fromkeys(n for n in found if n not in lookup))
    index = [lookup[n] if n in lookup else len(names) + extra.index(n) for n in found]
    return np.array([index[int(c)] for c in labels], dtype=np.int64), names + extra


def _refuse_too_many(file_name: str, objects: int) -> None:
    """Raise :class:`AnnotationError` when ``objects`` exceeds :data:`MAX_OBJECTS_PER_IMAGE`."""
    if objects > MAX_OBJECTS_PER_IMAGE:
        raise AnnotationError(f"{file_name} gives this image {objects:,} objects, more than the "
                              f"{MAX_OBJECTS_PER_IMAGE:,} one image's ground truth may hold; upload the annotation of "
                              "this image only, or of a crop of it")


#: A non-blank line: from its first character that is neither white space nor a NUL (UTF-16 text) to its end.
_NON_BLANK_LINE = re.compile(rb"[^\s\x00][^\r\n]*")


def _yolo_entries(data: bytes) -> int:
    """An upper bound of the objects in the YOLO txt ``data`` (one per non-blank line), counted on the raw bytes so a
    file far over the limit is refused before it is decoded and parsed. Line breaks bound it first (a last line
    without one included); only a file with more lines than the limit has its non-blank lines counted one by one."""
    lines = data.count(b"\n") + data.count(b"\r") + 1  # \n, \r\n (counted twice) and old-Mac \r endings
    if lines <= MAX_OBJECTS_PER_IMAGE:
        return lines
    return sum(1 for _ in _NON_BLANK_LINE.finditer(data))


def _voc_objects(data: bytes) -> int:
    """An upper bound of the ``<object>`` elements in the VOC XML ``data`` (in UTF-8 or any encoding that writes
    ASCII as ASCII, or in UTF-16), counted on the raw bytes so a file far over the limit is refused before it is
    parsed: each ``<object`` followed by white space, ``/`` or ``>`` (comments and CDATA included)."""
    most = 0
    for codec in ("utf-8", "utf-16-le", "utf-16-be"):
        if data.count("<object".encode(codec)) > most:  # else this encoding cannot give more
            most = max(most, sum(data.count(f"<object{end}".encode(codec)) for end in " \t\r\n/>"))
    return most


def _stem(file_name: str) -> str:
    """A COCO ``file_name``'s stem, also when it is written with Windows separators (``C:\\data\\a.jpg``)."""
    return PureWindowsPath(file_name).stem if "\\" in file_name else Path(file_name).stem


def _coco(data: bytes, file_name: str, stem: str) -> tuple[ImageRecord, list[str], SkipReport, str]:
    """The COCO record of the image with this stem (else the only one) in the JSON ``data``, with the file name
    the JSON gives that image."""
    doc = parse_json(data, file_name)
    records, names, report = parse_coco(doc, None, name=Path(file_name).stem, source=file_name, keep_partial=True)
    if not records:
        dropped = [f"{n} {reason}" + (f", e.g. {report.examples[reason][0]}" if report.examples.get(reason) else "")
                   for reason, n in report.counts().items()]
        why = f" usable image entries (dropped: {'; '.join(dropped)})" if dropped else " image entries"
        raise AnnotationError(f"{file_name} holds no{why}; {_WHAT_TO_UPLOAD}")
    to_id = image_id_map(doc["images"])
    ids = {to_id(e.get("id")) for e in doc["images"]
           if isinstance(e, dict) and _stem(str(e.get("file_name", ""))) == stem}
    pick = [r for r in records if r.image_id in ids] or (records if len(records) == 1 and not ids else [])
    if not pick:
        carried = [to_id(e.get("id")) for e in doc["images"] if isinstance(e, dict)]
        if any(i is not None and carried.count(i) > 1 for i in ids):  # the entry is there, its id is another's too
            raise AnnotationError(f"{file_name}: the entry of '{stem}' shares its image id with another entry, so "
                                  "its boxes cannot be told from that image's; give each image its own id, or "
                                  f"{_WHAT_TO_UPLOAD}")
        raise AnnotationError(
            f"{file_name} has {len(records)} images and none is named like '{stem}'; upload the JSON of this image, "
            "or rename the image to its file_name"
        )
    chosen = pick[0]
    described = next((str(e.get("file_name", "")) for e in doc["images"]
                      if isinstance(e, dict) and to_id(e.get("id")) == chosen.image_id), "")
    return chosen, names, report, described
