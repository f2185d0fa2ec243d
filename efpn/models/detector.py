"""The detector: backbone -> neck -> head, with the criterion and decoder handed in ready-made.

``forward(images, targets)`` returns named losses in train mode and detections in eval mode (torchvision's
contract). :meth:`Detector.run` is the one public forward underneath both: it returns a typed
:class:`~efpn.models.outputs.DetectorRun` with every internal asked for (pyramid before/after CEM, CEM's term and α,
FBSM gates and their targets, per-pixel kernels with their strides, head outputs, decoded priors, detections,
losses) as a return value: no hooks, no state left behind, so one model can serve many users at once.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efpn.config import ModelConfig
from efpn.det.assign import Assignment, assign_yolov5
from efpn.det.postprocess import batched_detections
from efpn.det.priors import Priors
from efpn.det.tal import assign_tal
from efpn.layers.internals import GateInternals
from efpn.models.criterion import CriterionStats, gate_target
from efpn.models.decode import Decoder, candidate_subset
from efpn.models.heads import HeadOutput
from efpn.models.outputs import DetectorRun, LevelRun
from efpn.vocab import level_stride

Targets = Sequence[Mapping[str, Tensor]]


class Detector(nn.Module):
    """A dense detector assembled from explicit parts (see :func:`efpn.zoo.build`).

    Inputs are RGB float images ``(N, 3, H, W)`` in [0, 1] of any size and any float dtype (float64, as
    ``torch.from_numpy`` gives for a default numpy array, float16 and bfloat16 are converted to the model's own
    dtype); the model normalises them with ``config.pixel_mean/std`` and pads bottom/right to a multiple of
    ``size_divisor`` (boxes are unaffected). :meth:`predict` (and ``forward`` in eval mode) returns one result per
    image, so an empty batch (N = 0) gives an empty list; every other forward refuses it.
    Targets: one dict per image with ``boxes`` (M, 4) xyxy pixels and ``labels`` (M,) class indices in [0, K)
    (integers, or floats with whole values); an optional float ``scale`` (network px / original px) makes size
    buckets use original sizes.

    ``cpu_channels_last`` (default True): inference on CPU (eval mode, no gradient recorded) runs on channels-last
    tensors. oneDNN's convolutions then read and write NHWC as it lies instead of reordering every NCHW input into
    their blocked layout and back; the outputs are the same function (float rounding aside). Set it False to run
    NCHW (bench/latency.py measures both).
    """

    #: run CPU inference channels-last (see the class docstring); an attribute, so it can be switched per model
    cpu_channels_last: bool = True

    def __init__(
        self,
        config: ModelConfig,
        backbone: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        criterion: nn.Module,
        decoder: Decoder,
        size_divisor: int = 32,
    ):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.criterion = criterion
        self.decoder = decoder
        self.size_divisor = size_divisor
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ data checks
    @property
    def levels(self) -> tuple[str, ...]:
        """Pyramid levels the head predicts on, in prior order (``detections["levels"]`` indexes this)."""
        return tuple(self.head.levels)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def float_dtype(self) -> torch.dtype:
        """The floating dtype of the model's weights (what its first convolution takes): float32 unless the model
        was converted (``model.half()``, ``model.to(torch.bfloat16)``)."""
        for param in self.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.float32

    def check_images(self, images: Tensor, *, allow_empty: bool = False) -> Tensor:
        """``images`` ready for the network: the same finite float (N, 3, H, W) batch in [0, 1], in the model's
        :attr:`float_dtype` (another float dtype is converted, differentiably; the same dtype is returned as is).

        Raises ValueError with a clear message for anything else, and for an empty batch (N = 0) unless
        ``allow_empty`` (a caller that returns one result per image answers it with none)."""
        if not isinstance(images, Tensor):
            raise ValueError(f"images must be a torch.Tensor (N, 3, H, W) in [0, 1], got {type(images).__name__}; for "
                             "an image file, array or PIL image use efpn.infer.predict_image(model, image) (boxes "
                             "in the image's own pixels) or efpn.inspect(model, image)")
        if images.dim() != 4:
            raise ValueError(
                f"images must be 4-D (N, 3, H, W), got shape {tuple(images.shape)}; add a batch dimension "
                "with images[None] for a single image"
            )
        if images.shape[1] != 3:
            raise ValueError(
                f"images must have 3 RGB channels in dim 1, got {images.shape[1]} (shape {tuple(images.shape)}); "
                "convert grayscale with .expand(-1, 3, -1, -1) and drop alpha channels"
            )
        if not images.is_floating_point():
            raise ValueError(
                f"images must be float in [0, 1], got dtype {images.dtype}; use images.float() / 255"
            )
        if images.shape[-1] < 8 or images.shape[-2] < 8:
            raise ValueError(f"images are too small ({tuple(images.shape[-2:])}); need at least 8x8 pixels")
        if images.shape[0] == 0 and not allow_empty:
            # the dynamic layers' kernels and the head's reshapes have nothing to work on: say so here, not there
            raise ValueError(f"images is an empty batch (shape {tuple(images.shape)}): there is nothing to run; give "
                             "at least one image (Detector.predict returns an empty list for an empty batch)")
        if not images.numel():
            return images.to(self.float_dtype)
        # one pass over the pixels (isfinite + min + max were three, ~5 % of a YOLOv8n forward on CPU): a NaN makes
        # both extremes NaN and an infinity one of them, so every bad image fails the range test; diagnose it then
        lo, hi = torch.aminmax(images)
        if not (lo >= -0.01 and hi <= 1.01):
            if not torch.isfinite(images).all():
                raise ValueError("images contain NaN or infinite values")
            raise ValueError(
                f"images must be in [0, 1], got range [{float(lo):.3g}, {float(hi):.3g}]; "
                "if they are 0-255, divide by 255"
            )
        # checked in the given dtype first (a value too large for float16 is said as out of range, not as infinite);
        # a conv refuses an input of another dtype than its weights ("expected scalar type Double but found Float")
        return images.to(self.float_dtype)

    def check_targets(self, targets: Targets, images: Tensor) -> list[dict[str, Tensor]]:
        """Validate targets; returns them on the images' device with boxes clipped to the image and labels int64.

        Raises ValueError for a wrong count, shape, NaN, inverted or zero-size boxes, boxes entirely outside
        the image, labels that are not whole numbers (0.7 is no class; 2.0 is class 2), or labels outside [0, K).
        Empty targets (M = 0) are valid.
        """
        if len(targets) != images.shape[0]:
            raise ValueError(f"got {len(targets)} target dicts for {images.shape[0]} images")
        h, w = images.shape[-2:]
        out = []
        for i, t in enumerate(targets):
            if "boxes" not in t or "labels" not in t:
                raise ValueError(f"target {i} needs 'boxes' and 'labels' keys, got {sorted(t)}")
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=images.device)
            labels = _class_indices(t["labels"], i).to(images.device)
            if boxes.numel() == 0:
                boxes = boxes.reshape(0, 4)
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise ValueError(f"target {i}: boxes must be (M, 4) xyxy, got shape {tuple(boxes.shape)}")
            if labels.shape != (boxes.shape[0],):
                raise ValueError(f"target {i}: {boxes.shape[0]} boxes but labels of shape {tuple(labels.shape)}")
            if not torch.isfinite(boxes).all():
                raise ValueError(f"target {i}: boxes contain NaN or infinite values")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"target {i}: labels must be in [0, {self.num_classes}), got range "
                    f"[{int(labels.min())}, {int(labels.max())}]"
                )
            inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
            if inverted.any():
                j = int(inverted.nonzero()[0])
                raise ValueError(f"target {i}: box {j} {boxes[j].tolist()} is not xyxy (x2 < x1 or y2 < y1)")
            clipped = boxes.clone()
            clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
            clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
            empty = ((clipped[:, 2] - clipped[:, 0]) <= 0) | ((clipped[:, 3] - clipped[:, 1]) <= 0)
            if empty.any():
                j = int(empty.nonzero()[0])
                raise ValueError(
                    f"target {i}: box {j} {boxes[j].tolist()} has zero size inside the {w}x{h} image "
                    "(degenerate or outside); drop it, e.g. with efpn.det.boxes.validate_boxes"
                )
            new = dict(t)
            new["boxes"], new["labels"] = clipped, labels
            out.append(new)
        return out

    # ------------------------------------------------------------------ the one forward
    def _normalize_and_pad(self, images: Tensor) -> Tensor:
        """Normalise and pad bottom/right to the size divisor: (N, 3, H, W) -> (N, 3, H', W')."""
        # the YOLO presets' mean 0 / std 1 is the identity: skip two passes over the image (same values)
        identity = self.config.pixel_mean == (0.0, 0.0, 0.0) and self.config.pixel_std == (1.0, 1.0, 1.0)
        x = images if identity else (images - self.pixel_mean.to(images)) / self.pixel_std.to(images)
        h, w = x.shape[-2:]
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        if self._channels_last_inference(x):
            # every conv after it keeps the layout. Canonical strides too: an image viewed from an HWC array with
            # N = 1 can be channels-last with a batch stride of 3, which oneDNN serves by another path (other float
            # rounding), so the same pixels would give detections that differ in the last bits
            n, c, hh, ww = x.shape
            x = x.contiguous(memory_format=torch.channels_last)
            if x.stride() != (c * hh * ww, 1, ww * c, c):
                x = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
        return x

    def _channels_last_inference(self, x: Tensor) -> bool:
        """Whether this forward runs channels-last: :attr:`cpu_channels_last`, eval mode, no gradient recorded, a CPU
        tensor, and not inside a trace, an ONNX export or ``torch.compile`` (their graphs stay in the default
        layout). Training, attribution and GPU runs keep their layout."""
        return (self.cpu_channels_last and not self.training and not torch.is_grad_enabled()
                and x.device.type == "cpu" and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
                and not torch.compiler.is_compiling())

    def _needs_gates_for_loss(self) -> bool:
        return bool(getattr(self.criterion, "mask_levels", ())) and getattr(self.criterion, "mask_weight", 0) > 0

    def backbone_features(self, images: Tensor, internals: bool = False) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The backbone's output for ``images`` (N, 3, H, W) in [0, 1], as :meth:`run` computes it first: the feature
        maps by stage name and, with ``internals``, the dynamic layers' kernels (else an empty dict). Pass the pair
        back as ``run(features=...)``. Runs in the caller's grad mode; changes no state."""
        images = self.check_images(images)
        return self._backbone_pass(images, internals)

    def _backbone_pass(self, images: Tensor, internals: bool) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Normalise, pad and run the backbone on checked images: (feature maps, kernels or an empty dict)."""
        x = self._normalize_and_pad(images)
        if internals:
            return self.backbone(x, return_internals=True)
        return self.backbone(x), {}

    def run(
        self,
        images: Tensor,
        *,
        internals: bool = False,
        targets: Targets | None = None,
        detect: bool = False,
        decode: bool = False,
        bypass_cem: bool = False,
        head_taps: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
        score_thresh: float | None = None,
        nms_iou: float | None = None,
        max_det: int | None = None,
        features: tuple[dict[str, Tensor], dict[str, Any]] | None = None,
    ) -> DetectorRun:
        """One forward of backbone -> neck -> head, returning what was asked for as a :class:`DetectorRun`.

        ``images`` (N, 3, H, W) RGB float in [0, 1]. ``internals``: fill the pyramid before CEM, CEM's term and α,
        the FBSM gates and the per-pixel kernels of every dynamic layer (otherwise only the pyramid the head reads).
        ``targets``: validate them and compute ``losses`` and ``stats`` with the model's own assigner (float32
        even under autocast: box decoding and IoU in bf16 resolve only 2-4 px at 320-640 px inputs, too coarse
        for tiny objects), and the gate targets of gated levels. ``detect``: decoded, thresholded, NMS-ed
        ``detections`` (postprocess overrides ``score_thresh``/``nms_iou``/``max_det``). ``decode``: boxes and
        scores for every prior (what an exported graph returns). ``bypass_cem``: skip CEM for this call only (the
        "without CEM" counterfactual). ``head_taps``: per level a function applied to the features between neck
        and head (identity layers for LayerGradCAM, clones that separate the head's gradient path). ``features``:
        the backbone's output for these images from :meth:`backbone_features` (with ``internals`` if this run asks
        for them), so several runs that differ only after the backbone (with and without CEM) share one backbone
        pass; gradients then reach the given tensors, not the backbone's weights.

        Runs in the caller's grad mode and never changes the module's state (no hooks, no mode switch), so one
        eval-mode model can serve many users at once. In train mode BatchNorm updates as in any forward.

        Raises ValueError for images :meth:`check_images` refuses (an empty batch included), for targets
        :meth:`check_targets` refuses, and for post-processing settings :func:`check_postprocess` refuses.
        """
        check_postprocess(score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det)
        images = self.check_images(images)
        checked = self.check_targets(targets, images) if targets is not None else None
        want = internals or (checked is not None and self._needs_gates_for_loss())
        neck_kw = {"bypass_cem": True} if bypass_cem else {}
        if features is not None:
            feats, kernels = features
            if not feats or any(f.shape[0] != images.shape[0] for f in feats.values()):
                raise ValueError(f"features: need the backbone's feature maps of these {images.shape[0]} image(s), "
                                 "as Detector.backbone_features returns them")
        else:
            feats, kernels = self._backbone_pass(images, want)
        if want:
            pyramid, neck = self.neck(feats, return_internals=True, **neck_kw)
            kernels = {**kernels, **neck.kernels}
        else:
            neck = None
            pyramid = self.neck(feats, **neck_kw)
        if head_taps:
            pyramid = {lv: head_taps[lv](f) if lv in head_taps else f for lv, f in pyramid.items()}
        out: HeadOutput = self.head(pyramid)
        priors: Priors = self.head.priors(out.feature_sizes, device=images.device)
        levels = {
            lv: LevelRun(
                name=lv,
                stride=level_stride(lv),
                features=pyramid[lv],
                before_cem=neck.fpn.get(lv, pyramid[lv]) if neck is not None else pyramid[lv],
                cem=neck.cem.get(lv) if neck is not None else None,
                gate=neck.gates.get(lv) if neck is not None else None,
                gate_target=(
                    gate_target(checked, lv, neck.gates[lv].mask)
                    if neck is not None and checked is not None and lv in neck.gates else None
                ),
            )
            for lv in self.levels
        }
        result = DetectorRun(
            input_hw=(int(images.shape[-2]), int(images.shape[-1])),
            backbone=feats,
            levels=levels,
            kernels=kernels,
            head=out,
            priors=priors,
        )
        if checked is not None:
            result.losses, result.stats = self._losses(out, priors, checked, neck.gates if neck is not None else {})
        if decode:
            result.decoded = self.decode(out, priors)
        if detect:
            result.detections = self.postprocess(
                out, priors, result.input_hw, score_thresh=score_thresh, nms_iou=nms_iou, max_det=max_det
            )
        return result

    def _losses(
        self, out: HeadOutput, priors: Priors, targets: Targets, gates: Mapping[str, GateInternals]
    ) -> tuple[dict[str, Tensor], CriterionStats]:
        out32 = HeadOutput(
            out.cls_logits.float(),
            out.box.float(),
            None if out.obj_logits is None else out.obj_logits.float(),
            out.feature_sizes,
        )
        gates32 = {lv: GateInternals(g.mask.float(), g.logits.float(), g.beta, g.delta) for lv, g in gates.items()}
        with torch.autocast(device_type=out.cls_logits.device.type, enabled=False):
            return self.criterion(out32, priors, targets, gates32)

    def decode(self, out: HeadOutput, priors: Priors) -> tuple[Tensor, Tensor]:
        """Boxes (N, R, 4) xyxy input px and class scores (N, R, K) for every prior (before threshold and NMS).

        Scores are what the threshold sees (sigmoid class, times objectness for YOLOv5)."""
        return self.decoder(out, priors)

    @torch.no_grad()
    def assign(
        self,
        priors: Priors,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        head: HeadOutput | None = None,
        assigner: str | None = None,
    ) -> Assignment:
        """The model's own label assignment of GT ``gt_boxes`` (M, 4) xyxy network px with ``gt_labels`` (M,) to
        ``priors`` (the same the criterion uses in training). TAL ranks priors by the model's predictions:
        pass the raw ``head`` output of one image (batch of 1) that produced ``priors``. ``assigner="tal"``
        applies TAL whatever the model's own assigner is; None or the model's own name uses the model's."""
        own = self.config.head.assigner
        assigner = assigner or own
        if assigner not in (own, "tal"):
            raise ValueError(f"assigner must be the model's own ({own!r}) or 'tal', got {assigner!r}")
        if assigner == "tal":
            if head is None:
                raise ValueError("TAL assignment ranks priors by the model's predictions; pass the head output")
            device = self.pixel_mean.device  # the decoder's buffers (DFL bins) live with the model
            pred_boxes, pred_scores = self.decode(head.to(device), priors.to(device))  # (1, R, 4), (1, R, K)
            return assign_tal(priors, gt_boxes, gt_labels, pred_scores[0].float().to(gt_boxes.device),
                              pred_boxes[0].float().to(gt_boxes.device))
        if hasattr(self.criterion, "assigner"):
            return self.criterion.assigner(priors, gt_boxes)
        return assign_yolov5(priors, gt_boxes)

    def compile_network(self) -> None:
        """``torch.compile`` the dense network (backbone, neck, head) in place; assignment and losses are
        data-dependent Python and stay eager. ``Module.compile`` keeps the state_dict keys."""
        for part in (self.backbone, self.neck, self.head):
            part.compile()

    def level_parameters(self, level: str) -> list[nn.Parameter]:
        """Parameters of the conv that produces pyramid level ``level`` ([] when no single conv does, e.g. PAN)."""
        conv = self.neck.level_conv(level) if hasattr(self.neck, "level_conv") else None
        return [] if conv is None else list(conv.parameters())

    def compute_losses(self, images: Tensor, targets: Targets) -> tuple[dict[str, Tensor], CriterionStats]:
        """Losses and the batch statistics (positive accounting, DCLoss, gate mass) in one forward."""
        run = self.run(images, targets=targets)
        assert run.losses is not None and run.stats is not None
        return run.losses, run.stats

    @torch.no_grad()
    def postprocess(
        self,
        out: HeadOutput,
        priors: Priors,
        image_hw: tuple[int, int],
        score_thresh: float | None = None,
        nms_iou: float | None = None,
        max_det: int | None = None,
    ) -> list[dict[str, Tensor]]:
        """Decode, clip to the (unpadded) image and run class-aware NMS; ``levels`` index :attr:`levels`."""
        pp = self.config.postprocess
        score_thresh = pp.score_thresh if score_thresh is None else score_thresh
        # decode only priors that can pass the threshold (same detections, a fraction of the work)
        out, priors = candidate_subset(out, priors, score_thresh)
        boxes, scores = self.decode(out, priors)
        boxes = boxes.float()
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, image_hw[1])
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, image_hw[0])
        return batched_detections(
            boxes,
            scores.float(),
            priors.level,
            score_thresh=score_thresh,
            nms_iou=pp.nms_iou if nms_iou is None else nms_iou,
            max_det=pp.max_det if max_det is None else max_det,
            pre_nms_topk=pp.pre_nms_topk,
        )

    def forward(
        self, images: Tensor, targets: Targets | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("in train mode the detector needs targets; call model.eval() to detect")
            return self.compute_losses(images, targets)[0]
        if _empty_batch(images):
            self.check_images(images, allow_empty=True)  # an empty batch of the wrong layout is still said
            return []  # one result per image: none
        detections = self.run(images, detect=True).detections
        assert detections is not None
        return detections

    @torch.no_grad()
    def predict(self, images: Tensor, **postprocess_kw: Any) -> list[dict[str, Tensor]]:
        """Eval-mode detections with optional ``score_thresh``/``nms_iou``/``max_det`` overrides.

        Does not change the module's train/eval mode; BatchNorm uses running statistics only if the model is
        already in eval mode (the studio always loads models in eval mode). Returns one dict per image: an empty
        list for an empty batch (N = 0), as torchvision's detectors do. Raises ValueError for bad images or
        settings (see :meth:`run`).
        """
        if _empty_batch(images):
            check_postprocess(**postprocess_kw)
            self.check_images(images, allow_empty=True)  # an empty batch of the wrong layout is still said
            return []
        detections = self.run(images, detect=True, **postprocess_kw).detections
        assert detections is not None
        return detections


def _empty_batch(images: Any) -> bool:
    """Whether ``images`` is a 4-D tensor batch of no images (N = 0)."""
    return isinstance(images, Tensor) and images.dim() == 4 and images.shape[0] == 0


def _class_indices(labels: Any, index: int) -> Tensor:
    """Target ``index``'s ``labels`` as an int64 tensor; ValueError for values that are not whole numbers (a cast
    would make 0.7 class 0 without a word)."""
    t = torch.as_tensor(labels)
    if t.is_floating_point() and t.numel() and not bool((torch.isfinite(t) & (t == t.round())).all()):
        bad = ", ".join(f"{v:.4g}" for v in t[~(torch.isfinite(t) & (t == t.round()))].reshape(-1)[:5].tolist())
        raise ValueError(f"target {index}: labels must be whole class indices, got {bad}; give each class as an "
                         "integer (round or map soft labels first)")
    return t.to(torch.int64)


def check_postprocess(score_thresh: float | None = None, nms_iou: float | None = None, max_det: int | None = None,
                      **_: Any) -> None:
    """Raise ValueError for post-processing settings outside their meaning: thresholds are real numbers in [0, 1]
    (NaN refused), ``max_det`` a whole number (an int, not a bool or a float) of at least one detection. None keeps
    the model config's value. The one check of these settings: :meth:`Detector.run`, :func:`efpn.inspect` and
    validation all call it."""
    for name, value in (("score_thresh", score_thresh), ("nms_iou", nms_iou)):
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if max_det is None:
        return
    if isinstance(max_det, (bool, np.bool_)) or not isinstance(max_det, numbers.Integral):
        # a float would fail later as a slice bound ("slice indices must be integers")
        raise ValueError(f"max_det must be a whole number of detections (an int >= 1), got {max_det!r}")
    if int(max_det) < 1:
        raise ValueError(f"max_det must be >= 1, got {max_det}")
