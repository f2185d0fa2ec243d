"""SGDMConfig's knobs reach the SGDMs the builder makes: kernel groups, the pointwise MLP's width, the lite preset."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import efpn
from efpn.config import SGDMConfig
from efpn.layers import SGDM
from efpn.layers.conv import ConvBNAct
from efpn.layers.rdconv import resolve_groups


def _sgdms(model: torch.nn.Module) -> list[SGDM]:
    return [m for m in model.modules() if isinstance(m, SGDM)]


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_default_groups_are_the_layers_own_choice() -> None:
    """groups = 8 (every shipped card's value) gives each SGDM the groups it had before the field was read: 8 from
    128 channels, else one group per 16 channels."""
    assert SGDMConfig().groups == 8
    checked = 0
    for c_in in range(1, 1025):
        before = 8 if c_in >= 128 else max(1, c_in // 16)
        if c_in % before == 0:  # otherwise the layer refused the channel count before and after
            assert resolve_groups(c_in, max_groups=SGDMConfig().groups) == before, c_in
            checked += 1
    assert checked > 100


def test_groups_cap_the_kernel_groups() -> None:
    base = efpn.get_config("tiny_yolov8_sgdm", num_classes=2)
    capped = dataclasses.replace(base, backbone=dataclasses.replace(
        base.backbone, sgdm=dataclasses.replace(base.backbone.sgdm, groups=1)))
    wide = [m.groups for m in _sgdms(efpn.build(base))]
    narrow = [m.groups for m in _sgdms(efpn.build(capped))]
    assert max(wide) > 1 and narrow == [1] * len(wide)
    assert _params(efpn.build(capped)) < _params(efpn.build(base))  # fewer kernel-head outputs


def test_expansion_sets_the_pointwise_mlp() -> None:
    base = efpn.get_config("tiny_yolov8_sgdm", num_classes=2)
    for expansion in (None, 1.0, 4.0):
        cfg = dataclasses.replace(base, backbone=dataclasses.replace(
            base.backbone, sgdm=dataclasses.replace(base.backbone.sgdm, expansion=expansion)))
        for m in _sgdms(efpn.build(cfg)):
            if expansion is None:
                assert isinstance(m.pw, ConvBNAct) and m.pw.conv.in_channels == m.c_in
            else:
                assert m.pw[0].conv.out_channels == max(1, round(expansion * m.c_in))


@pytest.mark.parametrize("bad", [0.0, -1.0, 17.0])
def test_bad_expansion_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="sgdm.expansion must be null"):
        SGDMConfig(expansion=bad)
    data = efpn.get_config("yolov8n_sgdm", num_classes=1).to_dict()
    data["backbone"]["sgdm"]["expansion"] = bad
    with pytest.raises(ValueError, match="sgdm.expansion"):
        efpn.ModelConfig.from_dict(data)


def test_zero_groups_is_refused() -> None:
    with pytest.raises(ValueError, match="sgdm.groups must be >= 1"):
        SGDMConfig(groups=0)


def test_card_without_expansion_keeps_the_mlp() -> None:
    """Cards written before the field existed hold no ``expansion``: they rebuild the 2.75x MLP they trained."""
    data = efpn.get_config("yolov8n_sgdm", num_classes=1).to_dict()
    del data["backbone"]["sgdm"]["expansion"]
    assert efpn.ModelConfig.from_dict(data).backbone.sgdm.expansion == 2.75


def test_lite_preset_is_the_single_pointwise_conv() -> None:
    with torch.device("meta"):
        plain, full, lite = (efpn.build_model(n, num_classes=80) for n in ("yolov8n", "yolov8n_sgdm_full",
                                                                           "yolov8n_sgdm_lite"))
    assert all(isinstance(m.pw, ConvBNAct) for m in _sgdms(lite)) and len(_sgdms(lite)) == 4
    extra = _params(lite) - _params(plain)
    # the SPEC's single 1x1 per SGDM: 16*32 + 32*64 + 64*128 + 128*256 weights (43,520) plus the dynamic branches
    assert 0.05e6 <= extra <= 0.07e6, extra
    assert _params(full) - _params(plain) > 3 * extra


@pytest.mark.parametrize(("preset", "full"), [("yolov8n_sgdm", "yolov8n_sgdm_full"),
                                            ("yolov8n_rdconv", "yolov8n_rdconv_full")])
def test_yolov8n_sgdm_presets_keep_the_paper_budget_with_the_mlp_only_where_deep(preset: str, full: str) -> None:
    """The YOLOv8n SGDM presets (SGDM_V8_DEEP) put the 2.75x MLP only in the two deep SGDMs; their ``*_full`` forms,
    the design the older runs and checkpoint trained, keep it in all four."""
    with torch.device("meta"):
        plain, deep, everywhere = (efpn.build_model(n, num_classes=80) for n in ("yolov8n", preset, full))
    kinds = [(m.c_in, isinstance(m.pw, ConvBNAct)) for m in _sgdms(deep)]
    assert kinds == [(16, True), (32, True), (64, False), (128, False)]
    assert not any(isinstance(m.pw, ConvBNAct) for m in _sgdms(everywhere)) and len(_sgdms(everywhere)) == 4
    extra = _params(deep) - _params(plain)
    assert 0.75 * 0.19e6 <= extra <= 1.25 * 0.19e6, extra  # SPEC §6: the paper's +0.19 M within 25 %
    assert _params(deep) < _params(everywhere)


def test_mlp_min_channels_picks_the_expansion() -> None:
    cfg = SGDMConfig(mlp_min_channels=64)
    assert [cfg.expansion_for(c) for c in (16, 63, 64, 256)] == [None, None, 2.75, 2.75]
    assert SGDMConfig(expansion=None, mlp_min_channels=0).expansion_for(512) is None
