"""Pictures of a detector's internals as plain arrays (no plotting library): what the studio draws.

Everything here is a pure function of tensors/arrays, except :func:`level_score_maps`, which runs one
read-only forward of an eval-mode model. Conventions:

* feature maps are ``(C, H, W)`` (one image), masks and score maps ``(H, W)``;
* an RGB picture is ``(H, W, 3)`` uint8;
* boxes are xyxy in the pixels of the picture they belong to; a map of stride ``s`` covers input pixels
  ``[j*s, (j+1)*s) x [i*s, (i+1)*s)`` for cell ``(i, j)`` (the priors' convention, ``efpn.det.priors``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from efpn.layers.fbsm import box_mask_target, gate_mass_inside
from efpn.vocab import LEVEL_COLOURS, level_colour

__all__ = [
    "LEVEL_COLOURS",
    "Reduction",
    "gate_stats",
    "kernel_at",
    "kernels_inside_outside",
    "level_colour",
    "count_candidates",
    "level_score_maps",
    "normalize01",
    "pca_rgb",
    "reduce_channels",
    "resize_map",
]

Reduction = Literal["mean", "max", "pca"]


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def normalize01(a: Tensor | np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> np.ndarray:
    """Robustly rescale to [0, 1] (percentile clipping, so one hot pixel does not wash the map out).

    A constant (or empty) map becomes all zeros. Non-finite values count as the low end.
    """
    x = _as_numpy(a).astype(np.float32)
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros_like(x)
    lo, hi = np.percentile(x[finite], [lo_pct, hi_pct])
    if hi - lo <= 1e-12:
        lo, hi = float(x[finite].min()), float(x[finite].max())
        if hi - lo <= 1e-12:
            return np.zeros_like(x)
    out = (np.where(finite, x, lo) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def pca_rgb(feature: Tensor | np.ndarray) -> np.ndarray:
    """Project a feature map (C, H, W) on its first three principal components -> (H, W, 3) uint8 RGB.

    Pixels are the samples, channels the variables (centred, not scaled). Each component is rescaled to
    [0, 255] with :func:`normalize01`; its sign is fixed so that the largest loading is positive, which keeps
    colours stable across calls. With fewer than three useful components the missing channels are 0.
    """
    f = _as_numpy(feature)
    if f.ndim != 3:
        raise ValueError(f"pca_rgb needs a (C, H, W) feature map, got shape {f.shape}")
    c, h, w = f.shape
    x = f.reshape(c, h * w).T.astype(np.float64)  # (HW, C)
    x = np.nan_to_num(x - x.mean(axis=0, keepdims=True))
    out = np.zeros((h * w, 3), dtype=np.float32)
    if h * w > 1 and c > 0 and np.abs(x).max() > 0:
        # SVD of the (C, C) covariance is cheap even for large maps
        cov = x.T @ x / max(h * w - 1, 1)
        vals, vecs = np.linalg.eigh(cov)  # ascending
        order = np.argsort(vals)[::-1][:3]
        for i, k in enumerate(order):
            if vals[k] <= 1e-12:
                break
            v = vecs[:, k]
            v = v if v[np.argmax(np.abs(v))] >= 0 else -v
            out[:, i] = normalize01(x @ v)
    return (out.reshape(h, w, 3) * 255.0 + 0.5).astype(np.uint8)


def reduce_channels(feature: Tensor | np.ndarray, how: Reduction = "mean") -> np.ndarray:
    """(C, H, W) -> (H, W) float32 channel mean or max, or (H, W, 3) uint8 for ``"pca"``."""
    f = _as_numpy(feature)
    if f.ndim != 3:
        raise ValueError(f"reduce_channels needs a (C, H, W) feature map, got shape {f.shape}")
    if how == "mean":
        return f.mean(axis=0)
    if how == "max":
        return f.max(axis=0)
    if how == "pca":
        return pca_rgb(f)
    raise ValueError(f"unknown reduction {how!r}; use 'mean', 'max' or 'pca'")


def resize_map(
    a: Tensor | np.ndarray, size_hw: tuple[int, int], mode: Literal["nearest", "bilinear"] = "bilinear"
) -> np.ndarray:
    """Resize a (H, W) map to ``size_hw`` -> float32 (H', W')."""
    t = torch.as_tensor(_as_numpy(a))[None, None]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=tuple(int(s) for s in size_hw), mode=mode, **kw)[0, 0].numpy()


def gate_stats(mask: Tensor | np.ndarray, boxes: Tensor | np.ndarray, stride: int) -> dict[str, float]:
    """How much of an FBSM gate falls on the boxes, at the gate's own resolution.

    ``mask`` (H, W) in [0, 1] at ``stride``; ``boxes`` (M, 4) xyxy in network pixels. Boxes are rasterised
    like the FBSM supervision target (:func:`efpn.layers.fbsm.box_mask_target`, the centre cell always
    marked). Returns ``mass_inside`` (share of Σ M inside the boxes), ``area_inside`` (share of cells inside
    the boxes: what a uniform gate would score) and ``lift`` = mass / area (1 = no separation; 0 when no
    box covers a cell).
    """
    m = torch.as_tensor(_as_numpy(mask))[None, None]  # (1, 1, H, W)
    b = torch.as_tensor(_as_numpy(boxes)).reshape(-1, 4)
    target = box_mask_target([b], tuple(m.shape[-2:]), int(stride))
    mass = float(gate_mass_inside(m, target)[0])
    area = float(target.mean())
    return {"mass_inside": mass, "area_inside": area, "lift": mass / area if area > 0 else 0.0}


def kernel_at(kernel: Tensor | np.ndarray, x: float, y: float, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The per-pixel kernels (G, k*k, H', W') of the cell holding input pixel (x, y) -> ((G, k, k), (row, col)).

    The cell is clamped to the map, so a click on the padding still picks the nearest cell.
    """
    k = _as_numpy(kernel)
    g, kk, h, w = k.shape
    side = int(round(kk**0.5))
    col = int(np.clip(int(x // stride), 0, w - 1))
    row = int(np.clip(int(y // stride), 0, h - 1))
    return k[:, :, row, col].reshape(g, side, side), (row, col)


def kernels_inside_outside(
    kernel: Tensor | np.ndarray, boxes: Tensor | np.ndarray, stride: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Mean kernel over the cells inside the boxes (foreground) and outside them (background).

    ``kernel`` (G, k*k, H', W'); ``boxes`` (M, 4) xyxy network px, rasterised at ``stride`` like the FBSM
    target. Returns two (G, k, k) arrays; ``None`` for a side with no cell.
    """
    k = _as_numpy(kernel)
    g, kk, h, w = k.shape
    side = int(round(kk**0.5))
    b = torch.as_tensor(_as_numpy(boxes)).reshape(-1, 4)
    fg = box_mask_target([b], (h, w), int(stride))[0, 0].numpy().astype(bool)  # (H', W')
    flat = k.reshape(g, kk, h * w)
    inside, outside = fg.reshape(-1), ~fg.reshape(-1)

    def mean(sel: np.ndarray) -> np.ndarray | None:
        return flat[:, :, sel].mean(axis=2).reshape(g, side, side) if sel.any() else None

    return mean(inside), mean(outside)


@torch.no_grad()
def level_score_maps(model: torch.nn.Module, images: Tensor) -> dict[str, Tensor]:
    """Per level, the best class score at every location (max over anchors and classes) -> {level: (H_l, W_l)}.

    ``images`` (1, 3, H, W) in [0, 1]; ``model`` an eval-mode :class:`~efpn.models.detector.Detector`. Scores
    are the decoder's (sigmoid class x objectness for YOLOv5), i.e. what the threshold and NMS see. One
    read-only forward: no hooks, no mode change.
    """
    if model.training:
        raise ValueError("level_score_maps needs an eval-mode model; call model.eval() once after loading")
    run = model.run(images, decode=True)
    assert run.decoded is not None
    _, scores = run.decoded  # (1, R, K)
    best = scores[0].amax(dim=1)  # (R,)
    maps: dict[str, Tensor] = {}
    a = run.priors.anchors_per_loc
    for lv, sl in run.priors.level_slices().items():
        h, w = run.head.feature_sizes[lv]
        maps[lv] = best[sl].view(h, w, a).amax(dim=2).float().cpu()
    return maps


def count_candidates(score_maps: Mapping[str, Tensor], threshold: float) -> dict[str, int]:
    """Locations per level whose best score exceeds ``threshold`` (what enters NMS, up to multi-label)."""
    return {lv: int((m > threshold).sum()) for lv, m in score_maps.items()}
