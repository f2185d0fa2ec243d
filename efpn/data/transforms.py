"""Detection transforms on ``torchvision.transforms.v2`` / ``tv_tensors``: boxes move with the image.

A pipeline is a callable ``(image, target) -> (image, target)``:

* in: ``image`` uint8 tensor (3, H, W) RGB; ``target`` a dict with ``boxes`` (M, 4) float xyxy px, ``labels``
  (M,) int64 and optionally ``ignore`` (Q, 4) regions; other keys (``image_id``, ``orig_size``) pass through;
* out: ``image`` float32 (3, S, S) in [0, 1]; ``boxes``/``ignore`` in output pixels, clipped to the image,
  degenerate boxes removed together with their labels; eval pipelines add ``letterbox`` =
  ``tensor([scale_x, scale_y, pad_left, pad_top])`` so predictions map back with :func:`unletterbox_boxes`.

Train (:func:`build_transforms` with ``train=True``): :class:`RandomTileCrop` (a model-sized window at native
resolution that contains a box, so tiny objects keep their pixels; optionally zoomed in or out) -> random
horizontal and vertical flips -> colour jitter -> :func:`letterbox` to the model size. With ``mosaic=True``
four samples are tiled instead (:class:`Mosaic`, also at native resolution); the dataset supplies the three
extra samples.
Eval: :func:`letterbox` only.

Boxes a crop cuts below ``min_visibility`` of their area become ignore regions rather than targets (a sliver
of a 6 px object is not a fair positive, nor a fair negative).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "PAD_VALUE",
    "DetectionTransform",
    "Letterbox",
    "LetterboxInfo",
    "Mosaic",
    "make_color_jitter",
    "random_flip",
    "RandomTileCrop",
    "build_transforms",
    "letterbox",
    "sanitize_target",
    "unletterbox_boxes",
]

#: Fill value (uint8 grey) of letterbox and mosaic padding, as in YOLO.
PAD_VALUE: int = 114
_BOX_KEYS: tuple[str, ...] = ("boxes", "ignore")
_MIN_SIDE: float = 1e-3  # px: boxes thinner than this are degenerate

Sample = tuple[Tensor, dict[str, Any]]
Step = Callable[[Tensor, dict[str, Any]], Sample]


def _hw(image: Tensor) -> tuple[int, int]:
    return int(image.shape[-2]), int(image.shape[-1])


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """int -> (S, S); (H, W) sequences kept."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _boxes(data: Any, canvas: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    t = torch.as_tensor(data, dtype=torch.float32).reshape(-1, 4)
    return tv_tensors.BoundingBoxes(t, format="XYXY", canvas_size=canvas)


def _wrap(image: Tensor, target: dict[str, Any]) -> Sample:
    """Plain tensors -> tv_tensors (image, ``boxes`` and ``ignore`` as BoundingBoxes on the image canvas)."""
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image tensor (3, H, W), got {getattr(image, 'shape', type(image))}")
    hw = _hw(image)
    out = dict(target)
    out["boxes"] = _boxes(target.get("boxes", torch.zeros(0, 4)), hw)
    out["labels"] = torch.as_tensor(target.get("labels", torch.zeros(0)), dtype=torch.int64).reshape(-1)
    out["ignore"] = _boxes(target.get("ignore", torch.zeros(0, 4)), hw)
    if len(out["labels"]) != len(out["boxes"]):
        raise ValueError(f"target has {len(out['boxes'])} boxes but {len(out['labels'])} labels")
    return tv_tensors.Image(image), out


def _unwrap(image: Tensor, target: dict[str, Any]) -> Sample:
    out = dict(target)
    for k in _BOX_KEYS:
        out[k] = out[k].as_subclass(Tensor)
    return image.as_subclass(Tensor), out


def sanitize_target(target: dict[str, Any], canvas: tuple[int, int]) -> dict[str, Any]:
    """Clip ``boxes``/``ignore`` to ``canvas`` (H, W) and remove degenerate boxes (and their labels).

    Ours rather than ``v2.SanitizeBoundingBoxes``: that needs ``min_size >= 1`` px, so it would drop a 2 px target
    letterboxed below one pixel, and it filters one box set per call (here: targets and ignore regions).
    """
    out = dict(target)
    h, w = canvas
    for key in _BOX_KEYS:
        b = out[key].as_subclass(Tensor).clone()
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        keep = ((b[:, 2] - b[:, 0]) > _MIN_SIDE) & ((b[:, 3] - b[:, 1]) > _MIN_SIDE)
        out[key] = _boxes(b[keep], canvas)
        if key == "boxes":
            out["labels"] = out["labels"][keep]
    return out


# ------------------------------------------------------------------------------------------------------------
# Letterbox


@dataclass(frozen=True)
class LetterboxInfo:
    """How :func:`letterbox` mapped an image: ``out = in * scale + pad`` per axis.

    ``scale_x``/``scale_y`` are the exact resize ratios (new/old side, equal up to rounding); ``pad_left`` /
    ``pad_top`` the offsets of the resized image in the output; sizes are (H, W).
    """

    scale_x: float
    scale_y: float
    pad_left: int
    pad_top: int
    out_size: tuple[int, int]
    orig_size: tuple[int, int]

    def as_tensor(self) -> Tensor:
        """``tensor([scale_x, scale_y, pad_left, pad_top])`` float32, the form stored in eval targets."""
        return torch.tensor([self.scale_x, self.scale_y, self.pad_left, self.pad_top], dtype=torch.float32)

    def to_letterbox(self, boxes: Tensor) -> Tensor:
        """Original-image xyxy boxes (..., 4) -> letterbox pixels."""
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        offset = boxes.new_tensor([self.pad_left, self.pad_top, self.pad_left, self.pad_top])
        return boxes * scale + offset

    def to_original(self, boxes: Tensor) -> Tensor:
        """Letterboxed xyxy boxes (..., 4) -> original image pixels."""
        return unletterbox_boxes(boxes, self.as_tensor())


def unletterbox_boxes(boxes: Tensor, letterbox_info: Tensor) -> Tensor:
    """Map xyxy boxes (..., 4) from letterbox pixels back to the original image with a target's
    ``letterbox`` tensor ``[scale_x, scale_y, pad_left, pad_top]``."""
    sx, sy, px, py = letterbox_info.to(boxes).unbind(-1)
    offset = torch.stack([px, py, px, py])
    scale = torch.stack([sx, sy, sx, sy])
    return (boxes - offset) / scale


def letterbox(
    image: Tensor,
    size: int | Sequence[int],
    *,
    fill: int = PAD_VALUE,
    center: bool = False,
    scale_up: bool = True,
) -> tuple[Tensor, LetterboxInfo]:
    """Resize ``image`` (..., H, W) keeping its aspect ratio to fit ``size`` (S or (H, W)), then pad to it.

    Padding goes bottom/right (``center=False``, the inverse is a pure scale) or around the image
    (``center=True``, as in YOLO). ``scale_up=False`` never enlarges. Works on plain tensors and tv_tensors;
    boxes follow with :meth:`LetterboxInfo.to_letterbox` (or the :class:`Letterbox` pipeline step).
    Returns ``(image, LetterboxInfo)``.
    """
    out_h, out_w = _as_size(size)
    h, w = _hw(image)
    scale = min(out_h / h, out_w / w)
    if not scale_up:
        scale = min(scale, 1.0)
    new_h, new_w = max(1, min(out_h, round(h * scale))), max(1, min(out_w, round(w * scale)))
    left = (out_w - new_w) // 2 if center else 0
    top = (out_h - new_h) // 2 if center else 0
    info = LetterboxInfo(new_w / w, new_h / h, left, top, (out_h, out_w), (h, w))
    return _apply_letterbox(image, info, fill), info


def _apply_letterbox(inpt: Tensor, info: LetterboxInfo, fill: int = PAD_VALUE) -> Tensor:
    h, w = info.orig_size
    new_h, new_w = round(h * info.scale_y), round(w * info.scale_x)
    out = inpt
    if (new_h, new_w) != (h, w):
        out = F.resize(out, [new_h, new_w], antialias=True)
    out_h, out_w = info.out_size
    padding = [info.pad_left, info.pad_top, out_w - new_w - info.pad_left, out_h - new_h - info.pad_top]
    if any(padding):
        out = F.pad(out, padding, fill=fill)
    return out


class Letterbox:
    """Pipeline step: :func:`letterbox` the image and move ``boxes``/``ignore`` with it.

    With ``record=True`` the target gets ``letterbox`` = :meth:`LetterboxInfo.as_tensor`.
    """

    def __init__(self, size: int | Sequence[int], center: bool = False, record: bool = False) -> None:
        self.size = _as_size(size)
        self.center = center
        self.record = record

    def __call__(self, image: Tensor, target: dict[str, Any]) -> Sample:
        image, info = letterbox(image, self.size, center=self.center)
        target = dict(target)
        for key in _BOX_KEYS:
            target[key] = _apply_letterbox(target[key], info)
        if self.record:
            target["letterbox"] = info.as_tensor()
        return image, target


# ------------------------------------------------------------------------------------------------------------
# Geometry at native resolution


def _crop_sample(
    image: Tensor, target: dict[str, Any], top: int, left: int, height: int, width: int, min_visibility: float
) -> Sample:
    """Crop image and boxes; targets keeping < ``min_visibility`` of their area become ignore regions."""
    boxes = target["boxes"].as_subclass(Tensor)
    window = torch.tensor([left, top, left + width, top + height], dtype=boxes.dtype)
    inter = torch.cat([torch.maximum(boxes[:, :2], window[:2]), torch.minimum(boxes[:, 2:], window[2:])], dim=1)
    inter_area = (inter[:, 2:] - inter[:, :2]).clamp(min=0).prod(dim=1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    cut = (inter_area > 0) & (inter_area < min_visibility * area)
    canvas = _hw(image)
    out = dict(target)
    out["boxes"] = F.crop(_boxes(boxes[~cut], canvas), top, left, height, width)
    out["labels"] = target["labels"][~cut]
    ignore = torch.cat([target["ignore"].as_subclass(Tensor), boxes[cut]], dim=0)
    out["ignore"] = F.crop(_boxes(ignore, canvas), top, left, height, width)
    return F.crop(image, top, left, height, width), sanitize_target(out, (height, width))


def _window_start(lo: float, hi: float, extent: int, crop: int) -> int:
    """Random start of a ``crop``-long window inside ``[0, extent]`` that covers ``[lo, hi]`` when it can."""
    first = max(0, math.ceil(hi - crop))  # the window must end at or after hi
    last = min(extent - crop, math.floor(lo))  # and start at or before lo
    if last < first:  # object longer than the window: centre on it
        mid = int((lo + hi) / 2 - crop / 2)
        return max(0, min(mid, extent - crop))
    return int(torch.randint(first, last + 1, ()).item())


class RandomTileCrop:
    """Crop a window at native resolution from an image larger than it: ``size`` (S or (H, W)), or with zoom a
    random multiple of it.

    With probability ``box_prob`` (and when the image has boxes) the window contains a randomly chosen target
    box; otherwise it is uniform. An image no larger than the window passes through unchanged (the letterbox then
    scales it). Targets left with less than ``min_visibility`` of their area become ignore regions.
    ``zoom_out > 1`` and ``zoom_in > 1`` draw the window side log-uniformly in ``[1 / zoom_in, zoom_out] *
    size``; the letterbox then brings it to ``size``. A larger window (zoom out) shrinks objects: training also
    sees the scale that evaluating a whole large image at ``size`` gives. A smaller one (zoom in) enlarges them by
    up to ``zoom_in`` times and never downsamples, the scale augmentation that suits tiny objects (Ultralytics'
    ``scale=0.5`` is a gain in [0.5, 1.5]: ``zoom_out=2, zoom_in=1.5``). With ``zoom_in > 1`` an image no larger
    than ``size`` is cropped too when it is larger than the drawn window; one smaller than ``size`` is already
    enlarged by the letterbox, so zoom adds less to it than ``zoom_in``.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        box_prob: float = 0.8,
        min_visibility: float = 0.3,
        zoom_out: float = 1.0,
        zoom_in: float = 1.0,
    ) -> None:
        for name, value in (("zoom_out", zoom_out), ("zoom_in", zoom_in)):
            if not (math.isfinite(value) and value >= 1.0):
                raise ValueError(f"{name} must be a finite number >= 1 (1 = no zoom), got {value}")
        self.size = _as_size(size)
        self.box_prob = box_prob
        self.min_visibility = min_visibility
        self.zoom_out = zoom_out
        self.zoom_in = zoom_in

    def draw_size(self) -> tuple[int, int]:
        """A random window size ``(h, w)``: ``size`` times a factor log-uniform in ``[1 / zoom_in, zoom_out]``
        (``size`` itself, drawing nothing, when both are 1)."""
        if self.zoom_out == 1.0 and self.zoom_in == 1.0:
            return self.size
        lo, hi = -math.log(self.zoom_in), math.log(self.zoom_out)
        zoom = math.exp(lo + float(torch.rand(())) * (hi - lo))
        return max(1, round(self.size[0] * zoom)), max(1, round(self.size[1] * zoom))

    def window(
        self, image: Tensor, target: dict[str, Any], size: tuple[int, int] | None = None
    ) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of a random window (used by :class:`Mosaic` with quadrant sizes)."""
        h, w = _hw(image)
        if size is None:
            size = self.draw_size()
        ch, cw = min(size[0], h), min(size[1], w)
        boxes = target["boxes"].as_subclass(Tensor)
        if len(boxes) and float(torch.rand(())) < self.box_prob:
            x1, y1, x2, y2 = boxes[int(torch.randint(len(boxes), ()))].tolist()
            return _window_start(y1, y2, h, ch), _window_start(x1, x2, w, cw), ch, cw
        top = int(torch.randint(h - ch + 1, ()).item())
        left = int(torch.randint(w - cw + 1, ()).item())
        return top, left, ch, cw

    def __call__(self, image: Tensor, target: dict[str, Any]) -> Sample:
        h, w = _hw(image)
        if self.zoom_in == 1.0 and h <= self.size[0] and w <= self.size[1]:
            return image, target  # no window can be smaller than the image: nothing drawn, nothing cropped
        size = self.draw_size()
        if h <= size[0] and w <= size[1]:
            return image, target
        top, left, ch, cw = self.window(image, target, size)
        return _crop_sample(image, target, top, left, ch, cw, self.min_visibility)


def random_flip(p: float = 0.5, vertical: bool = False) -> Step:
    """torchvision's flip of the image and every box set of the target (``boxes`` and ``ignore``), prob. ``p``."""
    return v2.RandomVerticalFlip(p) if vertical else v2.RandomHorizontalFlip(p)


def make_color_jitter(
    brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3, hue: float = 0.0
) -> Step:
    """``v2.ColorJitter`` (image only). No hue shift by default: it costs more than the rest of the pipeline
    together, and colour is often what tells tiny classes apart (it is in the synthetic data)."""
    return v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)


class Mosaic:
    """Tile four samples into one ``size`` x ``size`` image at native resolution (YOLO-style mosaic).

    A random centre ``(cx, cy)`` in the middle half splits the canvas into four quadrants; each sample
    contributes a :class:`RandomTileCrop` window of its quadrant's size (preferring a box), anchored at the
    centre; gaps are filled with :data:`PAD_VALUE`. Takes and returns wrapped (tv_tensors) samples.
    """

    def __init__(self, size: int, box_prob: float = 0.8, min_visibility: float = 0.3) -> None:
        self.size = size
        self.cropper = RandomTileCrop(size, box_prob=box_prob, min_visibility=min_visibility)

    def __call__(self, samples: Sequence[Sample]) -> Sample:
        if len(samples) != 4:
            raise ValueError(f"Mosaic needs 4 samples, got {len(samples)}")
        s = self.size
        cx, cy = (int(torch.randint(s // 4, 3 * s // 4 + 1, ()).item()) for _ in range(2))
        canvas = torch.full((3, s, s), PAD_VALUE, dtype=samples[0][0].dtype)
        quads = [(0, 0, cy, cx), (0, cx, cy, s - cx), (cy, 0, s - cy, cx), (cy, cx, s - cy, s - cx)]
        boxes, labels, ignore = [], [], []
        for (image, target), (qt, ql, qh, qw) in zip(samples, quads):
            if qh == 0 or qw == 0:
                continue
            top, left, ch, cw = self.cropper.window(image, target, (qh, qw))
            piece, t = _crop_sample(image, target, top, left, ch, cw, self.cropper.min_visibility)
            # anchor the piece at the mosaic centre (it may be smaller than its quadrant)
            y0 = qt + (qh - ch if qt == 0 else 0)
            x0 = ql + (qw - cw if ql == 0 else 0)
            canvas[:, y0 : y0 + ch, x0 : x0 + cw] = piece
            padding = [x0, y0, s - x0 - cw, s - y0 - ch]
            boxes.append(F.pad(t["boxes"], padding).as_subclass(Tensor))
            ignore.append(F.pad(t["ignore"], padding).as_subclass(Tensor))
            labels.append(t["labels"])
        out = dict(samples[0][1])
        out["boxes"] = _boxes(torch.cat(boxes), (s, s))
        out["labels"] = torch.cat(labels)
        out["ignore"] = _boxes(torch.cat(ignore), (s, s))
        return tv_tensors.Image(canvas), sanitize_target(out, (s, s))


# ------------------------------------------------------------------------------------------------------------
# Pipelines


class DetectionTransform:
    """A detection pipeline: ``(image uint8 (3,H,W), target) -> (image float32 [0,1], target)``.

    ``steps`` run in order on wrapped samples; then boxes are sanitised and the image converted to float.
    With a ``mosaic``, the dataset passes ``extras`` (``num_extra`` = 3 more raw samples) and with probability
    ``mosaic_prob`` the four are tiled first (the mosaic replaces the tile crop).
    """

    def __init__(
        self,
        steps: Sequence[Step],
        mosaic: Mosaic | None = None,
        mosaic_prob: float = 1.0,
        pre_steps: Sequence[Step] = (),
    ) -> None:
        self.pre_steps = list(pre_steps)
        self.steps = list(steps)
        self.pre = v2.Compose(self.pre_steps) if self.pre_steps else None
        self.main = v2.Compose(self.steps) if self.steps else None
        self.mosaic = mosaic
        self.mosaic_prob = mosaic_prob

    @property
    def num_extra(self) -> int:
        """How many extra samples the dataset should pass in ``extras`` (3 with mosaic, else 0)."""
        return 3 if self.mosaic is not None else 0

    def __call__(self, image: Tensor, target: dict[str, Any], extras: Sequence[Sample] | None = None) -> Sample:
        img, tgt = _wrap(image, target)
        if self.mosaic is not None and extras and float(torch.rand(())) < self.mosaic_prob:
            img, tgt = self.mosaic([(img, tgt)] + [_wrap(*e) for e in extras[:3]])
        elif self.pre is not None:
            img, tgt = self.pre(img, tgt)
        if self.main is not None:
            img, tgt = self.main(img, tgt)
        tgt = sanitize_target(tgt, _hw(img))
        img = F.to_dtype(img, torch.float32, scale=True)
        return _unwrap(img, tgt)

    def __repr__(self) -> str:
        names = [type(s).__name__ for s in self.pre_steps + self.steps]
        return f"DetectionTransform({' -> '.join(names)}, mosaic={self.mosaic is not None})"


def build_transforms(
    train: bool,
    image_size: int,
    mosaic: bool = False,
    *,
    mosaic_prob: float = 0.5,
    flip_vertical: bool = True,
    color_jitter: bool = True,
    zoom_out: float = 1.0,
    zoom_in: float = 1.0,
    tile: bool = True,
    record_letterbox: bool = False,
) -> DetectionTransform:
    """The standard pipelines (see the module docstring).

    Args:
        train: training augmentation (tile crop, flips, colour jitter, letterbox) or eval (letterbox only,
            target gets ``letterbox``).
        image_size: model input side S; outputs are (3, S, S).
        mosaic: train only; tile four samples with probability ``mosaic_prob`` (needs a dataset that passes
            extras, as :class:`~efpn.data.dataset.DetectionDataset` does).
        flip_vertical: also flip vertically (right for aerial, microscopy, SAR; wrong for street scenes).
        color_jitter: apply colour jitter.
        zoom_out: :class:`RandomTileCrop` window up to this many times the model size. With 1 (default)
            training sees native resolution only; if evaluation letterboxes images much larger than
            ``image_size``, raise it (e.g. to ``image side / image_size``) or evaluate on tiles.
        zoom_in: :class:`RandomTileCrop` window down to ``image_size / zoom_in``, enlarged to the model size
            (scale augmentation that never shrinks an object below its native size).
        tile: train only; False letterboxes the whole image instead of cropping a model-sized tile.
        record_letterbox: train only; the target gets ``letterbox`` (eval pipelines always record it).
    """
    if not train:
        return DetectionTransform([Letterbox(image_size, record=True)])
    steps: list[Step] = [random_flip(0.5)]
    if flip_vertical:
        steps.append(random_flip(0.5, vertical=True))
    if color_jitter:
        steps.append(make_color_jitter())
    steps.append(Letterbox(image_size, record=record_letterbox))
    return DetectionTransform(
        steps,
        mosaic=Mosaic(image_size) if mosaic else None,
        mosaic_prob=mosaic_prob,
        pre_steps=[RandomTileCrop(image_size, zoom_out=zoom_out, zoom_in=zoom_in)] if tile else [],
    )
