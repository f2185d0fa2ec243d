"""``Detector`` runs CPU inference channels-last (``cpu_channels_last``): the same function as the NCHW run, taken
only where it may be (eval mode, no gradient recorded, CPU), on canonical strides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import efpn
from efpn.layers import native
from tests.layers.sgdm_helpers import perturb

PRESETS = ["tiny_fpn", "tiny_efpn_bs", "tiny_yolov8_sgdm", "tiny_yolov5_sgdm", "tiny_efpn_mv2", "tiny_efpn_n",
           "tiny_yolov8_cbam"]


def _model(name: str) -> efpn.Detector:
    return perturb(efpn.build_model(name, num_classes=3), seed=1, scale=0.05).eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float sums taken in another order through every layer: within 1e-4 of the tensor's largest
    magnitude (a random network's features reach ~100, where the last bits are ~1e-5)."""
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()) + 1e-6)


def _backbone_inputs(model: efpn.Detector) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.backbone.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    return seen


@pytest.mark.parametrize("name", PRESETS)
def test_channels_last_inference_equals_nchw(name: str) -> None:
    """Decoded boxes and scores, detections and internals agree with ``cpu_channels_last = False``."""
    model = _model(name)
    x = torch.rand(2, 3, 128, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cl = model.run(x, decode=True, internals=True)
        model.cpu_channels_last = False
        ref = model.run(x, decode=True, internals=True)
    assert cl.decoded is not None and ref.decoded is not None
    for a, b in zip(cl.decoded, ref.decoded):
        _close(a, b)
    for lv in model.levels:
        _close(cl.levels[lv].features, ref.levels[lv].features)
        if ref.levels[lv].gate is not None:
            # a sigmoid of logits that themselves differ by ~1e-3 (features of ~100 through one more conv)
            torch.testing.assert_close(cl.levels[lv].gate.mask, ref.levels[lv].gate.mask, rtol=0, atol=2e-3)
    assert set(cl.kernels) == set(ref.kernels)
    for key, layer in ref.kernels.items():
        _close(cl.kernels[key].kernels.dynamic, layer.kernels.dynamic)


def test_only_cpu_inference_without_gradients_runs_channels_last() -> None:
    model = _model("tiny_yolov8_sgdm")
    seen = _backbone_inputs(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model.run(x)
    model.run(x)  # gradient recorded (attribution, gradient reach): the default layout
    model.cpu_channels_last = False
    with torch.no_grad():
        model.run(x)
    model.cpu_channels_last = True
    model.train()
    with torch.no_grad():
        model.run(x)  # training mode: the default layout (the fused BatchNorm kernels read NCHW)
    assert [native.channels_last(t) for t in seen] == [True, False, False, False]


def test_an_hwc_view_gives_the_same_bits_as_a_contiguous_image() -> None:
    """An image viewed from an HWC array (batch stride 3 with N = 1) is brought to canonical channels-last strides,
    so the same pixels give the same detections to the last bit whichever way they arrive."""
    model = _model("tiny_fpn")
    rgb = (np.random.default_rng(3).random((128, 128, 3)) * 255).astype(np.uint8)
    view = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255)  # (1, 3, H, W), HWC memory
    assert view.stride()[1] == 1
    seen = _backbone_inputs(model)
    with torch.no_grad():
        a = model.run(view, decode=True).decoded
        b = model.run(view.contiguous(), decode=True).decoded
    assert a is not None and b is not None
    assert seen[0].stride() == seen[1].stride() == (3 * 128 * 128, 1, 128 * 3, 3)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
