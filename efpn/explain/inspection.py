"""One call -> every internal the studio shows.

:func:`inspect` runs a single forward of an eval-mode detector on one image and returns, named by level and
layer, the detections (with the level that produced each), the pyramid before and after CEM and the CEM fused
term, the FBSM gates, the SGDM/RDConv kernels and static banks, and — when ground truth is given — the label
assignment accounting and the losses. It never changes the model: no hooks, no mode switch, no parameter or
buffer writes (a shared model can serve many users).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from efpn.det.accounting import LevelAccounting, account
from efpn.det.assign import Assignment
from efpn.det.boxes import validate_boxes
from efpn.det.priors import Priors
from efpn.infer.preprocess import (
    Prepared,
    boxes_to_network,
    boxes_to_original,
    check_image_size,
    drop_empty,
    prepare,
    to_rgb_uint8,
)
from efpn.models.detector import Detector, check_postprocess
from efpn.models.heads import HeadOutput
from efpn.models.outputs import KernelLayer
from efpn.vocab import level_stride


@dataclass
class KernelMaps:
    """Per-pixel dynamic kernels of one SGDM/RDConv layer (all tensors for the single image, on CPU).

    ``dynamic`` D (G, k*k, H', W'); ``guided`` K (G, k*k, H', W') or None for plain RDConv; ``bank`` S (G, k*k)
    or None; ``entropy`` and ``hf_energy`` (G, H', W') or None; ``stride`` of the layer's output in input px.
    """

    dynamic: Tensor
    guided: Tensor | None
    bank: Tensor | None
    entropy: Tensor | None
    hf_energy: Tensor | None
    stride: int

    @property
    def kernel_size(self) -> int:
        return int(round(self.dynamic.shape[1] ** 0.5))

    @classmethod
    def of(cls, layer: KernelLayer) -> KernelMaps:
        """The first image's kernels of a run's layer, detached float CPU copies."""
        k = layer.kernels

        def first(t: Tensor | None) -> Tensor | None:
            return None if t is None else _cpu(t[0])

        return cls(
            dynamic=_cpu(k.dynamic[0]),
            guided=first(k.guided),
            bank=None if k.bank is None else _cpu(k.bank),
            entropy=first(k.entropy),
            hf_energy=first(k.hf_energy),
            stride=layer.stride,
        )


def _cpu(t: Tensor) -> Tensor:
    return t.detach().float().cpu()


@dataclass
class AssignmentView:
    """Ground truth and its label assignment on this image (network pixels unless stated)."""

    assigner: str
    gt_boxes: Tensor  # (M, 4) original px
    gt_labels: Tensor  # (M,)
    assignment: Assignment
    priors: Priors  # network px
    accounting: LevelAccounting


@dataclass
class Inspection:
    """Everything one forward reveals. Boxes are in the ORIGINAL image's pixels; maps are per level."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, the user's image
    scale: float  # network px / original px
    network_hw: tuple[int, int]
    levels: tuple[str, ...]
    class_names: tuple[str, ...]
    detections: dict[str, Tensor]  # boxes (D,4) orig px, scores, labels, levels (index into `levels`)
    backbone: dict[str, Tensor]  # c* -> (C, H, W)
    pyramid: dict[str, Tensor]  # p* after CEM and FBSM -> (C, H, W)
    pyramid_before_cem: dict[str, Tensor]  # p* as the FPN produced them
    cem_fused: dict[str, Tensor]  # target level -> F (C, H, W)
    cem_alpha: dict[str, float]  # target level -> α (or mean learned gate)
    gates: dict[str, Tensor]  # level -> FBSM mask (H, W) in [0, 1]
    gate_beta: dict[str, float]  # level -> FBSM beta: a gate of M multiplies the feature by 1 + beta * M
    gate_delta: dict[str, float]  # level -> FBSM background suppression delta (levels whose block has one)
    gate_targets: dict[str, Tensor]  # level -> the gate's training target (H, W), when ground truth was given
    kernels: dict[str, KernelMaps]  # layer name (e.g. "c3.down", "pan.down3") -> kernels
    assignment: AssignmentView | None = None
    losses: dict[str, float] = field(default_factory=dict)
    priors: Priors | None = None  # the model's priors at network_hw (network px, CPU)
    head: HeadOutput | None = None  # the raw head output on every prior (1, R, ...) CPU: assignment without a forward
    timings_ms: dict[str, float] = field(default_factory=dict)

    def detection_level_names(self) -> list[str]:
        return [self.levels[int(i)] for i in self.detections["levels"]]

    # -------------------------------------------------------------- coordinates (pages do no arithmetic)
    @property
    def image_hw(self) -> tuple[int, int]:
        """The user's image size (H, W) in its own pixels."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    def to_network(self, boxes: Tensor | np.ndarray) -> Tensor:
        """xyxy boxes (M, 4) in the image's pixels -> the network input's pixels (float32)."""
        return boxes_to_network(boxes, self.scale)

    def to_image(self, boxes: Tensor | np.ndarray) -> Tensor:
        """xyxy boxes (M, 4) in network pixels -> the image's pixels, clipped to the image (float32)."""
        return boxes_to_original(torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4).clone(),
                                 self.scale, self.image_hw)

    def network_stride(self, level_or_layer: str) -> int:
        """The stride in network pixels of a pyramid level (``"p3"``) or a kernel layer (``"c3.down"``)."""
        return self.kernels[level_or_layer].stride if level_or_layer in self.kernels else level_stride(level_or_layer)

    def stride_in_image(self, level_or_layer: str) -> float:
        """How many of the image's pixels one cell of a pyramid level (``"p3"``) or a kernel layer
        (``"c3.down"``) spans: its stride in network pixels divided by the resize scale."""
        return self.network_stride(level_or_layer) / self.scale

    def cell_of(self, level_or_layer: str, x: float, y: float) -> tuple[int, int]:
        """The (row, column) of the cell of a level or kernel layer that holds image pixel (x, y), as the network
        sees it: the pixel is mapped to network pixels first (dividing by the stride in image pixels would put a
        pixel on a cell edge into the previous cell after rounding), and clamped to the map."""
        stride = self.network_stride(level_or_layer)
        rows, cols = (-(-n // stride) for n in self.network_hw)
        row, col = int(y * self.scale // stride), int(x * self.scale // stride)
        return min(max(row, 0), rows - 1), min(max(col, 0), cols - 1)


def _require_eval(model: Detector) -> None:
    if not isinstance(model, Detector):
        raise ValueError(f"inspect needs an efpn Detector, got {type(model).__name__}")
    if model.training:
        raise ValueError(
            "inspect needs a model in eval mode (BatchNorm would update its statistics in train mode); "
            "call model.eval() once after loading"
        )


def _assignment_view(
    model: Detector,
    priors: Priors,
    head: HeadOutput | None,
    boxes: np.ndarray,
    labels: Tensor,
    scale: float,
    accounting: LevelAccounting | None = None,
    assigner: str | None = None,
) -> AssignmentView:
    """The model's own assigner on ``priors`` for GT ``boxes`` (M, 4) in ORIGINAL px, with its accounting.

    TAL ranks priors by the model's predictions: ``head`` is decoded here, only when an assignment is asked
    for (a plain inspect never pays for decoding every prior). ``assigner="tal"`` ranks with TAL whatever the
    model's own assigner is (what YOLOv8's assignment would pick from this model's predictions)."""
    gt = boxes_to_network(boxes, scale).to(priors.boxes.device)  # (M, 4) network px
    labels = labels.reshape(-1).to(priors.boxes.device)
    assigner = assigner or model.config.head.assigner
    a = model.assign(priors, gt, labels, head=head, assigner=assigner)
    if accounting is None:
        pos_iou = model.config.head.pos_iou if assigner == "maxiou" else None
        accounting = account(a, priors, gt, pos_iou=pos_iou, scale=scale)
    return AssignmentView(
        assigner=assigner,
        gt_boxes=torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        gt_labels=labels.cpu(),
        assignment=a,
        priors=priors,
        accounting=accounting,
    )


@torch.no_grad()
def assign_on(
    model: Detector, inspection: Inspection, boxes: Any, labels: Any | None = None, assigner: str | None = None
) -> AssignmentView:
    """The model's own label assignment for ``boxes`` (M, 4) xyxy in the inspected image's ORIGINAL px, on the
    priors of ``inspection`` — no second forward (TAL decodes the head output the inspection kept).

    Use it for boxes that are not known before the forward, e.g. the detections standing in for missing GT.
    ``labels`` default to class 0. Raises ``ValueError`` for an inspection made without priors.
    """
    if inspection.priors is None:
        raise ValueError("this inspection kept no priors; run efpn.explain.inspection again with this version")
    b = np.asarray(boxes.numpy() if isinstance(boxes, Tensor) else boxes, dtype=np.float32).reshape(-1, 4)
    lab = torch.zeros(len(b), dtype=torch.int64) if labels is None else torch.as_tensor(
        np.asarray(labels, dtype=np.int64)).reshape(-1)
    if len(lab) != len(b):
        raise ValueError(f"got {len(b)} boxes but {len(lab)} labels")
    return _assignment_view(model, inspection.priors, inspection.head, b, lab, inspection.scale, assigner=assigner)


def checked_targets(targets: Any, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``targets`` (``{"boxes": (M, 4) xyxy, "labels": (M,)}`` in the image's own pixels) as float32 boxes and int64
    labels; ValueError naming what is wrong in those pixels and that image size (the network's are not the user's)."""
    if not isinstance(targets, Mapping):
        raise ValueError(f"targets must be a dict {{'boxes': (M, 4) xyxy in image pixels, 'labels': (M,)}}, got a "
                         f"{type(targets).__name__}")
    boxes = np.asarray(targets.get("boxes", np.zeros((0, 4))), dtype=np.float32)
    boxes = boxes.reshape(-1, 4) if boxes.size in (0, 4) else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"targets['boxes'] must be (M, 4) xyxy in image pixels, got shape {boxes.shape}")
    labels = np.asarray(targets.get("labels", np.zeros(0))).reshape(-1)
    whole = labels.dtype.kind in "iu" or (labels.dtype.kind == "f" and bool(np.all(np.isfinite(labels)
                                                                                     & (labels == np.round(labels)))))
    if labels.size and not whole:
        raise ValueError(f"targets['labels'] must be whole class indices, got {labels[:5].tolist()}")
    if len(labels) != len(boxes):
        raise ValueError(f"targets: {len(boxes)} boxes but {len(labels)} labels")
    h, w = image_hw
    _, keep = validate_boxes(torch.from_numpy(boxes), (h, w), drop_nonfinite=True)  # no area once clipped: dropped
    if not bool(keep.all()):
        j = int((~keep).nonzero()[0])
        raise ValueError(f"targets['boxes'][{j}] {boxes[j].tolist()} has no area inside the {w}x{h} image: boxes are "
                         f"x1 < x2, y1 < y2 in its own pixels, overlapping [0, {w}] x [0, {h}]")
    return boxes, labels.astype(np.int64)


@torch.no_grad()
def inspect(
    model: Detector,
    image: Any,
    targets: dict[str, Any] | None = None,
    score_thresh: float | None = None,
    nms_iou: float | None = None,
    max_det: int | None = None,
    image_size: int | None = None,
) -> Inspection:
    """Run one forward of ``model`` (eval mode) on ``image`` and return every internal, named.

    ``image``: path, PIL image, (H, W[, C]) array or tensor (see :func:`efpn.infer.preprocess.to_rgb_uint8`).
    ``targets``: optional ``{"boxes": (M, 4) xyxy in original px, "labels": (M,)}`` -> assignment accounting
    with the model's own assigner, and losses. ``image_size`` overrides the model's input size (long side).
    The detections equal ``model.predict`` on the same prepared input.

    Raises ValueError, as ``model.predict`` and :func:`efpn.infer.predict_image` do, for ``score_thresh`` or
    ``nms_iou`` outside [0, 1], a ``max_det`` that is not a whole number >= 1, and an ``image_size`` outside the
    network's limits (:func:`efpn.infer.preprocess.check_image_size`), before the image is decoded.
    """
    _require_eval(model)
    check_postprocess(score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det)  # the check predict makes
    size = check_image_size(image_size or model.config.image_size)
    t0 = time.perf_counter()
    rgb = to_rgb_uint8(image)
    prep: Prepared = prepare(rgb, size)
    device = next(model.parameters()).device
    x = prep.tensor.to(device)
    net_targets = None
    if targets is not None:
        orig_boxes, orig_labels = checked_targets(targets, rgb.shape[:2])  # said in the user's pixels, not the net's
        boxes = boxes_to_network(orig_boxes, prep.scale)
        labels = torch.from_numpy(orig_labels)
        net_targets = [{"boxes": boxes.to(device), "labels": labels.to(device), "scale": prep.scale}]
    t1 = time.perf_counter()
    run = model.run(x, internals=True, targets=net_targets, detect=True,
                    score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det)
    t2 = time.perf_counter()

    assert run.detections is not None
    det = run.detections[0]
    detections = drop_empty({  # boxes wholly in the input's padding dropped, as predict_image drops them
        "boxes": boxes_to_original(det["boxes"].float().cpu(), prep.scale, prep.orig_hw),
        "scores": det["scores"].float().cpu(),
        "labels": det["labels"].cpu(),
        "levels": det["levels"].cpu(),
    })
    levels = run.levels.values()
    priors: Priors = run.priors.to("cpu")
    head = run.head.image(0).to("cpu")
    assignment_view = None
    losses: dict[str, float] = {}
    if net_targets is not None:
        losses = {k: float(v) for k, v in (run.losses or {}).items()}
        assignment_view = _assignment_view(
            model, priors, head, orig_boxes,
            net_targets[0]["labels"].cpu(), prep.scale,
            accounting=run.stats.accounting if run.stats is not None else None,
        )
    t3 = time.perf_counter()
    return Inspection(
        image=rgb,
        scale=prep.scale,
        network_hw=tuple(x.shape[-2:]),
        levels=model.levels,
        class_names=tuple(model.config.class_names) or tuple(str(i) for i in range(model.num_classes)),
        detections=detections,
        backbone={k: _cpu(v[0]) for k, v in run.backbone.items()},
        pyramid={r.name: _cpu(r.features[0]) for r in levels},
        pyramid_before_cem={r.name: _cpu(r.before_cem[0]) for r in levels},
        cem_fused={r.name: _cpu(r.cem.fused[0]) for r in levels if r.cem is not None},
        cem_alpha={r.name: float(r.cem.alpha.float().mean()) for r in levels if r.cem is not None},
        gates={r.name: _cpu(r.gate.mask[0, 0]) for r in levels if r.gate is not None},
        gate_beta={r.name: float(r.gate.beta) for r in levels if r.gate is not None and r.gate.beta is not None},
        gate_delta={r.name: float(r.gate.delta) for r in levels if r.gate is not None and r.gate.delta is not None},
        gate_targets={r.name: _cpu(r.gate_target[0, 0]) for r in levels if r.gate_target is not None},
        kernels={name: KernelMaps.of(layer) for name, layer in sorted(run.kernels.items())},
        assignment=assignment_view,
        losses=losses,
        priors=priors,
        head=head,
        timings_ms={"prepare": 1e3 * (t1 - t0), "forward": 1e3 * (t2 - t1), "collect": 1e3 * (t3 - t2)},
    )
