"""Image files: decoding to RGB uint8, header-only sizes, and finding the image that belongs to a label file.

Decoding goes through Pillow first because it *reports* a truncated file (OpenCV silently returns the
partial image with grey rows); OpenCV is the fallback for files Pillow cannot identify (e.g. 16-bit
multi-channel TIFF) or refuses as too large. EXIF orientation is applied both when decoding and when reading
a size from the header, so boxes annotated on the displayed image line up.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import cv2  # its decoding limit was set when the efpn package loaded (efpn._limits)
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from efpn._limits import DECODE_MAX_PIXELS, OPENCV_MAX_PIXELS

__all__ = [
    "IMAGE_EXTENSIONS",
    "CorruptImageError",
    "ImageSource",
    "file_bytes",
    "image_size",
    "index_images",
    "pil_to_array",
    "read_image",
    "to_rgb_uint8",
    "walk_files",
]

#: File suffixes (lower case) treated as images when scanning folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: What :func:`read_image` accepts: a path, raw file bytes, or a binary file object (e.g. an upload).
ImageSource = str | Path | bytes | BinaryIO

# EXIF orientations 5..8 are transposed: the displayed image has width and height swapped.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION_TAG = 0x0112


class CorruptImageError(ValueError):
    """An image file that exists but cannot be decoded (truncated, corrupt, or not an image at all)."""


class ImageTooLargeError(CorruptImageError):
    """An image whose header declares more pixels than the decoder accepts (a decompression bomb, or a huge scan):
    refused before decoding, so it never takes the memory it asks for."""


def _too_large(src: ImageSource, error: Exception) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image {_describe(src)} is too large to decode safely ({error}). Cut it into tiles or downscale it "
        f"with an image tool first; efpn refuses images of more than {DECODE_MAX_PIXELS:,} pixels."
    )


def _describe(src: ImageSource) -> str:
    if isinstance(src, str | Path):
        return str(src)
    if isinstance(src, bytes):
        return f"<{len(src)} bytes>"
    return str(getattr(src, "name", "<file object>"))


def _corrupt(src: ImageSource, why: str) -> CorruptImageError:
    return CorruptImageError(
        f"cannot decode image {_describe(src)}: {why}. Re-export or re-download the file."
    )


def file_bytes(path: str | Path) -> bytes:
    """The bytes of an image file. Raises FileNotFoundError for a missing file and :class:`CorruptImageError` for a
    path that is not a regular file (a folder; a pipe or a device, which would block the reader or never end)."""
    _check_exists(path)
    p = Path(path)
    if not p.is_file():
        raise CorruptImageError(f"{p} is not a regular file (a pipe, socket or device): give the image file itself")
    try:
        return p.read_bytes()
    except PermissionError as e:  # an unreadable file, as a corrupt one, is skipped by a batch: said as what it is
        raise _denied(p) from e


def unreadable_example(path: Path, error: Exception) -> str:
    """How a loader's report names an image it could not read: its file name, and why when that is not damage
    (permission denied), so the report does not send a user to re-download a file it may only not read."""
    return f"{path.name} (permission denied)" if "permission denied" in str(error) else path.name


def _denied(path: Path) -> CorruptImageError:
    """The error for an image file this user may not read (not a damaged file: its advice is about access)."""
    return CorruptImageError(f"cannot read image {path}: permission denied; give this user read access to it "
                             f"(chmod a+r {path}) or move it out of the data")


def _as_bytes(src: ImageSource) -> bytes:
    if isinstance(src, bytes):
        return src
    if isinstance(src, str | Path):
        return file_bytes(src)
    data = src.read()
    if hasattr(src, "seek"):
        src.seek(0)
    return data


def _check_exists(src: ImageSource) -> None:
    if isinstance(src, str | Path):
        p = Path(src)
        if not p.exists():
            raise FileNotFoundError(f"image file {p} does not exist (from {Path.cwd()}); check the path (for a "
                                    "dataset, the image folder in its data YAML)")
        if p.is_dir():
            raise CorruptImageError(f"{p} is a folder, not an image file")


#: A float image whose values stay at or under this is read as [0, 1] (then clipped): interpolation overshoots 1 a
#: little, and 0-255 data that dark would be black either way.
FLOAT_UNIT_MAX = 1.5

_WARNED_LOW_RANGE: list[bool] = []  # whether the low-range 16-bit warning was given in this process


def to_rgb_uint8(arr: np.ndarray, bgr: bool = False, source: str | None = None, *,
                 notes: list[str] | None = None) -> np.ndarray:
    """Any decoded pixel array -> (H, W, 3) uint8 RGB, contiguous.

    * (H, W) or (H, W, 1) grayscale is repeated to 3 channels; (H, W, 2) gray+alpha keeps the gray;
      a 4th (alpha) channel is dropped.
    * uint16 is mapped linearly ``v / 257`` (65535 -> 255); other integer types with values above 255 the same
      way, else taken as 8-bit; a 16-bit image whose values stay below 4096 (10-12-bit sensor data) is mapped the
      same way with a warning that it will be nearly black and how to rescale it (once per process; with
      ``notes`` appended there instead, every time, for a caller that shows it with the image); float images up to
      :data:`FLOAT_UNIT_MAX` are read as [0, 1] and scaled by 255, others as 0-255; both clipped to [0, 255].
    * ``bgr=True`` for OpenCV-decoded colour arrays.
    * ``source`` names the file in the low-range warning (the first one in a dataset of them is named).
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 2:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise CorruptImageError(f"unsupported pixel array shape {a.shape}")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind in "ui":
        is_16bit = (a.dtype.kind == "u" and a.dtype.itemsize == 2) or (a.size > 0 and int(a.max()) > 255)
        if is_16bit and a.size and 0 < int(a.max()) < 4096 and (notes is not None or not _WARNED_LOW_RANGE):
            # 10-14-bit sensor data (infrared, SAR, microscopy) is often stored in 16-bit files: the linear
            # 16 -> 8 bit mapping makes it nearly black, and a detector then finds nothing without saying why
            bits = max(int(a.max()).bit_length(), 8)
            named = "A" if source is None else f"{source}: a"
            said = (f"{named} 16-bit image uses values up to {int(a.max())} only ({bits}-bit data?): read as 16-bit "
                    f"it becomes nearly black (at most {round(int(a.max()) / 257)} of 255). Rescale it to the full "
                    f"range first (e.g. multiply by {2 ** (16 - bits)}), or save it as 8-bit.")
            if notes is not None:  # the caller shows it with this image (e.g. the studio, per upload)
                notes.append(said)
            else:
                _WARNED_LOW_RANGE.append(True)  # once per process: a dataset of them would repeat it for every image
                warnings.warn(f"{said} Said once per process: other images like it are read the same way without "
                              "a warning", stacklevel=2)
        scaled = np.round(a.astype(np.float64) / 257.0) if is_16bit else a
        a = np.clip(scaled, 0, 255).astype(np.uint8)
    else:
        f = np.nan_to_num(a.astype(np.float64))
        if f.size and f.max() <= FLOAT_UNIT_MAX:  # [0, 1], resampling overshoot included (1.0001 is not 0-255 data)
            f = f * 255.0
        a = np.clip(np.round(f), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    a = a[:, :, :3]
    if bgr:
        a = a[:, :, ::-1]
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()  # Pillow's buffers are read-only; torch wants writable


def pil_to_array(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F", "L", "RGB"):
        return np.asarray(im)
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))  # P, PA, LA, RGBA, CMYK, YCbCr, ...


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log for the ``with`` block: a decoder failure it would print to stderr (``[ERROR:0@0.01]
    ... readHeader``) is reported by efpn, with the file and what to do, from the ``None`` OpenCV returns."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:
        yield
        return
    before = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(before)


def _remove_opencv_copies(data: bytes) -> None:
    """Remove the temporary copies of ``data`` that ``cv2.imdecode`` left behind.

    OpenCV decodes some formats (Radiance HDR) from a copy of the bytes in a file named ``__opencv_temp.*`` (in
    ``$OPENCV_TEMP_PATH``, else /tmp) and does not remove it when it refuses the header by raising (a size over its
    pixel limit): every such file would stay, one per upload. Only regular files holding exactly these bytes go."""
    folder = Path(os.environ.get("OPENCV_TEMP_PATH") or "/tmp")
    with contextlib.suppress(OSError):
        for path in folder.glob("__opencv_temp.*"):
            with contextlib.suppress(OSError):
                if (path.is_file() and not path.is_symlink() and path.stat().st_size == len(data)
                        and path.read_bytes() == data):
                    path.unlink()


def _decode_cv2(data: bytes, src: ImageSource, notes: list[str] | None = None) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        with quiet_opencv():
            arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    except cv2.error as e:  # OpenCV refuses some headers (e.g. sizes over its own limit) by raising
        _remove_opencv_copies(data)
        if "CV_IO_MAX_IMAGE_PIXELS" in str(e):
            raise _too_large(src, ValueError(f"its header declares more than {OPENCV_MAX_PIXELS:,} pixels")) from e
        raise _corrupt(src, f"OpenCV cannot decode it ({str(e).strip().splitlines()[-1][:200]})") from e
    if arr is None:
        raise _corrupt(src, "not a recognised image format")
    if arr.shape[0] * arr.shape[1] > DECODE_MAX_PIXELS:  # cv2 loaded before efpn set its limit: refuse it anyway
        raise _too_large(src, ValueError(f"it has {arr.shape[0] * arr.shape[1]:,} pixels; OpenCV was loaded before "
                                         "efpn could limit it, so it was decoded before being refused"))
    colour = arr.ndim == 3 and arr.shape[2] >= 3
    return to_rgb_uint8(arr, bgr=colour, source=None if isinstance(src, bytes) else _describe(src), notes=notes)


def read_image(src: ImageSource, exif_transpose: bool = True, *, notes: list[str] | None = None) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 RGB array.

    Handles grayscale, palette, RGBA (alpha dropped), 16-bit and float images (see :func:`to_rgb_uint8`; ``notes``
    collects what the reader would warn about this image, e.g. 12-bit data in a 16-bit file).

    Raises:
        FileNotFoundError: ``src`` is a path that does not exist.
        CorruptImageError: the file is truncated, corrupt or not an image; the message names the file and
            what to do.
    """
    _check_exists(src)
    data = _as_bytes(src)
    if not data:
        raise _corrupt(src, "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise _too_large(src, e) from e
    except UnidentifiedImageError:
        return _decode_cv2(data, src, notes)  # formats Pillow cannot open
    except (OSError, SyntaxError, ValueError) as e:
        raise _corrupt(src, str(e)) from e
    frames = int(getattr(im, "n_frames", 1) or 1)
    if frames > 1:  # a multi-page TIFF, an animated WebP or GIF: detection is on one picture
        said = (f"{'The image' if isinstance(src, bytes) else _describe(src)} holds {frames} pages or frames; only "
                "the first is read. Save each as its own image to detect on the others.")
        if notes is not None:
            notes.append(said)
        else:
            warnings.warn(said, stacklevel=2)
    try:
        with im:
            im.load()  # truncated files raise here ("image file is truncated")
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            arr = pil_to_array(im)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise _corrupt(src, str(e) or type(e).__name__) from e
    return to_rgb_uint8(arr, source=None if isinstance(src, bytes) else _describe(src), notes=notes)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


#: Keywords of PNG text chunks that hold EXIF as hex text (ImageMagick, older exiftool); Pillow reads them too.
_RAW_EXIF_KEYWORDS = (b"Raw profile type exif", b"Raw profile type APP1")


def _png_exif_orientation(path: str | Path) -> int | None | str:
    """The EXIF orientation of a PNG from its ``eXIf`` chunk, found by walking the chunk headers (no pixel data is
    read or inflated); None without one; ``"text"`` when the EXIF is in a text chunk instead (for Pillow to read)."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"eXIf":
                exif = Image.Exif()
                exif.load(f.read(length))
                value = exif.get(_EXIF_ORIENTATION_TAG)
                return int(value) if isinstance(value, int) else None
            if kind == b"IEND":
                return None
            if kind in (b"tEXt", b"zTXt", b"iTXt"):
                keyword = f.read(min(length, 80)).split(b"\0", 1)[0]
                if keyword in _RAW_EXIF_KEYWORDS:
                    return "text"
                f.seek(length - min(length, 80) + 4, 1)
                continue
            f.seek(length + 4, 1)  # the chunk's data and CRC


def _orientation(im: Image.Image, path: str | Path) -> int | None:
    """The EXIF orientation :func:`read_image` applies. Pillow's ``getexif()`` on a PNG decodes the whole image to
    look for an ``eXIf`` chunk after the pixels (~190 ms on a 4000 x 4000 file against 0.4 ms for a header), so
    PNG chunks are walked instead."""
    if im.format == "PNG":
        found = _png_exif_orientation(path)
        if found != "text":
            return found if isinstance(found, int) else None
    value = im.getexif().get(_EXIF_ORIENTATION_TAG)  # Pillow's reader (a PNG with text-chunk EXIF: a decode, rare)
    return int(value) if isinstance(value, int) else None


def image_size(path: str | Path, exif_transpose: bool = True) -> tuple[int, int]:
    """``(width, height)`` from the file header without decoding the pixels (EXIF orientation applied).

    Raises FileNotFoundError for a missing file and :class:`CorruptImageError` when the header is unreadable.
    """
    _check_exists(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if exif_transpose and _orientation(im, path) in _TRANSPOSED_ORIENTATIONS:
                    w, h = h, w
                return int(w), int(h)
    except Image.DecompressionBombError as e:
        raise _too_large(path, e) from e
    except UnidentifiedImageError:
        h, w = read_image(path, exif_transpose=exif_transpose).shape[:2]
        return int(w), int(h)
    except PermissionError as e:
        raise _denied(Path(path)) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise _corrupt(path, str(e)) from e


def walk_files(folder: str | Path, recursive: bool = True,
               unreadable: list[tuple[Path, str]] | None = None, follow_links: bool = False) -> list[Path]:
    """The files under ``folder`` (every entry that is not a folder; links to files included), sorted.

    As ``Path.rglob("*")`` (``iterdir`` when not ``recursive``), links to folders are not followed unless
    ``follow_links`` (then each real folder is walked once: a link loop, or two links to one folder, is not walked
    again); unlike it, a subfolder that cannot be listed (permission denied, an I/O error) is not passed over in
    silence: it is appended to ``unreadable`` as ``(folder, reason)`` for the caller to report (its files were not
    read). Raises PermissionError / OSError, saying so, when ``folder`` itself cannot be listed.
    """
    root = Path(folder)
    errors: list[OSError] = []
    out: list[Path] = []
    walked: set[str] = set()
    for here, subfolders, files in os.walk(root, onerror=errors.append, followlinks=follow_links):
        if follow_links:
            real = os.path.realpath(here)
            if real in walked:
                subfolders[:] = []  # os.walk is top-down: emptying the list prunes the walk below
                continue
            walked.add(real)
        out += [Path(here, f) for f in files]
        if not recursive:
            break
    for e in errors:
        where = Path(e.filename) if e.filename is not None else root
        if where == root:
            raise type(e)(e.errno, f"cannot list the folder {root}: {e.strerror or e}; check that it exists and "
                                   "that this user may read it", str(root))
        if unreadable is not None:
            unreadable.append((where, e.strerror or str(e)))
    return sorted(out)


def index_images(folder: str | Path, recursive: bool = True, shadowed: list[tuple[Path, Path]] | None = None,
                 unreadable: list[tuple[Path, str]] | None = None) -> dict[str, Path]:
    """Map ``relative/path/stem`` (POSIX, no suffix) -> image path for every image under ``folder``.

    When two files share a stem (``a.jpg`` and ``a.png``) the first in sorted order wins; ``shadowed``, when given,
    receives ``(left out, kept)`` for each such pair, for the loader to report (one annotation names both).
    ``unreadable`` receives the subfolders that could not be listed (:func:`walk_files`).
    """
    root = Path(folder)
    out: dict[str, Path] = {}
    for p in walk_files(root, recursive, unreadable):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            key = p.relative_to(root).with_suffix("").as_posix()
            kept = out.setdefault(key, p)
            if kept is not p and shadowed is not None:
                shadowed.append((p, kept))
    return out
