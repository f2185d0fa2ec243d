"""Dataset records: one :class:`ImageRecord` per image, and the :class:`SkipReport` every loader returns.

Every loader in :mod:`efpn.data` turns an annotation format into the same in-memory form, so the dataset,
the transforms, the assignment statistics and the evaluator never see a format again:

* boxes are ``xyxy`` in absolute pixels of the image as stored (SPEC §0), clipped to ``[0, W] x [0, H]`` and
  with positive width and height;
* ``labels`` are contiguous class indices in ``[0, K)`` into the loader's ``class_names``;
* ``iscrowd`` flags boxes that are real objects but must neither be trained on nor penalised (COCO crowd,
  VOC/DOTA "difficult" by default); the dataset hands them to the model as ignore regions and an evaluator can
  pass them to pycocotools as ``iscrowd=1``;
* ``ignore`` holds label-less regions (VisDrone category 0 and score-0 boxes, COCO ``ignore=1``).

Nothing is dropped silently: every box that is clipped, dropped or re-routed is counted by reason in a
:class:`SkipReport` whose :meth:`SkipReport.summary` is printed once per dataset.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from efpn.data.images import CorruptImageError, image_size

__all__ = [
    "POLICIES",
    "REASONS",
    "ImageRecord",
    "Policy",
    "SkipReport",
    "assign_image_ids",
    "check_policy",
    "decode_text",
    "dropped_as_malformed",
    "make_record",
    "read_label_text",
    "read_text",
    "report_shadowed",
    "report_unreadable_folders",
]

#: What a loader does with a special kind of annotation (crowd, difficult, VisDrone "others"):
#: ``target`` = an ordinary training target; ``crowd`` = kept in ``boxes`` with ``iscrowd=True`` (not trained
#: on, not penalised, evaluable as a COCO crowd box); ``ignore`` = moved to the label-less ``ignore`` regions;
#: ``drop`` = removed.
Policy = Literal["target", "crowd", "ignore", "drop"]
POLICIES: tuple[str, ...] = ("target", "crowd", "ignore", "drop")

#: Boxes this far (px) past an image edge are counted as clipped; closer ones are clipped silently
#: (normalised YOLO coordinates such as 1.0000001 are rounding, not annotation errors).
_CLIP_TOL: float = 1e-3


def decode_text(data: bytes) -> str:
    """Annotation text as labelling tools write it: UTF-8, with or without a byte-order mark, or UTF-16/32 with one
    (Windows tools); bytes that do not decode become U+FFFD, so the line holding them is reported, not the file."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    return data.decode("utf-8-sig", errors="replace")


#: The largest text annotation file read (a label file, an image list): far above any real one, far below memory.
MAX_TEXT_BYTES = 64 << 20


def read_text(path: str | Path) -> str:
    """:func:`decode_text` of a file's bytes.

    Raises FileNotFoundError for a missing file and ValueError, before reading, for one that is not a regular file (a
    pipe would block forever, ``/dev/zero`` would fill the memory) or holds more than :data:`MAX_TEXT_BYTES`."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise ValueError(f"{p} is not a regular file (a folder, a pipe or a device); annotations are read from files")
    with p.open("rb") as f:
        data = f.read(MAX_TEXT_BYTES + 1)  # bounded even where the size on disk says nothing (/proc files: 0)
    if len(data) > MAX_TEXT_BYTES:
        raise ValueError(f"{p} holds more than {MAX_TEXT_BYTES >> 20} MiB of text, more than an annotation file of "
                         "one image or an image list holds; check that it is the file meant")
    return decode_text(data)


def read_label_text(path: Path | None, report: SkipReport) -> str | None:
    """The text of one image's label file (``""`` without one), or None when it cannot be read as one: then it is
    counted as ``malformed`` with the reason and the caller drops the image (kept without its labels, its objects
    would be trained on as background)."""
    if path is None:
        return ""
    try:
        return read_text(path)
    except (OSError, ValueError) as e:
        report.add("malformed", 1, f"{path.name}: {e}")
        return None


def dropped_as_malformed(report: SkipReport, malformed_before: int, example: str | Path | None) -> bool:
    """Whether entries of one image's annotation were counted ``malformed`` since ``malformed_before`` (the report's
    count when that annotation began); then the image is counted under ``malformed_image`` and the caller leaves it
    out, as it does for an unreadable label file: kept, the objects of the unread entries would be trained on as
    background and their detections scored as false alarms (as Ultralytics leaves out an image with a corrupt
    label line)."""
    if report.malformed <= malformed_before:
        return False
    report.add("malformed_image", 1, example)
    return True


def report_shadowed(report: SkipReport, shadowed: Sequence[tuple[Path, Path]]) -> None:
    """Count images :func:`~efpn.data.images.index_images` left out for sharing a stem with another
    (``same_stem``), naming both files."""
    for left_out, kept in shadowed:
        report.add("same_stem", 1, f"{left_out.name} (beside {kept.name})")


def report_unreadable_folders(report: SkipReport, unreadable: Sequence[tuple[Path, str]]) -> None:
    """Count the subfolders :func:`~efpn.data.images.walk_files` could not list (``unreadable_folder``), naming
    each with the reason."""
    for folder, why in unreadable:
        report.add("unreadable_folder", 1, f"{folder}: {why}")


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


@dataclass
class ImageRecord:
    """One annotated image.

    Attributes:
        image_id: unique within a loader's output (the COCO id for COCO; the numeric file stem when every stem
            is numeric, else the index in the loader's order: sorted files, or the VOC list order).
        path: the image file, or ``None`` in boxes-only mode (annotations without images, e.g. VisDrone
            statistics); such records cannot be put in a :class:`~efpn.data.dataset.DetectionDataset`.
        width, height: image size in pixels (from the annotation, the image header, or in boxes-only mode the
            box extent).
        boxes: (M, 4) float32 ``xyxy`` px, clipped to the image, positive width and height.
        labels: (M,) int64 in ``[0, K)``.
        iscrowd: (M,) bool; ``True`` = not a training target and not penalised (see module docstring).
        ignore: (Q, 4) float32 ``xyxy`` px label-less ignore regions.
        source_id: the image's id as its annotation file spells it, when that is not ``image_id`` (a COCO string id
            such as ``"frame_0001"`` or ``"0042"``); COCO results name the image by it. None: ``image_id``.

    Arrays are coerced to these dtypes on construction; inconsistent shapes raise ``ValueError``.
    """

    image_id: int
    path: Path | None
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=_empty_boxes)
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=bool))  # empty = all False
    ignore: np.ndarray = field(default_factory=_empty_boxes)
    source_id: int | str | None = None

    def __post_init__(self) -> None:
        self.image_id = int(self.image_id)
        self.path = None if self.path is None else Path(self.path)
        self.width, self.height = int(self.width), int(self.height)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        m = len(self.boxes)
        self.iscrowd = np.asarray(self.iscrowd, dtype=bool).reshape(-1)
        if len(self.iscrowd) == 0:
            self.iscrowd = np.zeros((m,), dtype=bool)
        self.ignore = np.asarray(self.ignore, dtype=np.float32).reshape(-1, 4)
        if len(self.labels) != m or len(self.iscrowd) != m:
            raise ValueError(
                f"image {self.image_id}: boxes {self.boxes.shape}, labels {self.labels.shape} and iscrowd "
                f"{self.iscrowd.shape} must have the same length M"
            )
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image {self.image_id}: size must be positive, got {self.width}x{self.height}")

    @property
    def num_targets(self) -> int:
        """Number of training targets (boxes that are not crowd)."""
        return int((~self.iscrowd).sum())

    def target_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes (T, 4), labels (T,))`` of the non-crowd boxes: what a detector is trained on."""
        keep = ~self.iscrowd
        return self.boxes[keep], self.labels[keep]

    def ignore_regions(self) -> np.ndarray:
        """(Q + C, 4): the ignore regions followed by the crowd boxes; neither positive nor negative."""
        return np.concatenate([self.ignore, self.boxes[self.iscrowd]], axis=0)


#: Reasons a :class:`SkipReport` counts, with what happened to the item (shown in :meth:`SkipReport.summary`).
REASONS: dict[str, str] = {
    "zero_size_boxes": "boxes with zero or negative width/height in the file: dropped",
    "outside_image": "boxes entirely outside the image: dropped",
    "clipped_boxes": "boxes reaching past the image edge: clipped to it and kept",
    "ignored_regions": "ignored-region annotations (VisDrone category 0, COCO ignore=1): ignore regions",
    "score_zero": "VisDrone boxes with score 0: kept as ignore regions",
    "others": "VisDrone category 11 'others': handled by the `others` policy",
    "crowd": "crowd annotations (COCO iscrowd=1): handled by the `crowd` policy",
    "difficult": "difficult objects (VOC/DOTA): handled by the `difficult` policy",
    "unknown_class": "objects whose class is not among the class names: dropped",
    "duplicate_boxes": "objects annotated twice (same class, same box): the copies dropped (each would be a second "
    "object no detection can match)",
    "malformed": "annotation entries or files that could not be parsed: dropped",
    "malformed_image": "images with such entries: dropped whole (kept, their unread objects would be trained on as "
    "background and found ones scored as false alarms); fix or delete the entries to use them",
    "label_without_image": "labelled images whose image file is missing (a label file, or one image id's "
    "annotations): dropped",
    "image_without_labels": "images without a label file or any annotation: kept with no boxes",
    "same_stem": "images sharing a name with another image of the folder (a.jpg beside a.png): left out, the first "
    "in sorted order read (one label file names both); rename one to use it",
    "unreadable_image": "images whose header or pixels could not be read: dropped (dataset: skipped)",
    "unreadable_folder": "subfolders that could not be listed (permission denied, an I/O error): the images in them "
    "not read, and the images whose labels or masks may be there left out (kept, their objects would train as "
    "background); give this user read access to use them",
    "faint_mask_regions": "mask regions at 1/8 to 1/2 of the mask's brightest value, apart from its targets: not "
    "read as targets; if they are (instance ids 1, 2, ... or a fainter paint), set options: {instances: true} or save "
    "the masks as 0/255",
    "estimated_size": "images of unknown size (boxes-only mode): size estimated from the box extent",
    "size_mismatch": "images whose file is not the size the annotation states: kept at the file's size, boxes as "
    "annotated (check the export: an EXIF rotation, or files resized after labelling)",
}

_MAX_EXAMPLES = 3


@dataclass
class SkipReport:
    """Counters, by reason, of everything a loader (or the dataset) dropped, clipped or re-routed.

    One integer field per reason in :data:`REASONS`; ``images`` / ``boxes`` / ``ignore`` count what was
    loaded (records, non-crowd target boxes, ignore regions incl. crowd). ``examples`` keeps the first few
    file names per reason so a user can look at them. Reports of several splits or workers add up with
    :meth:`merge`.
    """

    dataset: str = ""
    images: int = 0
    boxes: int = 0
    ignore: int = 0
    zero_size_boxes: int = 0
    outside_image: int = 0
    clipped_boxes: int = 0
    ignored_regions: int = 0
    score_zero: int = 0
    others: int = 0
    crowd: int = 0
    difficult: int = 0
    unknown_class: int = 0
    duplicate_boxes: int = 0
    malformed: int = 0
    malformed_image: int = 0
    label_without_image: int = 0
    image_without_labels: int = 0
    same_stem: int = 0
    unreadable_image: int = 0
    unreadable_folder: int = 0
    faint_mask_regions: int = 0
    estimated_size: int = 0
    size_mismatch: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, n: int = 1, example: str | Path | None = None) -> None:
        """Count ``n`` items under ``reason`` (a key of :data:`REASONS`), remembering ``example`` (a file)."""
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; valid reasons: {', '.join(REASONS)}")
        if n <= 0:
            return
        setattr(self, reason, getattr(self, reason) + n)
        if example is not None:
            seen = self.examples.setdefault(reason, [])
            name = str(example)
            if len(seen) < _MAX_EXAMPLES and name not in seen:
                seen.append(name)

    def counts(self) -> dict[str, int]:
        """Non-zero reason counters, in :data:`REASONS` order."""
        return {r: getattr(self, r) for r in REASONS if getattr(self, r)}

    def tally(self, records: Sequence[ImageRecord]) -> SkipReport:
        """Set ``images`` / ``boxes`` / ``ignore`` from ``records``; returns ``self``."""
        self.images = len(records)
        self.boxes = sum(r.num_targets for r in records)
        self.ignore = sum(len(r.ignore) + int(r.iscrowd.sum()) for r in records)
        return self

    def merge(self, other: SkipReport) -> SkipReport:
        """A new report with every counter summed (``dataset`` names joined with ``+`` when they differ)."""
        out = SkipReport(
            dataset=self.dataset
            if self.dataset == other.dataset
            else "+".join(n for n in (self.dataset, other.dataset) if n)
        )
        for f in dataclasses.fields(self):
            if f.type in ("int", int):
                setattr(out, f.name, getattr(self, f.name) + getattr(other, f.name))
        for src in (self.examples, other.examples):
            for reason, names in src.items():
                seen = out.examples.setdefault(reason, [])
                seen.extend(n for n in names if n not in seen)
                del seen[_MAX_EXAMPLES:]
        return out

    def to_json_dict(self) -> dict[str, object]:
        """What the loader kept, dropped and changed, as JSON data for results files and run records:
        ``{"dataset", "images", "boxes", "ignore", "counts": {reason: n}, "examples": {reason: [file, ...]}}``."""
        return {"dataset": self.dataset, "images": self.images, "boxes": self.boxes, "ignore": self.ignore,
                "counts": self.counts(), "examples": {k: list(v) for k, v in self.examples.items()}}

    def summary(self) -> str:
        """Multi-line human summary: what was loaded, then one line per non-zero reason with examples."""
        head = (
            f"{self.dataset or 'dataset'}: {self.images} images, {self.boxes} target boxes, "
            f"{self.ignore} ignore regions and crowd boxes"
        )
        lines = [head]
        for reason, n in self.counts().items():
            ex = self.examples.get(reason)
            tail = f" (e.g. {', '.join(ex)})" if ex else ""
            lines.append(f"  {n:>7} {REASONS[reason]}{tail}")
        if len(lines) == 1:
            lines.append("  nothing skipped or changed")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def checked_size(path: Path, width: int, height: int, report: SkipReport, label: str) -> tuple[int, int] | None:
    """The ``(width, height)`` of an image's record: the annotation's ``width`` x ``height`` when the file's header
    agrees (or when stated and the header is unreadable: the dataset reports the file when it decodes it), else the
    file's own, counting a disagreement as ``size_mismatch`` under ``label``; None when neither is known (counted
    as ``unreadable_image``). Reads the header only (EXIF orientation applied, as decoding does)."""
    try:
        file_w, file_h = image_size(path)
    except (CorruptImageError, OSError) as e:
        if width > 0 and height > 0:
            return width, height
        report.add("unreadable_image", 1, label + (" (permission denied)" if "permission denied" in str(e) else ""))
        return None
    if width > 0 and height > 0 and (file_w, file_h) != (width, height):
        report.add("size_mismatch", 1, f"{label} (annotated {width}x{height}, file {file_w}x{file_h})")
    return file_w, file_h


def assign_image_ids(stems: Sequence[str]) -> list[int]:
    """Image ids for files in the given (sorted) order: ``int(stem)`` when every stem is a distinct number
    (COCO-style names such as ``000000000009`` keep their COCO id), else the index ``0..N-1``."""
    if stems and all(s.isdigit() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(len(stems)))


def make_record(
    image_id: int,
    path: Path | None,
    width: int,
    height: int,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: np.ndarray | Sequence[int],
    roles: Sequence[str],
    report: SkipReport,
    source: str | None = None,
) -> ImageRecord:
    """Clean raw boxes and build an :class:`ImageRecord`; the one place boxes are clipped and counted.

    Args:
        boxes: (n, 4) raw ``xyxy`` px as annotated (may reach past the edges or be degenerate).
        labels: (n,) class index per box (ignored for ``ignore``/``drop`` roles; use -1 there).
        roles: (n,) one of :data:`POLICIES` per box, already decided by the loader's policies.
        report: counts ``zero_size_boxes`` (degenerate in the file), ``outside_image`` (degenerate only after
            clipping) and ``clipped_boxes`` (partly outside, clipped and kept), each box at most once.
        source: the annotation file named in the report's examples (default: the image file name).
    """
    raw = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    roles_arr = np.asarray(list(roles), dtype=object).reshape(-1)
    if not len(raw) == len(labels) == len(roles_arr):
        raise ValueError(f"boxes ({len(raw)}), labels ({len(labels)}) and roles ({len(roles_arr)}) differ in length")
    example = source or (path.name if path is not None else f"image {image_id}")
    keep_role = roles_arr != "drop"
    raw, labels, roles_arr = raw[keep_role], labels[keep_role], roles_arr[keep_role]

    degenerate = (raw[:, 2] <= raw[:, 0]) | (raw[:, 3] <= raw[:, 1])
    limits = np.array([width, height, width, height], dtype=np.float64)
    clipped = np.clip(raw, 0.0, limits)
    moved = (np.abs(clipped - raw) > _CLIP_TOL).any(axis=1)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    report.add("zero_size_boxes", int(degenerate.sum()), example)
    report.add("outside_image", int((empty & ~degenerate).sum()), example)
    report.add("clipped_boxes", int((moved & ~empty).sum()), example)

    ok = ~empty
    clipped, labels, roles_arr = clipped[ok], labels[ok], roles_arr[ok]
    first = _first_copies(clipped, labels, roles_arr)  # an object written twice (a copied line) is one object
    report.add("duplicate_boxes", int(len(first) - first.sum()), example)
    clipped, labels, roles_arr = clipped[first], labels[first], roles_arr[first]
    is_box = (roles_arr == "target") | (roles_arr == "crowd")
    return ImageRecord(
        image_id=image_id,
        path=path,
        width=width,
        height=height,
        boxes=clipped[is_box].astype(np.float32),
        labels=labels[is_box],
        iscrowd=roles_arr[is_box] == "crowd",
        ignore=clipped[roles_arr == "ignore"].astype(np.float32),
    )


def _first_copies(boxes: np.ndarray, labels: np.ndarray, roles: np.ndarray) -> np.ndarray:
    """(n,) bool: False for an object (a target or crowd box) that repeats an earlier one's role, label and
    coordinates (to within :data:`_CLIP_TOL` px), as Ultralytics removes repeated label rows. Ignore regions are
    kept as they are (overlapping regions ignore the same pixels; COCO writes one per category)."""
    keep = np.ones(len(boxes), dtype=bool)
    seen: set[tuple[object, ...]] = set()
    for i, (box, label, role) in enumerate(zip(np.round(boxes / _CLIP_TOL).astype(np.int64), labels, roles)):
        if role == "ignore":
            continue
        key = (role, int(label), *box.tolist())
        keep[i] = key not in seen
        seen.add(key)
    return keep


def check_policy(name: str, value: str) -> str:
    """Validate a policy option (``crowd=``, ``difficult=``, ``others=``) against :data:`POLICIES`."""
    if value not in POLICIES:
        raise ValueError(f"{name}={value!r} is not a valid policy; choose one of {', '.join(POLICIES)}")
    return value
