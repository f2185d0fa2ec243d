"""Binary (or instance-id) target masks -> :class:`~efpn.data.records.ImageRecord` boxes.

Infrared small-target sets (SIRST and its relatives) annotate each image with a mask, not boxes. Layout::

    images/Misc_1.png            the image
    masks/Misc_1_pixels0.png     its mask: non-zero pixels are target (``mask_suffix`` "_pixels0")
    splits/train.txt             optional id list, one image stem per line

Contract of :func:`load_masks`:

* one box per 8-connected component of the target pixels (``connectivity=4`` for 4-connected), tight around the
  component: a 1-pixel target gives a 1 x 1 px box. Target pixels are those at least half the mask's largest value:
  0/1 and 0/255 masks alike, and the faint values that JPEG saving or resampling leave around a target (1, 2, ...)
  are not targets of their own. With ``instances=True`` every distinct non-zero value is one instance instead
  (instance-id masks), its box around all its pixels;
* colour masks: any non-zero channel is target (with ``instances``, each distinct colour one instance); the
  alpha channel of a grey + alpha or RGBA mask is ignored unless its other channels are empty;
* one class, ``names[0]`` (default ``"target"``);
* an image without a mask file is kept with no boxes (``image_without_labels``); a mask without its image is
  skipped (``label_without_image``); an unreadable image or mask drops the image (``unreadable_image``); a mask
  whose size differs from its image's is ``malformed`` and the image is dropped (the boxes would be wrong);
* regions at 1/8 to 1/2 of a mask's peak value, apart from its targets, are counted (``faint_mask_regions``):
  they are not targets by the rule above, but instance ids or a fainter paint would be (see :func:`faint_regions`);
* ids in the list that have no image are counted as ``label_without_image``;
* ``image_id``: the number ending each stem (``Misc_123`` -> 123) when those are distinct, so ids do not depend on
  which list loaded the image; else as every loader (numeric stems, or the index in list or sorted order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from efpn.data.images import (
    IMAGE_EXTENSIONS,
    CorruptImageError,
    file_bytes,
    image_size,
    index_images,
    quiet_opencv,
    unreadable_example,
    walk_files,
)
from efpn.data.records import (
    ImageRecord,
    SkipReport,
    assign_image_ids,
    make_record,
    read_text,
    report_shadowed,
    report_unreadable_folders,
)

__all__ = ["boxes_from_mask", "load_masks"]


def boxes_from_mask(mask: np.ndarray, connectivity: int = 8, instances: bool = False) -> np.ndarray:
    """xyxy px boxes (M, 4) float32 of the targets in a mask (H, W): one per connected component of the pixels at
    least half the mask's largest value (see the module contract), or with ``instances`` one per distinct non-zero
    value. Box edges enclose whole pixels: a component
    spanning columns 3..5 gives x1 = 3, x2 = 6. Boxes are sorted by (y1, x1)."""
    mask = _one_channel(mask, instances)
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    boxes: list[list[float]] = []
    if instances:
        for value in np.unique(mask):
            if value == 0:
                continue
            ys, xs = np.nonzero(mask == value)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    else:
        peak = float(mask.max()) if mask.size else 0.0
        target = (mask >= peak / 2) & (mask > 0)  # 0/1 and 0/255 alike; edge noise of a lossy save is not a target
        count, _, stats, _ = cv2.connectedComponentsWithStats(target.astype(np.uint8), connectivity=connectivity)
        for i in range(1, count):  # label 0 is the background
            x, y, w, h = stats[i, :4]
            boxes.append([x, y, x + w, y + h])
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return out[np.lexsort((out[:, 0], out[:, 1]))] if len(out) else out


#: Mask file types whose compression rings at 1/8 to 1/2 of the peak value away from targets (JPEG at quality 50
#: or lower): faint regions there are noise, not targets, and are not counted.
_LOSSY = (".jpg", ".jpeg", ".webp")


def faint_regions(mask: np.ndarray, connectivity: int = 8) -> int:
    """Regions of a mask (H, W) that :func:`boxes_from_mask` does not take as targets but that look like ones: values
    from 1/8 to under 1/2 of the mask's peak, more than 2 px from any target (a lossy save's noise is fainter, and
    a resampled target's soft edge touches it). Instance ids 1, 2 in a mask whose ids reach 6, or a target painted
    at 100 beside one at 255, are such regions: the loader counts them so they are not lost without a word."""
    mask = _one_channel(mask, False)
    peak = float(mask.max()) if mask.size else 0.0
    if peak <= 0:
        return 0
    target = (mask >= peak / 2).astype(np.uint8)
    faint = ((mask >= peak / 8) & (target == 0)).astype(np.uint8)
    if not faint.any():
        return 0
    near = cv2.dilate(target, np.ones((5, 5), np.uint8)) > 0  # within 2 px of a target: its soft edge
    count, labels = cv2.connectedComponents(faint, connectivity=connectivity)
    touching = np.unique(labels[near & (faint > 0)])
    return int(count - 1 - np.count_nonzero(touching))


def _one_channel(mask: np.ndarray, instances: bool) -> np.ndarray:
    """A mask (H, W) from one read as (H, W) or (H, W, C): grey, grey + alpha, colour or colour + alpha. Alpha is
    opacity, not target: an opaque mask with alpha would otherwise be one image-sized target, so alpha is used only
    when the other channels are empty (targets drawn as opacity on a transparent layer). Colour channels: any
    non-zero channel is target; with ``instances`` each distinct colour is one id (red and green instances must
    not merge)."""
    if mask.ndim != 3:
        return mask
    if mask.shape[2] in (2, 4):  # the last channel is alpha
        colour = mask[..., :-1]
        if not colour.any():
            return mask[..., 3]
        mask = colour
    if mask.shape[2] == 1:
        return mask[..., 0]
    if instances:
        wide = mask.astype(np.int64)
        ids = np.zeros(mask.shape[:2], np.int64)
        for c in range(mask.shape[2]):  # (H, W, C) -> (H, W): one integer per colour, 0 stays 0
            ids = ids * (int(wide[..., c].max()) + 1) + wide[..., c]
        return ids
    return mask.max(axis=2)


def _image_ids(stems: list[str]) -> list[int]:
    """Ids that do not depend on the list: the number ending each stem (``Misc_123`` -> 123) when those are
    distinct, so the train and val lists of one folder never share an id; else the loaders' usual ids."""
    tails = [stem.rsplit("_", 1)[-1] for stem in stems]
    if stems and all(t.isdigit() for t in tails) and len(set(map(int, tails))) == len(tails):
        return [int(t) for t in tails]
    return assign_image_ids(stems)


def _read_mask(path: Path) -> np.ndarray:
    # decoded from the bytes: OpenCV's imread crashes the process on a file name that is not valid UTF-8
    try:
        buf = np.frombuffer(file_bytes(path), dtype=np.uint8)
        with quiet_opencv():  # its stderr line would precede efpn's own report of the file
            mask = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    except (OSError, cv2.error) as e:  # unreadable, or a header OpenCV refuses (over its pixel limit)
        raise CorruptImageError(f"mask {path} could not be read ({str(e).strip().splitlines()[-1][:200]})") from e
    if mask is None:
        raise CorruptImageError(f"mask {path} could not be read as an image")
    return mask


def _read_list(path: Path) -> list[str]:
    """The stems of a split list, in order, blanks and repeats skipped (a repeat would be trained and scored twice,
    and would change every image's id)."""
    return list(dict.fromkeys(line.strip() for line in read_text(path).splitlines() if line.strip()))


def load_masks(
    images: str | Path,
    masks: str | Path,
    list_file: str | Path | None = None,
    *,
    mask_suffix: str = "_pixels0",
    connectivity: int = 8,
    instances: bool = False,
    names: Sequence[str] | None = None,
    name: str = "",
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Records of every image under ``images`` (or of the stems listed in ``list_file``), with boxes derived from
    ``masks/<stem><mask_suffix>.png`` (see the module docstring). Returns ``(records, class_names, report)``.

    Raises FileNotFoundError for a missing folder or list file and ValueError for a bad option.
    """
    img_dir, mask_dir = Path(images), Path(masks)
    for what, folder in (("images", img_dir), ("masks", mask_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"masks loader: {what} folder {folder} does not exist")
    class_names = list(names) if names else ["target"]
    if len(class_names) != 1:
        raise ValueError(f"masks give one class; got names {class_names[:5]} (give one name or none)")
    report = SkipReport(dataset=name or img_dir.parent.name)
    shadowed: list[tuple[Path, Path]] = []
    unreadable: list[tuple[Path, str]] = []  # subfolders that could not be listed: said, not passed over
    index = index_images(img_dir, shadowed=shadowed, unreadable=unreadable)
    mask_index: dict[str, Path] = {}
    blind: list[tuple[Path, str]] = []  # mask subfolders that could not be listed
    # one mask per stem: a PNG (lossless) before a preview of another type
    for p in walk_files(mask_dir, unreadable=blind if mask_dir != img_dir else None):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file() or not p.stem.endswith(mask_suffix):
            continue
        stem = p.stem[: -len(mask_suffix)] if mask_suffix else p.stem
        kept = mask_index.get(stem)
        if kept is None or (p.suffix.lower() == ".png" and kept.suffix.lower() != ".png"):
            mask_index[stem] = p
            kept, p = p, kept
        if p is not None:
            shadowed.append((p, kept))
    report_shadowed(report, shadowed)
    hidden: set[str] = set()
    if blind:  # masks are found by name anywhere below: an image without one may have it in such a folder
        hidden = {stem for stem in index if stem not in mask_index}
        index = {stem: path for stem, path in index.items() if stem not in hidden}
        blind = [(f, f"{why}; images without a mask found elsewhere, left out (theirs may be there): {len(hidden)}")
                 for f, why in blind]
    report_unreadable_folders(report, unreadable + blind)
    if list_file is not None:
        lf = Path(list_file)
        if not lf.is_file():
            raise FileNotFoundError(f"masks loader: id list {lf} does not exist")
        stems = _read_list(lf)
        missing = [s for s in stems if s not in index and s not in hidden]  # hidden ones are said above
        for s in missing:
            report.add("label_without_image", 1, f"{s} (listed in {lf.name})")
        stems = [s for s in stems if s in index]
    else:
        stems = sorted(index)
        for s in sorted(set(mask_index) - set(index)):
            report.add("label_without_image", 1, mask_index[s].name)
    records: list[ImageRecord] = []
    kept_stems: list[str] = []
    pending: list[tuple[str, Path, int, int, np.ndarray]] = []
    for stem in stems:
        path = index[stem]
        try:
            w, h = image_size(path)
        except CorruptImageError as e:
            report.add("unreadable_image", 1, unreadable_example(path, e))
            continue
        mask_path = mask_index.get(stem)
        if mask_path is None:
            report.add("image_without_labels", 1, path.name)
            boxes = np.zeros((0, 4), np.float32)
        else:
            try:
                mask = _read_mask(mask_path)
            except CorruptImageError as e:
                report.add("unreadable_image", 1, unreadable_example(mask_path, e))
                continue
            if mask.shape[:2] != (h, w):
                report.add("malformed", 1, f"{mask_path.name} ({mask.shape[1]}x{mask.shape[0]} for a {w}x{h} image)")
                continue
            boxes = boxes_from_mask(mask, connectivity, instances)
            if not instances and mask_path.suffix.lower() not in _LOSSY:  # a lossy save's ringing is faint too
                report.add("faint_mask_regions", faint_regions(mask, connectivity), mask_path.name)
        kept_stems.append(stem)
        pending.append((stem, path, w, h, boxes))
    for image_id, (stem, path, w, h, boxes) in zip(_image_ids(kept_stems), pending):
        rec = make_record(image_id, path, w, h, boxes, np.zeros(len(boxes), np.int64), ["target"] * len(boxes),
                          report, source=f"{stem}{mask_suffix}.png")
        records.append(rec)
    return records, class_names, report.tally(records)
