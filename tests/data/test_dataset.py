"""DetectionDataset + collate: target contract, corrupt images (raise or skip), mosaic, DataLoader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from efpn.data import (
    CorruptImageError,
    DetectionDataset,
    ImageRecord,
    build_transforms,
    collate,
    load_coco,
    load_voc,
    load_yolo,
    write_synthetic_dataset,
)


def test_sample_contract(coco_dir: Path) -> None:
    records, _, _ = load_coco(coco_dir / "annotations" / "train.json", coco_dir / "images")
    ds = DetectionDataset(records)
    image, target = ds[0]
    assert image.shape == (3, 80, 100) and image.dtype == torch.uint8
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 10, 30, 20], [90, 60, 100, 70]]))
    assert target["labels"].tolist() == [1, 0] and target["labels"].dtype == torch.int64
    # ignore = the ignore=1 region, then the crowd box
    torch.testing.assert_close(target["ignore"], torch.tensor([[50.0, 50, 55, 55], [0, 0, 40, 40]]))
    assert target["image_id"] == 1 and target["orig_size"].tolist() == [80, 100]
    image, target = ds[1]  # no annotations
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_collate_pads_and_keeps_dtype(coco_dir: Path) -> None:
    records, _, _ = load_coco(coco_dir / "annotations" / "train.json", coco_dir / "images")
    ds = DetectionDataset(records)
    images, targets = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 80, 100) and images.dtype == torch.uint8
    assert (images[1, :, 50:, :] == 0).all() and (images[1, :, :, 50:] == 0).all()
    assert [t["image_id"] for t in targets] == [1, 2]
    ds = DetectionDataset(records, build_transforms(train=False, image_size=64))
    loader = DataLoader(ds, batch_size=3, collate_fn=collate, num_workers=0)
    images, targets = next(iter(loader))
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32 and len(targets) == 3
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_corrupt_image_raises_or_is_skipped(yolo_dir: Path) -> None:
    records, _, _ = load_yolo(yolo_dir / "images" / "train", names=["cat", "dog"])
    assert records[2].path is not None and records[2].path.name == "000003.jpg"  # the truncated one
    with pytest.raises(CorruptImageError, match="000003.jpg"):
        DetectionDataset(records)[2]
    ds = DetectionDataset(records, skip_corrupt=True)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        image, target = ds[2]
    assert target["image_id"] == 1  # wrapped around to the next readable image
    assert ds.report.unreadable_image == 1 and ds.report.examples["unreadable_image"] == ["000003.jpg"]
    ds[2]  # known bad: skipped without decoding again
    assert ds.report.unreadable_image == 1
    only_bad = DetectionDataset(records[2:], skip_corrupt=True)
    with pytest.warns(UserWarning), pytest.raises(CorruptImageError, match="none of the 1 images"):
        only_bad[0]


def test_boxes_only_records_rejected() -> None:
    with pytest.raises(ValueError, match="no image path"):
        DetectionDataset([ImageRecord(3, None, 10, 10)])


def test_custom_loader_and_size_mismatch(tmp_path: Path) -> None:
    rec = ImageRecord(1, tmp_path / "virtual.png", 40, 40, boxes=[[10, 10, 35, 35]], labels=[0])
    ds = DetectionDataset([rec], image_loader=lambda p: np.zeros((20, 30, 3), dtype=np.uint8))
    with pytest.warns(UserWarning, match="decoded size 30x20 differs"):
        image, target = ds[0]
    assert image.shape == (3, 20, 30)
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 10, 30, 20]]))


def test_mosaic_through_dataset(tmp_path: Path) -> None:
    json_path = write_synthetic_dataset(tmp_path, 4, image_size=96, seed=0, objects_per_image=(3, 5))
    records, _, _ = load_coco(json_path, tmp_path / "images")
    transform = build_transforms(train=True, image_size=64, mosaic=True, mosaic_prob=1.0)
    ds = DetectionDataset(records, transform)
    images, targets = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 64, 64)
    for t in targets:
        assert len(t["boxes"]) == len(t["labels"]) and (t["boxes"] >= 0).all() and (t["boxes"] <= 64).all()


@pytest.mark.realdata
def test_real_truncated_jpeg(shared_data: Path) -> None:
    broken, _, _ = load_voc(shared_data / "broken", annotations=".", images=".")
    good, _, _ = load_voc(shared_data / "bccd", "ImageSets/Main/test.txt")
    with pytest.raises(CorruptImageError, match=r"truncated\.jpg.*skip_corrupt=True"):
        DetectionDataset(broken)[0]
    ds = DetectionDataset(broken + good[:1], skip_corrupt=True)
    with pytest.warns(UserWarning, match="truncated.jpg"):
        image, target = ds[0]
    assert image.shape == (3, 480, 640) and ds.report.unreadable_image == 1


@pytest.mark.realdata
def test_real_ssdd_batch(shared_data: Path) -> None:
    root = shared_data / "ssdd"
    records, _, _ = load_coco(root / "annotations" / "instances_train.json", root / "images")
    ds = DetectionDataset(records[:4], build_transforms(train=True, image_size=256))
    images, targets = collate([ds[i] for i in range(4)])
    assert images.shape == (4, 3, 256, 256) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert all(t["boxes"].dtype == torch.float32 for t in targets)
