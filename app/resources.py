"""Cached loaders and cached library calls for the studio.

Models are loaded once per checkpoint file with ``st.cache_resource`` (shared by every session, in eval mode,
never mutated: no hooks, no mode switches, no parameter writes). Derived arrays are cached with
``st.cache_data``, keyed on the checkpoint (path + mtime), the image's SHA-1 and the parameters; arguments with
a leading underscore (the model, the decoded pixels) are not hashed, their keys stand in for them. All model
logic lives in :mod:`efpn`; this module only calls it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image

import efpn
from efpn.checkpoint import list_checkpoints, load_model
from efpn.data.coco import load_coco
from efpn.data.images import read_image
from efpn.det.assign import LevelAccounting, account, assign_boxes, assign_tal
from efpn.explain.attribution import Explanation, explain_detection
from efpn.explain.gradient import gradient_reach
from efpn.explain.inspection import Inspection, assign_on
from efpn.explain.maps import level_score_maps
from efpn.infer.predict import predict_image
from efpn.infer.preprocess import Prepared, prepare
from efpn.infer.slicing import sliced_predict
from efpn.models.detector import Detector

APP_DIR = Path(__file__).resolve().parent
REPO = APP_DIR.parent
SAMPLES_DIR = APP_DIR / "samples"
SAMPLE_ANNOTATIONS = SAMPLES_DIR / "annotations.json"
SAMPLE_DATA_YAML = SAMPLES_DIR / "data.yaml"
#: The checkpoint the studio opens on when it exists and EFPN_CHECKPOINT is not set.
DEFAULT_CHECKPOINT_NAME = "efpn_n_synth.safetensors"
#: Shown when there is no checkpoint at all: how to make the bundled one.
TRAIN_HINT = (
    "efpn data synth --out data/synth --num-images 300\n"
    "efpn train --config recipes/synth_efpn_n.yaml\n"
    "cp runs/efpn_n_synth/best.safetensors checkpoints/efpn_n_synth.safetensors\n"
    "cp runs/efpn_n_synth/best.json checkpoints/efpn_n_synth.json"
)
#: Images above this many pixels are downscaled (with a notice) before anything else happens.
DEFAULT_MAX_PIXELS = 4096 * 4096

#: Box-only protocols with their published priors (efpn.det.assign.assign_boxes), by display name.
BOX_PROTOCOLS: dict[str, str] = {
    "MaxIoU (RetinaNet)": "maxiou",
    "ATSS": "atss",
    "YOLOv5 ratio": "yolov5",
    "FCOS": "fcos",
    "RPN (Faster R-CNN)": "rpn",
}
MODEL_ASSIGNER = "Model's own assigner"
TAL = "TAL (YOLOv8, uses the model's predictions)"


# ----------------------------------------------------------------------------------------------- checkpoints


def checkpoint_dir() -> Path:
    """Folder scanned for checkpoints: ``$EFPN_CHECKPOINT_DIR`` or ``checkpoints/`` of the repository."""
    return Path(os.environ.get("EFPN_CHECKPOINT_DIR") or REPO / "checkpoints")


def available_checkpoints() -> list[dict[str, Any]]:
    """Checkpoints of :func:`checkpoint_dir` (``efpn.checkpoint.list_checkpoints`` entries), plus
    ``$EFPN_CHECKPOINT`` when it lies elsewhere."""
    entries = list_checkpoints(checkpoint_dir())
    env = os.environ.get("EFPN_CHECKPOINT")
    if env and Path(env).is_file() and all(Path(e["path"]).resolve() != Path(env).resolve() for e in entries):
        entries.insert(0, {"path": str(Path(env)), "name": Path(env).stem, "size_mb": None})
    return entries


def default_checkpoint(entries: Sequence[dict[str, Any]]) -> str | None:
    """``$EFPN_CHECKPOINT``, else ``checkpoints/efpn_n_synth.safetensors``, else the first readable entry."""
    env = os.environ.get("EFPN_CHECKPOINT")
    if env and Path(env).is_file():
        return str(Path(env))
    for e in entries:
        if Path(e["path"]).name == DEFAULT_CHECKPOINT_NAME:
            return e["path"]
    good = [e["path"] for e in entries if "error" not in e]
    return good[0] if good else (entries[0]["path"] if entries else None)


def checkpoint_key(path: str) -> str:
    """Cache key of a checkpoint: its path and modification time (a retrained file is a new key)."""
    p = Path(path)
    return f"{p.resolve()}@{p.stat().st_mtime_ns if p.exists() else 0}"


@st.cache_resource(max_entries=6, show_spinner="Loading the detector ...")
def _load_detector(path: str, key: str) -> Detector:
    model = load_model(path, device="cpu")
    model.eval()
    return model


def load_detector(path: str) -> Detector:
    """The checkpoint's model, loaded once per (path, mtime) and shared read-only by every session.

    Raises :class:`efpn.checkpoint.CheckpointError` (pickle file, card/weights mismatch, ...)."""
    return _load_detector(path, checkpoint_key(path))


def save_uploaded_checkpoint(weights_name: str, weights: bytes, card: bytes) -> Path:
    """Write an uploaded weights file and its model card to a private folder named by their hash; returns
    the weights path. Nothing is loaded here (``load_detector`` refuses pickles with a clear message)."""
    digest = hashlib.sha1(weights + b"\0" + card).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "efpn-studio" / "uploads" / digest
    folder.mkdir(parents=True, exist_ok=True)
    name = Path(weights_name).name or "model.safetensors"
    stem, suffix = Path(name).stem or "model", Path(name).suffix or ".safetensors"
    weights_path = folder / f"{stem}{suffix}"
    weights_path.write_bytes(weights)
    (folder / f"{stem}.json").write_bytes(card)
    return weights_path


# ----------------------------------------------------------------------------------------------- images


@dataclass
class DecodedImage:
    """An image ready for the model: ``rgb`` (H, W, 3) uint8, the size it had on disk, and any notice."""

    rgb: np.ndarray
    original_hw: tuple[int, int]
    notice: str | None = None


def max_pixels() -> int:
    """Pixel limit of one image (``$EFPN_STUDIO_MAX_PIXELS``, default 4096 x 4096)."""
    try:
        return max(64 * 64, int(os.environ.get("EFPN_STUDIO_MAX_PIXELS", DEFAULT_MAX_PIXELS)))
    except ValueError:
        return DEFAULT_MAX_PIXELS


#: Files declaring more pixels than this are refused before decoding (decompression bombs).
HARD_MAX_PIXELS = 150_000_000


def _declared_pixels(data: bytes) -> int | None:
    """Width x height from the file header without decoding (None when Pillow cannot read the header)."""
    import io
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return int(im.size[0]) * int(im.size[1])
    except Image.DecompressionBombError:  # Pillow refuses even to open it: far too large
        return HARD_MAX_PIXELS + 1
    except Exception:  # noqa: BLE001 - any other header problem is reported by read_image itself
        return None


def digest_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@st.cache_data(max_entries=64, show_spinner=False)
def decode_image(digest: str, _data: bytes, limit: int) -> DecodedImage:
    """Decode any supported file (PNG, JPEG, BMP, TIFF incl. 16-bit and grayscale) to RGB uint8, downscaling
    images above ``limit`` pixels. Raises ``efpn.data.images.CorruptImageError`` for a broken file."""
    declared = _declared_pixels(_data)
    if declared is not None and declared > HARD_MAX_PIXELS:
        raise ValueError(
            f"the file declares more than {HARD_MAX_PIXELS / 1e6:.0f} MP, the most the studio will decode (a "
            "decompression bomb or a huge scan); crop or downscale it first"
        )
    rgb = read_image(_data)
    h, w = rgb.shape[:2]
    notice = None
    if h * w > limit:
        k = (limit / (h * w)) ** 0.5
        nh, nw = max(1, int(h * k)), max(1, int(w * k))
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.LANCZOS))
        notice = (
            f"The image is {w}x{h} = {w * h / 1e6:.1f} MP, over the studio's limit of {limit / 1e6:.1f} MP; it was "
            f"downscaled to {nw}x{nh}. Boxes and sizes refer to the downscaled image. For tiny objects in huge "
            "images crop them first, or run `sliced_predict` from efpn.infer.slicing on the full file."
        )
    return DecodedImage(rgb=np.ascontiguousarray(rgb), original_hw=(h, w), notice=notice)


@dataclass
class SampleImage:
    """A bundled sample: file, bytes, and its ground truth (original px)."""

    name: str
    path: Path
    boxes: np.ndarray
    labels: np.ndarray


@st.cache_data(show_spinner=False)
def load_samples() -> tuple[list[SampleImage], list[str]]:
    """The bundled samples of ``app/samples`` with their COCO annotations -> (samples, class names)."""
    if not SAMPLE_ANNOTATIONS.is_file():
        return [], []
    records, names, _ = load_coco(SAMPLE_ANNOTATIONS, SAMPLES_DIR / "images")
    samples = []
    for r in records:
        if r.path is None:
            continue
        boxes, labels = r.target_boxes()
        samples.append(SampleImage(name=f"sample {r.path.name}", path=r.path, boxes=boxes, labels=labels))
    return samples, list(names)


# ----------------------------------------------------------------------------------------------- model calls


def gt_key(boxes: np.ndarray | None, labels: np.ndarray | None) -> tuple | None:
    """A hashable, compact stand-in for a set of GT boxes (cache key)."""
    if boxes is None:
        return None
    b = np.round(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 2)
    lab = np.asarray(labels if labels is not None else np.zeros(len(b)), dtype=np.int64).reshape(-1)
    return tuple(map(tuple, b.tolist())), tuple(lab.tolist())


def _targets(gt: tuple | None) -> dict[str, np.ndarray] | None:
    if gt is None:
        return None
    boxes, labels = gt
    return {"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4), "labels": np.asarray(labels, dtype=np.int64)}


@st.cache_data(max_entries=8, show_spinner="Running the detector ...")
def inspect_image(
    _model: Detector, ckpt: str, _rgb: np.ndarray, digest: str, score: float, nms: float, gt: tuple | None = None
) -> Inspection:
    """``efpn.inspect`` on one image (detections and every internal); with ``gt`` also the model's own
    assignment and losses."""
    return efpn.inspect(_model, _rgb, targets=_targets(gt), score_thresh=score, nms_iou=nms)


@st.cache_data(max_entries=32, show_spinner=False)
def boxes_accounting(_model: Detector, ckpt: str, _ins: Inspection, digest: str, gt: tuple) -> dict[str, Any]:
    """The model's own assignment of ``gt`` (original px) on the priors of the cached inspection of this image,
    as ``LevelAccounting.to_dict()`` (``efpn.explain.assign_on``: no second forward). Priors and the predictions
    TAL ranks by do not depend on the thresholds, so the key is checkpoint + image + boxes."""
    t = _targets(gt)
    assert t is not None
    return assign_on(_model, _ins, t["boxes"], t["labels"]).accounting.to_dict()


@st.cache_data(max_entries=256, show_spinner="Running the detector ...")
def predict_detections(
    _model: Detector, ckpt: str, _rgb: np.ndarray, digest: str, score: float, nms: float
) -> dict[str, Any]:
    """Detections only (``efpn.infer.predict.predict_image``, original px) and the forward time in ms: light enough
    to cache for many images and checkpoints, unlike a full :func:`inspect_image`."""
    t0 = time.perf_counter()
    det = predict_image(_model, _rgb, score_thresh=score, nms_iou=nms)
    out: dict[str, Any] = {k: v.numpy() for k, v in det.items()}
    out["forward_ms"] = 1e3 * (time.perf_counter() - t0)
    return out


def prepared(model: Detector, rgb: np.ndarray) -> Prepared:
    """The network input of ``rgb`` for this model (long side = the model's image size)."""
    return prepare(rgb, model.config.image_size)


def _net_targets(prep: Prepared, gt: tuple) -> list[dict[str, torch.Tensor]]:
    t = _targets(gt)
    assert t is not None
    return [{"boxes": torch.as_tensor(t["boxes"]) * prep.scale, "labels": torch.as_tensor(t["labels"]),
             "scale": prep.scale}]


@st.cache_data(max_entries=16, show_spinner="Measuring gradient reach (two backward passes) ...")
def gradient_reach_pair(
    _model: Detector, ckpt: str, _rgb: np.ndarray, digest: str, gt: tuple
) -> dict[str, dict[str, float]]:
    """``efpn.explain.gradient_reach`` with CEM and with CEM bypassed: ``{"with": ..., "without": ...}``."""
    prep = prepared(_model, _rgb)
    targets = _net_targets(prep, gt)
    return {
        "with": gradient_reach(_model, prep.tensor, targets, bypass_cem=False),
        "without": gradient_reach(_model, prep.tensor, targets, bypass_cem=True),
    }


@dataclass
class AssignmentSummary:
    """What the Assignment page draws: the accounting (``LevelAccounting.to_dict()``) and, per level, the
    positive priors' boxes in ORIGINAL image pixels with the GT each one serves."""

    name: str
    accounting: dict[str, Any]
    positives: dict[str, np.ndarray] = field(default_factory=dict)  # level -> (P_l, 4)
    positive_gt: dict[str, np.ndarray] = field(default_factory=dict)  # level -> (P_l,)
    network_hw: tuple[int, int] = (0, 0)
    note: str | None = None


def _summarise(name: str, assignment: Any, priors: Any, acc: LevelAccounting, scale: float,
               hw: tuple[int, int], note: str | None = None) -> AssignmentSummary:
    pi, gi = assignment.prior_idx.cpu(), assignment.gt_idx.cpu()
    lvl = priors.level.cpu()[pi]
    boxes = priors.boxes.cpu()[pi] / scale
    positives = {lv: boxes[lvl == i].numpy() for i, lv in enumerate(priors.levels)}
    owners = {lv: gi[lvl == i].numpy() for i, lv in enumerate(priors.levels)}
    return AssignmentSummary(name=name, accounting=acc.to_dict(), positives=positives, positive_gt=owners,
                             network_hw=hw, note=note)


@st.cache_data(max_entries=32, show_spinner=False)
def box_assignment(protocol: str, gt: tuple, image_hw: tuple[int, int], long_side: int) -> AssignmentSummary:
    """A box-only protocol with its published priors on the image resized to ``long_side`` (the model's
    input size), as the detector would see it."""
    h, w = image_hw
    scale = long_side / max(h, w)
    hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    t = _targets(gt)
    assert t is not None
    gt_net = torch.as_tensor(t["boxes"]) * scale
    assignment, priors, acc = assign_boxes(protocol, gt_net, hw, scale=scale)
    return _summarise(protocol, assignment, priors, acc, scale, hw)


@st.cache_data(max_entries=16, show_spinner="Assigning with the model ...")
def model_assignment(
    _model: Detector, ckpt: str, _rgb: np.ndarray, digest: str, gt: tuple, tal: bool
) -> AssignmentSummary:
    """The model's own assigner on its own priors (via ``efpn.inspect``), or TAL with its predictions."""
    ins = efpn.inspect(_model, _rgb, targets=_targets(gt))
    view = ins.assignment
    assert view is not None
    if not tal:
        return _summarise(f"model ({view.assigner})", view.assignment, view.priors, view.accounting, ins.scale,
                          ins.network_hw)
    prep = prepared(_model, _rgb)
    with torch.no_grad():
        run = _model.forward_intermediates(prep.tensor)
        boxes, scores = _model.decoder(run["head"], run["priors"])
    gt_net = torch.as_tensor(_targets(gt)["boxes"]) * prep.scale  # type: ignore[index]
    labels = torch.as_tensor(_targets(gt)["labels"])  # type: ignore[index]
    a = assign_tal(run["priors"], gt_net, labels, scores[0].float(), boxes[0].float())
    acc = account(a, run["priors"], gt_net, scale=prep.scale)
    note = "TAL ranks candidates by score^0.5 x IoU^6 of the model's own predictions: an untrained model gives "
    note += "near-random picks."
    return _summarise("tal", a, run["priors"], acc, prep.scale, tuple(prep.tensor.shape[-2:]), note)


@st.cache_data(max_entries=8, show_spinner="Sliced inference over tiles ...")
def sliced_detections(
    _model: Detector, ckpt: str, _rgb: np.ndarray, digest: str, tile: int, overlap: float, score: float, nms: float
) -> dict[str, np.ndarray]:
    """``efpn.infer.slicing.sliced_predict`` as numpy arrays."""
    out = sliced_predict(_model, _rgb, tile=tile, overlap=overlap, score_thresh=score, nms_iou=nms)
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


@st.cache_data(max_entries=8, show_spinner=False)
def explain(
    _model: Detector, ckpt: str, _rgb: np.ndarray, digest: str, box: tuple[float, ...], label: int,
    methods: tuple[str, ...], ig_steps: int, occlusion_evals: int,
) -> Explanation:
    """``efpn.explain.attribution.explain_detection`` for a box given in ORIGINAL image pixels."""
    prep = prepared(_model, _rgb)
    box_net = [v * prep.scale for v in box]
    return explain_detection(_model, prep.tensor, box_net, label, methods=methods, ig_steps=ig_steps,
                             occlusion_evals=occlusion_evals)


@st.cache_data(max_entries=16, show_spinner=False)
def score_maps(_model: Detector, ckpt: str, _rgb: np.ndarray, digest: str) -> dict[str, np.ndarray]:
    """``efpn.explain.maps.level_score_maps`` as numpy arrays."""
    prep = prepared(_model, _rgb)
    return {lv: m.numpy() for lv, m in level_score_maps(_model, prep.tensor).items()}


# ----------------------------------------------------------------------------------------------- datasets


def iter_dataset_accounting(
    records: Sequence[Any], protocol: str, long_side: int | None
) -> Iterator[tuple[int, LevelAccounting]]:
    """Accounting of a box-only ``protocol`` over ``records`` (efpn ImageRecords), image by image: yields
    ``(images done, running total)``. ``long_side``: resize every image to it first (``None`` = native)."""
    total: LevelAccounting | None = None
    for i, r in enumerate(records, start=1):
        boxes, _ = r.target_boxes()
        scale = 1.0 if not long_side else long_side / max(r.height, r.width)
        hw = (max(1, round(r.height * scale)), max(1, round(r.width * scale)))
        _, _, acc = assign_boxes(protocol, torch.as_tensor(boxes) * scale, hw, scale=scale)
        total = acc if total is None else total.merge(acc)
        yield i, total


# ----------------------------------------------------------------------------------------------- annotations


class AnnotationError(ValueError):
    """An uploaded annotation file that cannot be used; the message says why and what to upload."""


@dataclass
class ParsedAnnotation:
    """GT read from an uploaded file, in the current image's pixels."""

    boxes: np.ndarray  # (M, 4) float32 xyxy
    labels: np.ndarray  # (M,) int64
    class_names: list[str]
    fmt: str
    report: str


def _stem_of(image_name: str) -> str:
    return Path(image_name.split(" ", 1)[-1]).stem


def parse_annotation(file_name: str, data: bytes, rgb: np.ndarray, image_name: str,
                     class_names: Sequence[str]) -> ParsedAnnotation:
    """Read the GT of the current image from an uploaded COCO JSON, YOLO txt or VOC XML with efpn.data's loaders.

    COCO: the entry whose ``file_name`` matches the image (else the only entry). YOLO: class ids index
    ``class_names`` (the model's). VOC: class names are mapped to ``class_names`` by name where possible.
    Raises :class:`AnnotationError` with what to do.
    """
    import xml.etree.ElementTree as ET

    from efpn.data.coco import read_json
    from efpn.data.voc import load_voc
    from efpn.data.yolo import load_yolo

    suffix = Path(file_name).suffix.lower()
    stem = _stem_of(image_name)
    h, w = rgb.shape[:2]
    try:
        with tempfile.TemporaryDirectory(prefix="efpn-ann-") as tmp:
            root = Path(tmp)
            if suffix == ".json":
                path = root / "annotations.json"
                path.write_bytes(data)
                doc = read_json(path)
                records, names, report = load_coco(path, None)
                if not records:
                    raise AnnotationError(f"{file_name} holds no image entries")
                entries = doc.get("images", []) if isinstance(doc, dict) else []
                ids = [int(e["id"]) for e in entries if Path(str(e.get("file_name", ""))).stem == stem]
                pick = [r for r in records if r.image_id in ids] or (records if len(records) == 1 else [])
                if not pick:
                    raise AnnotationError(
                        f"{file_name} has {len(records)} images and none is named like '{stem}'; upload the JSON of "
                        "this image, or rename the image to its file_name"
                    )
                record, fmt = pick[0], "COCO JSON"
            elif suffix == ".txt":
                (root / "images").mkdir()
                (root / "labels").mkdir()
                Image.fromarray(rgb).save(root / "images" / f"{stem}.png")
                (root / "labels" / f"{stem}.txt").write_bytes(data)
                records, names, report = load_yolo(root / "images", root / "labels", names=list(class_names))
                record, fmt = records[0], "YOLO txt"
            elif suffix == ".xml":
                (root / "Annotations").mkdir()
                (root / "JPEGImages").mkdir()
                (root / "Annotations" / f"{stem}.xml").write_bytes(data)
                Image.fromarray(rgb).save(root / "JPEGImages" / f"{stem}.png")
                records, names, report = load_voc(root)
                if not records:
                    raise AnnotationError(f"{file_name} could not be read as Pascal VOC XML ({report.summary()})")
                record, fmt = records[0], "VOC XML"
            else:
                raise AnnotationError(f"{file_name}: unknown annotation type; upload .json (COCO), .txt (YOLO) or "
                                      ".xml (Pascal VOC)")
    except AnnotationError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, OSError, ET.ParseError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{file_name} could not be parsed: {e}") from e
    boxes, labels = record.target_boxes()
    names = list(names)
    if fmt == "VOC XML" and class_names:
        lookup = {n: i for i, n in enumerate(class_names)}
        labels = np.array([lookup.get(names[c], c) for c in labels], dtype=np.int64)
        names = list(class_names)
    if record.width != w or record.height != h:
        sx, sy = w / record.width, h / record.height
        boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    return ParsedAnnotation(boxes.astype(np.float32), labels.astype(np.int64), names, fmt, report.summary())
