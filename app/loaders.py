"""Cached loading for the studio: checkpoints, uploaded images and the bundled samples.

Models are loaded once per checkpoint file with ``st.cache_resource`` (shared by every session, in eval mode,
never mutated: no hooks, no mode switches, no parameter writes); a checkpoint's cache key is its path and
modification time. Decoded images are cached with ``st.cache_data`` keyed on the file's SHA-1 (the bytes, an
argument with a leading underscore, are not hashed). Cached library calls on a loaded model and image are in
:mod:`app.analyses`.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

import efpn
from efpn import Detector
from efpn.data import ImageRecord, load_coco, load_data_config, load_split, read_image

APP_DIR = Path(__file__).resolve().parent
REPO = APP_DIR.parent
SAMPLES_DIR = APP_DIR / "samples"
SAMPLE_ANNOTATIONS = SAMPLES_DIR / "annotations.json"
SAMPLE_DATA_YAML = SAMPLES_DIR / "data.yaml"
#: The checkpoint the studio opens on when it exists and EFPN_CHECKPOINT is not set.
DEFAULT_CHECKPOINT_NAME = "efpn_mv2_sirst.safetensors"
#: Opened when the real-data default is absent (the synthetic flagship, which the Learn page also uses).
FALLBACK_CHECKPOINT_NAME = "efpn_n_synth.safetensors"
#: Shown when there is no checkpoint at all: how to make the bundled one.
TRAIN_HINT = (
    "efpn data synth --out data/synth --num-images 300\n"
    "efpn train --config recipes/synth_efpn_n.yaml\n"
    "cp runs/efpn_n_synth/best.safetensors checkpoints/efpn_n_synth.safetensors\n"
    "cp runs/efpn_n_synth/best.json checkpoints/efpn_n_synth.json"
)
#: Images above this many pixels are downscaled (with a notice) before anything else happens.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Files declaring more pixels than this are refused before decoding (decompression bombs).
HARD_MAX_PIXELS = 150_000_000


# ----------------------------------------------------------------------------------------------- checkpoints


def checkpoint_dir() -> Path:
    """Folder scanned for checkpoints: ``$EFPN_CHECKPOINT_DIR`` or ``checkpoints/`` of the repository."""
    return Path(os.environ.get("EFPN_CHECKPOINT_DIR") or REPO / "checkpoints")


def available_checkpoints() -> list[dict[str, Any]]:
    """Checkpoints of :func:`checkpoint_dir` (``efpn.list_checkpoints`` entries), plus ``$EFPN_CHECKPOINT`` when
    it lies elsewhere."""
    entries = efpn.list_checkpoints(checkpoint_dir())
    env = os.environ.get("EFPN_CHECKPOINT")
    if env and Path(env).is_file() and all(Path(e["path"]).resolve() != Path(env).resolve() for e in entries):
        entries.insert(0, {"path": str(Path(env)), "name": Path(env).stem, "size_mb": None})
    return entries


def default_checkpoint(entries: Sequence[dict[str, Any]]) -> str | None:
    """``$EFPN_CHECKPOINT``, else the real-data flagship (``efpn_mv2_sirst``), else the synthetic flagship, else
    the first readable entry."""
    env = os.environ.get("EFPN_CHECKPOINT")
    if env and Path(env).is_file():
        return str(Path(env))
    for wanted in (DEFAULT_CHECKPOINT_NAME, FALLBACK_CHECKPOINT_NAME):
        for e in entries:
            if Path(e["path"]).name == wanted and "error" not in e:
                return e["path"]
    good = [e["path"] for e in entries if "error" not in e]
    return good[0] if good else (entries[0]["path"] if entries else None)


def checkpoint_key(path: str) -> str:
    """Cache key of a checkpoint: its path and modification time (a retrained file is a new key)."""
    p = Path(path)
    return f"{p.resolve()}@{p.stat().st_mtime_ns if p.exists() else 0}"


@st.cache_resource(max_entries=6, show_spinner="Loading the detector ...")
def _load_detector(path: str, key: str) -> Detector:
    model = efpn.load_model(path, device="cpu")
    model.eval()
    return model


def load_detector(path: str) -> Detector:
    """The checkpoint's model, loaded once per (path, mtime) and shared read-only by every session.

    Raises :class:`efpn.CheckpointError` (pickle file, card/weights mismatch, ...)."""
    return _load_detector(path, checkpoint_key(path))


#: Upload bounds: the largest checkpoint and card the studio stores.
MAX_CHECKPOINT_BYTES = 256 << 20
MAX_CARD_BYTES = 1 << 20
_UPLOAD_DIR: list[Path] = []


def upload_dir() -> Path:
    """This server process's private folder for uploads: created by ``mkdtemp`` (mode 0700, an unpredictable name,
    so no other local user can pre-create it or plant links in it) and removed when the process exits."""
    if not _UPLOAD_DIR:
        folder = Path(tempfile.mkdtemp(prefix="efpn-studio-"))
        atexit.register(shutil.rmtree, folder, True)
        _UPLOAD_DIR.append(folder)
    return _UPLOAD_DIR[0]


def save_uploaded_checkpoint(weights_name: str, weights: bytes, card: bytes) -> Path:
    """Write an uploaded weights file and its model card to a private folder named by their hash; returns
    the weights path. Nothing is loaded here (``load_detector`` refuses pickles with a clear message)."""
    if len(weights) > MAX_CHECKPOINT_BYTES or len(card) > MAX_CARD_BYTES:
        raise ValueError(f"uploaded checkpoint is {len(weights) / 2**20:.0f} MiB with a {len(card) / 2**10:.0f} KiB "
                         f"card; the studio takes at most {MAX_CHECKPOINT_BYTES >> 20} MiB and "
                         f"{MAX_CARD_BYTES >> 10} KiB")
    if Path(weights_name).suffix.lower() == ".json":  # it would be overwritten by the card of the same stem
        raise ValueError(f"{Path(weights_name).name} was given as the weights: the first box takes the weights "
                         "(.safetensors), the second the model card (.json) saved beside them")
    digest = hashlib.sha1(weights + b"\0" + card).hexdigest()[:16]
    folder = upload_dir() / digest
    folder.mkdir(exist_ok=True)
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


def _declared_pixels(data: bytes) -> int | None:
    """Width x height from the file header without decoding (None when Pillow cannot read the header)."""
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
    images above ``limit`` pixels. Raises ``efpn.data.CorruptImageError`` for a broken file."""
    declared = _declared_pixels(_data)
    if declared is not None and declared > HARD_MAX_PIXELS:
        raise ValueError(
            f"the file declares more than {HARD_MAX_PIXELS / 1e6:.0f} MP, the most the studio will decode (a "
            "decompression bomb or a huge scan); crop or downscale it first"
        )
    notes: list[str] = []  # e.g. 12-bit sensor data in a 16-bit file, shown with this image (not the server log)
    rgb = read_image(_data, notes=notes)
    h, w = rgb.shape[:2]
    if h * w > HARD_MAX_PIXELS:  # a format only OpenCV reads has no header check above; its own limit is higher
        raise ValueError(f"the image has {w}x{h} = {w * h / 1e6:.0f} MP, more than the {HARD_MAX_PIXELS / 1e6:.0f} MP "
                         "the studio will hold; crop or downscale it first")
    notice = None
    if h * w > limit:
        k = (limit / (h * w)) ** 0.5
        nh, nw = max(1, int(h * k)), max(1, int(w * k))
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.LANCZOS))
        notice = (
            f"The image is {w}x{h} = {w * h / 1e6:.1f} MP, over the studio's limit of {limit / 1e6:.1f} MP; it was "
            f"downscaled to {nw}x{nh}. Boxes and sizes refer to the downscaled image. For tiny objects in huge "
            "images crop them first, or run `sliced_predict` from efpn.infer on the full file."
        )
    if notes:
        notice = " ".join([*notes, *([notice] if notice else [])])
    return DecodedImage(rgb=np.ascontiguousarray(rgb), original_hw=(h, w), notice=notice)


# ----------------------------------------------------------------------------------------------- samples


@dataclass
class SampleImage:
    """A bundled sample: file, bytes, and its ground truth (original px)."""

    name: str
    path: Path
    boxes: np.ndarray
    labels: np.ndarray


def samples_folder(dataset: str | None) -> Path:
    """The sample folder for a checkpoint trained on ``dataset``: ``app/samples/<dataset>`` when it holds
    annotated images (real data, e.g. SIRST), else ``app/samples`` (the synthetic images)."""
    if dataset and (SAMPLES_DIR / dataset / "annotations.json").is_file():
        return SAMPLES_DIR / dataset
    return SAMPLES_DIR


@st.cache_data(show_spinner=False)
def load_samples(dataset: str | None = None) -> tuple[list[SampleImage], list[str]]:
    """The bundled samples for a checkpoint trained on ``dataset`` (see :func:`samples_folder`) with their COCO
    annotations -> (samples, class names)."""
    folder = samples_folder(dataset)
    if not (folder / "annotations.json").is_file():
        return [], []
    records, names, _ = load_coco(folder / "annotations.json", folder / "images")
    samples = []
    for r in records:
        if r.path is None:
            continue
        boxes, labels = r.target_boxes()
        samples.append(SampleImage(name=f"sample {r.path.name}", path=r.path, boxes=boxes, labels=labels))
    return samples, list(names)


# ----------------------------------------------------------------------------------------------- datasets

RECIPES_DATA_DIR = REPO / "recipes" / "data"


@dataclass(frozen=True)
class DatasetChoice:
    """A data YAML the studio offers: its label, file, splits, and whether its data is on this machine (else why
    not)."""

    label: str
    path: str
    splits: tuple[str, ...] = ()
    missing: str | None = None

    @property
    def present(self) -> bool:
        return self.missing is None


def data_dir() -> Path | None:
    """``$EFPN_DATA_DIR``: a folder of more data YAMLs (its ``*.yaml`` and ``*/data.yaml``), or ``None``."""
    env = os.environ.get("EFPN_DATA_DIR")
    return Path(env) if env and Path(env).is_dir() else None


def _check(label: str, path: Path) -> DatasetChoice:
    try:
        cfg = load_data_config(path)
    except (ValueError, OSError) as e:
        return DatasetChoice(label, str(path), missing=str(e))
    splits = tuple(sp for sp in ("train", "val", "test") if cfg.has_split(sp))
    needed = [p for src in cfg.sources.values() for p in src.values() if p is not None]
    absent = [p for p in needed if not Path(p).exists()]
    if not cfg.root.exists():
        return DatasetChoice(label, str(path), splits, f"no data at {cfg.root}")
    if absent:
        return DatasetChoice(label, str(path), splits, f"{absent[0]} is missing")
    return DatasetChoice(label, str(path), splits)


def dataset_choices() -> list[DatasetChoice]:
    """Every data YAML the studio may open: ``recipes/data/*.yaml``, the bundled samples' ``app/samples/data.yaml``
    and those of ``$EFPN_DATA_DIR``, each checked for its data (choices are never typed-in server paths)."""
    extra = data_dir()
    return _dataset_choices(str(extra) if extra is not None else None)


@st.cache_data(ttl=30, show_spinner=False)
def _dataset_choices(extra_dir: str | None) -> list[DatasetChoice]:
    found: list[tuple[str, Path]] = [("samples (app/samples)", SAMPLE_DATA_YAML)]
    found += [(f"{p.stem} (recipes/data)", p) for p in sorted(RECIPES_DATA_DIR.glob("*.yaml"))]
    extra = Path(extra_dir) if extra_dir is not None else None
    if extra is not None:
        found += [(f"{p.stem} (EFPN_DATA_DIR)", p) for p in sorted(extra.glob("*.yaml"))]
        found += [(f"{p.parent.name} (EFPN_DATA_DIR)", p) for p in sorted(extra.glob("*/data.yaml"))]
    return [_check(label, path) for label, path in found if path.is_file()]


@st.cache_data(max_entries=8, show_spinner="Reading the dataset ...")
def load_dataset(path: str, split: str, mtime_ns: int) -> tuple[list[ImageRecord], list[str], str]:
    """``efpn.data.load_split`` of one of :func:`dataset_choices` -> (records with image paths, class names, the
    loader's report). ``mtime_ns`` (the YAML's) is only the cache key."""
    records, names, report = load_split(path, split)
    return [r for r in records if r.path is not None], list(names), report.summary()
