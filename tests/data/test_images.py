"""read_image / image_size: colour modes, bit depths, EXIF, and clear errors for bad files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from efpn.data import CorruptImageError, image_size, read_image


def _save(path: Path, im: Image.Image, **kw: object) -> Path:
    im.save(path, **kw)
    return path


def test_rgb_png_exact(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = read_image(_save(tmp_path / "a.png", Image.fromarray(arr)))
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, arr)


def test_grayscale_rgba_palette(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = read_image(_save(tmp_path / "g.png", Image.fromarray(gray)))
    assert out.shape == (3, 4, 3) and (out == gray[..., None]).all()
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    out = read_image(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")))
    assert out.shape == (3, 4, 3) and (out[..., 0] == 200).all()  # alpha dropped, colour kept
    pal = Image.fromarray(np.zeros((3, 4), dtype=np.uint8), "P")
    pal.putpalette([10, 20, 30] + [0] * 765)  # every pixel is palette entry 0
    assert (read_image(_save(tmp_path / "p.png", pal)) == [10, 20, 30]).all()


def test_16bit(tmp_path: Path) -> None:
    gray16 = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[0, :, 0], [0, 100, 255])
    rgb16 = np.zeros((2, 2, 3), dtype=np.uint16)
    rgb16[..., 2] = 65535  # BGR order on disk: red
    cv2.imwrite(str(tmp_path / "c16.tif"), rgb16)
    out = read_image(tmp_path / "c16.tif")
    assert out.shape == (2, 2, 3) and (out[..., 0] == 255).all() and (out[..., 2] == 0).all()


def test_16bit_data_that_uses_a_small_part_of_the_range_is_warned_about(tmp_path: Path) -> None:
    """12-bit sensor values in a 16-bit file read as nearly black: the reader says so and how to rescale."""
    import warnings

    import pytest

    from efpn.data import images

    images._WARNED_LOW_RANGE.clear()  # once per process: another test may have been first
    gray12 = np.array([[0, 1000, 4000]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g12.png"), gray12)
    with pytest.warns(UserWarning, match=r"g12\.png: a 16-bit image uses values up to 4000 only \(12-bit data\?\)"
                                         r".*multiply by 16"):
        out = read_image(tmp_path / "g12.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 4, 16])  # the mapping itself is unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full-range 16-bit image reads without a warning
        cv2.imwrite(str(tmp_path / "full.png"), (gray12.astype(np.uint32) * 16).astype(np.uint16))
        read_image(tmp_path / "full.png")


def test_exif_orientation(tmp_path: Path) -> None:
    im = Image.fromarray(np.zeros((10, 30, 3), dtype=np.uint8))  # 30 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: displayed 10 wide, 30 high
    path = _save(tmp_path / "r.jpg", im, exif=exif)
    assert image_size(path) == (10, 30) and read_image(path).shape == (30, 10, 3)
    assert image_size(path, exif_transpose=False) == (30, 10)


def test_bytes_and_file_objects(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.png", Image.fromarray(np.full((2, 3, 3), 9, dtype=np.uint8)))
    assert read_image(path.read_bytes()).shape == (2, 3, 3)
    assert read_image(io.BytesIO(path.read_bytes())).shape == (2, 3, 3)


def test_bad_files(tmp_path: Path, truncated_jpeg: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image(tmp_path / "missing.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("hello, I am not an image")
    with pytest.raises(CorruptImageError, match="notes.jpg.*not a recognised image"):
        read_image(text)
    with pytest.raises(CorruptImageError):
        image_size(text)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError, match="empty"):
        read_image(empty)
    truncated = truncated_jpeg
    assert image_size(truncated) == (64, 48)  # the header survives
    with pytest.raises(CorruptImageError, match="t.jpg.*truncated.*Re-export or re-download the file.$"):
        read_image(truncated)
    assert issubclass(CorruptImageError, ValueError)


@pytest.mark.realdata
def test_real_truncated_jpeg(shared_data: Path) -> None:
    path = shared_data / "broken" / "truncated.jpg"
    assert image_size(path) == (590, 393)
    with pytest.raises(CorruptImageError, match="truncated.jpg"):
        read_image(path)


@pytest.mark.realdata
def test_real_grayscale_coco_image(shared_data: Path) -> None:
    folder = shared_data / "coco128" / "images" / "train2017"
    gray = next(p for p in sorted(folder.iterdir()) if Image.open(p).mode == "L")
    out = read_image(gray)
    assert out.ndim == 3 and out.shape[2] == 3 and (out[..., 0] == out[..., 2]).all()


def test_a_header_only_opencv_reads_is_refused_before_it_allocates(tmp_path: Path) -> None:
    """A Radiance HDR file (which Pillow cannot open, so OpenCV decodes it) declaring 20000 x 20000 px is refused as
    too large from its header: efpn gives OpenCV Pillow's pixel limit before cv2 loads, so no 4.8 GB buffer is ever
    asked for. Checked in a fresh process (the limit is read when cv2 loads) under a 12 GB address-space cap."""
    import subprocess
    import sys

    hdr = tmp_path / "huge.hdr"
    hdr.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 20000 +X 20000\n")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))\n"
            "from efpn.data.images import ImageTooLargeError, read_image\n"
            "try:\n    read_image(sys.argv[1])\nexcept ImageTooLargeError as e:\n    print('refused:', e)\n")
    cv_temp = tmp_path / "opencv_temp"  # OpenCV decodes HDR from a temporary copy of the bytes, made here
    cv_temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    env["OPENCV_TEMP_PATH"] = str(cv_temp)
    out = subprocess.run([sys.executable, "-c", code, str(hdr)], capture_output=True, text=True, timeout=120, env=env,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused:" in out.stdout and "huge.hdr is too large to decode safely" in out.stdout, out.stdout
    assert "178,956,970" in out.stdout
    assert not list(cv_temp.iterdir())  # the copy OpenCV leaves behind when it raises is removed


def test_a_multi_page_tiff_is_read_as_its_first_page_and_says_so(tmp_path: Path) -> None:
    pages = [Image.fromarray(np.full((16, 24, 3), v, np.uint8)) for v in (10, 200, 90)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.warns(UserWarning, match="stack.tif holds 3 pages or frames; only the first is read"):
        assert int(read_image(path).mean()) == 10
    notes: list[str] = []
    read_image(path.read_bytes(), notes=notes)  # a caller that shows it with the image (the studio)
    assert len(notes) == 1 and notes[0].startswith("The image holds 3 pages")


def test_png_size_reads_an_exif_orientation_after_the_pixels_without_decoding(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """image_size walks a PNG's chunks for eXIf (Pillow's getexif() decoded the whole image to find one written after
    the pixels: ~190 ms for a 4000 x 4000 file at load time); the size still matches what read_image returns."""
    import struct
    import zlib

    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: width and height swap
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png", exif=exif.tobytes())
    data = (tmp_path / "a.png").read_bytes()
    chunks, at = [], 8
    while at < len(data):  # (type, whole chunk bytes)
        (n,) = struct.unpack(">I", data[at:at + 4])
        chunks.append((data[at + 4:at + 8], data[at:at + 12 + n]))
        at += 12 + n
    kinds = [k for k, _ in chunks]
    assert b"eXIf" in kinds and kinds.index(b"eXIf") < kinds.index(b"IDAT")  # Pillow writes it first: move it
    moved = [c for k, c in chunks if k not in (b"eXIf", b"IEND")] + [c for k, c in chunks if k == b"eXIf"]
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    (tmp_path / "b.png").write_bytes(data[:8] + b"".join(moved) + end)
    monkeypatch.setattr(Image.Image, "getexif", lambda self: (_ for _ in ()).throw(AssertionError("decoded")))
    for name in ("a.png", "b.png"):
        assert image_size(tmp_path / name) == (20, 30)
    monkeypatch.undo()
    assert read_image(tmp_path / "b.png").shape == (30, 20, 3)  # as displayed: W=20, H=30


def test_png_exif_in_a_raw_profile_text_chunk_still_turns_the_size(tmp_path: Path) -> None:
    """ImageMagick writes a PNG's EXIF as hex text ('Raw profile type exif'); Pillow and read_image turn the image by
    it, so image_size must too (the chunk walk alone saw no eXIf chunk and gave the unturned size)."""
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()
    text = f"\nexif\n{len(raw):8d}\n" + raw.hex() + "\n"
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", text)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "raw.png", pnginfo=info)
    assert image_size(tmp_path / "raw.png") == (20, 30)
    assert read_image(tmp_path / "raw.png").shape == (30, 20, 3)


def test_an_image_this_user_may_not_read_is_said_so_not_called_damaged(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A file without read permission was 'cannot decode image ... Re-export or re-download the file' (image_size) or
    a bare PermissionError (read_image, which a batch does not skip); it is an unreadable image that says why."""
    from efpn.data import load_yolo

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), np.zeros((10, 10, 3), np.uint8))
        (tmp_path / "labels" / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    denied = tmp_path / "images" / "b.png"
    real_open, real_read = Image.open, Path.read_bytes

    def no_access(path, *a, **kw):
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", str(denied))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(Image, "open", no_access)
    monkeypatch.setattr(Path, "read_bytes", lambda self: no_access(self) if self == denied else real_read(self))
    for reader in (image_size, read_image):
        with pytest.raises(CorruptImageError, match=r"permission denied; give this user read access .*chmod a\+r"):
            reader(denied)
    records, _, report = load_yolo(tmp_path / "images", names=["x"])
    assert [r.path.name for r in records] == ["a.png"]
    assert report.examples["unreadable_image"] == ["b.png (permission denied)"]
