"""A torch ``Dataset`` over :class:`~efpn.data.records.ImageRecord` s, and its batch collation.

``DetectionDataset[i]`` -> ``(image, target)``:

* ``image``: uint8 tensor (3, H, W) RGB as decoded (float32 (3, S, S) in [0, 1] after the transforms of
  :func:`efpn.data.transforms.build_transforms`);
* ``target``: ``boxes`` (T, 4) float32 xyxy px and ``labels`` (T,) int64 of the *training* targets (crowd
  boxes excluded), ``ignore`` (Q, 4) float32 = ignore regions + crowd boxes (neither positive nor negative),
  ``image_id`` int, ``orig_size`` int64 tensor ``[H, W]`` of the decoded image.

Unreadable images raise :class:`~efpn.data.images.CorruptImageError` naming the file, or with
``skip_corrupt=True`` are replaced by the next readable image, warned about once and counted in
``dataset.report.unreadable_image`` (per process: DataLoader workers keep their own counts).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from efpn.data.images import CorruptImageError, read_image
from efpn.data.records import ImageRecord, SkipReport

__all__ = ["DetectionDataset", "collate", "read_image"]

ImageLoader = Callable[[Path], np.ndarray]
Target = dict[str, Any]


class DetectionDataset(Dataset):
    """Detection samples from records.

    Args:
        records: records with an image ``path`` (boxes-only records raise ``ValueError`` here).
        transforms: ``callable(image, target) -> (image, target)``; if it has ``num_extra > 0`` (mosaic), it
            is called as ``transforms(image, target, extras)`` with that many random extra raw samples.
        image_loader: ``path -> (H, W, 3) uint8 RGB`` array; default :func:`~efpn.data.images.read_image`.
        skip_corrupt: replace unreadable images by the next readable one instead of raising.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transforms: Callable[..., tuple[Tensor, Target]] | None = None,
        image_loader: ImageLoader = read_image,
        skip_corrupt: bool = False,
    ) -> None:
        boxes_only = [r.image_id for r in records if r.path is None]
        if boxes_only:
            raise ValueError(
                f"{len(boxes_only)} records have no image path (boxes-only mode, e.g. image ids "
                f"{boxes_only[:3]}); use them for box statistics, or give the loader an image folder"
            )
        self.records = list(records)
        self.transforms = transforms
        self.image_loader = image_loader
        self.skip_corrupt = skip_corrupt
        self.report = SkipReport(dataset="DetectionDataset")
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[Tensor, Target]:
        """The untransformed sample ``index`` (uint8 image); raises CorruptImageError if unreadable."""
        rec = self.records[index]
        assert rec.path is not None  # checked in __init__
        arr = self.image_loader(rec.path)
        h, w = arr.shape[:2]
        image = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
        boxes, labels = rec.target_boxes()
        ignore = rec.ignore_regions()
        if (w, h) != (rec.width, rec.height):
            warnings.warn(
                f"{rec.path}: decoded size {w}x{h} differs from the annotated {rec.width}x{rec.height}; "
                "boxes are clipped to the decoded image",
                stacklevel=2,
            )
            limits = np.array([w, h, w, h], dtype=np.float32)
            boxes, ignore = np.minimum(boxes, limits), np.minimum(ignore, limits)
        target: Target = {
            "boxes": torch.from_numpy(boxes.copy()),
            "labels": torch.from_numpy(labels.copy()),
            "ignore": torch.from_numpy(ignore.copy()),
            "image_id": rec.image_id,
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
        return image, target

    def _load_readable(self, index: int) -> tuple[Tensor, Target]:
        """:meth:`load`, or with ``skip_corrupt`` the next readable sample after ``index`` (wrapping)."""
        n = len(self.records)
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            try:
                return self.load(i)
            except CorruptImageError as e:
                if not self.skip_corrupt:  # what a dataset's user can do besides fixing the file
                    raise CorruptImageError(f"{e} Or remove it from the annotations, or build the dataset with "
                                            "skip_corrupt=True to skip unreadable images.") from e
                self._bad.add(i)
                path = self.records[i].path
                self.report.add("unreadable_image", 1, path.name if path else None)
                warnings.warn(f"skipping unreadable image: {e}", stacklevel=2)
        first = self.records[min(self._bad)].path if self._bad else None
        raise CorruptImageError(f"none of the {n} images of this dataset could be decoded"
                                + (f" (the first: {first})" if first is not None else "")
                                + "; check that the image files the annotations name exist and open")

    def first_readable(self) -> int:
        """The index of the first sample that decodes (with ``skip_corrupt``, skipping and reporting the others);
        CorruptImageError when none does. Cheap for a healthy dataset (one decode): call it before handing the
        dataset to DataLoader workers, whose failure would arrive wrapped in their traceback."""
        for i in range(len(self.records)):
            try:
                self._load_readable(i)
            except CorruptImageError:
                if self.skip_corrupt:
                    raise  # _load_readable already tried every sample from i on (and wrapped around)
                continue
            return i
        raise CorruptImageError(f"none of the {len(self.records)} images of this dataset could be decoded")

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image, target = self._load_readable(index)
        if self.transforms is None:
            return image, target
        num_extra = int(getattr(self.transforms, "num_extra", 0))
        if num_extra:
            picks = torch.randint(len(self.records), (num_extra,)).tolist()
            extras = [self._load_readable(j) for j in picks]
            return self.transforms(image, target, extras)
        return self.transforms(image, target)


def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[Tensor, list[Target]]:
    """Stack samples -> ``(images (N, 3, H, W), targets)``; smaller images are zero-padded bottom/right to the
    largest H and W of the batch (boxes need no change). Keeps the images' dtype (uint8 or float)."""
    if not batch:
        raise ValueError("collate got an empty batch")
    images = [img for img, _ in batch]
    h = max(int(img.shape[-2]) for img in images)
    w = max(int(img.shape[-1]) for img in images)
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, img in enumerate(images):
        out[i, :, : img.shape[-2], : img.shape[-1]] = img
    return out, [t for _, t in batch]
