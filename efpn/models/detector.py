"""The detector: backbone -> neck -> head, with the criterion and decoder handed in ready-made.

``forward(images, targets)`` returns named losses in train mode and detections in eval mode (torchvision's
contract). ``forward_intermediates`` runs the same modules once and returns every internal the studio shows, as a
return value: no hooks, no state left behind, so one model can serve many users at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efpn.config import ModelConfig
from efpn.det.postprocess import batched_detections
from efpn.det.priors import Priors
from efpn.models.criterion import CriterionStats
from efpn.models.decode import Decoder, candidate_subset
from efpn.models.heads import HeadOutput

Targets = Sequence[Mapping[str, Tensor]]


class Detector(nn.Module):
    """A dense detector assembled from explicit parts (see :func:`efpn.zoo.build`).

    Inputs are RGB float images ``(N, 3, H, W)`` in [0, 1] of any size; the model normalises them with
    ``config.pixel_mean/std`` and pads bottom/right to a multiple of ``size_divisor`` (boxes are unaffected).
    Targets: one dict per image with ``boxes`` (M, 4) xyxy pixels and ``labels`` (M,) int64 in [0, K);
    an optional float ``scale`` (network px / original px) makes size buckets use original sizes.
    """

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

    def check_images(self, images: Tensor) -> None:
        """Raise ValueError with a clear message unless ``images`` is a finite float (N, 3, H, W) batch in [0, 1]."""
        if not isinstance(images, Tensor):
            raise ValueError(f"images must be a torch.Tensor (N, 3, H, W), got {type(images).__name__}")
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
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or infinite values")
        if images.numel() and (images.min() < -0.01 or images.max() > 1.01):
            raise ValueError(
                f"images must be in [0, 1], got range [{float(images.min()):.3g}, {float(images.max()):.3g}]; "
                "if they are 0-255, divide by 255"
            )

    def check_targets(self, targets: Targets, images: Tensor) -> list[dict[str, Tensor]]:
        """Validate targets; returns them on the images' device with boxes clipped to the image.

        Raises ValueError for a wrong count, shape, NaN, inverted or zero-size boxes, boxes entirely outside
        the image, or labels outside [0, K). Empty targets (M = 0) are valid.
        """
        if len(targets) != images.shape[0]:
            raise ValueError(f"got {len(targets)} target dicts for {images.shape[0]} images")
        h, w = images.shape[-2:]
        out = []
        for i, t in enumerate(targets):
            if "boxes" not in t or "labels" not in t:
                raise ValueError(f"target {i} needs 'boxes' and 'labels' keys, got {sorted(t)}")
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=images.device)
            labels = torch.as_tensor(t["labels"], dtype=torch.int64, device=images.device)
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

    # ------------------------------------------------------------------ forward pieces
    def _prepare(self, images: Tensor) -> Tensor:
        """Normalise and pad bottom/right to the size divisor: (N, 3, H, W) -> (N, 3, H', W')."""
        # the YOLO presets' mean 0 / std 1 is the identity: skip two passes over the image (same values)
        identity = self.config.pixel_mean == (0.0, 0.0, 0.0) and self.config.pixel_std == (1.0, 1.0, 1.0)
        x = images if identity else (images - self.pixel_mean.to(images)) / self.pixel_std.to(images)
        h, w = x.shape[-2:]
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return x

    def _run(self, images: Tensor, internals: bool, bypass_cem: bool = False) -> dict[str, Any]:
        x = self._prepare(images)
        neck_kw = {"bypass_cem": True} if bypass_cem else {}
        if internals:
            feats, bb_int = self.backbone(x, return_internals=True)
            pyramid, neck_int = self.neck(feats, return_internals=True, **neck_kw)
        else:
            feats, bb_int = self.backbone(x), {}
            pyramid, neck_int = self.neck(feats, **neck_kw), {}
        out: HeadOutput = self.head(pyramid)
        priors: Priors = self.head.priors(out.feature_sizes, device=images.device)
        return {
            "backbone": feats,
            "backbone_internals": bb_int,
            "pyramid": pyramid,
            "neck_internals": neck_int,
            "head": out,
            "priors": priors,
        }

    def _needs_internals_for_loss(self) -> bool:
        return bool(getattr(self.criterion, "mask_levels", ())) and getattr(self.criterion, "mask_weight", 0) > 0

    def compute_losses(self, images: Tensor, targets: Targets) -> tuple[dict[str, Tensor], CriterionStats]:
        """Losses and the batch statistics (positive accounting, DCLoss, gate mass) in one forward."""
        self.check_images(images)
        targets = self.check_targets(targets, images)
        run = self._run(images, internals=self._needs_internals_for_loss())
        # The criterion runs in float32 even under autocast: box decoding and IoU in bf16 resolve only 2-4 px at
        # 320-640 px inputs, too coarse for tiny objects.
        out: HeadOutput = run["head"]
        out32 = HeadOutput(
            out.cls_logits.float(),
            out.box.float(),
            None if out.obj_logits is None else out.obj_logits.float(),
            out.feature_sizes,
        )
        internals = {k: v.float() for k, v in run["neck_internals"].items()}
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.criterion(out32, run["priors"], targets, internals)

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
        boxes, scores = self.decoder(out, priors)
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
        self.check_images(images)
        run = self._run(images, internals=False)
        return self.postprocess(run["head"], run["priors"], tuple(images.shape[-2:]))

    @torch.no_grad()
    def predict(self, images: Tensor, **postprocess_kw: Any) -> list[dict[str, Tensor]]:
        """Eval-mode detections with optional ``score_thresh``/``nms_iou``/``max_det`` overrides.

        Does not change the module's train/eval mode; BatchNorm uses running statistics only if the model is
        already in eval mode (the studio always loads models in eval mode).
        """
        self.check_images(images)
        run = self._run(images, internals=False)
        return self.postprocess(run["head"], run["priors"], tuple(images.shape[-2:]), **postprocess_kw)

    def forward_intermediates(
        self, images: Tensor, targets: Targets | None = None, **postprocess_kw: Any
    ) -> dict[str, Any]:
        """One forward returning every named intermediate (see docs/architecture.md).

        Keys: ``backbone`` {c*}, ``backbone_internals`` (SGDM kernels by ``{stage}.down.{name}``), ``pyramid``
        {p*} after CEM/FBSM, ``neck_internals`` (``cem.{level}.fused|before|after|alpha``,
        ``fbsm.{level}.mask|logits``), ``head`` (HeadOutput), ``priors``, ``detections``; with targets also
        ``losses`` and ``stats`` (computed in the module's current mode, without gradient).
        """
        self.check_images(images)
        run = self._run(images, internals=True)
        run["detections"] = self.postprocess(run["head"], run["priors"], tuple(images.shape[-2:]), **postprocess_kw)
        if targets is not None:
            checked = self.check_targets(targets, images)
            with torch.no_grad():
                run["losses"], run["stats"] = self.criterion(
                    run["head"], run["priors"], checked, run["neck_internals"]
                )
        return run
