"""Misses over a whole dataset: recall by size bucket x cause, the miss table, COCO results, an HTML report.

:func:`diagnose_records` inspects every image once (``efpn.inspect`` with the model's own assignment), matches
its detections — whole-image, or sliced (:func:`efpn.infer.sliced_predict`) when ``slice_size`` is given — to the
ground truth, and diagnoses each miss from the whole-image inspection (causes then describe the network at its own
input size; with slicing, a miss that the whole image would have found counts as found only if the tiles find it).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from efpn.data.images import read_image
from efpn.data.records import REASONS, ImageRecord
from efpn.evaluation.validate import check_classes
from efpn.explain.diagnose import (
    CAUSE_TEXT,
    CAUSES,
    ImageDiagnosis,
    diagnose_image,
    match_image,
    recall_by_bucket_and_cause,
)
from efpn.explain.inspection import inspect
from efpn.infer.slicing import sliced_predict
from efpn.models.detector import Detector
from efpn.vocab import BUCKET_LABELS, BUCKETS

__all__ = ["DatasetDiagnosis", "diagnose_records", "write_html"]


@dataclass
class DatasetDiagnosis:
    """Per image: the record and its :class:`ImageDiagnosis`; plus the settings and the detections."""

    images: list[tuple[ImageRecord, ImageDiagnosis]] = field(default_factory=list)
    detections: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # image id -> boxes/scores/labels
    score_thresh: float = 0.25
    iou_thresh: float = 0.5
    slice_size: int | None = None
    class_names: list[str] = field(default_factory=list)
    class_aware: bool = True
    #: images that could not be diagnosed (unreadable, missing): (image id, file, why); the others were
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    overlap: float | None = None  # the tiles' overlap, with slice_size
    nms_iou: float | None = None  # the NMS IoU threshold of the detections
    #: images matched on their tiles whose misses have no cause, as the whole image could not be inspected (too
    #: thin or too large for one network input): (image id, file, why); they count in recall as ``not_diagnosed``
    tiles_only: list[tuple[int, str, str]] = field(default_factory=list)

    def table(self) -> dict[str, dict[str, int]]:
        """Per size bucket: GTs, found, and misses per cause (see :func:`recall_by_bucket_and_cause`)."""
        return recall_by_bucket_and_cause([d for _, d in self.images])

    def rows(self, root: str | Path | None = None) -> list[dict[str, Any]]:
        """The miss table: one row per missed object, with its image (``file``: relative to ``root`` when the image
        is under it, e.g. so a download from a server does not show the server's folders), its ``box`` (xyxy, the
        image's pixels), ``label`` (class index) and ``class`` (its name)."""
        out = []
        for rec, diag in self.images:
            for m in diag.misses:
                named = self.class_names[m.label] if 0 <= m.label < len(self.class_names) else str(m.label)
                row: dict[str, Any] = {"image_id": rec.image_id, "file": _shown(rec.path, root)}
                for k, v in m.to_row().items():
                    row[k] = v
                    if k == "label":  # its name beside the index
                        row["class"] = named
                out.append(row)
        return out

    def to_json(self, root: str | Path | None = None) -> dict[str, Any]:
        """Everything as JSON data: settings, recall per bucket and cause, the miss rows and the images that could
        not be diagnosed (files relative to ``root``, as in :meth:`rows`)."""
        table = self.table()
        recall = {b: (t["found"] / t["gt"] if t["gt"] else None) for b, t in table.items()}
        return {"score_thresh": self.score_thresh, "iou_thresh": self.iou_thresh, "nms_iou": self.nms_iou,
                "slice": self.slice_size, "overlap": self.overlap, "class_aware": self.class_aware,
                "images": len(self.images), "recall_by_bucket": recall,
                "by_bucket_and_cause": table, "causes": CAUSE_TEXT, "misses": self.rows(root),
                "tiles_only": [{"image_id": i, "file": _shown(f, root), "why": e} for i, f, e in self.tiles_only],
                "errors": [{"image_id": i, "file": _shown(f, root), "error": e} for i, f, e in self.errors]}

    def csv_text(self, root: str | Path | None = None) -> str:
        """The miss table as CSV text (dict- and list-valued columns as JSON), e.g. for a download button (files
        relative to ``root``, as in :meth:`rows`)."""
        rows = self.rows(root)
        keys = list(rows[0]) if rows else ["image_id", "file", "gt_index", "box", "cause"]
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in r.items()})
        return buf.getvalue()

    def write_csv(self, path: str | Path) -> Path:
        """The miss table as a CSV file (:meth:`csv_text`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.csv_text(), encoding="utf-8", errors="backslashreplace", newline="")
        return path

    def coco_results(self, category_ids: Sequence[int | None] | None = None) -> list[dict[str, Any]]:
        """Detections as COCO results JSON entries (``bbox`` xywh). ``category_id``: ``category_ids[class index]``,
        the dataset's own id of the model's class (:func:`efpn.data.category_ids_for`), so pycocotools scores the
        results against the original annotations; a class whose entry is None (the data has no class of its name)
        is left out. Without ``category_ids``, COCO's 1-based ``class index + 1`` (as efpn's COCO evaluation)."""
        ids: list[int | None] = (list(category_ids) if category_ids is not None
                                 else [k + 1 for k in range(len(self.class_names))])
        # an image whose annotation file spells its id otherwise ("frame_0001", "0042") is named as spelled there
        spelled = {rec.image_id: rec.source_id for rec, _ in self.images if rec.source_id is not None}
        out = []
        for image_id, det in self.detections.items():
            named = spelled.get(image_id, int(image_id))
            for b, s, c in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
                cat = ids[int(c)] if 0 <= int(c) < len(ids) else (int(c) + 1 if category_ids is None else None)
                if cat is None:  # a class the data does not have: nothing to score it as
                    continue
                out.append({"image_id": named, "category_id": cat, "score": round(float(s), 5),
                            "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)]})
        return out


@torch.no_grad()
def _shown(path: str | Path | None, root: str | Path | None) -> str:
    """``path`` as a row shows it: relative to ``root`` when it lies under it, else as given; bytes of a file name
    that are not UTF-8 written as ``\\xe9`` (so the CSV, HTML and downloads stay valid UTF-8 and still say which
    bytes the name has)."""
    if path is not None and root is not None:
        with contextlib.suppress(ValueError):
            path = Path(path).relative_to(root).as_posix()
    return printable(str(path))


def printable(text: str) -> str:
    """``text`` with the lone surrogates by which Python holds undecodable file-name bytes written as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def diagnose_records(
    model: Detector,
    records: Sequence[ImageRecord],
    class_names: Sequence[str],
    score_thresh: float | None = None,
    iou_thresh: float = 0.5,
    slice_size: int | None = None,
    overlap: float = 0.2,
    image_size: int | None = None,
    progress: bool = False,
    class_aware: bool = True,
    on_image: Callable[[int, int, ImageRecord], None] | None = None,
    nms_iou: float | None = None,
) -> DatasetDiagnosis:
    """Inspect, match and diagnose every record (see the module docstring).

    ``nms_iou``: the NMS IoU threshold of the detections diagnosed (default: the model's own).

    ``class_aware``: a detection finds an object only with the same class (False: any class). ``on_image(done,
    total, record)`` is called after each image (e.g. a progress bar; an exception from it stops the run). An image
    that cannot be read or run (unreadable, too thin for the network's input, more tiles than ``MAX_TILES``) is
    recorded in :attr:`DatasetDiagnosis.errors` with the reason and the rest are diagnosed: one bad file never stops
    a dataset.
    """
    if class_aware:  # fail before hours of inspection, not per image
        check_classes(model, class_names, "use data with the model's classes, or match detections of any class "
                                          "(class_aware=False; efpn diagnose --any-class)")
    thr = model.config.postprocess.score_thresh if score_thresh is None else float(score_thresh)
    out = DatasetDiagnosis(score_thresh=thr, iou_thresh=iou_thresh, slice_size=slice_size,
                           class_names=list(class_names), class_aware=class_aware,
                           overlap=overlap if slice_size is not None else None,
                           nms_iou=model.config.postprocess.nms_iou if nms_iou is None else float(nms_iou))
    iterator: Any = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, desc="diagnose", unit="img", dynamic_ncols=True)
    for done, rec in enumerate(iterator, 1):
        try:
            if rec.path is None:
                raise ValueError("the record has no image path; diagnosis needs the pixels")
            rgb = read_image(rec.path)
            boxes, labels = rec.target_boxes()
            det = None
            if slice_size is not None:
                det = sliced_predict(model, rgb, tile=slice_size, overlap=overlap, score_thresh=thr,
                                     image_size=image_size, nms_iou=nms_iou)
            try:
                ins = inspect(model, rgb, score_thresh=min(thr, model.config.postprocess.score_thresh),
                              image_size=image_size, nms_iou=nms_iou)
            except ValueError as e:  # e.g. a strip too thin for one network input: its tiles still detect
                if det is None:
                    raise
                out.tiles_only.append((rec.image_id, str(rec.path), str(e)[:500]))
                matching = match_image(det, boxes, labels, thr, iou_thresh, class_aware, rec.ignore_regions())
                diag = ImageDiagnosis(matching, [], thr, iou_thresh)  # matched, but no cause without an inspection
            else:
                diag = diagnose_image(model, ins, boxes, labels, thr, iou_thresh, class_aware, detections=det,
                                      ignore_boxes=rec.ignore_regions())  # crowds and ignored areas: no false alarms
        except (OSError, ValueError) as e:  # unreadable (CorruptImageError), too thin for the network, too many
            out.errors.append((rec.image_id, str(rec.path), str(e)[:500]))  # tiles: that image, not the dataset
        else:
            chosen = det if det is not None else ins.detections
            keep = chosen["scores"] >= thr
            out.detections[rec.image_id] = {k: chosen[k][keep].cpu().numpy() for k in ("boxes", "scores", "labels")}
            out.images.append((rec, diag))
        if on_image is not None:
            on_image(done, len(records), rec)
    return out


def _crop_png(rgb: np.ndarray, box: Sequence[float], side: int = 96) -> str:
    """A ``side`` px square crop around ``box`` (at least 4x its size, at least 32 px), box outlined, as a data URI."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(16.0, 2.0 * max(x2 - x1, y2 - y1))
    h, w = rgb.shape[:2]
    a, b = int(max(0, cx - half)), int(max(0, cy - half))
    c, d = int(min(w, cx + half)), int(min(h, cy + half))
    crop = np.ascontiguousarray(rgb[b:d, a:c])
    if crop.size == 0:
        crop = np.zeros((side, side, 3), np.uint8)
    scale = side / max(crop.shape[:2])
    crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                      interpolation=cv2.INTER_NEAREST)
    cv2.rectangle(crop, (round((x1 - a) * scale), round((y1 - b) * scale)),
                  (round((x2 - a) * scale), round((y2 - b) * scale)), (255, 60, 60), 1)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def write_html(diagnosis: DatasetDiagnosis, path: str | Path, worst: int = 24,
               loader: dict[str, Any] | None = None) -> Path:
    """A self-contained HTML report: the settings, what was left out (images that could not be diagnosed, images
    matched on tiles only, and ``loader``: the data loader's report, :meth:`efpn.data.SkipReport.to_json_dict`),
    recall by size bucket x cause, then the ``worst`` misses (smallest first, then by lowest best score) with crops
    and their numbers."""
    table = diagnosis.table()
    buf = io.StringIO()
    esc = html.escape
    buf.write("<!doctype html><meta charset='utf-8'><title>efpn: why objects were missed</title>"
              "<style>body{font-family:sans-serif;margin:24px;max-width:1200px}"
              "table{border-collapse:collapse;display:block;overflow-x:auto;max-width:100%}"
              "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}th{background:#eee}"
              "td.l{text-align:left}img{image-rendering:pixelated}</style>")
    tiles = (f", tiles of {diagnosis.slice_size} px overlapping by {diagnosis.overlap or 0:g}"
             if diagnosis.slice_size else "")
    nms = f", NMS IoU {diagnosis.nms_iou:g}" if diagnosis.nms_iou is not None else ""
    which = "the same class only" if diagnosis.class_aware else "any class (--any-class)"
    buf.write(f"<h1>Why objects were missed</h1><p>{len(diagnosis.images)} images, score threshold "
              f"{diagnosis.score_thresh:g}{nms}, match IoU {diagnosis.iou_thresh:g} with {which}{tiles}.</p>")
    buf.write(_left_out_html(diagnosis, loader))
    undiagnosed = sum(t["not_diagnosed"] for t in table.values())
    columns = (*CAUSES, "not_diagnosed") if undiagnosed else CAUSES
    buf.write("<h2>Recall by object size and the cause of each miss</h2><table><tr><th>size</th><th>objects</th>"
              "<th>found</th><th>recall</th>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
    for b in BUCKETS:
        t = table[b]
        recall = f"{t['found'] / t['gt']:.2f}" if t["gt"] else "–"
        buf.write(f"<tr><td class='l'>{esc(BUCKET_LABELS[b])}</td><td>{t['gt']}</td><td>{t['found']}</td>"
                  f"<td>{recall}</td>" + "".join(f"<td>{t[c]}</td>" for c in columns) + "</tr>")
    buf.write("</table><ul>" + "".join(f"<li><b>{esc(c)}</b>: {esc(t)}</li>" for c, t in CAUSE_TEXT.items())
              + ("<li><b>not_diagnosed</b>: missed in an image matched on tiles only (listed above)</li>"
                 if undiagnosed else "") + "</ul>")
    misses = [(rec, m) for rec, d in diagnosis.images for m in d.misses]
    misses.sort(key=lambda rm: (rm[1].size, rm[1].best_score))
    if not misses:
        buf.write(f"<h2>No missed object with a cause</h2><p>The {undiagnosed} missed object(s) lie in images matched "
                  "on tiles only (listed above): no cause, no crop.</p>" if undiagnosed else
                  "<h2>No missed object</h2><p>Every object of the diagnosed images was found at these settings.</p>")
    else:
        buf.write(f"<h2>The {min(worst, len(misses))} worst misses (smallest first)</h2><table><tr><th>crop</th>"
                  "<th>image</th><th>size px</th><th>cause</th><th>positives per level</th><th>best prior</th>"
                  "<th>gates at centre</th></tr>")
    cache: dict[Any, np.ndarray] = {}
    for rec, m in misses[:worst]:
        if rec.path not in cache:
            cache[rec.path] = read_image(rec.path)
        pos = " ".join(f"{lv}:{n}" for lv, n in m.positives.items())
        best = f"{m.best_score:.3f} on {m.best_level}, IoU {m.best_iou:.2f}" if m.best_level else "none covers it"
        gates = " ".join(f"{lv}:{g:.2f}" for lv, g in m.gates.items()) or "no FBSM"
        buf.write(f"<tr><td><img src='{_crop_png(cache[rec.path], m.box)}' width=96 height=96></td>"
                  f"<td class='l'>{esc(printable(Path(str(rec.path)).name))}</td><td>{m.size:.1f}</td>"
                  f"<td class='l'><b>{esc(m.cause)}</b></td><td class='l'>{esc(pos)}</td><td class='l'>{esc(best)}</td>"
                  f"<td class='l'>{esc(gates)}</td></tr>")
    if misses:
        buf.write("</table>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8", errors="backslashreplace")  # a name in an error message
    return path


def _left_out_html(diagnosis: DatasetDiagnosis, loader: dict[str, Any] | None) -> str:
    """The report's account of what its numbers leave out or could not explain, as the JSON records it."""
    esc = html.escape
    parts = []
    if loader and loader.get("counts"):
        examples = loader.get("examples") or {}
        items = "".join(f"<li>{int(n)} × {esc(REASONS.get(str(reason), str(reason)))}"
                        + (f" (e.g. {esc(', '.join(map(str, examples.get(reason, [])[:3])))})"
                           if examples.get(reason) else "") + "</li>"
                        for reason, n in loader["counts"].items())
        parts.append(f"<h2>What the data loader left out or changed</h2><ul>{items}</ul>")
    if diagnosis.errors:
        parts.append(f"<h2>{len(diagnosis.errors)} image(s) could not be diagnosed and are left out of every number "
                     f"below</h2>{_image_list(diagnosis.errors)}")
    if diagnosis.tiles_only:
        parts.append(f"<h2>{len(diagnosis.tiles_only)} image(s) matched on tiles only</h2><p>Their objects count "
                     f"in recall; a miss among them has no cause (counted as not_diagnosed), as the whole-image "
                     f"inspection refused the image:</p>{_image_list(diagnosis.tiles_only)}")
    return "".join(parts)


def _image_list(entries: Sequence[tuple[int, str, str]]) -> str:
    """(image id, file, why) entries as an HTML list: the file's name in bold, its id, the reason."""
    return "<ul>" + "".join(f"<li><b>{html.escape(printable(Path(f).name))}</b> (image {i}): {html.escape(e)}</li>"
                            for i, f, e in entries) + "</ul>"
