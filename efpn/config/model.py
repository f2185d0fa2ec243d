"""Typed, frozen model configuration: the one place a detector's structure is described.

A :class:`ModelConfig` travels with the weights (as JSON in the model card), so a checkpoint rebuilds its own
model with no code edits. Presets in :mod:`efpn.zoo` only fill these dataclasses; :func:`efpn.zoo.build` is the one
builder that reads them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from efpn.config.schema import from_mapping, short

#: Most classes a model may have (LVIS has 1,203, ImageNet-21k 21,841): a mistyped count fails here, not as a
#: terabyte allocation in the head.
MAX_CLASSES = 100_000
#: The longest class name a config takes (a name is a label drawn on images and written in tables and cards).
MAX_CLASS_NAME_CHARS = 256
#: Network input long side a model config accepts: from the smallest input the detectors run (8 px) to the largest
#: single input the CLI takes (larger images are sliced into tiles instead).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096
#: widest pointwise MLP an SGDM config may ask for (hidden = expansion * c_in); wider is a typo, not a design
MAX_SGDM_EXPANSION = 16.0

BackboneKind = Literal["cspdarknet", "resnet", "mobilenetv2", "efficientnet_lite"]
NeckKind = Literal["fpn", "pan"]
HeadKind = Literal["retina", "yolov5", "yolov8"]
AssignerKind = Literal["maxiou", "atss", "yolov5", "tal"]


@dataclass(frozen=True)
class SGDMConfig:
    """Where and how SGDM replaces stride-2 3x3 convolutions (SPEC §6).

    ``backbone_stages`` names the backbone stages whose entry downsampling conv is replaced (``"c2".."c5"``);
    ``pan`` also replaces the PAN's two bottom-up downsampling convs. ``guided=False`` gives plain RDConv
    (no static guidance); ``shared_bank=False`` gives every channel its own static bank (the unshared ablation).
    ``groups`` is the most kernel groups an SGDM gets (``efpn.layers.resolve_groups``: every group averages at
    least 16 channels). ``expansion`` is the hidden width (times ``c_in``) of SGDM's pointwise MLP
    after the aggregation; ``None`` gives the SPEC's single 1x1 ``c_in -> c_out`` (about a third of the paper's
    parameter budget, and a cheaper training step: see README, Benchmarks). ``mlp_min_channels`` keeps the MLP
    only in SGDMs over at least that many input channels; the shallower ones get the single 1x1. Their MLPs hold
    few parameters but run on the largest maps, so they cost the most training time per parameter.
    """

    backbone_stages: tuple[str, ...] = ()
    pan: bool = False
    guided: bool = True
    shared_bank: bool = True
    groups: int = 8
    kernel_size: int = 3
    block: Literal["sgdm", "cbam", "static"] = "sgdm"
    expansion: float | None = 2.75
    mlp_min_channels: int = 0

    def __post_init__(self) -> None:
        if self.groups < 1:
            raise ValueError(f"sgdm.groups must be >= 1, got {self.groups!r}")
        if self.expansion is not None and not 0.0 < self.expansion <= MAX_SGDM_EXPANSION:
            raise ValueError(f"sgdm.expansion must be null (one 1x1 conv) or a number in (0, {MAX_SGDM_EXPANSION:g}], "
                             f"got {self.expansion!r}")

    def expansion_for(self, c_in: int) -> float | None:
        """The pointwise MLP's expansion of an SGDM over ``c_in`` channels (None: the single 1x1)."""
        return self.expansion if c_in >= self.mlp_min_channels else None


@dataclass(frozen=True)
class BackboneConfig:
    """Backbone family. CSPDarknet: ``variant`` is ``"c3"`` (YOLOv5) or ``"c2f"`` (YOLOv8); ResNet: ``"resnet18"``
    or ``"resnet50"`` (random init, or ``weights`` = a local torchvision state-dict file; nothing is downloaded);
    MobileNetV2: ``weights="imagenet"`` starts from the ImageNet weights installed with the package
    (:mod:`efpn.models.pretrained`); so does EfficientNet-Lite0 (``kind="efficientnet_lite"``, variant
    ``"efficientnet_lite0"``). ``sgdm.backbone_stages`` of a MobileNetV2 wrap the stages' pretrained
    stride-2 depthwise convs in SGDM (the pretrained conv is SGDM's static branch, the dynamic one starts at 0)."""

    kind: BackboneKind = "cspdarknet"
    variant: str = "c2f"
    width: float = 0.25
    depth: float = 0.33
    out_levels: tuple[str, ...] = ("c3", "c4", "c5")
    sgdm: SGDMConfig = field(default_factory=SGDMConfig)
    weights: str | None = None


@dataclass(frozen=True)
class CEMConfig:
    """Context Enhancement Module (SPEC §2): fuse ``source_levels`` into each of ``target_levels``."""

    source_levels: tuple[str, ...] = ("p5", "p6")
    target_levels: tuple[str, ...] = ("p3",)
    mid_channels: int = 64
    use_local: bool = True
    use_global: bool = True
    upsample: Literal["bilinear", "pixelshuffle"] = "bilinear"
    gate: Literal["alpha", "learned"] = "alpha"


@dataclass(frozen=True)
class FBSMConfig:
    """Foreground-Background Separation Module (SPEC §3) on ``levels``; ``mask_loss_weight`` 0 = unsupervised."""

    levels: tuple[str, ...] = ("p3",)
    hidden_channels: int = 64
    bg_suppression: bool = False
    mask_loss_weight: float = 1.0


@dataclass(frozen=True)
class NeckConfig:
    """FPN (top-down, optional extra levels by stride-2 convs) or PAN (YOLO top-down + bottom-up).

    ``levels`` are the output pyramid levels; ``channels`` the FPN width (PAN widths follow the backbone).
    ``cem``/``fbsm`` switch the E-FPN-BS modules on (FPN only).
    """

    kind: NeckKind = "fpn"
    levels: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")
    channels: int = 256
    cem: CEMConfig | None = None
    fbsm: FBSMConfig | None = None


@dataclass(frozen=True)
class HeadConfig:
    """Dense head and its label assignment.

    ``retina``: shared cls/box towers of ``num_convs`` 3x3 convs over anchors (base size ``anchor_scale * stride``,
    scales 2^{0,1/3,2/3}, ratios {0.5,1,2}). ``yolov5``: 1x1 conv per level over 3 anchors with objectness.
    ``yolov8``: decoupled anchor-free head with a DFL of ``reg_max`` bins. ``separable`` (retina only): every
    3x3 conv of the towers and outputs is depthwise 3x3 + pointwise 1x1, about 1/9 of the FLOPs at the stride-4
    level that dominates a p2 head (the pretrained flagship's latency budget).
    """

    kind: HeadKind = "retina"
    assigner: AssignerKind = "maxiou"
    num_convs: int = 4
    separable: bool = False
    anchor_scale: float = 4.0
    anchor_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    yolo_anchors: tuple[tuple[float, ...], ...] = (
        (10, 13, 16, 30, 33, 23),
        (30, 61, 62, 45, 59, 119),
        (116, 90, 156, 198, 373, 326),
    )
    reg_max: int = 16
    pos_iou: float = 0.5
    neg_iou: float = 0.4
    prior_prob: float = 0.01


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and DCLoss (SPEC §4). ``box`` is ``giou`` or ``ciou``."""

    box: Literal["giou", "ciou"] = "giou"
    cls_weight: float = 1.0
    box_weight: float = 1.0
    obj_weight: float = 1.0
    dfl_weight: float = 1.5
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    dcloss: bool = False
    dcloss_eta: float = 0.5
    dcloss_momentum: float = 0.9
    dcloss_warmup: int = 500
    dcloss_focusing: bool = False


@dataclass(frozen=True)
class PostprocessConfig:
    """Decoding and NMS defaults (overridable per call)."""

    score_thresh: float = 0.05
    nms_iou: float = 0.5
    max_det: int = 300
    pre_nms_topk: int = 1000

    def __post_init__(self) -> None:
        # a card edited by hand must not make every prediction silently empty (max_det 0) or unsuppressed
        for name in ("score_thresh", "nms_iou"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"postprocess.{name} must be a number in [0, 1], got {value!r}")
        for name in ("max_det", "pre_nms_topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"postprocess.{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ModelConfig:
    """A whole detector. ``to_dict``/``from_dict`` round-trip through JSON for model cards."""

    name: str
    num_classes: int
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    image_size: int = 640
    class_names: tuple[str, ...] = ()
    #: per-channel normalisation applied inside the model to [0, 1] RGB input
    pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be between 1 and {MAX_CLASSES:,}, got {self.num_classes}")
        if not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size (the network input's long side) must be between {MIN_IMAGE_SIZE} and "
                             f"{MAX_IMAGE_SIZE} px, got {self.image_size}")
        for name in ("pixel_mean", "pixel_std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be three finite numbers (R, G, B), got {values!r}")
        if min(self.pixel_std) <= 0:
            raise ValueError(f"pixel_std must be > 0 for every channel (the input is divided by it), got "
                             f"{self.pixel_std!r}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}"
            )
        long = [n for n in self.class_names if len(n) > MAX_CLASS_NAME_CHARS]
        if long:  # a hand-edited card: a 100,000-character name would fill every message, chart and table quoting it
            raise ValueError(f"class names must be at most {MAX_CLASS_NAME_CHARS} characters, got one of "
                             f"{len(long[0]):,}: {short(long[0], 60)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "model config") -> ModelConfig:
        """Rebuild from :meth:`to_dict` output (lists become tuples; unknown keys and wrong types are a
        :class:`~efpn.config.schema.ConfigError` naming ``where`` and the key)."""
        return from_mapping(cls, d, where)
