"""Transforms keep boxes on their pixels: letterbox, flips, tile crop, mosaic, the built pipelines."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from efpn.data import build_transforms, letterbox, unletterbox_boxes
from efpn.data.transforms import Mosaic, RandomTileCrop, _crop_sample, _unwrap, _wrap, random_flip


def _white_box_sample(h: int, w: int, box: list[int], label: int = 1) -> tuple[Tensor, dict]:
    """Black uint8 image with a white rectangle exactly at ``box`` (xyxy, integer px)."""
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 255
    target = {
        "boxes": torch.tensor([box], dtype=torch.float32),
        "labels": torch.tensor([label]),
        "image_id": 5,
    }
    return image, target


def _bright_extent(image: Tensor, thresh: float) -> list[float]:
    """xyxy extent of the pixels brighter than ``thresh`` (channel mean)."""
    ys, xs = torch.nonzero(image.float().mean(0) > thresh, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]


def test_letterbox_geometry() -> None:
    image = torch.zeros(3, 50, 100, dtype=torch.uint8)
    out, info = letterbox(image, 64)
    assert out.shape == (3, 64, 64)
    assert (info.scale_x, info.scale_y, info.pad_left, info.pad_top) == (0.64, 0.64, 0, 0)
    assert (out[:, 32:, :] == 114).all() and (out[:, :32, :] == 0).all()  # padded bottom with grey
    out, info = letterbox(image, 64, center=True)
    assert info.pad_top == 16 and (out[:, :16] == 114).all() and (out[:, 16:48] == 0).all()
    boxes = torch.tensor([[10.0, 5.0, 30.0, 45.0]])
    torch.testing.assert_close(info.to_original(info.to_letterbox(boxes)), boxes)
    torch.testing.assert_close(unletterbox_boxes(info.to_letterbox(boxes), info.as_tensor()), boxes)
    small, info = letterbox(torch.zeros(3, 10, 20, dtype=torch.uint8), 64, scale_up=False)
    assert info.scale_x == 1.0 and small.shape == (3, 64, 64)


def test_eval_pipeline_box_covers_bright_region() -> None:
    image, target = _white_box_sample(120, 200, [40, 30, 120, 70])
    out, t = build_transforms(train=False, image_size=100)(image, target)
    assert out.dtype == torch.float32 and out.shape == (3, 100, 100) and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(t["boxes"], torch.tensor([[20.0, 15.0, 60.0, 35.0]]))
    torch.testing.assert_close(torch.tensor(_bright_extent(out, 0.5)), t["boxes"][0])
    torch.testing.assert_close(unletterbox_boxes(t["boxes"], t["letterbox"]), target["boxes"])
    assert t["image_id"] == 5 and t["labels"].tolist() == [1]


@pytest.mark.parametrize("vertical", [False, True])
def test_flips_exact(vertical: bool) -> None:
    image = torch.randint(0, 255, (3, 6, 9), dtype=torch.uint8)
    img, tgt = _wrap(image, {"boxes": torch.tensor([[1.0, 2.0, 4.0, 5.0]]), "labels": torch.tensor([0])})
    out, t = _unwrap(*random_flip(p=1.0, vertical=vertical)(img, tgt))
    if vertical:
        torch.testing.assert_close(out, image.flip(-2))
        torch.testing.assert_close(t["boxes"], torch.tensor([[1.0, 1.0, 4.0, 4.0]]))  # y -> 6 - y
    else:
        torch.testing.assert_close(out, image.flip(-1))
        torch.testing.assert_close(t["boxes"], torch.tensor([[5.0, 2.0, 8.0, 5.0]]))  # x -> 9 - x
    same, t = _unwrap(*random_flip(p=0.0, vertical=vertical)(img, tgt))
    torch.testing.assert_close(same, image)


def test_tile_crop_keeps_tiny_object_pixels() -> None:
    """A 6 px object in a 1000x800 image survives the crop at native size, inside the window."""
    image, target = _white_box_sample(800, 1000, [700, 600, 706, 606])
    crop = RandomTileCrop(256, box_prob=1.0)
    for _ in range(20):
        img, tgt = _unwrap(*crop(*_wrap(image, target)))
        assert img.shape == (3, 256, 256)
        assert len(tgt["boxes"]) == 1
        box = tgt["boxes"][0]
        torch.testing.assert_close(box[2:] - box[:2], torch.tensor([6.0, 6.0]))
        torch.testing.assert_close(torch.tensor(_bright_extent(img, 128)), box)


def test_crop_routes_cut_boxes_to_ignore_and_drops_outside() -> None:
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10, 20, 20], [45, 10, 55, 20], [48, 30, 60, 40], [80, 80, 90, 90]])
    img, tgt = _wrap(image, {"boxes": boxes, "labels": torch.tensor([0, 1, 2, 3])})
    _, t = _unwrap(*_crop_sample(img, tgt, 0, 0, 50, 50, min_visibility=0.3))
    # box 0 whole; box 1 keeps half (>= 0.3) -> clipped target; box 2 keeps 2/12 -> ignore; box 3 outside -> gone
    torch.testing.assert_close(t["boxes"], torch.tensor([[10.0, 10, 20, 20], [45, 10, 50, 20]]))
    assert t["labels"].tolist() == [0, 1]
    torch.testing.assert_close(t["ignore"], torch.tensor([[48.0, 30, 50, 40]]))


def test_train_pipeline_alignment() -> None:
    """Crop + flips + letterbox: the box still covers exactly the white region (jitter is off: it moves no
    pixel, and it could make the white darker than the grey letterbox padding)."""
    torch.manual_seed(1)
    transform = build_transforms(train=True, image_size=128, color_jitter=False)
    hits = 0
    for size, box in (((300, 400), [250, 100, 262, 110]), ((90, 60), [10, 20, 30, 50])):
        image, target = _white_box_sample(*size, box)
        for _ in range(10):
            out, t = transform(image, target)
            assert out.shape == (3, 128, 128) and out.dtype == torch.float32
            assert len(t["boxes"]) == len(t["labels"])
            if len(t["boxes"]) == 0:  # a uniform window (20 %) that missed the object, or cut it
                assert not (out.mean(0) > 0.6).any() or len(t["ignore"]) == 1
                continue
            extent = torch.tensor(_bright_extent(out, 0.6))
            torch.testing.assert_close(extent, t["boxes"][0], atol=1.0, rtol=0)
            hits += 1
    assert hits >= 12


def test_degenerate_boxes_removed_with_labels() -> None:
    image, target = _white_box_sample(64, 64, [10, 10, 20, 20])
    target["boxes"] = torch.tensor([[10.0, 10, 20, 20], [30, 30, 30, 40], [70, 70, 80, 80]])
    target["labels"] = torch.tensor([1, 2, 3])
    _, t = build_transforms(train=False, image_size=64)(image, target)
    assert t["labels"].tolist() == [1] and t["boxes"].shape == (1, 4)


def test_mosaic_tiles_four_samples() -> None:
    torch.manual_seed(0)
    samples = [_wrap(*_white_box_sample(200, 200, [90, 90, 110, 110], label=k)) for k in range(4)]
    img, t = _unwrap(*Mosaic(128, box_prob=1.0)(samples))
    assert img.shape == (3, 128, 128) and img.dtype == torch.uint8
    assert sorted(t["labels"].tolist()) == sorted(set(t["labels"].tolist()))
    assert len(t["boxes"]) + len(t["ignore"]) >= 1
    for box in t["boxes"]:
        x1, y1, x2, y2 = box.round().int().tolist()
        assert (img[:, y1:y2, x1:x2] == 255).all()
    with pytest.raises(ValueError, match="4 samples"):
        Mosaic(128)(samples[:2])


def test_mosaic_pipeline_uses_extras() -> None:
    transform = build_transforms(train=True, image_size=96, mosaic=True, mosaic_prob=1.0)
    assert transform.num_extra == 3
    samples = [_white_box_sample(150, 150, [60, 60, 70, 70], label=k) for k in range(4)]
    out, t = transform(*samples[0], extras=samples[1:])
    assert out.shape == (3, 96, 96) and len(t["boxes"]) == len(t["labels"])
    assert "mosaic=True" in repr(transform)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        build_transforms(False, 32)(torch.zeros(32, 32, 3, dtype=torch.uint8), {"boxes": torch.zeros(0, 4)})
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        build_transforms(False, 32)(
            torch.zeros(3, 8, 8, dtype=torch.uint8), {"boxes": torch.zeros(2, 4), "labels": torch.zeros(1)}
        )


def test_tile_crop_zoom_out_then_letterbox() -> None:
    """A zoomed-out window is larger than the model size; the letterbox shrinks it, boxes follow."""
    torch.manual_seed(3)
    image, target = _white_box_sample(600, 600, [300, 300, 340, 340])
    crop = RandomTileCrop(100, box_prob=1.0, zoom_out=4.0)
    sides = set()
    for _ in range(10):
        img, tgt = crop(*_wrap(image, target))
        sides.add(img.shape[-1])
        assert len(tgt["boxes"]) == 1 and 100 <= img.shape[-1] <= 400
    assert len(sides) > 3
    transform = build_transforms(train=True, image_size=100, zoom_out=4.0, color_jitter=False)
    for _ in range(10):
        out, t = transform(image, target)
        if len(t["boxes"]):
            extent = torch.tensor(_bright_extent(out, 0.6))
            torch.testing.assert_close(extent, t["boxes"][0], atol=1.0, rtol=0)
    with pytest.raises(ValueError, match="zoom_out"):
        RandomTileCrop(100, zoom_out=0.5)


def test_tile_crop_zoom_in_enlarges_and_never_shrinks() -> None:
    """zoom_in draws windows down to size / zoom_in (never larger than size without zoom_out); the letterbox
    enlarges them back to the model size and the box follows the object; a small image is cropped too."""
    torch.manual_seed(5)
    image, target = _white_box_sample(300, 300, [140, 140, 160, 160])
    crop = RandomTileCrop(100, box_prob=1.0, zoom_in=2.0)
    sides = set()
    for _ in range(20):
        img, tgt = crop(*_wrap(image, target))
        sides.add(img.shape[-1])
        assert len(tgt["boxes"]) == 1 and 50 <= img.shape[-1] <= 100
    assert len(sides) > 5 and min(sides) < 75
    transform = build_transforms(train=True, image_size=100, zoom_in=2.0, color_jitter=False, record_letterbox=True)
    grown = 0
    for _ in range(10):
        out, t = transform(image, target)
        if len(t["boxes"]):
            torch.testing.assert_close(torch.tensor(_bright_extent(out, 0.6)), t["boxes"][0], atol=1.0, rtol=0)
            side = float(t["boxes"][0, 2] - t["boxes"][0, 0])
            assert side >= 20 - 1.0  # the 20 px object is never shrunk
            grown += side > 25
        assert float(t["letterbox"][0]) >= 1.0
    assert grown > 0
    small, small_target = _white_box_sample(80, 80, [30, 30, 40, 40])
    assert any(crop(*_wrap(small, small_target))[0].shape[-1] < 80 for _ in range(10))


def test_tile_crop_without_zoom_draws_nothing() -> None:
    """Without zoom the window is the model size and no random number is spent on it (seeded runs that never
    asked for zoom sample exactly as before it existed); zoom factors under 1 or not finite are refused."""
    crop = RandomTileCrop(100)
    state = torch.get_rng_state()
    assert crop.draw_size() == (100, 100)
    assert torch.equal(state, torch.get_rng_state())
    image, target = _white_box_sample(90, 90, [10, 10, 20, 20])
    out, _ = crop(*_wrap(image, target))
    assert out.shape[-2:] == (90, 90) and torch.equal(state, torch.get_rng_state())
    # an image larger than the window: the draws are exactly the window's own (box choice, position), as before
    large, large_target = _white_box_sample(300, 260, [140, 120, 160, 150])
    for seed in range(5):
        torch.manual_seed(seed)
        got, _ = crop(*_wrap(large, large_target))
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        top, left, h, w = crop.window(*_wrap(large, large_target), size=(100, 100))
        assert torch.equal(after, torch.get_rng_state())
        assert torch.equal(got, large[:, top:top + h, left:left + w]) and (h, w) == (100, 100)
    for bad in (dict(zoom_in=0.5), dict(zoom_in=float("nan")), dict(zoom_out=float("inf"))):
        with pytest.raises(ValueError, match="zoom_"):
            RandomTileCrop(100, **bad)
