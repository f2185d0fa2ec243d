"""Synthetic tiny objects: determinism, size distribution, loadability, and learnability by colour."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from efpn.data import SYNTH_CLASSES, load_coco, load_split, make_synthetic_sample, write_synthetic_dataset
from efpn.data.synthetic import SYNTH_COLOURS


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = write_synthetic_dataset(tmp_path / "a", 3, image_size=96, seed=5)
    b = write_synthetic_dataset(tmp_path / "b", 3, image_size=96, seed=5)
    c = write_synthetic_dataset(tmp_path / "c", 3, image_size=96, seed=6)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    assert (a.parent / "images" / "000002.png").read_bytes() == (b.parent / "images" / "000002.png").read_bytes()
    # image i does not depend on how many images are written
    np.testing.assert_array_equal(make_synthetic_sample(5, 1, 96).image, make_synthetic_sample(5, 1, 96).image)


def test_loads_as_coco_and_through_its_yaml(tmp_path: Path) -> None:
    json_path = write_synthetic_dataset(tmp_path, 5, image_size=(120, 80), seed=0, objects_per_image=(3, 6))
    records, names, report = load_coco(json_path, tmp_path / "images")
    assert names == list(SYNTH_CLASSES) and len(records) == 5
    assert all((r.width, r.height) == (120, 80) for r in records)
    assert report.counts() == {} and report.boxes >= 5 * 3 - 2
    train, _, _ = load_split(tmp_path / "data.yaml", "train")
    val, _, _ = load_split(tmp_path / "data.yaml", "val")
    assert (len(train), len(val)) == (4, 1)


def test_size_range_and_log_uniform() -> None:
    sides, counts = [], []
    for i in range(12):
        s = make_synthetic_sample(1, i, 160, min_size=2, max_size=32, objects_per_image=(10, 30))
        w, h = s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1]
        np.testing.assert_array_equal(w, h)  # square boxes
        assert (s.boxes >= 0).all() and (s.boxes <= 160).all()
        sides.extend(w.tolist())
        counts.append(len(s.boxes))
    sides_arr = np.array(sides)
    assert sides_arr.min() >= 2 and sides_arr.max() <= 32
    # log-uniform on [2, 32]: half the objects are below 8 px (sqrt(2 * 32))
    assert 0.35 < float((sides_arr < 8).mean()) < 0.65
    assert min(counts) >= 10 - 2 and max(counts) <= 30
    with pytest.raises(ValueError, match="min_size"):
        make_synthetic_sample(0, 0, 32, min_size=4, max_size=40)


def _colour_detector(image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The simplest possible detector: class-colour threshold + connected components."""
    boxes, labels = [], []
    for label, colour in enumerate(SYNTH_COLOURS):
        mask = (np.abs(image.astype(np.int16) - np.array(colour)).max(axis=2) < 50).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for x, y, w, h, _area in stats[1:n]:
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64)


def test_objects_are_learnable() -> None:
    """A colour threshold finds the objects, including the 2-4 px ones: the classes are separable."""
    found = total = false_pos = 0
    for i in range(4):
        s = make_synthetic_sample(2, i, 320)
        pred, pred_labels = _colour_detector(s.image)
        gt, gt_labels = torch.from_numpy(s.boxes), torch.from_numpy(s.labels)
        iou = box_iou(gt, pred)
        iou[gt_labels[:, None] != pred_labels[None, :]] = 0
        found += int((iou.max(dim=1).values > 0.5).sum())
        false_pos += int((iou.max(dim=0).values <= 0.5).sum())
        total += len(gt)
    assert total > 40
    assert found / total > 0.95 and false_pos / total < 0.05


def test_shapes_differ_for_larger_objects() -> None:
    s = make_synthetic_sample(3, 0, 320, min_size=12, max_size=16, objects_per_image=(20, 20))
    fill = {}
    for box, label in zip(s.boxes.astype(int), s.labels):
        crop = s.image[box[1] : box[3], box[0] : box[2]].astype(np.int16)
        inside = np.abs(crop - np.array(SYNTH_COLOURS[label])).max(axis=2) < 50
        fill.setdefault(int(label), []).append(inside.mean())
    disc, square, cross = (float(np.mean(fill[k])) for k in range(3))
    assert square > 0.95 and math.isclose(disc, math.pi / 4, abs_tol=0.08) and cross < 0.7
