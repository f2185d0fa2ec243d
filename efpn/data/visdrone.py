"""VisDrone-DET txt annotations -> :class:`~efpn.data.records.ImageRecord`, with or without the images.

One file per image, one object per line: ``x,y,w,h,score,category,truncation,occlusion`` (pixels, top-left
corner). Categories 1..10 are the classes of :data:`VISDRONE_CLASSES`; 0 is an "ignored region"; 11 is
"others". In ground truth, ``score`` 0 means "ignore this box in evaluation".

Contract of :func:`load_visdrone` (rules applied in this order, each line counted once):

1. an unparsable line (``malformed``) leaves its image out whole (``malformed_image``);
2. category 0 -> ignore region (``ignored_regions``);
3. category 11 -> the ``others`` policy (``others``; default ``"ignore"``, ``"target"``/``"crowd"`` add an
   11th class ``"others"``);
4. categories 1..10 with score 0 -> ignore region (``score_zero``); otherwise a target with label
   ``category - 1``; any other category is dropped (``unknown_class``);
5. then boxes are clipped / dropped by :func:`~efpn.data.records.make_record` (a degenerate ignore region is
   counted under both its category reason and ``zero_size_boxes``).

Image sizes come from, in order: the ``images`` folder (header only; a missing image drops the file,
``label_without_image``), the ``image_sizes`` COCO JSON (matched by file stem; ``path=None``), or the box
extent ``ceil(max x2), ceil(max y2)`` (``estimated_size``; ``path=None``). With an ``images`` folder,
images without a txt file are kept with no boxes (``image_without_labels``). Boxes-only records feed the
assignment statistics; they cannot be put in a :class:`~efpn.data.dataset.DetectionDataset`.
"""

from __future__ import annotations

import math
from pathlib import Path

from efpn.data.coco import read_json
from efpn.data.images import CorruptImageError, image_size, index_images, unreadable_example
from efpn.data.records import (
    ImageRecord,
    Policy,
    SkipReport,
    assign_image_ids,
    check_policy,
    dropped_as_malformed,
    make_record,
    read_label_text,
    report_shadowed,
)

__all__ = ["VISDRONE_CLASSES", "load_visdrone", "read_image_sizes"]

#: VisDrone-DET categories 1..10, in order (label = category - 1).
VISDRONE_CLASSES: tuple[str, ...] = (
    "pedestrian",
    "people",
    "bicycle",
    "car",
    "van",
    "truck",
    "tricycle",
    "awning-tricycle",
    "bus",
    "motor",
)
_OTHERS = 11


def read_image_sizes(path: str | Path, report: SkipReport | None = None) -> dict[str, tuple[int, int]]:
    """``{file stem: (width, height)}`` from a COCO-style JSON's ``images`` list.

    An entry without a file name or without a positive whole width and height is skipped (counted as ``malformed`` in
    ``report`` when given, naming the JSON): its images then get sizes from their boxes, as unlisted ones do."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: expected a COCO-style JSON with an 'images' list of file_name/width/height")
    out: dict[str, tuple[int, int]] = {}
    for im in data["images"]:
        size = _entry_size(im)
        if size is None:
            if report is not None:
                report.add("malformed", 1, f"{Path(path).name}: image entry {str(im)[:60]}")
            continue
        out[Path(str(im["file_name"])).stem] = size
    return out


def _entry_size(entry: object) -> tuple[int, int] | None:
    """(width, height) of one ``images`` entry, or None when it has no file name or no positive whole sizes."""
    if not isinstance(entry, dict) or not entry.get("file_name"):
        return None
    sizes = []
    for key in ("width", "height"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        if value != int(value) or value < 1:
            return None
        sizes.append(int(value))
    return sizes[0], sizes[1]


def _parse(line: str) -> list[int] | None:
    parts = line.strip().split(",")
    if parts and parts[-1].strip() == "":  # a trailing comma, as some exports write: not a field
        parts.pop()
    if any(p.strip() == "" for p in parts):  # an empty field inside the line would shift every field after it
        return None
    if not 6 <= len(parts) <= 8:  # the format's 8 fields (6 in some exports); more is another file's line
        return None
    try:
        values = [float(p) for p in parts]
    except ValueError:  # text: a malformed line
        return None
    if not all(math.isfinite(v) and v == int(v) for v in values):  # nan, inf, 4.5: every field is a whole number
        return None
    return [int(v) for v in values]


def load_visdrone(
    annotations: str | Path,
    images: str | Path | None = None,
    *,
    image_sizes: str | Path | None = None,
    others: Policy = "ignore",
    name: str | None = None,
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Load a folder of VisDrone-DET ``.txt`` annotation files.

    Args:
        annotations: folder of ``<image stem>.txt`` files.
        images: folder of the images, or ``None`` for boxes-only records.
        image_sizes: COCO-style JSON recording image sizes (used only when ``images`` is ``None``).
        others: policy for category 11 "others".
        name: dataset name for the report (default: the annotation folder name).

    Returns:
        ``(records, class_names, report)`` in sorted file order; ``class_names`` is :data:`VISDRONE_CLASSES`
        (+ ``"others"`` when ``others`` is ``"target"`` or ``"crowd"``).
    """
    check_policy("others", others)
    ann_dir = Path(annotations)
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"VisDrone annotation folder {ann_dir} does not exist")
    report = SkipReport(dataset=name or ann_dir.name)
    class_names = list(VISDRONE_CLASSES) + (["others"] if others in ("target", "crowd") else [])
    if images is not None and not Path(images).is_dir():
        raise FileNotFoundError(f"VisDrone image folder {images} does not exist")
    shadowed: list[tuple[Path, Path]] = []
    image_index = index_images(images, recursive=False, shadowed=shadowed) if images is not None else {}
    report_shadowed(report, shadowed)
    sizes = read_image_sizes(image_sizes, report) if image_sizes is not None and images is None else {}

    files = {f.stem: f for f in sorted(ann_dir.glob("*.txt"))}
    keys = sorted(set(files) | set(image_index))  # images without a txt are kept with no boxes
    records: list[ImageRecord] = []
    for image_id, key in zip(assign_image_ids(keys), keys):
        txt = files.get(key)
        source = txt.name if txt is not None else key
        boxes, labels, roles = [], [], []
        text = read_label_text(txt, report)
        if text is None:  # a pipe, a device, a giant: reported, and the image left out
            continue
        lines = text.splitlines()
        malformed = report.malformed
        for line in lines:
            if not line.strip():
                continue
            v = _parse(line)
            if v is None:
                report.add("malformed", 1, source)
                continue
            x, y, w, h, score, cat = v[:6]
            box = [x, y, x + w, y + h]
            if cat == 0:
                report.add("ignored_regions", 1, source)
                role, label = "ignore", -1
            elif cat == _OTHERS:
                report.add("others", 1, source)
                role, label = others, len(VISDRONE_CLASSES)
            elif 1 <= cat <= len(VISDRONE_CLASSES):
                label = cat - 1
                role = "target"
                if score == 0:
                    report.add("score_zero", 1, source)
                    role = "ignore"
            else:
                report.add("unknown_class", 1, source)
                continue
            boxes.append(box), labels.append(label), roles.append(role)
        if dropped_as_malformed(report, malformed, source):
            continue

        path: Path | None = None
        if images is not None:
            path = image_index.get(key)
            if path is None:
                report.add("label_without_image", 1, source)
                continue
            try:
                width, height = image_size(path)
            except CorruptImageError as e:
                report.add("unreadable_image", 1, unreadable_example(path, e))
                continue
        elif key in sizes:
            width, height = sizes[key]
        else:
            report.add("estimated_size", 1, source)
            width = max([math.ceil(b[2]) for b in boxes] + [1])
            height = max([math.ceil(b[3]) for b in boxes] + [1])
        if not any(line.strip() for line in lines):
            report.add("image_without_labels", 1, source if path is None else path.name)
        records.append(make_record(image_id, path, width, height, boxes, labels, roles, report, source))
    return records, class_names, report.tally(records)
