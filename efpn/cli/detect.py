"""`efpn detect`: images or folders in, drawn images and JSON out (optionally with sliced inference)."""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from efpn.cli.guards import check_writable
from efpn.cli.video import VIDEO_SUFFIXES, detect_video
from efpn.data.images import CorruptImageError, read_image, walk_files
from efpn.data.yolo import read_image_list
from efpn.infer.draw import detections_to_json, draw_detections, yolo_lines


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where the name itself is unusable (too long, say) instead of an OSError."""
    try:
        return path.is_file()
    except (OSError, ValueError):  # ENAMETOOLONG, an embedded NUL, ...
        return False


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}  # a GIF: its first frame
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES  # what a folder or a pattern contributes
#: Lines of one image list that name no file, each echoed (the rest are counted): a binary or foreign .txt has many.
SHOWN_MISSING = 10


def collect_images(sources: Sequence[str | Path], exclude: Path | None = None,
                   skipped: dict[str, str] | None = None) -> list[Path]:
    """Expand files, folders (recursively), glob patterns (``"imgs/**/*.png"``, quoted so the shell leaves them) and
    image lists (a ``.txt`` of image paths, read as Ultralytics reads ``train.txt``) into image paths, leaving out
    anything under ``exclude`` (the output folder, and its numbered siblings that hold results: a later run must not
    read an earlier one's drawings), each image once; a listed image that does not exist is recorded in ``skipped``;
    raises FileNotFoundError for a missing source (a broken link or a link loop says so). A source that is neither
    a file nor a folder (a device, a pipe) is said, recorded in ``skipped`` and left out."""
    out: list[Path] = []
    excluded = _run_folders(exclude) if exclude is not None else []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            unreadable: list[tuple[Path, str]] = []
            media = [q for q in walk_files(p, unreadable=unreadable, follow_links=True)
                     if q.suffix.lower() in MEDIA_SUFFIXES and not any(_within(q, e) for e in excluded)]
            out += [q for q in media if q.is_file()]
            for q in (q for q in media if not q.is_file()):  # a broken link, a pipe, a device: said, not dropped
                broken = q.is_symlink() and not q.exists()
                why = "a broken link" if broken else "not a regular file (a pipe or a device)"
                tqdm.write(f"skipped {q}: {why}")
                if skipped is not None:
                    skipped[str(q)] = why
            for folder, why in unreadable:  # its images were not read: said, and kept in detections.json
                tqdm.write(f"skipped the folder {folder}: it could not be listed ({why}); its images were not read")
                if skipped is not None:
                    skipped[str(folder)] = f"a folder that could not be listed ({why}): its images were not read"
        elif p.is_file() and p.suffix.lower() == ".txt":  # an image list (Ultralytics' train.txt), one path a line
            missing = 0
            for q in read_image_list(p):
                if not _is_file(q):
                    why = f"listed in {p.name} but not an existing file"
                    missing += 1
                    if missing <= SHOWN_MISSING:  # a binary or foreign .txt would print every garbage line
                        shown = "".join(c if c.isprintable() else "?" for c in str(q))[:200]
                        tqdm.write(f"skipped {shown}: {why}")
                    if skipped is not None:
                        skipped[str(q)] = why
                elif not any(_within(q, e) for e in excluded):
                    out.append(q)
            if missing > SHOWN_MISSING:
                tqdm.write(f"skipped {missing - SHOWN_MISSING} more lines of {p.name} that name no existing file "
                           "(all listed in detections.json); is it really an image list?")
        elif p.is_file():
            out.append(p)
        elif any(c in str(s) for c in "*?[") and not p.exists():  # a pattern the shell did not expand (it was quoted)
            matched = sorted(Path(q) for q in glob.glob(str(s), recursive=True))
            found = [q for q in matched if q.is_file() and q.suffix.lower() in MEDIA_SUFFIXES]
            if not found:
                raise FileNotFoundError(f"source {s} does not exist, and read as a pattern it matches no image file "
                                        f"(looked for {', '.join(sorted(MEDIA_SUFFIXES))})")
            out += [q for q in found if not any(_within(q, e) for e in excluded)]
        elif p.exists():  # a device, a pipe, a socket: reading one could block or never end; the others go on
            why = "not a regular file or folder (a device, pipe or socket); give image files"
            tqdm.write(f"skipped {p}: {why}")
            if skipped is not None:
                skipped[str(p)] = why
        elif p.is_symlink():
            raise FileNotFoundError(f"source {p} is a link that leads nowhere (broken, or a loop of links)")
        else:
            raise FileNotFoundError(f"source {p} does not exist (give image files or folders)")
    unique: dict[Path, Path] = {}
    for q in out:  # the same image through a folder, a list and a pattern is detected once
        unique.setdefault(q.resolve(), q)
    out = list(unique.values())
    if not out:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, sources))} (looked for "
                                f"{', '.join(sorted(MEDIA_SUFFIXES))})")
    return out


def _run_folders(out: Path) -> list[Path]:
    """``out`` and the ``out-N`` folders beside it that :func:`_fresh` numbered (those holding a detections.json)."""
    out = out.resolve()
    siblings = out.parent.glob(f"{glob.escape(out.name)}-*") if out.parent.is_dir() else []
    return [out, *(q for q in siblings if q.name[len(out.name) + 1:].isdigit() and (q / "detections.json").exists())]


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (resolved, so links and ``..`` count)."""
    p, root = path.resolve(), folder.resolve()
    return p == root or root in p.parents


def output_names(paths: Sequence[Path]) -> list[str]:
    """One drawn-image file name per input: ``<stem>.png``, made unique when stems repeat (``a.png`` and ``a.jpg``,
    or ``x/a.png`` and ``y/a.png``: ``a.png``, ``a_2.png``, ...), and printable (undecodable bytes in a file name
    become ``_``), so no drawing overwrites another."""
    names: list[str] = []
    taken: set[str] = set()
    for path in paths:
        # undecodable bytes arrive as lone surrogates (U+DC80-U+DCFF, Python's surrogateescape); none can be written
        stem = "".join("_" if "\ud800" <= c <= "\udfff" else c for c in path.stem) or "image"
        name, k = f"{stem}.png", 1
        while name.lower() in taken:  # case-insensitive: also unique on Windows and macOS file systems
            k += 1
            name = f"{stem}_{k}.png"
        taken.add(name.lower())
        names.append(name)
    return names


def detect_sources(
    weights: str | Path,
    sources: Sequence[str | Path],
    out_dir: str | Path = "runs/detect",
    score_thresh: float = 0.25,
    nms_iou: float | None = None,
    slice_size: int | None = None,
    overlap: float = 0.2,
    image_size: int | None = None,
    device: str = "cpu",
    *,
    max_det: int | None = None,
    classes: Sequence[str] | None = None,
    save_txt: bool = False,
    draw: bool = True,
    vid_stride: int = 1,
) -> tuple[list[Path], dict[str, Any]]:
    """Run a checkpoint over images/folders; writes a drawn PNG per image and ``detections.json`` -> (written files,
    the JSON's content).

    ``max_det`` caps the detections per image (default: the model's); ``classes`` keeps only those classes (names
    or class indices; an unknown one is a ValueError before any image is read), filtered before the cap;
    ``save_txt`` also writes one YOLO label file per image, ``labels/<drawing stem>.txt`` with ``class cx cy w h
    score`` normalised to the image (as Ultralytics' ``save_txt`` with ``save_conf``; an image with no detection
    gets an empty file; the JSON's ``"labels"`` maps every input to its file); ``draw=False`` writes no drawings
    (the JSON's ``"drawn"`` stays empty). The same image reached through several sources is detected once. Videos
    (:data:`~efpn.cli.video.VIDEO_SUFFIXES`) are detected frame by frame, every ``vid_stride``-th frame, into a drawn
    ``<name>.mp4`` and one JSON entry per frame (:func:`~efpn.cli.video.detect_video`).

    One bad file never stops the batch: an unreadable image, or one the model cannot take (too small, too many
    pixels for one input without ``slice_size``), or a drawing that cannot be written is reported with what to do,
    listed under ``"errors"`` in the JSON, and the rest are processed. The JSON maps every input to its detections
    and to its drawing (``"drawn"``); it is written every 50 images and at the end, also when the batch stops early.
    Inputs are never overwritten and never read back: ``out_dir`` is left out of the search, and an output folder
    that would put a drawing in place of an input is refused (ValueError). Raises NotADirectoryError when
    ``out_dir`` is a file. When ``out_dir`` is not empty the results go to ``out_dir-2`` (``-3``, ...) instead; the
    written files' folder is the one used.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is an existing file; give a folder for the drawn images and JSON")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"--out {out} lies under {parent}, which is a file; give a folder path")
    holds = [s for s in sources if Path(s).is_dir() and _within(Path(s), out)]
    if holds:  # drawings would land among the inputs, and the next run would read them as inputs
        raise ValueError(f"--out {out} is or contains the source folder {holds[0]}; write the drawings elsewhere "
                         "(default runs/detect, or a folder inside the source, which is then left out of the search)")
    not_files: dict[str, str] = {}
    paths = collect_images(sources, exclude=out, skipped=not_files)
    out = _fresh(out)
    check_writable(out, "--out")  # before the model loads and the batch runs, not when the JSON is saved
    names_out = output_names(paths)
    js = out / "detections.json"
    clash = [p for p, n in zip(paths, names_out, strict=True) if p.resolve() in ((out / n).resolve(), js.resolve())]
    if clash:
        raise ValueError(f"--out {out} would write a drawing over the input {clash[0]}; choose an output folder that "
                         "holds no input images (default runs/detect)")
    from efpn.checkpoint import load_model
    from efpn.infer.predict import predict_image

    model = load_model(weights, device=device)
    names = list(model.config.class_names) or [str(i) for i in range(model.num_classes)]
    keep = class_filter(classes, names) if classes else None
    cap = max_det or model.config.postprocess.max_det
    # with a class filter the model keeps every detection its NMS leaves (its pre-NMS top-k still bounds them)
    uncapped = max(cap, model.config.postprocess.pre_nms_topk) if keep is not None else None

    def predict(rgb: np.ndarray) -> dict[str, Any]:
        """Detections of one (H, W, 3) uint8 RGB image or frame, in its pixels, classes filtered then capped."""
        if slice_size:
            from efpn.infer.slicing import sliced_predict

            det = sliced_predict(model, rgb, tile=slice_size, overlap=overlap, score_thresh=score_thresh,
                                 nms_iou=nms_iou, max_det=uncapped or max_det, image_size=image_size)
        else:
            det = predict_image(model, rgb, score_thresh=score_thresh, nms_iou=nms_iou, max_det=uncapped or max_det,
                                image_size=image_size)
        if keep is not None:  # the classes first, then the cap: --max-det counts detections of these classes
            det = top_scoring(select(det, torch.isin(det["labels"], keep)), cap)
        return det

    out.mkdir(parents=True, exist_ok=True)
    if save_txt:
        (out / "labels").mkdir(exist_ok=True)
    written: list[Path] = []
    summary: dict[str, Any] = {"weights": str(weights), "images": {}, "drawn": {}, "errors": dict(not_files)}
    if save_txt:
        summary["labels"] = {}  # input -> its label file (named after the drawing: same-named inputs differ)
    try:
        for i, (path, name) in enumerate(tqdm(list(zip(paths, names_out, strict=True)), desc="detect", unit="img")):
            if i and i % 50 == 0:  # every 50 images, whatever happened to the last one
                _write_json(js, summary)
            key = str(path)
            if path.suffix.lower() in VIDEO_SUFFIXES:
                written += detect_video(path, Path(name).stem, predict, names, list(model.levels), out, summary,
                                        save_txt=save_txt, draw=draw, stride=vid_stride)
                continue
            try:
                rgb = read_image(path)
            except (CorruptImageError, ValueError, OSError) as e:
                _skip(summary, key, str(e))
                continue
            try:
                det = predict(rgb)
            except ValueError as e:  # too small, too many pixels for one input, ...: this file only
                h, w = rgb.shape[:2]
                _skip(summary, key, f"{w}x{h} px image: {e}")
                continue
            summary["images"][key] = detections_to_json(det, names, model.levels)
            png = out / name
            if save_txt:
                label = out / "labels" / f"{Path(name).stem}.txt"
                try:
                    label.write_text(yolo_lines(det, rgb.shape[:2]), encoding="utf-8")
                    summary["labels"][key] = str(label)
                    written.append(label)
                except OSError as e:  # the detections stay in the JSON; the drawing is still attempted
                    _skip(summary, key, f"detections kept in the JSON, but {label} could not be written: {e}")
            if not draw:
                continue
            ok, data = cv2.imencode(".png", cv2.cvtColor(draw_detections(rgb, det, names, model.levels),
                                                         cv2.COLOR_RGB2BGR))
            try:  # encoded in memory and written by Python: any file name the OS accepts, errors per file
                if not ok:
                    raise OSError("OpenCV could not encode the drawing")
                png.write_bytes(data.tobytes())
            except OSError as e:
                _skip(summary, key, f"detections kept in the JSON, but the drawing {png} could not be written: {e}")
                continue
            summary["drawn"][key] = str(png)
            written.append(png)
    finally:  # whatever stopped the batch (Ctrl-C included), what was detected so far is kept
        _write_json(js, summary)
    written.append(js)
    return written, summary


def class_filter(classes: Sequence[str], names: Sequence[str]) -> Tensor:
    """Class indices (K,) of ``classes``, each a class name of the model or, when no class has that name, an index
    into ``names``; raises ValueError naming an unknown one and the model's classes."""
    picked: list[int] = []
    for c in classes:
        if c in names:
            picked.append(list(names).index(c))
        elif re.fullmatch(r"[0-9]+", c.strip()) and int(c) < len(names):
            picked.append(int(c))
        else:
            listed = ", ".join(f"{i}={n}" for i, n in enumerate(names[:20]))
            raise ValueError(f"--classes {c!r} is not a class of this model; give names or indices of: {listed}"
                             + (" ..." if len(names) > 20 else ""))
    return torch.tensor(sorted(set(picked)), dtype=torch.long)


#: The per-detection entries of a detections dict (others, such as a sliced run's tiles, are about the image).
DETECTION_KEYS = ("boxes", "scores", "labels", "levels")


def select(det: dict[str, Any], index: Tensor) -> dict[str, Any]:
    """The detections ``index`` picks (a (D,) mask or indices, in their order): every entry of
    :data:`DETECTION_KEYS` indexed alike, the others kept."""
    return {k: v[index] if k in DETECTION_KEYS else v for k, v in det.items()}


def top_scoring(det: dict[str, Any], cap: int) -> dict[str, Any]:
    """The ``cap`` highest-scoring detections of ``det``, by descending score."""
    return select(det, torch.argsort(det["scores"], descending=True)[:cap])


def _fresh(out: Path) -> Path:
    """``out``, or ``out-2``, ``out-3``, ... when ``out`` is not empty (as training runs are numbered): a second run
    never replaces the first one's results or mixes its drawings in."""
    out = out.resolve() if out.name in ("", ".", "..") else out  # "." has no name to number
    folder, k = out, 1
    while folder.is_dir() and any(folder.iterdir()):  # a folder with anything in it (a killed run's drawings too)
        k += 1
        folder = out.with_name(f"{out.name}-{k}")
    if folder != out:
        tqdm.write(f"{out} is not empty (an earlier run's results?); writing to {folder}")
    return folder


def _skip(summary: dict[str, Any], key: str, why: str) -> None:
    summary["errors"][key] = why
    tqdm.write(f"skipped {key}: {why}")


def _write_json(path: Path, summary: dict[str, Any]) -> None:
    """Write ``summary`` to ``path`` through a temporary file, so a reader never sees half a JSON."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(summary, indent=2))
    part.replace(path)
