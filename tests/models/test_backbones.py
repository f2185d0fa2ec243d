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


def test_sppf_pools_over_channels_last_rows_with_the_same_values_and_gradients() -> None:
    """SPPF max-pools a contiguous CPU map in the channels-last layout (PyTorch's NCHW CPU max-pool took ~1.7 ms a
    call on a 10 x 10 p5 map in training); output and gradients equal the plain path's, which a channels-last input
    takes."""
    import torch

    from efpn.models.blocks import SPPF

    torch.manual_seed(0)
    m = SPPF(64, 64).eval()  # eval: BatchNorm uses its running statistics, so both calls see the same function
    x = torch.randn(2, 64, 10, 12, requires_grad=True)
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    y, yc = m(x), m(xc)
    assert y.is_contiguous()  # the layout it was given
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (yc * g).sum().backward()
    torch.testing.assert_close(y, yc.contiguous(), rtol=0, atol=1e-6)
    torch.testing.assert_close(x.grad, xc.grad.contiguous(), rtol=0, atol=1e-6)
