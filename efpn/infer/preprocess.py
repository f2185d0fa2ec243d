"""Turning what users hold (arrays, PIL images, tensors, file paths) into model input, and back.

One convention everywhere: the image is resized so its long side equals the model size (aspect kept, no padding
here — the detector pads bottom/right itself), and ``scale = network px / original px`` maps boxes both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from efpn.config.model import MAX_IMAGE_SIZE
from efpn.data.images import CorruptImageError, pil_to_array
from efpn.data.images import to_rgb_uint8 as pixels_to_rgb_uint8

#: Refuse images above this many pixels (decompression bombs); the studio downsizes before this.
MAX_PIXELS = 50_000_000
#: The smallest side a network input may have (a detector's checks refuse less).
MIN_SIDE = 8
#: The largest network long side :func:`prepare` resizes to: the one a model config and the CLI's ``--image-size``
#: take (a larger single input does not fit in memory on most machines; sliced inference tiles large images).
MAX_SIDE = MAX_IMAGE_SIZE


@dataclass(frozen=True)
class Prepared:
    """A batch-of-one network input and the mapping back to the original image."""

    tensor: Tensor  # (1, 3, h, w) float in [0, 1]
    scale: float  # network px / original px
    orig_hw: tuple[int, int]


#: How far below 0 a float image may reach (resampling overshoot) before it is taken for normalised input.
NEGATIVE_SLACK = 0.05


def to_rgb_uint8(image: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any supported image -> contiguous (H, W, 3) uint8 RGB.

    Accepts a path (read with :func:`efpn.data.dataset.read_image`), a PIL image, a numpy array (H, W),
    (H, W, 1), (H, W, 3), (H, W, 4) of uint8 / uint16 / float in [0, 1], or a tensor (3, H, W) / (H, W, 3).
    A PIL image is read as its pixel array (:func:`pil_pixels`), so a 16-bit, 32-bit or float image is scaled
    exactly as the same data given as a file or an array, not clipped by Pillow's ``convert("RGB")``.
    Raises ValueError with the reason for anything else, for more than ``max_pixels`` pixels, for a float image
    with clearly negative values (normalised input, not pixels), and for a PIL image whose pixels cannot be decoded.
    """
    if isinstance(image, (str, Path)):
        from efpn.data.images import read_image

        return read_image(Path(image))
    if isinstance(image, Image.Image):
        image = pil_pixels(image, max_pixels)  # then checked and scaled as any array
    if isinstance(image, Tensor):
        if image.device.type == "meta":
            raise ValueError("the image is a tensor on the meta device, which holds no pixel values; give the image")
        t = image.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16: widen (exactly) before converting
            t = t.float()
        if t.dim() == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"unsupported image type {type(image).__name__}; give a path, PIL image, array or tensor")
    a = image
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"image is empty (shape {a.shape})")
    _check_pixel_count(a.shape[0], a.shape[1], max_pixels)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinite values")
    if np.issubdtype(a.dtype, np.floating) and a.size and float(a.min()) < -NEGATIVE_SLACK:
        # mean/std-normalised input read as pixels would be a nearly black image, found nothing in without a word
        raise ValueError(f"image holds negative values (down to {float(a.min()):.3g}): it looks normalised (mean/std). "
                         "Give the image itself: uint8 0-255 or float in [0, 1]; the model normalises with its own "
                         "pixel_mean and pixel_std")
    if not (a.dtype == bool or a.dtype.kind in "uif"):
        raise ValueError(f"unsupported image dtype {a.dtype}; use uint8, uint16 or float")
    # dtype and channel conversion is the data loaders' (uint16 / 257, float [0, 1] * 255, gray -> RGB, no alpha)
    return pixels_to_rgb_uint8(a)


def _check_pixel_count(h: int, w: int, max_pixels: int) -> None:
    """Raise ValueError for an image of ``h`` x ``w`` over ``max_pixels`` (one network input's limit)."""
    if h * w > max_pixels:
        raise ValueError(f"image is {w}x{h} = {h * w:,} pixels, over the {max_pixels:,} limit of one network input; "
                         "use sliced inference (--slice) or downscale it")


def pil_pixels(image: Image.Image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A PIL image's pixels as the numpy array the file reader takes from it: (H, W) uint16 / int32 / float32 for
    the 16-bit, 32-bit and float modes (their values kept, for :func:`to_rgb_uint8`'s scaling), (H, W) or
    (H, W, 3) uint8 for 8-bit modes (palette, alpha and other colour modes through Pillow's RGB conversion).

    Pillow's own ``convert("RGB")`` clips a 16-bit image to 255 (all white) and truncates a float one in [0, 1] to
    0 (all black); the array keeps what :func:`efpn.data.images.read_image` would scale. EXIF orientation is not
    applied: the image is taken as it is held. Raises :class:`~efpn.data.images.CorruptImageError` (a ValueError),
    naming the file when the image was opened from one, when a lazily opened image's pixels cannot be decoded
    (a truncated or corrupt file, or one closed before its pixels were read), and ValueError for more than
    ``max_pixels`` pixels, before anything is decoded.
    """
    w, h = image.size
    _check_pixel_count(h, w, max_pixels)
    name = getattr(image, "filename", "") or ""
    named = f" (opened from {name})" if name else ""
    if getattr(image, "tile", None) and getattr(image, "fp", True) is None:
        # pixels still to be read from a file already closed: Pillow would fail on an internal assertion
        raise CorruptImageError(f"the PIL image{named} could not be decoded: its file was closed before the pixels "
                                "were read (the `with Image.open(...)` block ended). Call .load() on it inside the "
                                "block, or give the path instead of the opened image")
    try:
        image.load()  # Image.open reads only the header: a truncated file fails here ("image file is truncated")
        return pil_to_array(image)  # the file reader's own conversion, so both give the same pixels
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise CorruptImageError(
            f"the PIL image{named} could not be decoded: {e or type(e).__name__}. Its file is truncated or corrupt: "
            "re-export or re-download it, or give its path instead of the opened image (the reader then says what "
            "is wrong with the file)"
        ) from e


def check_image_size(image_size: Any) -> int:
    """``image_size`` (a network long side in px) as an int; ValueError unless it is a whole number from
    :data:`MIN_SIDE` to :data:`MAX_SIDE` (the limit the model config and the CLI apply: larger inputs take more
    memory than most machines have; large images are detected in tiles instead)."""
    whole = isinstance(image_size, (int, np.integer)) or (isinstance(image_size, (float, np.floating))
                                                          and float(image_size).is_integer())
    if isinstance(image_size, (bool, np.bool_)) or not whole:
        raise ValueError(f"image_size must be a whole number of pixels (the network's long side), got {image_size!r}")
    size = int(image_size)
    if size < MIN_SIDE:
        raise ValueError(f"image_size {size} is under the network's {MIN_SIDE} px minimum input side; use a "
                         "multiple of 32 such as 320 or 640 (or leave it out for the checkpoint's own size)")
    if size > MAX_SIDE:
        raise ValueError(f"image_size {size} is over the {MAX_SIDE} px limit of one network input (the limit of "
                         "--image-size too); use a multiple of 32 such as 640, and sliced inference "
                         "(efpn.infer.sliced_predict, --slice) to detect small objects in a large image")
    return size


def network_hw(image_hw: tuple[int, int], image_size: int) -> tuple[float, tuple[int, int]]:
    """``(scale, (H', W'))``: how :func:`prepare` resizes an image of ``image_hw`` so its long side is
    ``image_size`` (scale = network px / original px), without the image."""
    h, w = int(image_hw[0]), int(image_hw[1])
    scale = image_size / max(h, w)
    return scale, (max(1, round(h * scale)), max(1, round(w * scale)))


def prepare(image: Any, image_size: int) -> Prepared:
    """Resize so the long side is ``image_size`` (bilinear, antialiased when shrinking) -> :class:`Prepared`.

    ``image_size`` is checked first (:func:`check_image_size`), before the image is decoded."""
    image_size = check_image_size(image_size)
    rgb = to_rgb_uint8(image)
    h, w = rgb.shape[:2]
    scale, (nh, nw) = network_hw((h, w), image_size)
    if min(nh, nw) < MIN_SIDE:
        raise ValueError(
            f"a {w}x{h} px image becomes {nw}x{nh} px at the network's {image_size} px long side, under the "
            f"{MIN_SIDE} px minimum: its aspect ratio is too extreme for one input. Crop it, pad it towards a square, "
            "or use sliced inference (--slice), which cuts it into model-sized tiles"
        )
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
    if (nh, nw) != (h, w):
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1).clamp(0, 1)
    return Prepared(t, scale, (h, w))


def boxes_to_network(boxes: Tensor | np.ndarray, scale: float) -> Tensor:
    """Original-pixel xyxy boxes -> network pixels (float32 tensor)."""
    return torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)) * scale


def boxes_to_original(boxes: Tensor, scale: float, orig_hw: tuple[int, int]) -> Tensor:
    """Network-pixel xyxy boxes -> original pixels, clipped to the original image."""
    out = boxes / scale
    out[:, 0::2] = out[:, 0::2].clamp(0, orig_hw[1])
    out[:, 1::2] = out[:, 1::2].clamp(0, orig_hw[0])
    return out


def drop_empty(det: dict[str, Tensor], hw: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """``det`` (per-detection tensors: boxes (D, 4) xyxy, scores, labels, ...) without the detections whose box has
    no area, after clipping it to ``hw`` (H, W) when given.

    A box the network puts wholly in the padding of its input (below a wide image, beside a tall one) is clipped to
    a line on the image's edge: nothing to find there, and a box no analysis can take (attribution, gradient reach
    and the assigner refuse it)."""
    boxes = det["boxes"]
    if hw is not None:
        boxes = boxes.clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, hw[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, hw[0])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (D,)
    out = {k: v[keep] if isinstance(v, Tensor) and v.dim() and v.shape[0] == len(keep) else v for k, v in det.items()}
    out["boxes"] = boxes[keep]
    return out
