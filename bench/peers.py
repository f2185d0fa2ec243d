"""The peers we measure against, built in this process with random weights (nothing is ever downloaded).

* Ultralytics YOLOv8n / YOLOv5n from their model YAMLs (``DetectionModel("yolov8n.yaml", nc=80)``). Note that
  Ultralytics' ``yolov5n.yaml`` is "YOLOv5u": the YOLOv5 CSP backbone and PAN with the *anchor-free YOLOv8 head*
  (DFL + decoupled 3x3 towers), which is heavier than the original 1x1 anchor head our ``yolov5n`` keeps.
* torchvision RetinaNet-R50-FPN (``weights=None, weights_backbone=None``), resized to our 640 input.

Also :func:`fold_batchnorm`, a bench-only BN folding for our detectors so "fused" rows compare like with like
(Ultralytics ships ``model.fuse()``; efpn deliberately has no inference-only model surgery in the library).

Ultralytics is an optional, bench-only dependency: :func:`ultralytics_available` says whether it imports.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

# Keep Ultralytics quiet, offline and out of the home directory; must be set before it is imported.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "efpn-bench-ultralytics"))


def ultralytics_available() -> tuple[bool, str]:
    """``(True, version)`` if Ultralytics imports, else ``(False, reason)``."""
    try:
        import ultralytics
    except Exception as e:  # ImportError, or a broken cv2 (see bench/README.md)
        return False, f"{type(e).__name__}: {e}"
    return True, ultralytics.__version__


def ultralytics_model(yaml_name: str, num_classes: int = 80) -> nn.Module:
    """An Ultralytics ``DetectionModel`` built from its YAML (random init), in eval mode, not fused."""
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(yaml_name, nc=num_classes, verbose=False).eval()


def ultralytics_fused(model: nn.Module) -> nn.Module:
    """A BN-folded copy of an Ultralytics model (its own ``fuse()``); the original is untouched."""
    return copy.deepcopy(model).fuse(verbose=False).eval()


def ultralytics_predict(
    model: nn.Module, score_thresh: float, nms_iou: float, max_det: int
) -> Callable[[Tensor], list[Tensor]]:
    """``images -> [(D, 6) xyxy, score, class]`` per image: forward + decode + Ultralytics' own NMS
    (class-aware, multi-label like ours), with our thresholds so both sides do the same work."""
    from ultralytics.utils.nms import non_max_suppression

    def predict(images: Tensor) -> list[Tensor]:
        out = model(images)
        pred = out[0] if isinstance(out, (tuple, list)) else out  # (N, 4 + K, R) decoded
        return non_max_suppression(pred, conf_thres=score_thresh, iou_thres=nms_iou, max_det=max_det,
                                   multi_label=True)

    return predict


def ultralytics_train_setup(model: nn.Module) -> nn.Module:
    """Give an Ultralytics model the default hyper-parameters its loss reads (``model.args``), in train mode."""
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    model.args = get_cfg(DEFAULT_CFG)
    return model.train()


def ultralytics_batch(images: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Any]:
    """Our ``(images (N,3,H,W) in [0,1], [{boxes xyxy px, labels}])`` as the batch dict Ultralytics' loss reads:
    ``img``, ``batch_idx`` (M,), ``cls`` (M, 1), ``bboxes`` (M, 4) normalised centre-xywh."""
    h, w = images.shape[-2:]
    idx, cls, boxes = [], [], []
    for i, t in enumerate(targets):
        b = t["boxes"].float()
        idx.append(torch.full((b.shape[0],), float(i)))
        cls.append(t["labels"].float().view(-1, 1))
        xywh = torch.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                            (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], 1)
        boxes.append(xywh)
    return {"img": images, "batch_idx": torch.cat(idx), "cls": torch.cat(cls), "bboxes": torch.cat(boxes)}


def torchvision_retinanet(num_classes: int = 80, image_size: int = 640) -> nn.Module:
    """torchvision ``retinanet_resnet50_fpn`` (random init, no downloads), resizing inputs to ``image_size``
    (its default would upscale 640 -> 800), in eval mode."""
    from torchvision.models.detection import retinanet_resnet50_fpn

    return retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=image_size, max_size=image_size
    ).eval()


def torchvision_retinanet_network(model: nn.Module) -> Callable[[Tensor], object]:
    """``images -> head outputs``: transform (normalise) + backbone/FPN + head, without anchors, decode or NMS."""

    def network(images: Tensor) -> object:
        batch, _ = model.transform(list(images))
        feats = list(model.backbone(batch.tensors).values())
        return model.head(feats)

    return network


# ---------------------------------------------------------------------------------------------------- ours


def efpn_network(model: nn.Module) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``images -> (boxes (N,R,4), scores (N,R,K))``: exactly what ``Detector.predict`` runs before thresholding
    and NMS — ``Detector.run(images, decode=True)`` (normalise, pad, backbone, neck, head, priors, and the
    decoder over every prior; the path ``efpn.infer.export`` also uses)."""

    def network(images: Tensor) -> tuple[Tensor, Tensor]:
        decoded = model.run(images, decode=True).decoded
        assert decoded is not None
        return decoded

    return network


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every eval-mode ``BatchNorm2d`` that directly follows a bias-free or biased
    ``Conv2d`` (``conv``/``bn`` of ``ConvBNAct``, ``spatial``/``spatial_bn`` of the RDConv kernel generator)
    folded into that conv and replaced by ``nn.Identity``. Bench-only: it is what Ultralytics' ``fuse()`` does,
    so fused rows compare like with like. ``Conv2d`` followed by ``BatchNorm2d`` inside an ``nn.Sequential`` is
    folded the same way. The folded conv keeps the original weight's memory format."""
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        for conv_name, bn_name in (("conv", "bn"), ("spatial", "spatial_bn")):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, _fold(conv, bn))
                setattr(module, bn_name, nn.Identity())
        if isinstance(module, nn.Sequential):  # torchvision's Conv2dNormActivation and MobileNetV2's projections
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i], module[i + 1] = _fold(module[i], module[i + 1]), nn.Identity()
    return fused


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one conv: ``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``."""
    assert bn.running_mean is not None and bn.running_var is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
        out = out.to(memory_format=torch.channels_last)
    out.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    out.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return out
