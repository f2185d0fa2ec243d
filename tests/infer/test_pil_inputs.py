"""A PIL image is read as its pixel data: 16-bit, 32-bit and float modes get the same scaling as the same data given
as a file or an array (Pillow's convert("RGB") clips them to white or black), and an undecodable one is said."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

import efpn
from efpn.infer import predict_image, sliced_predict, to_rgb_uint8
from efpn.infer.preprocess import pil_pixels


def _gray8() -> np.ndarray:
    """A dark 8-bit scene (60 x 80) with one bright spot: not flat, so a wrong scaling shows."""
    a = (np.random.default_rng(0).random((60, 80)) * 60).astype(np.uint8)
    a[20:26, 30:36] = 250
    return a


def _save16(path: Path) -> np.ndarray:
    """Write the scene as a 16-bit grayscale PNG (full 16-bit range); returns the uint16 array."""
    a16 = _gray8().astype(np.uint16) * 257
    Image.fromarray(a16).save(path)
    return a16


def test_16_bit_pil_image_reads_as_the_same_file_given_as_a_path(tmp_path: Path) -> None:
    a16 = _save16(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as im:
        assert im.mode == "I;16"
        got = to_rgb_uint8(im)
    want = to_rgb_uint8(tmp_path / "gray16.png")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, to_rgb_uint8(a16))
    np.testing.assert_array_equal(got[..., 0], _gray8())  # 257 v / 257 = v: not Pillow's all-white 255
    assert got.min() < 100


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_and_float_modes_scale_as_their_arrays(mode: str) -> None:
    gray = _gray8()
    if mode == "F":
        data = gray.astype(np.float32) / 255  # float in [0, 1]: Pillow's convert makes it all black
    else:
        data = gray.astype(np.int32 if mode == "I" else np.uint16) * 257  # up to 65535: Pillow's convert is white
    im = Image.fromarray(data, mode=mode) if mode != "I;16" else Image.fromarray(data)
    assert im.mode == mode
    got = to_rgb_uint8(im)
    np.testing.assert_array_equal(got, to_rgb_uint8(data))
    np.testing.assert_array_equal(got[..., 0], gray)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "1", "LA"])
def test_8_bit_modes_are_read_as_before(mode: str) -> None:
    rgb = np.stack([_gray8(), _gray8()[::-1], _gray8()[:, ::-1]], axis=2)
    im = Image.fromarray(rgb).convert(mode)
    np.testing.assert_array_equal(to_rgb_uint8(im), np.asarray(im.convert("RGB")))


def test_float_pil_image_is_checked_as_a_float_array() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_rgb_uint8(Image.fromarray(np.full((16, 16), np.nan, np.float32), mode="F"))
    with pytest.raises(ValueError, match="looks normalised"):
        to_rgb_uint8(Image.fromarray(np.full((16, 16), -2.0, np.float32), mode="F"))


def test_truncated_lazily_opened_pil_image_is_said_with_its_file(tmp_path: Path) -> None:
    _save16(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    im = Image.open(tmp_path / "cut.png")  # only the header is read here
    with pytest.raises(ValueError, match=r"PIL image \(opened from .*cut\.png\) could not be decoded.*re-download"):
        to_rgb_uint8(im)
    with Image.open(tmp_path / "whole.png") as closed:
        pass
    with pytest.raises(ValueError, match=r"whole\.png\) could not be decoded: its file was closed.*\.load\(\)"):
        to_rgb_uint8(closed)  # closed before its pixels were read
    with Image.open(tmp_path / "whole.png") as loaded:
        loaded.load()
    assert to_rgb_uint8(loaded).shape == (60, 80, 3)  # read inside the block: its pixels are held


def test_pil_image_over_the_pixel_limit_is_refused_before_decoding() -> None:
    im = Image.new("L", (100, 100))
    with pytest.raises(ValueError, match="10,000 pixels, over the 9,999 limit"):
        pil_pixels(im, max_pixels=9_999)
    with pytest.raises(ValueError, match="over the 9,999 limit"):
        to_rgb_uint8(im, max_pixels=9_999)


def test_predict_inspect_and_slices_of_a_16_bit_pil_image_match_its_path(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = efpn.build_model("yolov8n", num_classes=1).eval()
    _save16(tmp_path / "gray16.png")
    path = tmp_path / "gray16.png"
    kw = {"score_thresh": 0.0, "max_det": 20, "image_size": 64}  # an untrained model keeps detections at 0
    want = predict_image(model, path, **kw)
    assert len(want["boxes"]) > 0
    with Image.open(path) as im:
        got = predict_image(model, im, **kw)
    for key in ("boxes", "scores", "labels"):
        assert_close(got[key], want[key])
    with Image.open(path) as im:
        ins = efpn.inspect(model, im, image_size=64)
    np.testing.assert_array_equal(ins.image, to_rgb_uint8(path))
    with Image.open(path) as im:
        sliced = sliced_predict(model, im, tile=48, **kw)
    assert_close(sliced["boxes"], sliced_predict(model, path, tile=48, **kw)["boxes"])
