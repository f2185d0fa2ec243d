"""Priors: the anchors or points a dense head predicts from, concatenated over pyramid levels.

Layout contract (docs/architecture.md): priors are concatenated level by level (in the order of the
``feature_sizes`` dict), then row ``y``, column ``x``, then anchor ``a``. The flat index of prior
``(level l, y, x, a)`` is ``offset_l + (y * W_l + x) * A + a``, with ``offset_l = sum(num_per_level[:l])``.

Centre convention: the prior of cell ``(y, x)`` on a level of stride ``s`` is centred on the cell centre
``((x + 0.5) * s, (y + 0.5) * s)`` in input pixels (YOLO's convention, mmdet's ``center_offset=0.5``;
torchvision's and detectron2's RetinaNet put anchors on the cell corner ``(x * s, y * s)`` instead).
Anchor sizes are not rounded (torchvision rounds its base anchors to integers).

Level names follow SPEC §0: ``"p{k}"`` has stride ``2**k``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from efpn.vocab import level_stride

#: Ultralytics YOLOv5 default anchors (w, h pairs in input pixels) for p3, p4, p5 (SPEC §8).
YOLOV5_ANCHORS: tuple[tuple[float, ...], ...] = (
    (10, 13, 16, 30, 33, 23),
    (30, 61, 62, 45, 59, 119),
    (116, 90, 156, 198, 373, 326),
)

#: RetinaNet octave scales 2^{0, 1/3, 2/3} and aspect ratios (h / w) (SPEC §8).
RETINA_SCALES: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
RETINA_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)

FeatureSizes = Mapping[str, tuple[int, int]]


@dataclass(frozen=True, eq=False)
class Priors:
    """All priors of one image size, level-major then ``y``, ``x``, anchor (see the module docstring).

    ``boxes`` are xyxy anchors in input pixels; for anchor-free heads a zero-size box ``(x, y, x, y)`` at the
    point. ``points`` are the cell centres, ``strides`` the level stride per prior, ``level`` the index into
    ``levels``. The dataclass is frozen; treat the tensors as read-only too.
    """

    boxes: Tensor  # (R, 4) float xyxy
    points: Tensor  # (R, 2) float (x, y) cell centres
    strides: Tensor  # (R,) float
    level: Tensor  # (R,) int64 index into `levels`
    levels: list[str]  # e.g. ["p3", "p4", "p5"]
    num_per_level: list[int]  # sum == R
    anchors_per_loc: int  # A

    def __post_init__(self) -> None:
        if torch.jit.is_tracing():
            return  # sizes are the tracer's tensors there (a dynamic export); the builders made them consistent
        r = self.boxes.shape[0]
        if self.boxes.shape != (r, 4) or self.points.shape != (r, 2):
            raise ValueError(
                f"boxes must be (R, 4) and points (R, 2), got {tuple(self.boxes.shape)}, "
                f"{tuple(self.points.shape)}"
            )
        if self.strides.shape != (r,) or self.level.shape != (r,):
            raise ValueError("strides and level must be (R,)")
        if len(self.levels) != len(self.num_per_level) or sum(self.num_per_level) != r:
            raise ValueError(
                f"num_per_level {self.num_per_level} does not match levels {self.levels} and R={r}"
            )

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    def to(self, device: torch.device | str) -> Priors:
        """A copy with every tensor on ``device`` (the same object when nothing moves)."""
        if self.boxes.device == torch.device(device):
            return self
        return Priors(
            boxes=self.boxes.to(device),
            points=self.points.to(device),
            strides=self.strides.to(device),
            level=self.level.to(device),
            levels=list(self.levels),
            num_per_level=list(self.num_per_level),
            anchors_per_loc=self.anchors_per_loc,
        )

    def level_slices(self) -> dict[str, slice]:
        """Level name -> the slice of the flat prior index that belongs to it, in level order."""
        out: dict[str, slice] = {}
        start = 0
        for name, n in zip(self.levels, self.num_per_level):
            out[name] = slice(start, start + n)
            start += n
        return out

    def feature_sizes(self) -> dict[str, tuple[int, int]]:
        """Recover ``{level: (H, W)}`` from the layout (the inverse of the builders' ``feature_sizes``)."""
        out: dict[str, tuple[int, int]] = {}
        a = self.anchors_per_loc
        for name, sl in self.level_slices().items():
            cells = self.points[sl][::a]  # (H*W, 2), one point per location
            if cells.shape[0] == 0:
                out[name] = (0, 0)
                continue
            w = int((cells[:, 1] == cells[0, 1]).sum())  # locations in the first row share its exact y
            out[name] = (cells.shape[0] // w, w)
        return out


def feature_sizes_for(image_hw: tuple[int, int], levels: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``{level: (ceil(H / stride), ceil(W / stride))}``: the map sizes a padded stride-2 conv stack produces.

    (Each padded 3x3/stride-2 conv maps ``n`` to ``ceil(n / 2)``, and nested ceilings compose.)
    """
    h, w = image_hw
    out: dict[str, tuple[int, int]] = {}
    for name in levels:
        s = _stride(name)
        out[name] = (-(-int(h) // s), -(-int(w) // s))
    return out


def anchor_priors(
    feature_sizes: FeatureSizes,
    anchor_scale: float = 4.0,
    scales: Sequence[float] = RETINA_SCALES,
    ratios: Sequence[float] = RETINA_RATIOS,
    device: torch.device | str | None = None,
) -> Priors:
    """RetinaNet-style anchors: ``A = len(ratios) * len(scales)`` per location.

    The anchor for ratio ``r`` (= h / w) and scale ``c`` on a level of stride ``s`` has size
    ``b = anchor_scale * s * c``, ``w = b / sqrt(r)``, ``h = b * sqrt(r)`` (area ``b**2``), centred on the
    cell centre ``((x + 0.5) s, (y + 0.5) s)``.
    Order within a location is ratio-major: ``a = ratio_index * len(scales) + scale_index`` (scales vary
    fastest, as in torchvision's AnchorGenerator).
    """
    shapes: dict[str, list[tuple[float, float]]] = {}
    for name in feature_sizes:
        base = anchor_scale * _stride(name)
        shapes[name] = [(base * c / math.sqrt(r), base * c * math.sqrt(r)) for r in ratios for c in scales]
    return _build(feature_sizes, shapes, device)


def yolo_priors(
    feature_sizes: FeatureSizes,
    yolo_anchors: Sequence[Sequence[float]] = YOLOV5_ANCHORS,
    device: torch.device | str | None = None,
) -> Priors:
    """YOLOv5 anchors: the i-th entry of ``yolo_anchors`` (``w0, h0, w1, h1, ...`` in input pixels) belongs to
    the i-th level of ``feature_sizes`` (p3, p4, p5 by default); boxes are centred on the cell centres. A = 3
    for the defaults; every level must have the same number of anchors.
    """
    if len(yolo_anchors) != len(feature_sizes):
        raise ValueError(
            f"{len(yolo_anchors)} anchor sets for {len(feature_sizes)} levels {list(feature_sizes)}"
        )
    shapes: dict[str, list[tuple[float, float]]] = {}
    for name, wh in zip(feature_sizes, yolo_anchors):
        if len(wh) % 2 or not wh:
            raise ValueError(f"anchors for {name} must be w, h pairs, got {wh}")
        shapes[name] = [(float(wh[i]), float(wh[i + 1])) for i in range(0, len(wh), 2)]
    return _build(feature_sizes, shapes, device)


def point_priors(feature_sizes: FeatureSizes, device: torch.device | str | None = None) -> Priors:
    """Anchor-free points (A = 1): one zero-size box ``(x, y, x, y)`` per cell centre."""
    return _build(feature_sizes, {name: [(0.0, 0.0)] for name in feature_sizes}, device)


def _stride(name: str) -> int:
    if not name.startswith("p"):
        raise ValueError(f"priors live on pyramid levels 'p2'..'p7', got {name!r}")
    return level_stride(name)


def _build(
    feature_sizes: FeatureSizes,
    shapes: Mapping[str, Sequence[tuple[float, float]]],
    device: torch.device | str | None,
) -> Priors:
    """Lay anchors of the given (w, h) shapes on every level's grid, level-major, then y, x, anchor."""
    counts = {len(v) for v in shapes.values()}
    if len(counts) > 1:
        raise ValueError(f"every level needs the same number of anchors, got {counts}")
    a = counts.pop() if counts else 1
    boxes, points, strides, level = [], [], [], []
    num_per_level = []
    for i, (name, (h, w)) in enumerate(feature_sizes.items()):
        s = _stride(name)
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) * s
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) * s
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)  # (H*W, 2)
        half = torch.tensor(shapes[name], dtype=torch.float32, device=device) / 2  # (A, 2)
        lvl_boxes = torch.cat([centres[:, None] - half, centres[:, None] + half], dim=2)  # (H*W, A, 4)
        n = h * w * a  # an int, or the tracer's 0-dim tensor in a dynamic export (so no torch.full((n,)) below)
        lvl_boxes = lvl_boxes.reshape(-1, 4)  # (H*W*A, 4)
        boxes.append(lvl_boxes)
        points.append(centres.repeat_interleave(a, dim=0))  # (H*W*A, 2)
        strides.append(torch.full_like(lvl_boxes[:, 0], float(s)))  # (H*W*A,)
        level.append(torch.full_like(lvl_boxes[:, 0], i, dtype=torch.int64))
        num_per_level.append(n)
    if not boxes:
        raise ValueError("feature_sizes is empty")
    return Priors(
        boxes=torch.cat(boxes),
        points=torch.cat(points),
        strides=torch.cat(strides),
        level=torch.cat(level),
        levels=list(feature_sizes),
        num_per_level=num_per_level,
        anchors_per_loc=a,
    )
