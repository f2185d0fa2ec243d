"""efpn.infer.slicing: tile geometry and sliced inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import efpn
from efpn.data.synthetic import make_synthetic_sample
from efpn.infer.slicing import MAX_TILES, TooManyTilesError, num_tiles, sliced_predict, smallest_tile, tile_windows


def test_windows_cover_the_image_with_equal_tiles() -> None:
    wins = tile_windows(100, 300, 64, 0.25)
    cover = np.zeros((100, 300), bool)
    for x1, y1, x2, y2 in wins:
        assert (x2 - x1, y2 - y1) == (64, 64) and x1 >= 0 and y1 >= 0 and x2 <= 300 and y2 <= 100
        cover[y1:y2, x1:x2] = True
    assert cover.all()
    assert len(wins) == num_tiles((100, 300), 64, 0.25)
    xs = sorted({w[0] for w in wins})
    assert all(b - a <= 64 - 16 for a, b in zip(xs, xs[1:]))  # at least 16 px (25 %) overlap


def test_small_image_is_one_window() -> None:
    assert tile_windows(50, 40, 64, 0.2) == [(0, 0, 40, 50)]
    with pytest.raises(ValueError):
        tile_windows(50, 40, 64, 1.0)


def test_one_tile_equals_whole_image_prediction() -> None:
    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=3).eval()
    rgb = make_synthetic_sample(1, 0, 128, 3, 20).image
    out = sliced_predict(model, rgb, tile=256, overlap=0.2, score_thresh=0.0, nms_iou=0.5)
    ref = efpn.inspect(model, rgb, score_thresh=0.0, nms_iou=0.5).detections
    assert out["num_tiles"] == 1
    torch.testing.assert_close(out["boxes"], ref["boxes"])
    torch.testing.assert_close(out["scores"], ref["scores"])


def test_tiles_map_boxes_back_to_the_full_image() -> None:
    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=3).eval()
    rgb = make_synthetic_sample(1, 1, (256, 160), 3, 20).image
    out = sliced_predict(model, rgb, tile=96, overlap=0.25, score_thresh=0.0, nms_iou=0.5, max_det=50)
    assert out["num_tiles"] == len(tile_windows(160, 256, 96, 0.25)) and out["tiles"].shape == (out["num_tiles"], 4)
    b = out["boxes"]
    assert 0 < len(b) <= 50
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 256).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 160).all()
    assert (out["scores"][:-1] >= out["scores"][1:]).all()
    assert out["levels"].max() < len(model.levels)


@pytest.mark.parametrize("hw", [(480, 640), (3000, 4000), (8, 20000)])
@pytest.mark.parametrize("overlap", [0.0, 0.2, 0.5, 0.9])
def test_smallest_tile_is_the_least_side_within_the_limit(hw: tuple[int, int], overlap: float) -> None:
    side = smallest_tile(hw, overlap, 4096)
    assert num_tiles(hw, side, overlap) <= 4096
    assert side == 8 or num_tiles(hw, side - 1, overlap) > 4096


def test_too_many_tiles_are_refused_before_any_forward() -> None:
    """An 8 px tile of a 640 x 480 image is 8,560 forwards: refused at once, with a tile side that fits."""

    class NoForward(torch.nn.Module):
        @property
        def config(self):  # sliced_predict reads the postprocess defaults and the input size before slicing
            return efpn.build_model("tiny_efpn_n", num_classes=1).config

        def forward(self, *a, **k):
            raise AssertionError("no forward may run before the tile count is checked")

    rgb = np.zeros((480, 640, 3), np.uint8)
    with pytest.raises(TooManyTilesError, match=r"8560 windows, more than the limit of 4096.*at least 11 px"):
        sliced_predict(NoForward().eval(), rgb, tile=8, overlap=0.2)
    assert num_tiles((480, 640), 11, 0.2) <= MAX_TILES < num_tiles((480, 640), 10, 0.2)


@pytest.mark.parametrize(("tile", "overlap", "match"), [
    (32.5, 0.2, "whole pixels"), (True, 0.2, "whole pixels"), (float("nan"), 0.2, "whole pixels"),
    (-5, 0.2, ">= 8 px"), (0, 0.2, ">= 8 px"),
    (64, float("nan"), r"\[0, 1\)"), (64, 1.0, r"\[0, 1\)"), (64, -0.1, r"\[0, 1\)"), (64, "0.2", r"\[0, 1\)"),
])
def test_tile_and_overlap_are_checked_first(tile, overlap, match) -> None:
    """The Python API said "use tiles of at least 1937 px" for overlap 1 (following it failed again), raised a bare
    TypeError for a float tile and "cannot convert float NaN to integer" for a NaN overlap."""
    model = efpn.build_model("tiny_efpn_n", num_classes=1).eval()
    with pytest.raises(ValueError, match=match):
        sliced_predict(model, np.zeros((2000, 2000, 3), np.uint8), tile=tile, overlap=overlap)


def test_a_whole_float_tile_is_taken() -> None:
    from efpn.infer.slicing import check_slicing

    assert check_slicing(64.0, 0) == (64, 0.0)


def test_an_image_over_one_inputs_pixel_limit_is_still_detected_whole_and_in_tiles() -> None:
    """Tiles take images up to 400 MP, but the whole-image pass (and a tile as large as the image) went through the
    50 MP limit of one network input: the tiles' work was thrown away and the image skipped, with advice to use the
    --slice it was run with."""
    from efpn.infer.preprocess import MAX_PIXELS

    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=3, image_size=128).eval()
    side = 7200  # 51.8 MP
    assert side * side > MAX_PIXELS
    rgb = np.zeros((side, side, 3), np.uint8)
    rgb[3000:3400, 5000:5400] = 255  # one large bright square, for the whole-image pass to see
    out = sliced_predict(model, rgb, tile=4000, overlap=0.1, score_thresh=0.0, nms_iou=0.5, max_det=50)
    assert out["num_tiles"] == 4 and len(out["boxes"]) > 0
    assert float(out["boxes"][:, 2].max()) <= side and float(out["boxes"][:, 3].max()) <= side
    one = sliced_predict(model, rgb, tile=8000, overlap=0.1, score_thresh=0.0, nms_iou=0.5, max_det=50)
    assert one["num_tiles"] == 1 and len(one["boxes"]) > 0  # one window as large as the image
    assert float(one["boxes"][:, 2:].max()) > 1000  # boxes in the image's pixels, not the shrunk input's


def test_sliced_settings_are_checked_as_predict_checks_them() -> None:
    model = efpn.build_model("tiny_efpn_n", num_classes=3).eval()
    with pytest.raises(ValueError, match="max_det must be a whole number"):
        sliced_predict(model, np.zeros((64, 64, 3), np.uint8), tile=32, max_det=1.5)  # was rounded down to 1
