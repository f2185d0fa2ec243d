"""efpn.explain.maps: pictures of internals as arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import efpn
from efpn.explain.maps import (
    gate_stats,
    kernel_at,
    kernels_inside_outside,
    level_score_maps,
    normalize01,
    pca_rgb,
    reduce_channels,
)
from efpn.infer.preprocess import prepare


def test_pca_rgb_separates_regions() -> None:
    f = torch.zeros(8, 6, 6)
    f[0, :3] = 5.0  # top half differs from bottom in channel 0 only
    f[1, :, :3] = 2.0  # left/right in channel 1
    rgb = pca_rgb(f)
    assert rgb.shape == (6, 6, 3) and rgb.dtype == np.uint8
    assert len({tuple(rgb[y, x]) for y, x in [(0, 0), (0, 5), (5, 0), (5, 5)]}) == 4
    assert pca_rgb(torch.ones(4, 3, 3)).max() == 0  # no variance, no colour
    np.testing.assert_array_equal(pca_rgb(f), pca_rgb(f.clone()))  # deterministic sign


def test_reductions_and_normalisation() -> None:
    f = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    np.testing.assert_allclose(reduce_channels(f, "mean"), f.mean(0).numpy())
    np.testing.assert_allclose(reduce_channels(f, "max"), f.max(0).values.numpy())
    with pytest.raises(ValueError):
        reduce_channels(f, "median")  # type: ignore[arg-type]
    n = normalize01(np.array([0.0, 1.0, 2.0, 1000.0]), 0, 75)
    assert n.min() == 0.0 and n.max() == 1.0


def test_gate_stats_and_kernels_inside_outside() -> None:
    mask = torch.zeros(4, 4)
    mask[0, 0] = 1.0
    s = gate_stats(mask, np.array([[0, 0, 8, 8]]), stride=8)  # the box covers exactly cell (0, 0)
    assert s["mass_inside"] == pytest.approx(1.0) and s["area_inside"] == pytest.approx(1 / 16)
    assert s["lift"] == pytest.approx(16.0)
    k = torch.zeros(1, 9, 4, 4)
    k[0, 4] = 1.0
    k[0, :, 0, 0] = 0.0
    k[0, 0, 0, 0] = 1.0  # cell (0, 0) has a different kernel
    fg, bg = kernels_inside_outside(k, np.array([[0, 0, 8, 8]]), 8)
    assert fg is not None and bg is not None and fg[0, 0, 0] == 1.0 and bg[0, 1, 1] == 1.0
    kern, cell = kernel_at(k, 1000, -5, 8)  # clamped to the map
    assert cell == (0, 3) and kern.shape == (1, 3, 3)


def test_level_score_maps_hold_the_best_score() -> None:
    torch.manual_seed(0)
    model = efpn.build_model("tiny_yolov5_sgdm", num_classes=3).eval()
    x = prepare(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8), 128).tensor
    maps = level_score_maps(model, x)
    assert list(maps) == list(model.levels)
    top = float(model.predict(x, score_thresh=0.0)[0]["scores"][0])
    assert max(float(m.max()) for m in maps.values()) == pytest.approx(top, rel=1e-5)
