"""YOLO txt labels -> :class:`~efpn.data.records.ImageRecord`.

Layout: an image folder and a label folder that mirror each other (``images/a/b.jpg`` <-> ``labels/a/b.txt``).
Each label line is ``class cx cy w h`` normalised to [0, 1] by the image size, or a segment
``class x1 y1 x2 y2 x3 y3 ...`` (Ultralytics polygon labels; its bounding box is used).

Contract of :func:`load_yolo`:

* every image under ``images`` becomes a record; its size is read from the file header (no decoding);
  an unreadable header drops the image (``unreadable_image``);
* an image with no label file (or an empty one) is kept with no boxes (``image_without_labels``);
* a label file with no image is skipped (``label_without_image``); ``classes.txt`` (LabelImg) is not a
  label file;
* class ids outside ``0..K-1`` are dropped (``unknown_class``); an unparsable line (``malformed``) leaves its image
  out whole (``malformed_image``: kept, its unread object would count as background);
* ``image_id`` is the numeric file stem when every stem is a number (COCO-style names keep their COCO id),
  else the index in sorted path order;
* with an image list (Ultralytics' ``train.txt``: one image path per line), only the listed images are records,
  each with its label file found as Ultralytics finds it (the last ``images`` folder of its path -> ``labels``);
  a listed image that does not exist is dropped (``label_without_image``: listed, no image file), a listed path
  that is not an image file name is ``malformed``;
* labels live in the mirrored ``labels`` folder, or beside the images when no folder of their path is named
  ``images`` (both as Ultralytics reads them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from efpn.config.names import ClassNames, read_names
from efpn.data.images import (
    IMAGE_EXTENSIONS,
    CorruptImageError,
    image_size,
    index_images,
    unreadable_example,
    walk_files,
)
from efpn.data.records import (
    ImageRecord,
    SkipReport,
    assign_image_ids,
    dropped_as_malformed,
    make_record,
    read_label_text,
    read_text,
    report_shadowed,
    report_unreadable_folders,
)

__all__ = ["default_label_dir", "label_path_of", "load_yolo", "parse_yolo", "parse_yolo_labels", "read_image_list"]

_NOT_LABEL_FILES = {"classes.txt"}


def default_label_dir(images: str | Path) -> Path:
    """The Ultralytics convention: replace the last ``images`` path component by ``labels``."""
    parts = list(Path(images).parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    raise ValueError(f"cannot infer the label folder of {images}: no 'images' component; give labels= explicitly")


#: How far outside [0, 1] a normalised coordinate may lie (rounding of labelling tools) before a line is not read as
#: normalised: a "polygon" with a point at 7 is a box line with extra columns, not a segment.
_SLACK = 0.05


def _parse_line(tokens: list[str], width: int, height: int) -> tuple[int, list[float]] | str:
    """``(class, xyxy px)`` of one label line, or why it is malformed (a short reason for the loader's report)."""
    try:
        cls_f = float(tokens[0])
        values = [float(t) for t in tokens[1:]]
    except ValueError:
        return "a value that is not a number"
    if not np.isfinite(cls_f) or cls_f != int(cls_f) or not all(np.isfinite(values)):  # int() of inf/nan raises
        return "a class that is not a whole number, or a coordinate that is not finite"
    if len(values) == 4:
        cx, cy, w, h = values
        if max(values) > 1.5:  # far past the image: not a box reaching over an edge, but another unit
            return (f"a value of {max(values):g}: YOLO coordinates are fractions (0 to 1) of the image's width and "
                    "height; pixel coordinates? divide x and w by the width, y and h by the height")
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    elif len(values) >= 6 and len(values) % 2 == 0:  # polygon segment
        if not all(-_SLACK <= v <= 1 + _SLACK for v in values):
            return (f"{len(tokens)} columns read as a polygon, but its points lie outside [0, 1] (a box line with "
                    "extra columns, such as a confidence?)")
        xs, ys = values[0::2], values[1::2]
        box = [min(xs), min(ys), max(xs), max(ys)]
    elif len(values) == 5:
        return "6 columns: 'class cx cy w h' and one more (a prediction file with a confidence column?)"
    else:
        return f"{len(tokens)} columns: expected 'class cx cy w h' (5) or a polygon 'class x1 y1 x2 y2 x3 y3 ...'"
    return int(cls_f), [box[0] * width, box[1] * height, box[2] * width, box[3] * height]


def read_image_list(path: str | Path, root: str | Path | None = None) -> list[Path]:
    """The image paths of an Ultralytics image list (``train.txt``), absolute, in its order, blanks, ``#`` comments
    and repeats (the same file spelled twice) removed.

    A line starting with ``./`` is relative to the list's folder (as Ultralytics reads it), another relative line
    relative to ``root`` (default: the list's folder), an absolute one as it is. Paths are normalised but links are
    not followed (an image that links elsewhere keeps its own folder, where its label is). Not checked here.
    """
    lst = Path(path).absolute()
    base = Path(root).absolute() if root is not None else lst.parent
    out: dict[str, Path] = {}
    for line in read_text(lst).splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = lst.parent / entry[2:] if entry.startswith("./") else Path(entry)
        p = Path(os.path.normpath(p if p.is_absolute() else base / p))
        try:
            key = str(p.resolve()) if p.exists() else str(p)
        except (OSError, ValueError):  # a name no file can have (too long, a NUL byte): kept, reported as missing
            key = str(p)
        out.setdefault(key, p)
    return list(out.values())


def label_path_of(image: Path) -> Path:
    """Where Ultralytics reads an image's labels: its path with the last ``images`` folder -> ``labels`` and the
    suffix -> ``.txt``; beside the image when no folder of its path is named ``images``."""
    try:
        return default_label_dir(image.parent) / f"{image.stem}.txt"
    except ValueError:
        return image.with_suffix(".txt")


def _listed_images(image_list: Path, root: Path | None, report: SkipReport) -> tuple[dict[str, Path], dict[str, Path]]:
    """``({key: image}, {key: label file})`` of the existing images an image list names (key: the path without
    its suffix; of two images with one key, the first listed), each label where Ultralytics looks for it (see
    :func:`label_path_of`); listed paths that are missing or not images are reported, not returned."""
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for p in read_image_list(image_list, root):
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            report.add("malformed", 1, f"{image_list.name}: {p} is not an image file name")
            continue
        if not p.is_file():
            report.add("label_without_image", 1, f"{p} (listed in {image_list.name})")
            continue
        key = p.with_suffix("").as_posix()
        if key in images:
            continue
        images[key] = p
        label = label_path_of(p)
        if label.is_file():
            labels[key] = label
    return images, labels


def load_yolo(
    images: str | Path | None,
    labels: str | Path | None = None,
    *,
    names: ClassNames,
    name: str | None = None,
    image_list: str | Path | None = None,
    root: str | Path | None = None,
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Load a YOLO-format split.

    Args:
        images: image folder (searched recursively); None when ``image_list`` names the images.
        labels: label folder mirroring ``images``; default: :func:`default_label_dir`, or ``images`` itself (labels
            beside the images) when no folder of its path is named ``images``.
        names: class names (list, or a ``names.yaml`` / ``classes.txt`` path); index ``i`` = class id ``i``.
        name: dataset name for the report (default: the image folder name).
        image_list: an Ultralytics image list (:func:`read_image_list`); when given, only its images are loaded,
            each with the label file Ultralytics would read (``labels`` and ``images`` are then not used).
        root: what relative lines of ``image_list`` are relative to (default: the list's folder).

    Returns:
        ``(records, class_names, report)``, records in sorted image-path order.
    """
    class_names = read_names(names)
    if image_list is not None:
        if not Path(image_list).is_file():
            raise FileNotFoundError(f"YOLO image list {image_list} does not exist")
        report = SkipReport(dataset=name or Path(image_list).stem)
        image_index, label_files = _listed_images(Path(image_list), Path(root) if root is not None else None, report)
    else:
        if images is None:
            raise ValueError("load_yolo: give an image folder (images=) or an image list (image_list=)")
        img_dir = Path(images)
        try:
            lbl_dir = Path(labels) if labels is not None else default_label_dir(img_dir)
        except ValueError:  # no folder named 'images' on the path: labels beside the images, as Ultralytics reads them
            lbl_dir = img_dir
        for what, d in (("image", img_dir), ("label", lbl_dir)):
            if not d.is_dir():
                raise FileNotFoundError(f"YOLO {what} folder {d} does not exist")
        report = SkipReport(dataset=name or img_dir.name)
        shadowed: list[tuple[Path, Path]] = []
        unreadable: list[tuple[Path, str]] = []  # subfolders that could not be listed: said, not passed over
        image_index = index_images(img_dir, shadowed=shadowed, unreadable=unreadable)
        report_shadowed(report, shadowed)
        blind: list[tuple[Path, str]] = []  # label subfolders that could not be listed
        label_files = {
            p.relative_to(lbl_dir).with_suffix("").as_posix(): p
            for p in walk_files(lbl_dir, unreadable=blind if lbl_dir != img_dir else None)
            if p.suffix == ".txt" and p.name not in _NOT_LABEL_FILES
        }
        # an image whose label file lies in such a folder is left out: kept, its objects would train as background
        under = {f: {k for k in image_index if (lbl_dir / f"{k}.txt").is_relative_to(f)} for f, _ in blind}
        image_index = {k: v for k, v in image_index.items() if not any(k in keys for keys in under.values())}
        report_unreadable_folders(report, unreadable + [
            (f, f"{why}; images whose labels are there, left out: {len(under[f])}") for f, why in blind])
        for key in sorted(set(label_files) - set(image_index)):
            report.add("label_without_image", 1, label_files[key].name)

    keys = sorted(image_index)
    ids = assign_image_ids([Path(k).name for k in keys])
    records: list[ImageRecord] = []
    for key, image_id in zip(keys, ids):
        path = image_index[key]
        try:
            width, height = image_size(path)
        except CorruptImageError as e:
            report.add("unreadable_image", 1, unreadable_example(path, e))
            continue
        label_path = label_files.get(key)
        text = read_label_text(label_path, report)
        if text is None:  # a pipe, a device, a giant: reported, and the image left out
            continue
        source = label_path.name if label_path else None
        malformed = report.malformed
        boxes, classes = parse_yolo_labels(text, width, height, len(class_names), report, source)
        if dropped_as_malformed(report, malformed, source):
            continue
        if not any(line.strip() for line in text.splitlines()):
            report.add("image_without_labels", 1, path.name)
        roles = ["target"] * len(boxes)
        records.append(make_record(image_id, path, width, height, boxes, classes, roles, report, source))
    return records, class_names, report.tally(records)


def parse_yolo_labels(
    text: str, width: int, height: int, num_classes: int, report: SkipReport, source: str | None = None
) -> tuple[list[list[float]], list[int]]:
    """The boxes (xyxy px of a ``width`` x ``height`` image) and class ids of one label file's ``text``.

    Unparsable lines are dropped and counted as ``malformed``, class ids outside ``0..num_classes-1`` as
    ``unknown_class`` (``source`` names the file in the report's examples); blank lines are skipped.
    """
    boxes: list[list[float]] = []
    classes: list[int] = []
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        parsed = _parse_line(tokens, width, height)
        if isinstance(parsed, str):
            report.add("malformed", 1, f"{source}: {parsed}" if source else parsed)
            continue
        cls, box = parsed
        if not 0 <= cls < num_classes:
            report.add("unknown_class", 1, source)
            continue
        boxes.append(box), classes.append(cls)
    return boxes, classes


def parse_yolo(
    text: str,
    image_hw: tuple[int, int],
    *,
    names: ClassNames,
    name: str | None = None,
    source: str | None = None,
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """One image's YOLO label ``text`` held in memory (e.g. an upload) -> ``([record], class_names, report)``.

    ``image_hw`` (H, W) is the image's size in pixels (the normalised coordinates are relative to it); the record
    is boxes-only (``path=None``, ``image_id`` 0). Lines follow the :func:`load_yolo` contract; ``source`` names
    the label file in the report, ``name`` the report's dataset (default: ``source``).
    """
    class_names = read_names(names)
    report = SkipReport(dataset=name or source or "")
    height, width = int(image_hw[0]), int(image_hw[1])
    boxes, classes = parse_yolo_labels(text, width, height, len(class_names), report, source)
    if not any(line.strip() for line in text.splitlines()):
        report.add("image_without_labels", 1, source)
    record = make_record(0, None, width, height, boxes, classes, ["target"] * len(boxes), report, source)
    return [record], class_names, report.tally([record])
