"""`efpn detect` on videos: every (or every N-th) frame detected, a drawn video and per-frame JSON written.

Frames are read with OpenCV's FFmpeg backend (the formats of :data:`VIDEO_SUFFIXES`); the drawn video is MPEG-4
(``mp4v``) at the source's frame rate divided by the frame stride. A video that cannot be opened, has no readable
frame, or whose drawing cannot be written is reported under the JSON's ``"errors"`` and the batch goes on.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from efpn.infer.draw import detections_to_json, draw_detections, yolo_lines

#: Video files `efpn detect` reads (each through OpenCV's FFmpeg backend).
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})

#: Frame rate written when a container does not state one.
DEFAULT_FPS = 25.0


def frame_key(video: Path, index: int) -> str:
    """The JSON key of one frame's detections: ``"<video path>#frame=<index>"`` (index from 0 in the source)."""
    return f"{video}#frame={index}"


def detect_video(
    video: Path,
    stem: str,
    predict: Callable[[np.ndarray], dict[str, Any]],
    names: list[str],
    levels: list[str],
    out: Path,
    summary: dict[str, Any],
    *,
    save_txt: bool,
    draw: bool,
    stride: int = 1,
) -> list[Path]:
    """Detect on every ``stride``-th frame of ``video``; returns the files written.

    ``predict`` maps an (H, W, 3) uint8 RGB frame to detections (raising ValueError for a frame the model cannot
    take); each frame's detections go to ``summary["images"][frame_key(...)]``, the drawn video (``<stem>.mp4``)
    to ``summary["drawn"][str(video)]``, with ``save_txt`` each frame's YOLO labels to
    ``labels/<stem>/<frame>.txt`` (``summary["labels"]`` maps the frame key to it; a folder per video, so no frame's
    file can take the name of an image's ``labels/<stem>.txt``, as ``a_0.png``'s would with ``a.mp4``'s frame 0).
    Problems are recorded under ``summary["errors"][str(video)]`` (what was detected before them is kept).
    """
    key = str(video)
    if not video.is_file():  # a pipe or a device would block FFmpeg's reader, or never end
        summary["errors"][key] = f"{video} is not a regular file (a pipe, socket or device); give the video file"
        tqdm.write(f"skipped {key}: {summary['errors'][key]}")
        return []
    aliases = Path(tempfile.mkdtemp(prefix="efpn_video_"))  # names OpenCV can take (see _opencv_name)
    try:
        return _detect_frames(video, _opencv_name(video, aliases / f"source{_suffix(video)}"), stem, predict, names,
                              levels, out, summary, save_txt=save_txt, draw=draw, stride=stride, aliases=aliases)
    finally:
        shutil.rmtree(aliases, ignore_errors=True)


def _utf8(path: Path) -> bool:
    """Whether ``path`` is valid UTF-8 text: OpenCV's Python binding crashes the whole process (a segmentation
    fault, nothing saved) on a name that is not, which Python holds with lone surrogates."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _suffix(video: Path) -> str:
    return video.suffix.lower() if _utf8(Path(video.suffix)) else ".mp4"


def _opencv_name(path: Path, alias: Path) -> Path:
    """``path`` itself when OpenCV can take its name, else ``alias`` (a valid UTF-8 name) as a link to it."""
    if _utf8(path):
        return path
    os.symlink(path.resolve(), alias)
    return alias


def _detect_frames(video: Path, source: Path, stem: str, predict: Callable[[np.ndarray], dict[str, Any]],
                   names: list[str], levels: list[str], out: Path, summary: dict[str, Any], *, save_txt: bool,
                   draw: bool, stride: int, aliases: Path) -> list[Path]:
    """:func:`detect_video`'s work, with ``source`` the name OpenCV opens and ``aliases`` a folder for names it
    can take (the drawn video is written there first when its own name is not valid UTF-8, then moved)."""
    key = str(video)
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        summary["errors"][key] = (f"cannot open video {video}: OpenCV's FFmpeg could not read it; re-encode it "
                                  "(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or extract its frames as images")
        tqdm.write(f"skipped {key}: {summary['errors'][key]}")
        return []
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    written: list[Path] = []
    writer: cv2.VideoWriter | None = None
    drawn_path = out / f"{stem}.mp4"
    drawn_target = drawn_path if _utf8(drawn_path) else aliases / "drawn.mp4"  # moved to drawn_path at the end
    index, done = -1, 0
    bar = tqdm(total=total or None, desc=video.name, unit="frame", leave=False)
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            index += 1
            bar.update(1)
            if index % stride:
                continue
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])
            try:
                det = predict(rgb)
            except ValueError as e:  # a frame the model cannot take: so would every other frame of this video
                h, w = rgb.shape[:2]
                summary["errors"][key] = f"{w}x{h} px frames: {e}"
                tqdm.write(f"skipped {key}: {summary['errors'][key]}")
                break
            summary["images"][frame_key(video, index)] = detections_to_json(det, names, levels)
            done += 1
            if save_txt:
                label = out / "labels" / stem / f"{index}.txt"
                label.parent.mkdir(parents=True, exist_ok=True)
                label.write_text(yolo_lines(det, rgb.shape[:2]), encoding="utf-8")
                summary["labels"][frame_key(video, index)] = str(label)
                written.append(label)
            if draw:
                picture = cv2.cvtColor(draw_detections(rgb, det, names, levels), cv2.COLOR_RGB2BGR)
                if writer is None:
                    h, w = picture.shape[:2]
                    # at least 1 frame/s: a large stride on a slow video gave 0.1 fps or less, at which the
                    # MPEG-4 encoder aborts the whole process (an assertion in libavcodec's rate control)
                    out_fps = max(1.0, fps / stride)
                    writer = cv2.VideoWriter(str(drawn_target), cv2.VideoWriter_fourcc(*"mp4v"), out_fps, (w, h))
                    if not writer.isOpened():
                        raise OSError(f"OpenCV could not open {drawn_path} for writing an MPEG-4 video")
                writer.write(picture)
    except OSError as e:  # the drawing (or a label file) could not be written: the detections so far are kept
        summary["errors"][key] = f"detections of {done} frame(s) kept in the JSON, but writing failed: {e}"
        tqdm.write(f"skipped the rest of {key}: {summary['errors'][key]}")
    finally:
        bar.close()
        capture.release()
        if writer is not None:
            writer.release()
            if drawn_target != drawn_path and drawn_target.is_file():
                with contextlib.suppress(OSError):  # reported below: the drawing is then not listed
                    shutil.move(drawn_target, drawn_path)
    if 0 <= index + 1 < total and key not in summary["errors"]:  # the decoder stopped before the declared end
        note = (f"read {index + 1} of the {total} frames the file declares: a truncated or damaged file (or a frame "
                "count its container only estimates); the frames read are detected, re-encode it to get the rest")
        summary.setdefault("notes", {})[key] = note
        tqdm.write(f"note: {key}: {note}")
    if done == 0 and key not in summary["errors"]:
        summary["errors"][key] = f"no frame of {video} could be read; re-encode it or extract its frames as images"
        tqdm.write(f"skipped {key}: {summary['errors'][key]}")
    if writer is not None and drawn_path.is_file():
        summary["drawn"][key] = str(drawn_path)
        written.append(drawn_path)
    return written
