"""ONNX export of a detector, checked against onnxruntime.

The exported graph takes a fixed-size RGB batch ``(1, 3, S, S)`` in [0, 1] and returns the decoded per-prior
predictions before NMS — ``boxes (1, R, 4)`` xyxy in input pixels and ``scores (1, R, K)`` — which is what ONNX
runtimes and TensorRT plug-ins expect to post-process (NMS is left to the runtime, as Ultralytics does by default).
The file's metadata carries what reproduces efpn's own detections: the classes, how an image becomes the input, and
the post-processing (score threshold, NMS IoU, the per-level top-k before NMS, the cap on detections).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from efpn.models.detector import Detector


class _Decoded(nn.Module):
    """Wraps a detector: image -> (boxes, scores) per prior, the part of inference that is a pure tensor graph."""

    def __init__(self, model: Detector):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        run = self.model.run(images, decode=True)
        assert run.decoded is not None
        return run.decoded


@dataclass(frozen=True)
class ExportReport:
    """Where the model went and how closely onnxruntime reproduces PyTorch on a random input."""

    path: Path
    image_size: int
    num_priors: int
    max_abs_diff_boxes: float
    max_abs_diff_scores: float
    opset: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff_boxes < 1e-2 and self.max_abs_diff_scores < 1e-3


def _write_metadata(path: Path, model: Detector, size: int) -> None:
    """What a deployment needs beside the graph, as the ONNX file's metadata: the class names (index -> name, JSON),
    the input size, what goes in (the graph normalises pixels itself) and comes out, and the preset."""
    import onnx

    cfg = model.config
    names = list(cfg.class_names) or [str(k) for k in range(cfg.num_classes)]
    proto = onnx.load(str(path))
    pp = cfg.postprocess
    meta = {"names": json.dumps(dict(enumerate(names))), "num_classes": str(cfg.num_classes),
            "imgsz": json.dumps([size, size]),
            "input": ("images: (1, 3, S, S) float RGB in [0, 1]; an image is resized to S on its long side and "
                      "padded with zeros at the bottom and right to S x S (efpn itself pads only to a multiple of "
                      "32, so on a non-square image scores near the padding may differ slightly)"),
            "outputs": "boxes: (1, R, 4) xyxy in input px; scores: (1, R, K) per class, before NMS",
            # efpn's own post-processing, to reproduce its detections: per level the pre_nms_topk best (prior,
            # class) pairs above score_thresh, class-aware NMS at nms_iou, then the max_det best
            "postprocess": json.dumps({"score_thresh": pp.score_thresh, "nms_iou": pp.nms_iou,
                                       "pre_nms_topk_per_level": pp.pre_nms_topk, "max_det": pp.max_det,
                                       "levels": list(getattr(model, "levels", []))}),
            "preset": str(getattr(cfg, "name", "") or ""), "producer": "efpn"}
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def export_onnx(model: Detector, path: str | Path, image_size: int | None = None, opset: int = 17) -> ExportReport:
    """Export ``model`` (eval mode, CPU) to ``path`` and verify it with onnxruntime.

    ``image_size`` defaults to the model's; it must be a multiple of the model's size divisor (32).
    Raises ValueError for a bad size and RuntimeError if onnxruntime disagrees with PyTorch.
    """
    size = int(image_size or model.config.image_size)
    if size % model.size_divisor:
        raise ValueError(f"image_size must be a multiple of {model.size_divisor}, got {size}")
    if model.training:
        raise ValueError("export needs an eval-mode model (call model.eval())")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # exported and checked under a temporary name, moved into place only once onnxruntime agrees: a failed or
    # interrupted export never replaces a good earlier file at ``path``
    part = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        report = _export_checked(model, part, size, opset)
        if not report.ok:
            raise RuntimeError(
                f"onnxruntime output differs from PyTorch (boxes {report.max_abs_diff_boxes:.3g}, scores "
                f"{report.max_abs_diff_scores:.3g}); the export was not trustworthy and was not written to {path}")
        os.replace(part, path)
    finally:
        with contextlib.suppress(OSError):  # a failed clean-up must not hide the error above
            part.unlink(missing_ok=True)
    return dataclasses.replace(report, path=path)


def _export_checked(model: Detector, path: Path, size: int, opset: int) -> ExportReport:
    """Export to ``path`` and compare onnxruntime's outputs with PyTorch's on one random image."""
    wrapper = _Decoded(model).eval().cpu()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        ref_boxes, ref_scores = wrapper(x)
        torch.onnx.export(
            wrapper,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["boxes", "scores"],
            do_constant_folding=True,
        )
    _write_metadata(path, model, size)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(["boxes", "scores"], {"images": x.numpy()})
    report = ExportReport(
        path=path,
        image_size=size,
        num_priors=int(ref_boxes.shape[1]),
        max_abs_diff_boxes=float(np.abs(boxes - ref_boxes.numpy()).max()),
        max_abs_diff_scores=float(np.abs(scores - ref_scores.numpy()).max()),
        opset=opset,
    )
    return report
