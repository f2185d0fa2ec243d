"""Deterministic synthetic tiny-object dataset (tests, the offline demo, ``efpn data synth``).

Each image (default 320x320) holds 5-30 objects of three classes whose side is drawn log-uniformly in
``[min_size, max_size]`` px (default 2-32, so most objects are in the ``vt``/``t`` buckets of SPEC §0):

==========  ===========================  ===================
class       shape                        colour (RGB, +-15)
==========  ===========================  ===================
``disc``    filled circle                red   (225, 45, 40)
``square``  filled square                green (45, 200, 65)
``cross``   plus sign, bars ~1/3 side    blue  (55, 85, 235)
==========  ===========================  ===================

on a textured background: a low-saturation base tone, a linear gradient, smooth low-frequency noise, grey
clutter (lines, ellipses, rectangles) and pixel noise. The class colours are saturated while everything else
is near-grey, so even a 2 px object is separable by colour and larger ones also by shape: a detector can
learn it (``tests/data/test_synthetic.py`` checks that a colour-threshold "detector" finds the objects).
Objects do not overlap; a box is exactly the drawn pixels' extent ``[x, y, x + s, y + s]``.

Determinism: image ``i`` of seed ``s`` depends only on ``(s, i)`` and the size parameters, so the same call
writes byte-identical annotations (and images).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

__all__ = [
    "SYNTH_CLASSES",
    "SYNTH_COLOURS",
    "SyntheticSample",
    "make_synthetic_sample",
    "write_synthetic_dataset",
]

SYNTH_CLASSES: tuple[str, ...] = ("disc", "square", "cross")
#: Base RGB colour per class (index = label).
SYNTH_COLOURS: tuple[tuple[int, int, int], ...] = ((225, 45, 40), (45, 200, 65), (55, 85, 235))
_COLOUR_JITTER = 15
_MARGIN = 2  # px kept free around every object


@dataclass
class SyntheticSample:
    """One generated image: ``image`` (H, W, 3) uint8 RGB, ``boxes`` (M, 4) float32 xyxy px, ``labels``
    (M,) int64."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def _as_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    w, h = image_size
    return int(h), int(w)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Near-grey texture: base tone + gradient + smooth noise + grey clutter; float32 (H, W, 3)."""
    base = rng.uniform(60, 190) + rng.uniform(-12, 12, size=3)
    img = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h) * rng.uniform(-40, 40)
    img += ramp[..., None]
    cells = int(rng.integers(4, 12))
    coarse = rng.normal(0, 18, size=(cells, cells)).astype(np.float32)
    img += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    for _ in range(int(rng.integers(6, 20))):
        grey = float(np.clip(base.mean() + rng.uniform(-60, 60), 0, 255))
        colour = tuple(float(np.clip(grey + d, 0, 255)) for d in rng.uniform(-10, 10, size=3))
        kind = rng.integers(3)
        p = rng.integers(0, [w, h])
        q = rng.integers(0, [w, h])
        if kind == 0:
            cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, int(rng.integers(1, 4)))
        elif kind == 1:
            axes = (int(rng.integers(3, 40)), int(rng.integers(3, 40)))
            cv2.ellipse(img, (int(p[0]), int(p[1])), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, int(rng.integers(1, 3)))
    return img


def _shape_mask(label: int, s: int) -> np.ndarray:
    """(s, s) bool mask of the class shape filling an s x s box."""
    if label == 0:  # disc: pixel centres within radius s/2 of the box centre
        c = np.arange(s, dtype=np.float32) + 0.5 - s / 2
        return c[None, :] ** 2 + c[:, None] ** 2 <= (s / 2) ** 2 + 1e-6
    if label == 1:
        return np.ones((s, s), dtype=bool)
    t = max(1, round(s / 3))  # cross: two centred bars of thickness t spanning the whole box
    lo = (s - t) // 2
    m = np.zeros((s, s), dtype=bool)
    m[lo : lo + t, :] = True
    m[:, lo : lo + t] = True
    return m


def _place(
    rng: np.random.Generator, h: int, w: int, s: int, taken: list[tuple[int, int, int, int]]
) -> tuple[int, int] | None:
    for _ in range(30):
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        if all(
            x + s + _MARGIN <= a or a2 + _MARGIN <= x or y + s + _MARGIN <= b or b2 + _MARGIN <= y
            for a, b, a2, b2 in taken
        ):
            return x, y
    return None


def _check_sizes(hw: tuple[int, int], min_size: int, max_size: int, objects_per_image: tuple[int, int]) -> None:
    """ValueError unless ``1 <= min_size <= max_size < min(H, W)`` and ``0 <= low <= high`` objects."""
    h, w = hw
    if not 1 <= min_size <= max_size or max_size >= min(h, w):
        raise ValueError(f"object sizes need 1 <= min_size <= max_size < the image side, got min_size={min_size}, "
                         f"max_size={max_size} for {w}x{h} px images")
    lo, hi = objects_per_image
    if not 0 <= lo <= hi:
        raise ValueError(f"objects_per_image must be (low, high) with 0 <= low <= high, got {objects_per_image}")


def make_synthetic_sample(
    seed: int,
    index: int,
    image_size: int | tuple[int, int] = 320,
    min_size: int = 2,
    max_size: int = 32,
    objects_per_image: tuple[int, int] = (5, 30),
) -> SyntheticSample:
    """Image ``index`` of the synthetic dataset ``seed``, in memory (``image_size`` = side or (W, H))."""
    h, w = _as_hw(image_size)
    lo, hi = objects_per_image
    _check_sizes((h, w), min_size, max_size, objects_per_image)
    rng = np.random.default_rng([seed, index])
    img = _background(rng, h, w)
    boxes: list[tuple[int, int, int, int]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(lo, hi + 1))):
        label = int(rng.integers(len(SYNTH_CLASSES)))
        side = math.exp(rng.uniform(math.log(min_size), math.log(max_size)))
        s = int(min(max(round(side), min_size), max_size))
        pos = _place(rng, h, w, s, boxes)
        if pos is None:
            continue
        x, y = pos
        colour = np.clip(np.array(SYNTH_COLOURS[label]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3), 0, 255)
        region = img[y : y + s, x : x + s]
        region[_shape_mask(label, s)] = colour
        boxes.append((x, y, x + s, y + s))
        labels.append(label)
    img += rng.normal(0, 4, size=img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return SyntheticSample(
        image=image,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
    )


def write_synthetic_dataset(
    out_dir: str | Path,
    num_images: int,
    image_size: int | tuple[int, int] = 320,
    seed: int = 0,
    min_size: int = 2,
    max_size: int = 32,
    objects_per_image: tuple[int, int] = (5, 30),
    val_fraction: float = 0.2,
) -> Path:
    """Write ``num_images`` PNGs to ``out_dir/images`` and COCO annotations; returns the JSON path.

    Also writes ``out_dir/data.yaml`` (format ``coco``, ``val_fraction`` share held out by
    :func:`~efpn.data.splits.split_records`) so the folder can be trained on directly. Category ids are
    1..3 for ``disc, square, cross`` (labels 0..2 after loading); image ids are 1..N, files ``000000.png``...
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    _check_sizes(_as_hw(image_size), min_size, max_size, objects_per_image)  # before anything is written
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        sample = make_synthetic_sample(seed, i, image_size, min_size, max_size, objects_per_image)
        h, w = sample.image.shape[:2]
        file_name = f"{i:06d}.png"
        Image.fromarray(sample.image).save(out / "images" / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": w, "height": h})
        for box, label in zip(sample.boxes.tolist(), sample.labels.tolist()):
            x1, y1, x2, y2 = (int(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {
            "description": "efpn synthetic tiny objects",
            "seed": seed,
            "size_range": [min_size, max_size],
            "objects_per_image": list(objects_per_image),
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(SYNTH_CLASSES)],
    }
    json_path = out / "annotations.json"
    json_path.write_text(json.dumps(coco, indent=1) + "\n", encoding="utf-8")
    data_yaml = {
        "format": "coco",
        "root": ".",
        "names": list(SYNTH_CLASSES),
        "train": {"annotations": json_path.name, "images": "images"},
        "val_fraction": val_fraction,
        "split_seed": seed,
    }
    (out / "data.yaml").write_text(yaml.safe_dump(data_yaml, sort_keys=False), encoding="utf-8")
    return json_path
