"""The project's shared vocabulary (SPEC §0): pyramid level names, size buckets.

Everything that names a level or a size bucket goes through here, so code, UI and JSON agree.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: AI-TOD size buckets by object size ``s = sqrt(w*h)`` in original pixels, in order.
BUCKETS: tuple[str, ...] = ("vt", "t", "s", "m", "l")
#: Upper edges (exclusive) of the buckets in :data:`BUCKETS`; the last bucket is open-ended.
BUCKET_EDGES: tuple[float, ...] = (8.0, 16.0, 32.0, 64.0)
#: Human-readable labels for the buckets.
BUCKET_LABELS: dict[str, str] = {
    "vt": "very tiny (<8 px)",
    "t": "tiny (8-16 px)",
    "s": "small (16-32 px)",
    "m": "medium (32-64 px)",
    "l": "large (>=64 px)",
}

#: One colour per pyramid level (RGB), shared by every drawing (CLI and studio) so a level looks the same everywhere.
LEVEL_RGB: dict[str, tuple[int, int, int]] = {
    "p2": (255, 200, 0), "p3": (60, 180, 75), "p4": (0, 130, 200), "p5": (245, 130, 48),
    "p6": (145, 30, 180), "p7": (70, 240, 240),
}
#: The same colours as hex strings, for plotting libraries.
LEVEL_COLOURS: dict[str, str] = {lv: "#{:02x}{:02x}{:02x}".format(*rgb) for lv, rgb in LEVEL_RGB.items()}


def level_colour(level: str) -> str:
    """The level's hex colour from :data:`LEVEL_COLOURS` (grey for an unknown name)."""
    return LEVEL_COLOURS.get(level, "#808080")


def level_name(stride: int) -> str:
    """``p{log2(stride)}``: 4 -> ``"p2"``, 8 -> ``"p3"``; raises ValueError for a non power of two."""
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"stride must be a positive power of two, got {stride}")
    return f"p{int(math.log2(stride))}"


def level_stride(name: str) -> int:
    """Inverse of :func:`level_name`: ``"p3"`` -> 8 (also accepts backbone names ``"c3"``)."""
    if len(name) < 2 or name[0] not in "pc" or not name[1:].isdigit():
        raise ValueError(f"not a level name: {name!r} (expected e.g. 'p3' or 'c4')")
    return 2 ** int(name[1:])


def box_size(boxes: Tensor) -> Tensor:
    """Object size ``sqrt(w*h)`` of xyxy boxes (M, 4) -> (M,); degenerate boxes give 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return (wh[..., 0] * wh[..., 1]).sqrt()


def size_bucket(boxes: Tensor) -> Tensor:
    """Bucket index into :data:`BUCKETS` for xyxy boxes (M, 4) -> (M,) long."""
    edges = torch.tensor(BUCKET_EDGES, dtype=boxes.dtype, device=boxes.device)
    return torch.bucketize(box_size(boxes), edges, right=True)
