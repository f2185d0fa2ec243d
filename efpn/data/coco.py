"""COCO JSON annotations -> :class:`~efpn.data.records.ImageRecord` (and back, for evaluation).

Contract of :func:`load_coco`:

* categories are mapped to contiguous labels ``0..K-1`` in increasing category-id order (COCO's 1..90 with
  gaps become 0..79; SSDD's id 0 becomes 0); ``class_names`` follows the same order;
* ``bbox = [x, y, w, h]`` becomes ``xyxy``; boxes past the edge are clipped, degenerate ones dropped
  (both counted); an annotation with no ``bbox`` (absent, null or empty) gets the box around its
  ``segmentation`` (polygons or RLE);
* ids may be integers or strings of integers; an integer image id is the record's ``image_id`` (also in a file
  that mixes it with other ids), image ids that are other strings (``"frame_0001"``) get the smallest positive
  integers no integer id of the file takes, in the order of ``images``; a string id is kept as the record's
  ``source_id`` (results written for COCO tools use it, so they match the original file); an image entry or
  annotation without an id is dropped (``malformed``), a category without an integer id is an error; an image id
  that two or more image entries carry leaves out every one of them with their annotations (``malformed``: which
  image an annotation of that id belongs to cannot be told); an annotation whose box (or ``iscrowd`` /
  ``ignore`` flag: 0/1, also as a string) cannot be read leaves its image out whole (``malformed_image``);
* ``iscrowd=1`` annotations follow the ``crowd`` policy (default ``"crowd"``: kept with ``iscrowd=True``,
  never a training target); annotations with ``ignore=1`` (AI-TOD / VisDrone-in-COCO style) become ignore
  regions;
* images without annotations are kept with no boxes (counted as ``image_without_labels``);
* with an ``images`` folder, entries whose file is missing are dropped (``label_without_image``);
  without one, records are boxes-only (``path=None``).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path, PureWindowsPath
from typing import Any

from efpn.config.schema import short
from efpn.data.records import (
    ImageRecord,
    Policy,
    SkipReport,
    check_policy,
    checked_size,
    dropped_as_malformed,
    make_record,
)

__all__ = ["image_id_map", "load_coco", "parse_coco", "parse_json", "read_json", "records_to_coco"]


def parse_json(data: bytes | str, source: str) -> Any:
    """Parse JSON text held in memory; the ValueError for invalid JSON names ``source`` (a file name)."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{source} is not valid JSON ({e}); is it really a COCO annotation file?") from e
    except RecursionError as e:  # e.g. [[[[...]]]] 200,000 deep: no annotation file nests like that
        raise ValueError(f"{source} nests its JSON too deeply to read; is it really a COCO annotation file?") from e


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; FileNotFoundError / ValueError name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"annotation file {p} does not exist")
    return parse_json(p.read_bytes(), str(p))


def _resolve_image(images: Path, file_name: str) -> Path | None:
    """The image file a COCO ``file_name`` names under ``images``: as written, or by its base name (also of a Windows
    path, ``C:\\data\\a.png`` or ``images\\a.png``, as annotation tools on Windows write them)."""
    for candidate in (images / file_name, images / Path(file_name).name, images / PureWindowsPath(file_name).name):
        if candidate.is_file():
            return candidate
    return None


_FALSE = ("0", "0.0", "false", "no", "")
_TRUE = ("1", "1.0", "true", "yes")


def _flag(value: Any) -> bool | None:
    """A COCO 0/1 flag (``iscrowd``, ``ignore``): absent, 0, 1, a bool, or the same written as a string (``"0"`` is
    0, as pycocotools' ``int()`` reads it, where a truth test would call it set); None for anything else."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float):
        return None if not math.isfinite(value) else value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        return False if text in _FALSE else True if text in _TRUE else None
    return None


def _bbox_xyxy(bbox: Any) -> list[float] | None:
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None  # NaN or infinity: malformed, never a box
    return [x, y, x + w, y + h]


def _segmentation_xyxy(seg: Any) -> list[float] | None:
    """The box around a COCO ``segmentation`` (polygons ``[[x1, y1, ...], ...]``, or RLE ``{size, counts}``), for
    annotations written without a ``bbox``; None when there is none to read."""
    if isinstance(seg, list) and seg and all(isinstance(p, list | tuple) for p in seg):
        try:
            xs = [float(v) for poly in seg for v in poly[0::2]]
            ys = [float(v) for poly in seg for v in poly[1::2]]
        except (TypeError, ValueError, OverflowError):
            return None
        if not xs or len(xs) != len(ys) or not all(math.isfinite(v) for v in xs + ys):
            return None
        return [min(xs), min(ys), max(xs), max(ys)]
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        try:
            from pycocotools import mask as mask_utils

            rle = seg if isinstance(seg["counts"], str | bytes) else mask_utils.frPyObjects(seg, *seg["size"])
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        except (ImportError, TypeError, ValueError, KeyError, OverflowError):
            return None
        return [x, y, x + w, y + h] if w > 0 and h > 0 else None
    return None


def _coco_id(value: Any) -> int | None:
    """An id as COCO files write it (an integer, or a string or float holding one), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value.strip())
    return None


def _size(value: Any) -> int:
    """An image width or height as a JSON may write it (an integer, a float, a string of one), else 0."""
    try:
        size = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return int(size) if math.isfinite(size) and size > 0 else 0


def image_id_map(entries: list[Any]) -> Callable[[Any], int | None]:
    """``raw id -> int`` for the image ids of a COCO file, the same map for the annotations' ``image_id``.

    An id that is an integer (or a string or float holding one: ``3``, ``3.0``, ``"3"`` alike) maps to that integer,
    whatever the file's other ids are: results written back name the image by it, so it must never be renumbered.
    Every other id (``"frame_0001"``) gets the smallest positive integer that no integer id of ``entries`` takes and
    no earlier such id got, in the order of ``images`` (1, 2, ... in a file of such ids only); its record keeps the
    spelling as ``source_id``. Returns a function giving None for a missing or unknown id.
    """
    raw = [e.get("id") for e in entries if isinstance(e, dict)]
    if all(_coco_id(r) is not None for r in raw):
        return _coco_id
    taken = {n for n in map(_coco_id, raw) if n is not None}
    numbered: dict[str, int] = {}
    free = 0
    for r in raw:
        key = _id_key(r)
        if key is None or _coco_id(r) is not None or key in numbered:
            continue
        free += 1
        while free in taken:  # an integer id of the file keeps its number: the named ones go around it
            free += 1
        numbered[key] = free

    def lookup(value: Any) -> int | None:
        key = _id_key(value)
        if key is None:
            return None
        number = _coco_id(value)
        if number is not None:  # an integer id: itself when an image entry has it, else unknown
            return number if number in taken else None
        return numbered.get(key)

    return lookup


def _id_key(value: Any) -> str | None:
    """One spelling per id for :func:`image_id_map`'s numbering (``3``, ``3.0`` and ``"3"`` alike), None for none."""
    if isinstance(value, bool) or value is None:
        return None
    number = _coco_id(value)
    if number is not None:
        return str(number)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _drop_shared_ids(entries: list[Any], to_id: Callable[[Any], int | None],
                     by_image: dict[int, list[dict[str, Any]]], report: SkipReport) -> set[int]:
    """The image ids (as ``to_id`` maps them) that two or more of the image ``entries`` carry, their annotations
    taken out of ``by_image`` (``image id -> annotations``) and every such entry counted as ``malformed``, one example
    per id naming it as the file spells it and the file names of its entries.

    Such an id cannot be attributed: its annotations could belong to any of the entries, so none of them is read
    (keeping the first would give it the others' objects, and leave the others' pictures unlabelled)."""
    shared: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        image_id = to_id(entry.get("id")) if isinstance(entry, dict) else None
        if image_id is not None:
            shared[image_id].append(entry)
    ambiguous = {image_id for image_id, group in shared.items() if len(group) > 1}
    for image_id in sorted(ambiguous):
        group, anns = shared[image_id], by_image.pop(image_id, [])
        names = ", ".join(str(e.get("file_name", "")) or "(no file_name)" for e in group)
        spelled = json.dumps(group[0].get("id"), ensure_ascii=False)  # as the file writes it: 1, "frame_1"
        report.add("malformed", len(group),
                   f"image id {spelled} given to {len(group)} image entries ({names}): all left out with the "
                   f"{len(anns)} annotations of that id, which cannot be told apart; give each image its own id")
    return ambiguous


def load_coco(
    annotations: str | Path,
    images: str | Path | None = None,
    *,
    crowd: Policy = "crowd",
    check_images: bool = True,
    name: str | None = None,
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Load a COCO detection JSON.

    Args:
        annotations: the ``instances_*.json`` file.
        images: folder holding ``file_name`` of every image (also tried: its base name); ``None`` = boxes-only
            records with ``path=None`` (sizes from the JSON).
        crowd: policy for ``iscrowd=1`` annotations (see :data:`~efpn.data.records.Policy`).
        check_images: with ``images``, drop entries whose file is missing and check each file's size against the
            JSON's (a ``stat`` and a header read per image; ``size_mismatch`` in the report).
        name: dataset name for the report (default: the JSON file stem).

    Returns:
        ``(records, class_names, report)``; records in the JSON's image order, ``image_id`` = the COCO id.
    """
    check_policy("crowd", crowd)
    ann_path = Path(annotations)
    return parse_coco(read_json(ann_path), images, crowd=crowd, check_images=check_images, name=name or ann_path.stem,
                      source=str(ann_path))


def parse_coco(
    data: Any,
    images: str | Path | None = None,
    *,
    crowd: Policy = "crowd",
    check_images: bool = True,
    name: str = "",
    source: str = "the annotation file",
    keep_partial: bool = False,
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """:func:`load_coco` on a COCO detection dict already in memory (e.g. parsed with :func:`parse_json` from an
    upload). ``source`` names the file in the ValueError for a dict that is not COCO detection; ``name`` is the
    report's dataset name. Same arguments, contract and result as :func:`load_coco`, except that ``keep_partial``
    keeps an image whose annotation has unreadable entries, with its readable objects (counted as ``malformed``),
    as the YOLO and VOC readers of one image's upload do: the studio shows the rest with the count.
    """
    check_policy("crowd", crowd)
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"{source} is not a COCO detection file: it needs top-level 'images' and 'categories' lists")
    report = SkipReport(dataset=name)
    img_dir = Path(images) if images is not None else None

    if not isinstance(data["categories"], list) or not isinstance(data["images"], list):
        raise ValueError(f"{source} is not a COCO detection file: 'images' and 'categories' must be lists")
    for c in data["categories"]:
        if not isinstance(c, dict) or _coco_id(c.get("id")) is None:
            raise ValueError(f"{source}: category {short(c)} has no integer 'id'; every entry of 'categories' "
                             "needs one (and a 'name')")
    cats = sorted(data["categories"], key=lambda c: _coco_id(c["id"]))
    ids = [_coco_id(c["id"]) for c in cats]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:  # two classes with one id: annotations of that id could belong to either
        raise ValueError(f"{source}: category id(s) {repeated} appear more than once in 'categories' "
                         f"({', '.join(repr(str(c.get('name'))) for c in cats if _coco_id(c['id']) in repeated)}); "
                         "give every category its own id")
    cat_to_label = {i: k for k, i in enumerate(ids)}
    class_names = [str(c.get("name", c["id"])) for c in cats]

    to_id = image_id_map(data["images"])
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    unknown_ids: list[Any] = []  # image ids of annotations that no image entry has (renumbered ids cannot say)
    for ann in data.get("annotations") or []:
        raw = ann.get("image_id") if isinstance(ann, dict) else None
        image_ref = to_id(raw)
        if image_ref is not None:
            by_image[image_ref].append(ann)
        elif _id_key(raw) is not None:
            unknown_ids.append(raw)
        else:
            report.add("malformed", 1, f"annotation {short(ann)} without an image_id")

    ambiguous = _drop_shared_ids(data["images"], to_id, by_image, report)
    records: list[ImageRecord] = []
    files_seen: dict[str, int] = {}  # image file (or file_name without images) -> the id it was first read under
    for entry in data["images"]:
        maybe_id = to_id(entry.get("id")) if isinstance(entry, dict) else None
        if maybe_id is None:
            report.add("malformed", 1, f"image entry {short(entry)} without an id")
            continue
        if maybe_id in ambiguous:  # counted, with every file name of the id, by _drop_shared_ids
            continue
        image_id = maybe_id
        file_name = str(entry.get("file_name", ""))
        anns = by_image.pop(image_id, [])
        path: Path | None = None
        if img_dir is not None:
            path = _resolve_image(img_dir, file_name) if check_images else img_dir / file_name
            if path is None:
                report.add("label_without_image", 1, file_name)
                continue
        key = str(path) if path is not None else file_name  # "" (no file name, boxes only): nothing to compare
        if key and key in files_seen:  # one picture under two ids: scored twice, and a carve could split it
            report.add("malformed", 1, f"{file_name} listed again as image {image_id} (first as {files_seen[key]}): "
                                       "left out")
            continue
        files_seen[key] = image_id
        width, height = _size(entry.get("width")), _size(entry.get("height"))
        if path is None and (width <= 0 or height <= 0):
            report.add("malformed", 1, f"{file_name} (no width/height and no image)")
            continue
        if path is not None and (check_images or width <= 0 or height <= 0):
            size = checked_size(path, width, height, report, file_name)  # the file's header, checked against the JSON
            if size is None:
                continue
            width, height = size

        boxes, labels, roles = [], [], []
        malformed = report.malformed
        for ann in anns:
            xyxy = _bbox_xyxy(ann.get("bbox"))
            if xyxy is None and ann.get("bbox") in (None, []):  # no box written: the one around the segmentation
                xyxy = _segmentation_xyxy(ann.get("segmentation"))
            ignore, iscrowd = _flag(ann.get("ignore")), _flag(ann.get("iscrowd"))
            if xyxy is None or ignore is None or iscrowd is None:
                report.add("malformed", 1, file_name)
                continue
            if ignore:
                report.add("ignored_regions", 1, file_name)
                boxes.append(xyxy), labels.append(-1), roles.append("ignore")
                continue
            category = _coco_id(ann.get("category_id"))
            label = cat_to_label.get(category) if category is not None else None
            if label is None:
                report.add("unknown_class", 1, file_name)
                continue
            role = "target"
            if iscrowd:
                report.add("crowd", 1, file_name)
                role = crowd
            boxes.append(xyxy), labels.append(label), roles.append(role)
        if not keep_partial and dropped_as_malformed(report, malformed, file_name):
            continue
        if not anns:
            report.add("image_without_labels", 1, file_name)
        record = make_record(image_id, path, width, height, boxes, labels, roles, report)
        # "frame_0001", "0042": results for COCO tools must spell it so (an integer id is image_id itself, in any file:
        # image_id_map never renumbers one)
        if isinstance(entry.get("id"), str):
            record.source_id = entry["id"]
        records.append(record)

    # counted per image, as every loader counts this reason: one unknown image id, however many annotations
    unknown = list(dict.fromkeys(_id_key(raw) for raw in unknown_ids))
    orphans = len(by_image) + len(unknown)
    shown = [*sorted(by_image)[:3], *unknown[:3]][:3]
    report.add("label_without_image", orphans, f"annotations of unknown image ids {shown}")
    return records, class_names, report.tally(records)


def records_to_coco(
    records: Sequence[ImageRecord], class_names: Sequence[str], first_category_id: int = 1
) -> dict[str, Any]:
    """A COCO ground-truth dict from records (for pycocotools / faster-coco-eval, or to save a dataset).

    Label ``k`` becomes category id ``first_category_id + k``; crowd boxes keep their label with
    ``iscrowd=1``. A label-less ignore region becomes one ``iscrowd=1, ignore=1`` box *per category*, because
    pycocotools lets a crowd box absorb detections of its own category only. ``file_name`` is the image's base
    name; coordinates are rounded to 1/1000 px so the output is stable byte for byte.
    """
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []

    def add(image_id: int, box: Any, label: int, iscrowd: int, ignore: bool) -> None:
        x1, y1, x2, y2 = (round(float(v), 3) for v in box)
        w, h = round(x2 - x1, 3), round(y2 - y1, 3)
        ann = {
            "id": len(anns) + 1,
            "image_id": image_id,
            "category_id": first_category_id + label,
            "bbox": [x1, y1, w, h],
            "area": round(w * h, 3),
            "iscrowd": iscrowd,
        }
        if ignore:
            ann["ignore"] = 1
        anns.append(ann)

    for r in records:
        images.append(
            {
                "id": int(r.image_id),
                "file_name": r.path.name if r.path is not None else f"{r.image_id}.jpg",
                "width": int(r.width),
                "height": int(r.height),
            }
        )
        for box, label, crowd in zip(r.boxes, r.labels, r.iscrowd):
            add(int(r.image_id), box, int(label), int(crowd), False)
        for box in r.ignore:
            for k in range(len(class_names)):
                add(int(r.image_id), box, k, 1, True)
    categories = [{"id": first_category_id + k, "name": str(n)} for k, n in enumerate(class_names)]
    return {"images": images, "annotations": anns, "categories": categories}
