"""Session state of the studio: the chosen checkpoint, the current image and its ground truth, thresholds.

The sidebar (rendered once per run by ``streamlit_app.py``, before the page) resolves everything into a
:class:`Context` stored in ``st.session_state``; pages read it with :func:`context`. Uploads are kept per
session as bytes, so switching pages never loses them and nothing is shared with other sessions.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from app import analyses, loaders
from efpn import CheckpointError, Detector, Inspection
from efpn.data import CorruptImageError, map_class_names

_CTX = "efpn_ctx"
UPLOADS = "uploads"  # name -> bytes, in upload order
UPLOADED_CKPTS = "uploaded_checkpoints"  # list of weights paths
DATASET_IMAGES = "dataset_images"  # label -> DatasetImage, opened from the Dataset page
GT_OVERRIDES = "gt_overrides"  # ImageItem.key (image list entry: name and content) -> GroundTruth
IMAGE_CHOICE = "image_choice"
CKPT_CHOICE = "checkpoint_choice"
#: Page scripts by short name, for st.page_link (paths relative to app/streamlit_app.py).
PAGE_FILES = {name: f"app_pages/{name}.py" for name in
              ("detect", "dataset", "pyramid", "gates", "kernels", "assignment", "attribution", "compare", "learn")}
IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"]


@dataclass
class GroundTruth:
    """GT boxes of the current image in ORIGINAL pixels, their labels, class names and where they came from."""

    boxes: np.ndarray  # (M, 4) float32 xyxy
    labels: np.ndarray  # (M,) int64
    class_names: list[str]
    source: str
    #: (Q, 4) crowds and ignored areas of a dataset image: detections in them are no false alarms
    ignore: np.ndarray | None = None

    def ignore_key(self) -> tuple[float, ...]:
        """The ignore regions as a hashable cache key (flattened xyxy), empty when there are none."""
        return () if self.ignore is None else tuple(np.asarray(self.ignore, np.float32).reshape(-1).tolist())

    def key(self) -> tuple | None:
        return analyses.gt_key(self.boxes, self.labels)

    def for_model(self, num_classes: int) -> tuple | None:
        """Cache key / targets with labels outside the model's classes mapped to 0 (boxes drive assignment)."""
        labels = np.where((self.labels >= 0) & (self.labels < num_classes), self.labels, 0)
        return analyses.gt_key(self.boxes, labels)


@dataclass(frozen=True)
class DatasetImage:
    """An image of a dataset (chosen on the Dataset page, never typed in): its file, GT in its pixels, class names."""

    path: str
    boxes: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    dataset: str
    ignore: np.ndarray | None = None  # (Q, 4) crowds and ignored areas, in its pixels


@dataclass
class ImageItem:
    """The current image: display name, SHA-1 of its bytes, decoded pixels and a notice (e.g. downscaled)."""

    name: str
    digest: str
    rgb: np.ndarray
    original_hw: tuple[int, int]
    notice: str | None = None

    @property
    def key(self) -> str:
        """What a ground truth given in the studio belongs to: this entry of the image list (name and content), so
        an upload with the bytes of a sample leaves the sample's own annotation as it is."""
        return gt_key(self.name, self.digest)

    @property
    def hw(self) -> tuple[int, int]:
        """(H, W) of the decoded pixels: the image every box and map of the studio refers to."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

    @property
    def file_name(self) -> str:
        """The file's own name: ``name`` without its "sample " / "upload " prefix."""
        return self.name.split(" ", 1)[-1]


@dataclass
class Context:
    """Everything a page needs, resolved by the sidebar for this run."""

    checkpoint: str | None = None
    ckpt_key: str = ""
    model: Detector | None = None
    card: dict[str, Any] = field(default_factory=dict)
    checkpoint_error: str | None = None
    image: ImageItem | None = None
    gt: GroundTruth | None = None
    score: float = 0.25
    nms: float = 0.5
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        if self.model is None:
            return []
        names = list(self.model.config.class_names) or list(self.card.get("classes") or [])
        return names if len(names) == self.model.num_classes else [str(i) for i in range(self.model.num_classes)]


def context() -> Context:
    """The context the sidebar resolved in this run (an empty one before the first sidebar run)."""
    return st.session_state.get(_CTX) or Context()


def _init() -> None:
    st.session_state.setdefault(UPLOADS, {})
    st.session_state.setdefault(UPLOADED_CKPTS, [])
    st.session_state.setdefault(GT_OVERRIDES, {})
    st.session_state.setdefault(DATASET_IMAGES, {})


def open_dataset_image(item: DatasetImage) -> str:
    """Make a dataset image (with its ground truth) the current image of every page; returns its label."""
    _init()
    label = f"{item.dataset} {Path(item.path).name}"
    st.session_state[DATASET_IMAGES][label] = item
    st.session_state[IMAGE_CHOICE] = label
    return label


# ----------------------------------------------------------------------------------------------- callbacks


#: Per session, at most this many uploaded images are kept, holding at most this many bytes together; beyond
#: either bound the oldest upload is dropped (and the page says so), so one session cannot fill the server's memory.
MAX_UPLOADED_IMAGES = 16
MAX_UPLOADED_IMAGE_BYTES = 200 << 20
UPLOAD_NOTICES = "upload_notices"


def add_image(name: str, data: bytes) -> str | None:
    """Decode and keep an uploaded image for this session; returns an error message instead on failure.

    Keeps the session within :data:`MAX_UPLOADED_IMAGES` and :data:`MAX_UPLOADED_IMAGE_BYTES` by dropping the
    oldest uploads (noted in ``st.session_state[UPLOAD_NOTICES]``); a single file over the byte bound is refused.
    """
    if len(data) > MAX_UPLOADED_IMAGE_BYTES:
        return (f"**{name}** is {len(data) / 2**20:.0f} MiB; a session keeps at most "
                f"{MAX_UPLOADED_IMAGE_BYTES / 2**20:.0f} MiB of images. Downscale or crop it first.")
    try:
        loaders.decode_image(loaders.digest_of(data), data, loaders.max_pixels())
    except (CorruptImageError, ValueError, OSError) as e:
        return f"**{name}** could not be read as an image: {e}"
    uploads: dict[str, bytes] = st.session_state[UPLOADS]
    label = f"upload {name}"
    if label in uploads and uploads[label] != data:
        label = f"upload {name} ({loaders.digest_of(data)[:6]})"
    uploads[label] = data
    dropped = []
    while len(uploads) > MAX_UPLOADED_IMAGES or sum(map(len, uploads.values())) > MAX_UPLOADED_IMAGE_BYTES:
        oldest = next(iter(uploads))
        del uploads[oldest]
        dropped.append(oldest.removeprefix("upload "))
    if dropped:
        st.session_state.setdefault(UPLOAD_NOTICES, []).append(
            f"A session keeps {MAX_UPLOADED_IMAGES} uploaded images ({MAX_UPLOADED_IMAGE_BYTES / 2**20:.0f} MiB) at "
            f"most: the oldest were removed ({', '.join(dropped)}).")
    st.session_state[IMAGE_CHOICE] = label
    return None


def remove_upload(label: str) -> None:
    """Forget one uploaded image of this session (its bytes, and its ground truth override); the picker falls back
    to the first image left. A no-op for a label that is not an upload."""
    _init()
    data = st.session_state[UPLOADS].pop(label, None)
    if data is None:
        return
    st.session_state[GT_OVERRIDES].pop(gt_key(label, loaders.digest_of(data)), None)
    if st.session_state.get(IMAGE_CHOICE) == label:
        st.session_state.pop(IMAGE_CHOICE, None)


def on_upload(key: str) -> None:
    """Callback of the Detect page's uploader: keep every readable file, report the others."""
    _init()
    files = st.session_state.get(key) or []
    files = files if isinstance(files, list) else [files]
    errors = [err for f in files if (err := add_image(f.name, f.getvalue()))]
    st.session_state["upload_errors"] = errors


def on_camera(key: str) -> None:
    """Callback of the webcam input: the photo becomes the current image."""
    _init()
    photo = st.session_state.get(key)
    if photo is not None:
        n = sum(1 for k in st.session_state[UPLOADS] if k.startswith("upload camera")) + 1
        err = add_image(f"camera-{n}.jpg", photo.getvalue())
        st.session_state["upload_errors"] = [err] if err else []


#: At most this many uploaded checkpoints are listed per session.
MAX_UPLOADED_CKPTS = 4


def _on_checkpoint_upload() -> None:
    weights = st.session_state.get("ckpt_upload_weights")
    card = st.session_state.get("ckpt_upload_card")
    st.session_state["ckpt_upload_error"] = None
    if weights is None or card is None:
        st.session_state["ckpt_upload_error"] = (
            "Upload both files: the weights (.safetensors) and the model card (.json) saved beside them."
        )
        return
    try:
        path = loaders.save_uploaded_checkpoint(weights.name, weights.getvalue(), card.getvalue())
    except ValueError as e:  # over the size bounds
        st.session_state["ckpt_upload_error"] = str(e)
        return
    try:
        loaders.load_detector(str(path))
    except CheckpointError as e:  # named by the uploaded files' names, not the server's private folder
        st.session_state["ckpt_upload_error"] = str(e).replace(f"{path.parent}{os.sep}", "")
        shutil.rmtree(path.parent, ignore_errors=True)  # a refused upload is not kept
        return
    uploaded = st.session_state[UPLOADED_CKPTS]
    if str(path) not in uploaded:
        uploaded.append(str(path))
        while len(uploaded) > MAX_UPLOADED_CKPTS:  # bounded per session: the oldest goes from the list
            uploaded.pop(0)
    st.session_state[CKPT_CHOICE] = str(path)


def gt_key(name: str, digest: str) -> str:
    """The key of an image's ground truth given in the studio (:attr:`ImageItem.key`)."""
    return f"{name}\n{digest}"


def set_ground_truth(key: str, gt: GroundTruth | None) -> None:
    """Replace (or with ``None`` reset) the GT of the image list's entry ``key`` (:attr:`ImageItem.key`) for this
    session."""
    _init()
    if gt is None:
        st.session_state[GT_OVERRIDES].pop(key, None)
    else:
        st.session_state[GT_OVERRIDES][key] = gt


def clean_boxes(boxes: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image -> (clipped (M, 4), (M,) mask of boxes at least 1 px wide and high)."""
    b = np.nan_to_num(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), nan=-1.0)
    h, w = hw
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    ok = (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)
    return b, ok


# ----------------------------------------------------------------------------------------------- sidebar


def checkpoint_labels(entries: list[dict[str, Any]]) -> dict[str, str]:
    """What the pickers show for each listed checkpoint (path -> label): its card's name, with its file when two cards
    give the same name (two identical entries could not be told apart), marked when its card cannot be read."""
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["name"]] = counts.get(e["name"], 0) + 1
    return {e["path"]: e["name"] + (f" ({Path(e['path']).name})" if counts[e["name"]] > 1 else "")
            + (" (unreadable card)" if "error" in e else "") for e in entries}


def _checkpoint_picker(ctx: Context) -> None:
    entries = loaders.available_checkpoints()
    ctx.entries = entries
    options = [e["path"] for e in entries] + [p for p in st.session_state[UPLOADED_CKPTS]]
    names = checkpoint_labels(entries)
    names.update({p: f"uploaded {Path(p).stem}" for p in st.session_state[UPLOADED_CKPTS]})
    if not options:
        return
    if st.session_state.get(CKPT_CHOICE) not in options:
        st.session_state[CKPT_CHOICE] = loaders.default_checkpoint(entries) or options[0]
    choice = st.selectbox("Checkpoint", options, key=CKPT_CHOICE, format_func=lambda p: names.get(p, Path(p).stem),
                          help=f"Checkpoints found in {loaders.checkpoint_dir()} (set EFPN_CHECKPOINT_DIR to change).")
    ctx.checkpoint = choice
    try:
        ctx.model = loaders.load_detector(choice)
        ctx.ckpt_key = loaders.checkpoint_key(choice)
        ctx.card = dict(getattr(ctx.model, "card", {}) or {})
    except (CheckpointError, OSError, ValueError) as e:
        ctx.checkpoint_error = str(e)


def _checkpoint_upload() -> None:
    with st.expander("Upload a checkpoint"):
        st.caption("Weights load only from safetensors; pickled .pt/.pth files are refused.")
        st.file_uploader("Weights (.safetensors)", key="ckpt_upload_weights")
        st.file_uploader("Model card (.json)", type=["json"], key="ckpt_upload_card")
        st.button("Load uploaded checkpoint", on_click=_on_checkpoint_upload, key="ckpt_upload_go")
        err = st.session_state.get("ckpt_upload_error")
        if err:
            st.error(f"{err}\n\nThe studio keeps running on the previous checkpoint.")


def _image_picker(ctx: Context) -> None:
    dataset = ((ctx.card or {}).get("data") or {}).get("dataset")
    samples, sample_names = loaders.load_samples(dataset if isinstance(dataset, str) else None)
    by_name = {s.name: s for s in samples}
    uploads: dict[str, bytes] = st.session_state[UPLOADS]
    opened: dict[str, DatasetImage] = st.session_state[DATASET_IMAGES]
    options = list(by_name) + list(opened) + list(uploads)
    if not options:
        return
    if st.session_state.get(IMAGE_CHOICE) not in options:
        st.session_state[IMAGE_CHOICE] = options[0]
    choice = st.selectbox("Image", options, key=IMAGE_CHOICE,
                          help="A bundled sample (with ground truth), an image opened on the Dataset page (with its "
                               "annotation) or one of your uploads (Detect page).")
    if choice in uploads:  # an upload that fails (or is no longer wanted) can always be taken out of the session
        st.button("Remove this upload", key="remove_upload", on_click=remove_upload, args=(choice,),
                  icon=":material/delete:", help="Forget this uploaded image (and any ground truth given for it).")
    try:
        data = (by_name[choice].path.read_bytes() if choice in by_name else
                Path(opened[choice].path).read_bytes() if choice in opened else uploads[choice])
    except OSError as e:
        st.error(f"{choice} cannot be read: {e}")
        return
    digest = loaders.digest_of(data)
    try:
        decoded = loaders.decode_image(digest, data, loaders.max_pixels())
    except (CorruptImageError, ValueError, OSError) as e:
        st.error(f"{choice} cannot be decoded: {e}")
        return
    ctx.image = ImageItem(choice, digest, decoded.rgb, decoded.original_hw, decoded.notice)
    override = st.session_state[GT_OVERRIDES].get(ctx.image.key)
    if override is not None:
        ctx.gt = override
    elif choice in by_name:
        s = by_name[choice]
        ctx.gt = _in_model_classes(ctx, GroundTruth(s.boxes, s.labels, sample_names, "sample annotation"))
    elif choice in opened:
        d = opened[choice]
        k = decoded.rgb.shape[1] / max(decoded.original_hw[1], 1)  # < 1 when the studio downscaled a huge image
        ctx.gt = _in_model_classes(ctx, GroundTruth(np.asarray(d.boxes, np.float32) * k,
                                                    np.asarray(d.labels, np.int64), d.class_names,
                                                    f"{d.dataset} annotation",
                                                    None if d.ignore is None else np.asarray(d.ignore, np.float32) * k))


def _in_model_classes(ctx: Context, gt: GroundTruth) -> GroundTruth:
    """``gt`` relabelled by class name onto the checkpoint's classes (its other classes after them), as uploads
    are: a dataset's class k is not the model's class k when their lists differ."""
    names = ctx.class_names
    unnamed = names == [str(i) for i in range(len(names))]  # the checkpoint names no class: indices are all there is
    if unnamed or not gt.class_names or list(gt.class_names) == list(names):
        return gt
    labels, all_names = map_class_names(list(names), list(gt.class_names), gt.labels)
    return GroundTruth(gt.boxes, labels, all_names, gt.source, gt.ignore)


def render_sidebar() -> Context:
    """Draw the shared sidebar (checkpoint, image, thresholds) and store the resolved :class:`Context`."""
    _init()
    ctx = Context()
    with st.sidebar:
        _checkpoint_picker(ctx)
        _checkpoint_upload()
        _image_picker(ctx)
        default_nms = ctx.model.config.postprocess.nms_iou if ctx.model is not None else 0.5
        ctx.score = st.slider("Score threshold", 0.0, 1.0, 0.25, 0.01, key="score_thresh",
                              help="Keep detections scoring above this.")
        # each checkpoint opens at its own NMS IoU (SSDD's were shipped at 0.7-0.8): the slider's value is reset when
        # another checkpoint is chosen, else a slider keyed once keeps the first checkpoint's default for all
        if st.session_state.get("_nms_checkpoint") != ctx.checkpoint or "nms_iou" not in st.session_state:
            st.session_state["nms_iou"] = min(0.95, max(0.05, float(default_nms)))
            st.session_state["_nms_checkpoint"] = ctx.checkpoint
        ctx.nms = st.slider("NMS IoU", 0.05, 0.95, step=0.05, key="nms_iou",
                            help="Suppress a box overlapping a better one of the same class by more than this. "
                                 "Starts at the checkpoint's own value whenever a checkpoint is chosen.")
    st.session_state[_CTX] = ctx
    return ctx


def require_model(ctx: Context) -> Detector:
    """The model, or stop the page with what to do."""
    if ctx.model is None:
        if ctx.checkpoint_error:
            st.error(
                f"The checkpoint could not be loaded: {ctx.checkpoint_error}\n\n"
                "Choose another checkpoint in the sidebar, or upload a .safetensors file with its model card."
            )
        elif not ctx.entries and not st.session_state.get(UPLOADED_CKPTS):
            st.warning(
                f"No checkpoint found in `{loaders.checkpoint_dir()}`. Train the bundled one with\n\n"
                f"```\n{loaders.TRAIN_HINT}\n```\n\nor point the studio at a folder of checkpoints with "
                "`EFPN_CHECKPOINT_DIR=runs make app` (every run's best/last checkpoint is listed), or open one file "
                "with `EFPN_CHECKPOINT=/path/model.safetensors make app`."
            )
        st.stop()
    return ctx.model  # type: ignore[return-value]


def require_image(ctx: Context) -> ImageItem:
    """The current image, or stop the page pointing to the Detect page."""
    if ctx.image is None:
        st.info("Pick a sample in the sidebar or upload an image on the **Detect** page.")
        st.stop()
    return ctx.image  # type: ignore[return-value]


def inspection(ctx: Context, model: Detector, image: ImageItem) -> Inspection:
    """The cached ``efpn.inspect`` of the current image at the sidebar's thresholds: one key for every page, so
    Detect's forward serves Pyramid, Gates, Kernels, Attribution and Learn too.

    An image the network cannot take whole (e.g. a 20000 x 8 strip) stops the page with the library's message and
    what to do here, never an exception: the rest of the session is unaffected.
    """
    try:
        return analyses.inspect_image(model, ctx.ckpt_key, image.rgb, image.digest, ctx.score, ctx.nms)
    except ValueError as e:
        remedy = ("Remove it with **Remove this upload** in the sidebar, or choose another image"
                  if image.name in st.session_state.get(UPLOADS, {}) else "Choose another image in the sidebar")
        st.error(f"**{image.name}** cannot be inspected: {e}.\n\n{remedy}; the Detect page's **Sliced (tiles)** "
                 "inference still detects on it tile by tile.")
        st.stop()


def boxes_for_analysis(ctx: Context, detections: dict[str, Any] | None) -> tuple[GroundTruth | None, str]:
    """GT of the image, else the detections as stand-in boxes; with a caption saying which."""
    if ctx.gt is not None and len(ctx.gt.boxes):
        caption = f"Boxes: ground truth ({ctx.gt.source}, {len(ctx.gt.boxes)} boxes)."
        k = ctx.model.num_classes if ctx.model is not None else None
        foreign = int(((ctx.gt.labels < 0) | (ctx.gt.labels >= k)).sum()) if k is not None else 0
        if foreign:  # annotated with classes this checkpoint does not have: say how they are treated
            caption += (f" {foreign} of them carry a class this checkpoint does not predict (it has {k}): they are "
                        f"analysed as its class 0 ({ctx.class_names[0]}); turn \"Same class only\" off on Detect to "
                        "match boxes whatever their class.")
        return ctx.gt, caption
    if detections is not None and len(detections["boxes"]):
        boxes = np.asarray(detections["boxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(detections["labels"], dtype=np.int64)
        gt = GroundTruth(boxes, labels, ctx.class_names, "detections")
        return gt, (f"Boxes: this image has no ground truth, so the {len(boxes)} detections stand in for it "
                    "(add GT on the Assignment page).")
    return None, "No boxes: this image has no ground truth and no detections at this threshold."


def sticky(key: str, default: Any, options: list[Any] | None = None) -> str:
    """Keep a widget's value when its page is left and opened again (Streamlit forgets the value of a widget not drawn
    in a run): the value is copied aside on every run and put back when the widget's own key is gone. Create the
    widget with ``key=sticky(key, default)`` and no default of its own (it reads the value from the session). With
    ``options``, a value (live or kept) no longer among them gives way to ``default``. Returns ``key``."""
    kept = f"_kept_{key}"
    if options is not None:
        keep_valid(key, options)
        keep_valid(kept, options)
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(kept, default)
    st.session_state[kept] = st.session_state[key]
    return key


def keep_valid(key: str, options: list[Any]) -> None:
    """Drop a widget's remembered value when it is no longer among ``options`` (another image or checkpoint
    changed them), so the widget falls back to its default instead of failing."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]
