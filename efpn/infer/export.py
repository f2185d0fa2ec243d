"""ONNX export of a detector, checked against onnxruntime.

The exported graph takes a fixed-size RGB batch ``(1, 3, S, S)`` in [0, 1] — or, exported with ``dynamic=True``,
any ``(N, 3, H, W)`` with H and W multiples of 32 (the priors are computed from the input's size inside the graph) —
and returns the decoded per-prior predictions before NMS — ``boxes (N, R, 4)`` xyxy in input pixels and
``scores (N, R, K)`` — which is what ONNX runtimes and TensorRT plug-ins expect to post-process (NMS is left to the
runtime, as Ultralytics does by default). A dynamic graph fed efpn's own input (the image resized to S on its long
side and padded to the next multiple of 32) reproduces efpn's scores; a fixed one pads every image to S x S.
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

from efpn.files import replaceable
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
    #: whether batch, height and width are free in the graph (checked at a second, non-square size and batch 2)
    dynamic: bool = False

    @property
    def ok(self) -> bool:
        return self.max_abs_diff_boxes < 1e-2 and self.max_abs_diff_scores < 1e-3


def _input_contract(size: int, divisor: int, dynamic: bool, mean: tuple[float, float, float]) -> str:
    """The metadata's ``input`` entry: how an image becomes the graph's input, for a fixed or a dynamic graph.

    The padding value is the model's ``pixel_mean`` (in the [0, 1] input scale): the graph normalises its input, so
    only a mean-valued border becomes the zeros efpn's own inference pads with after normalising."""
    fill = "(" + ", ".join(f"{v:.6g}" for v in mean) + ")"
    pad = (f"pad with the RGB value {fill} (this model's pixel_mean; the graph normalises it to 0, as efpn pads)"
           if any(mean) else "pad with zeros (this model's pixel_mean)")
    if dynamic:
        return (f"images: (N, 3, H, W) float RGB in [0, 1], H and W multiples of {divisor}; as efpn feeds it: resize "
                f"to {size} on the long side, then {pad} at the bottom and right to the next multiple of "
                f"{divisor} (the same scores as efpn's own inference)")
    return (f"images: (1, 3, S, S) float RGB in [0, 1]; an image is resized to S on its long side, then {pad} at the "
            f"bottom and right to S x S (efpn itself pads only to a multiple of {divisor}, so on a non-square image "
            "scores near the padding may differ slightly; export with dynamic axes to match it)")


def _write_metadata(path: Path, model: Detector, size: int, dynamic: bool = False) -> None:
    """What a deployment needs beside the graph, as the ONNX file's metadata: the class names (index -> name, JSON),
    the input size, what goes in (the graph normalises pixels itself) and comes out, and the preset."""
    import onnx

    cfg = model.config
    names = list(cfg.class_names) or [str(k) for k in range(cfg.num_classes)]
    proto = onnx.load(str(path))
    pp = cfg.postprocess
    meta = {"names": json.dumps(dict(enumerate(names))), "num_classes": str(cfg.num_classes),
            "imgsz": json.dumps([size, size]),
            "dynamic": json.dumps(dynamic),
            "input": _input_contract(size, model.size_divisor, dynamic, tuple(cfg.pixel_mean)),
            "outputs": "boxes: (N, R, 4) xyxy in input px; scores: (N, R, K) per class, before NMS",
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


def export_onnx(model: Detector, path: str | Path, image_size: int | None = None, opset: int = 17,
                dynamic: bool = False) -> ExportReport:
    """Export ``model`` (eval mode, CPU) to ``path`` and verify it with onnxruntime.

    ``image_size`` defaults to the model's; it must be a multiple of the model's size divisor (32). ``dynamic``:
    batch, height and width are free axes of the graph (heights and widths multiples of the divisor), checked
    against PyTorch at ``image_size`` and at a second, non-square size with a batch of 2.
    Raises ValueError for a bad size and RuntimeError if onnxruntime disagrees with PyTorch.
    """
    size = int(image_size or model.config.image_size)
    if size % model.size_divisor:
        raise ValueError(f"image_size must be a multiple of {model.size_divisor}, got {size}")
    if model.training:
        raise ValueError("export needs an eval-mode model (call model.eval())")
    path = replaceable(path)  # a device or a pipe is refused, a link's file replaced: before the export, not after
    path.parent.mkdir(parents=True, exist_ok=True)
    # exported and checked under a temporary name, moved into place only once onnxruntime agrees: a failed or
    # interrupted export never replaces a good earlier file at ``path``
    part = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        report = _export_checked(model, part, size, opset, dynamic)
        if not report.ok:
            raise RuntimeError(
                f"onnxruntime output differs from PyTorch (boxes {report.max_abs_diff_boxes:.3g}, scores "
                f"{report.max_abs_diff_scores:.3g}); the export was not trustworthy and was not written to {path}")
        os.replace(part, path)
    finally:
        with contextlib.suppress(OSError):  # a failed clean-up must not hide the error above
            part.unlink(missing_ok=True)
    return dataclasses.replace(report, path=path)


def _check_sizes(size: int, divisor: int, dynamic: bool) -> list[tuple[int, int, int]]:
    """(batch, H, W) inputs to compare onnxruntime with PyTorch on: the export size, and for a dynamic graph also a
    batch of 2 at a non-square size (about 3/4 of it in height, a multiple of the divisor)."""
    sizes = [(1, size, size)]
    if dynamic:
        height = max(divisor, (size * 3 // 4) // divisor * divisor)
        sizes.append((2, height, size if height != size else size + divisor))  # never square: a free width too
    return sizes


def _export_checked(model: Detector, path: Path, size: int, opset: int, dynamic: bool = False) -> ExportReport:
    """Export to ``path`` and compare onnxruntime's outputs with PyTorch's on random images."""
    wrapper = _Decoded(model).eval().cpu()
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.rand(n, 3, h, w, generator=gen) for n, h, w in _check_sizes(size, model.size_divisor, dynamic)]
    axes = ({"images": {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "batch", 1: "priors"},
             "scores": {0: "batch", 1: "priors"}} if dynamic else None)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        refs = [wrapper(x) for x in inputs]
        torch.onnx.export(
            wrapper,
            (inputs[0],),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["boxes", "scores"],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    _write_metadata(path, model, size, dynamic)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff_boxes = diff_scores = 0.0
    for x, (ref_boxes, ref_scores) in zip(inputs, refs, strict=True):
        boxes, scores = sess.run(["boxes", "scores"], {"images": x.numpy()})
        if boxes.shape != tuple(ref_boxes.shape) or scores.shape != tuple(ref_scores.shape):
            raise RuntimeError(f"onnxruntime returned boxes {boxes.shape} and scores {scores.shape} for an input of "
                               f"{tuple(x.shape)}, PyTorch {tuple(ref_boxes.shape)} and {tuple(ref_scores.shape)}: "
                               "this model does not export with free input sizes; export it without dynamic axes")
        diff_boxes = max(diff_boxes, float(np.abs(boxes - ref_boxes.numpy()).max()))
        diff_scores = max(diff_scores, float(np.abs(scores - ref_scores.numpy()).max()))
    return ExportReport(
        path=path,
        image_size=size,
        num_priors=int(refs[0][0].shape[1]),
        max_abs_diff_boxes=diff_boxes,
        max_abs_diff_scores=diff_scores,
        opset=opset,
        dynamic=dynamic,
    )
