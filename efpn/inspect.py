"""One call -> every internal the studio shows.

:func:`inspect` runs a single forward of an eval-mode detector on one image and returns, named by level and
layer, the detections (with the level that produced each), the pyramid before and after CEM and the CEM fused
term, the FBSM gates, the SGDM/RDConv kernels and static banks, and — when ground truth is given — the label
assignment accounting and the losses. It never changes the model: no hooks, no mode switch, no parameter or
buffer writes (a shared model can serve many users).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from efpn.det.assign import Assignment, LevelAccounting, account
from efpn.det.priors import Priors
from efpn.models.detector import Detector
from efpn.models.heads import HeadOutput
from efpn.preprocess import Prepared, boxes_to_network, boxes_to_original, prepare, to_rgb_uint8


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
    kernels: dict[str, KernelMaps]  # layer name (e.g. "c3.down", "pan.down3") -> kernels
    assignment: AssignmentView | None = None
    losses: dict[str, float] = field(default_factory=dict)
    priors: Priors | None = None  # the model's priors at network_hw (network px, CPU)
    tal_head: HeadOutput | None = None  # TAL models only: the raw head output (CPU), decoded by assign_on
    timings_ms: dict[str, float] = field(default_factory=dict)

    def detection_level_names(self) -> list[str]:
        return [self.levels[int(i)] for i in self.detections["levels"]]


def _require_eval(model: Detector) -> None:
    if not isinstance(model, Detector):
        raise ValueError(f"inspect needs an efpn Detector, got {type(model).__name__}")
    if model.training:
        raise ValueError(
            "inspect needs a model in eval mode (BatchNorm would update its statistics in train mode); "
            "call model.eval() once after loading"
        )


def _kernels(bb_int: dict[str, Tensor], prefix_strides: dict[str, int]) -> dict[str, KernelMaps]:
    """Group backbone/neck SGDM internals ``{layer}.{name}`` into :class:`KernelMaps` per layer."""
    out: dict[str, KernelMaps] = {}
    layers = sorted({k.rsplit(".", 1)[0] for k in bb_int if k.endswith("dynamic_kernel") or k.endswith(".kernel")})
    for layer in layers:
        d = bb_int.get(f"{layer}.dynamic_kernel", bb_int.get(f"{layer}.kernel"))
        if d is None:
            continue

        def get(name: str, layer: str = layer) -> Tensor | None:
            v = bb_int.get(f"{layer}.{name}")
            return None if v is None else v.detach().float().cpu()[0] if v.dim() > 2 else v.detach().float().cpu()

        out[layer] = KernelMaps(
            dynamic=d.detach().float().cpu()[0],
            guided=get("guided_kernel"),
            bank=get("static_bank"),
            entropy=get("entropy"),
            hf_energy=get("hf_energy"),
            stride=prefix_strides.get(layer, 0),
        )
    return out


def _cpu_head(head: HeadOutput) -> HeadOutput:
    """The first image's raw head output as float CPU tensors (batch dimension kept: (1, R, ...))."""
    return HeadOutput(
        cls_logits=head.cls_logits[:1].detach().float().cpu(),
        box=head.box[:1].detach().float().cpu(),
        obj_logits=None if head.obj_logits is None else head.obj_logits[:1].detach().float().cpu(),
        feature_sizes=dict(head.feature_sizes),
    )


def _assignment_view(
    model: Detector,
    priors: Priors,
    tal_head: HeadOutput | None,
    boxes: np.ndarray,
    labels: Tensor,
    scale: float,
    accounting: LevelAccounting | None = None,
) -> AssignmentView:
    """The model's own assigner on ``priors`` for GT ``boxes`` (M, 4) in ORIGINAL px, with its accounting.

    TAL ranks priors by the model's predictions: ``tal_head`` is decoded here, only when an assignment is asked
    for (a plain inspect never pays for decoding every prior)."""
    gt = boxes_to_network(boxes, scale).to(priors.boxes.device)  # (M, 4) network px
    labels = labels.reshape(-1).to(priors.boxes.device)
    assigner = model.config.head.assigner
    if assigner == "tal":
        from efpn.det.assign import assign_tal

        if tal_head is None:
            raise ValueError("TAL assignment needs the model's raw head output on every prior")
        device = next(model.parameters()).device  # the decoder's buffers (DFL bins) live with the model
        pred_boxes, pred_scores = model.decoder(_to(tal_head, device), priors.to(device))  # (1, R, 4), (1, R, K)
        a = assign_tal(priors, gt, labels, pred_scores[0].float().to(gt.device), pred_boxes[0].float().to(gt.device))
    elif hasattr(model.criterion, "assigner"):
        a = model.criterion.assigner(priors, gt)
    else:
        from efpn.det.assign import assign_yolov5

        a = assign_yolov5(priors, gt)
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


def _to(head: HeadOutput, device: torch.device) -> HeadOutput:
    return HeadOutput(head.cls_logits.to(device), head.box.to(device),
                      None if head.obj_logits is None else head.obj_logits.to(device), head.feature_sizes)


@torch.no_grad()
def assign_on(model: Detector, inspection: Inspection, boxes: Any, labels: Any | None = None) -> AssignmentView:
    """The model's own label assignment for ``boxes`` (M, 4) xyxy in the inspected image's ORIGINAL px, on the
    priors of ``inspection`` — no second forward (TAL decodes the head output the inspection kept).

    Use it for boxes that are not known before the forward, e.g. the detections standing in for missing GT.
    ``labels`` default to class 0. Raises ``ValueError`` for an inspection made without priors.
    """
    if inspection.priors is None:
        raise ValueError("this inspection kept no priors; run efpn.inspect again with this version")
    b = np.asarray(boxes.numpy() if isinstance(boxes, Tensor) else boxes, dtype=np.float32).reshape(-1, 4)
    lab = torch.zeros(len(b), dtype=torch.int64) if labels is None else torch.as_tensor(
        np.asarray(labels, dtype=np.int64)).reshape(-1)
    if len(lab) != len(b):
        raise ValueError(f"got {len(b)} boxes but {len(lab)} labels")
    return _assignment_view(model, inspection.priors, inspection.tal_head, b, lab, inspection.scale)


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

    ``image``: path, PIL image, (H, W[, C]) array or tensor (see :func:`efpn.preprocess.to_rgb_uint8`).
    ``targets``: optional ``{"boxes": (M, 4) xyxy in original px, "labels": (M,)}`` -> assignment accounting
    with the model's own assigner, and losses. ``image_size`` overrides the model's input size (long side).
    The detections equal ``model.predict`` on the same prepared input.
    """
    _require_eval(model)
    t0 = time.perf_counter()
    rgb = to_rgb_uint8(image)
    prep: Prepared = prepare(rgb, image_size or model.config.image_size)
    device = next(model.parameters()).device
    x = prep.tensor.to(device)
    net_targets = None
    if targets is not None:
        boxes = boxes_to_network(targets.get("boxes", np.zeros((0, 4))), prep.scale)
        labels = torch.as_tensor(np.asarray(targets.get("labels", np.zeros(0)), dtype=np.int64)).reshape(-1)
        net_targets = [{"boxes": boxes.to(device), "labels": labels.to(device), "scale": prep.scale}]
    t1 = time.perf_counter()
    run = model.forward_intermediates(x, net_targets, score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det)
    t2 = time.perf_counter()

    det = run["detections"][0]
    detections = {
        "boxes": boxes_to_original(det["boxes"].float().cpu(), prep.scale, prep.orig_hw),
        "scores": det["scores"].float().cpu(),
        "labels": det["labels"].cpu(),
        "levels": det["levels"].cpu(),
    }
    neck_int: dict[str, Tensor] = run["neck_internals"]
    pyramid = {lv: f[0].float().cpu() for lv, f in run["pyramid"].items()}
    before = dict(pyramid)
    fused: dict[str, Tensor] = {}
    alpha: dict[str, float] = {}
    gates: dict[str, Tensor] = {}
    for key, v in neck_int.items():
        parts = key.split(".")
        if parts[0] == "cem" and len(parts) == 3:
            lv, what = parts[1], parts[2]
            if what == "before":
                before[lv] = v[0].float().cpu()
            elif what == "fused":
                fused[lv] = v[0].float().cpu()
            elif what == "alpha":
                alpha[lv] = float(v.float().mean())
        elif parts[0] == "fbsm" and parts[-1] == "mask":
            gates[parts[1]] = v[0, 0].float().cpu()
    # CEM's "before" is the FPN's own p_t; levels CEM does not touch are reported as the final pyramid.
    strides = {f"{s}.down": 2 ** int(s[1:]) for s in ("c2", "c3", "c4", "c5")}
    strides.update({"pan.down3": 16, "pan.down4": 32})
    all_int = {**run["backbone_internals"], **{k: v for k, v in neck_int.items() if k.startswith("pan.")}}
    kernels = _kernels(all_int, strides)

    priors: Priors = run["priors"].to("cpu")
    tal_head = _cpu_head(run["head"]) if model.config.head.assigner == "tal" else None
    assignment_view = None
    losses: dict[str, float] = {}
    if net_targets is not None:
        losses = {k: float(v) for k, v in run.get("losses", {}).items()}
        stats = run.get("stats")
        assignment_view = _assignment_view(
            model, priors, tal_head, np.asarray(targets["boxes"], dtype=np.float32).reshape(-1, 4),
            net_targets[0]["labels"].cpu(), prep.scale,
            accounting=stats.accounting if stats is not None else None,
        )
    t3 = time.perf_counter()
    return Inspection(
        image=rgb,
        scale=prep.scale,
        network_hw=tuple(x.shape[-2:]),
        levels=model.levels,
        class_names=tuple(model.config.class_names) or tuple(str(i) for i in range(model.num_classes)),
        detections=detections,
        backbone={k: v[0].float().cpu() for k, v in run["backbone"].items()},
        pyramid=pyramid,
        pyramid_before_cem=before,
        cem_fused=fused,
        cem_alpha=alpha,
        gates=gates,
        kernels=kernels,
        assignment=assignment_view,
        losses=losses,
        priors=priors,
        tal_head=tal_head,
        timings_ms={"prepare": 1e3 * (t1 - t0), "forward": 1e3 * (t2 - t1), "collect": 1e3 * (t3 - t2)},
    )
