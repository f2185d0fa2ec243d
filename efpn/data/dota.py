"""DOTA txt annotations (oriented polygons) -> horizontal :class:`~efpn.data.records.ImageRecord` boxes.

One file per image. Optional header lines ``imagesource:...`` and ``gsd:...`` (any line whose first token
contains ``:``) are skipped; each object line is ``x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]``.

Contract of :func:`load_dota`:

* the polygon becomes its horizontal bounding box ``(min x, min y, max x, max y)``, clipped to the image;
* ``difficult=1`` follows the ``difficult`` policy (default ``"crowd"``: kept, flagged, not trained on);
* classes outside ``names`` (default :data:`DOTA_V1_CLASSES`) are dropped (``unknown_class``); a line that cannot be
  read (``malformed``) leaves its image out whole (``malformed_image``);
* with an ``images`` folder, its size comes from the header and a label file without its image is skipped
  (``label_without_image``); images without a label file are kept with no boxes; without an ``images``
  folder, records are boxes-only (``path=None``, size = box extent, ``estimated_size``).
"""

from __future__ import annotations

import math
from pathlib import Path

from efpn.config.names import ClassNames, read_names
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

__all__ = ["DOTA_V1_CLASSES", "load_dota", "polygon_to_xyxy"]

#: The 15 DOTA-v1.0 categories (the default class list; v1.5/v2 users pass ``names``).
DOTA_V1_CLASSES: tuple[str, ...] = (
    "plane",
    "ship",
    "storage-tank",
    "baseball-diamond",
    "tennis-court",
    "basketball-court",
    "ground-track-field",
    "harbor",
    "bridge",
    "large-vehicle",
    "small-vehicle",
    "helicopter",
    "roundabout",
    "soccer-ball-field",
    "swimming-pool",
)


def polygon_to_xyxy(coords: list[float]) -> list[float]:
    """Horizontal box ``[min x, min y, max x, max y]`` of a flat ``[x1, y1, x2, y2, ...]`` polygon."""
    xs, ys = coords[0::2], coords[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def _parse(tokens: list[str]) -> tuple[list[float], str, bool] | None:
    if len(tokens) not in (9, 10):
        return None
    try:
        coords = [float(t) for t in tokens[:8]]
    except ValueError:
        return None
    if not all(math.isfinite(c) for c in coords):
        return None
    if len(tokens) == 10 and tokens[9] not in ("0", "1", "0.0", "1.0"):  # the flag is 0 or 1; nan is not "difficult"
        return None
    difficult = len(tokens) == 10 and tokens[9] in ("1", "1.0")
    return coords, tokens[8], difficult


def load_dota(
    labels: str | Path,
    images: str | Path | None = None,
    *,
    names: ClassNames | None = None,
    difficult: Policy = "crowd",
    name: str | None = None,
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Load a folder of DOTA label files (``labelTxt``).

    Args:
        labels: folder of ``<image stem>.txt`` files.
        images: folder of the images, or ``None`` for boxes-only records.
        names: class names (list or file); default :data:`DOTA_V1_CLASSES`.
        difficult: policy for difficult objects.
        name: dataset name for the report (default: the parent of the label folder).

    Returns:
        ``(records, class_names, report)`` in sorted stem order.
    """
    check_policy("difficult", difficult)
    lbl_dir = Path(labels)
    if not lbl_dir.is_dir():
        raise FileNotFoundError(f"DOTA label folder {lbl_dir} does not exist")
    if images is not None and not Path(images).is_dir():
        raise FileNotFoundError(f"DOTA image folder {images} does not exist")
    class_names = read_names(names) if names is not None else list(DOTA_V1_CLASSES)
    label_of = {n: i for i, n in enumerate(class_names)}
    report = SkipReport(dataset=name or lbl_dir.resolve().parent.name)
    shadowed: list[tuple[Path, Path]] = []
    image_index = index_images(images, recursive=False, shadowed=shadowed) if images is not None else {}
    report_shadowed(report, shadowed)

    files = {f.stem: f for f in sorted(lbl_dir.glob("*.txt"))}
    keys = sorted(set(files) | set(image_index))
    records: list[ImageRecord] = []
    for image_id, key in zip(assign_image_ids(keys), keys):
        txt = files.get(key)
        source = txt.name if txt is not None else key
        path = image_index.get(key)
        if images is not None and path is None:
            report.add("label_without_image", 1, source)
            continue
        boxes, labels_, roles = [], [], []
        n_objects = 0
        text = read_label_text(txt, report)
        if text is None:  # a pipe, a device, a giant: reported, and the image left out
            continue
        lines = text.splitlines()
        malformed = report.malformed
        for line in lines:
            tokens = line.split()
            if not tokens or ":" in tokens[0]:  # blank, or header (imagesource:, gsd:)
                continue
            n_objects += 1
            parsed = _parse(tokens)
            if parsed is None:
                report.add("malformed", 1, source)
                continue
            coords, cls, is_difficult = parsed
            if cls not in label_of:
                report.add("unknown_class", 1, f"{source} ({cls})")
                continue
            role = "target"
            if is_difficult:
                report.add("difficult", 1, source)
                role = difficult
            boxes.append(polygon_to_xyxy(coords)), labels_.append(label_of[cls]), roles.append(role)
        if dropped_as_malformed(report, malformed, source):
            continue
        if path is not None:
            try:
                width, height = image_size(path)
            except CorruptImageError as e:
                report.add("unreadable_image", 1, unreadable_example(path, e))
                continue
        else:
            report.add("estimated_size", 1, source)
            width = max([math.ceil(b[2]) for b in boxes] + [1])
            height = max([math.ceil(b[3]) for b in boxes] + [1])
        if n_objects == 0:
            report.add("image_without_labels", 1, source)
        records.append(make_record(image_id, path, width, height, boxes, labels_, roles, report, source))
    return records, class_names, report.tally(records)
