"""Backbones publish named stages and load ResNet weights from a local file only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from efpn.models.backbones import CSPDarknet, ResNetBackbone


def test_resnet_loads_local_state_dict(tmp_path: Path) -> None:
    net = torchvision.models.resnet18(weights=None)
    torch.nn.init.constant_(net.conv1.weight, 0.123)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    for f in ("r18.pth", "r18.safetensors"):
        bb = ResNetBackbone(18, ("c3", "c4", "c5"), weights=str(tmp_path / f))
        torch.testing.assert_close(bb.stem[0].weight, torch.full_like(bb.stem[0].weight, 0.123))


def test_resnet_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        ResNetBackbone(18, weights=str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises((ValueError, RuntimeError)):
        ResNetBackbone(18, weights=str(tmp_path / "bad.pth"))


@pytest.mark.parametrize("variant", ["c3", "c2f"])
def test_cspdarknet_stage_names_channels_strides(variant: str) -> None:
    bb = CSPDarknet(variant, 0.25, 0.33, ("c2", "c3", "c4", "c5")).eval()
    feats = bb(torch.rand(1, 3, 64, 96))
    assert list(feats) == ["c2", "c3", "c4", "c5"]
    for name, f in feats.items():
        s = bb.strides[name]
        assert f.shape == (1, bb.out_channels[name], 64 // s, 96 // s)
    assert bb.out_channels == {"c2": 32, "c3": 64, "c4": 128, "c5": 256}


def test_unknown_levels_rejected() -> None:
    with pytest.raises(ValueError, match="unknown backbone levels"):
        CSPDarknet("c2f", out_levels=("c6",))
    with pytest.raises(ValueError, match="variant"):
        CSPDarknet("c4")
