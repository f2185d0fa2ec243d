"""Small pure helpers shared by pages: detections as rows, JSON and PNG downloads (no Streamlit, no model)."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from efpn import BUCKETS, box_size, size_bucket
from efpn.evaluation import match_detections
from efpn.explain import GATE_LOW, SCORE_FLOOR, MissDiagnosis
from efpn.infer import detections_to_json, draw_detections


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def detection_rows(
    detections: Mapping[str, Any], levels: Sequence[str], class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One dict per detection: index, class, label, score, level, size (sqrt(wh)), bucket, box, x1..y2."""
    boxes = _np(detections["boxes"]).reshape(-1, 4).astype(float)
    scores = _np(detections["scores"]).astype(float)
    labels = _np(detections["labels"]).astype(int)
    lvls = _np(detections["levels"]).astype(int)
    sizes = box_size(torch.from_numpy(boxes)).tolist()  # sqrt(wh), efpn's size vocabulary
    buckets = [BUCKETS[k] for k in size_bucket(torch.from_numpy(boxes)).tolist()]
    rows = []
    for i, (b, s, c, lv, size, bucket) in enumerate(zip(boxes, scores, labels, lvls, sizes, buckets)):
        rows.append({
            "index": i,
            "class": class_names[c] if 0 <= c < len(class_names) else str(c),
            "label": int(c),
            "score": float(s),
            "level": levels[lv] if 0 <= lv < len(levels) else str(lv),
            "size": size,
            "bucket": bucket,
            "box": [float(v) for v in b],
            "x1": float(b[0]), "y1": float(b[1]), "x2": float(b[2]), "y2": float(b[3]),
        })
    return rows


def table_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows for ``st.dataframe`` (no nested lists)."""
    digits = {"score": 4, "size": 1, "x1": 1, "y1": 1, "x2": 1, "y2": 1}
    keys = ("index", "class", "score", "level", "size", "bucket", "x1", "y1", "x2", "y2")
    return [{k: (round(r[k], digits[k]) if k in digits else r[k]) for k in keys} for r in rows]


def download_stem(name: str) -> str:
    """A file name for downloads from an image's name: its stem with anything but letters, digits, ``-``, ``_`` and
    ``.`` as ``_`` (an upload named ``../../x.png`` or with spaces gives a plain name), never empty or hidden."""
    stem = PurePosixPath(name.replace("\\", "/")).stem  # the last part of a name that holds a path
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in stem).strip("._")
    return safe or "image"


def selected_row(rows: Sequence[Mapping[str, Any]], selection: Any, digest: str) -> int | None:
    """The index in ``rows`` (:func:`detection_rows`) of the detection ``selection`` = ``(image digest, index, box)``
    names on the image ``digest``: the row with that box (another threshold or NMS IoU renumbers the detections, and
    an index alone would then name another box); None when it is not among them, or was made on another image."""
    if not selection or len(selection) != 3 or selection[0] != digest:
        return None
    _, _, box = selection
    for i, r in enumerate(rows):
        if np.allclose(np.asarray(r["box"], dtype=np.float64), np.asarray(box, dtype=np.float64), atol=1e-3):
            return i
    return None


def level_counts(rows: Sequence[Mapping[str, Any]], levels: Sequence[str]) -> dict[str, int]:
    return {lv: sum(1 for r in rows if r["level"] == lv) for lv in levels}


def detections_json(
    detections: Mapping[str, Any], levels: Sequence[str], class_names: Sequence[str], image_name: str,
    image_hw: tuple[int, int], checkpoint: str, score: float, nms: float,
) -> str:
    """The downloadable JSON: image, checkpoint, thresholds and the detections in the same form as
    ``efpn detect`` writes them (boxes xyxy in original px)."""
    doc = {
        "image": image_name,
        "height": int(image_hw[0]),
        "width": int(image_hw[1]),
        "checkpoint": checkpoint,
        "score_thresh": score,
        "nms_iou": nms,
        "detections": detections_to_json(_tensors(detections), class_names, levels),
    }
    return json.dumps(doc, indent=2)


def drawn_png(rgb: np.ndarray, detections: Mapping[str, Any], levels: Sequence[str],
              class_names: Sequence[str]) -> bytes:
    """PNG bytes of the image with every detection drawn as ``efpn detect`` draws it (colour = level)."""
    drawn = draw_detections(rgb, _tensors(detections), class_names, levels)
    buf = io.BytesIO()
    Image.fromarray(drawn).save(buf, format="PNG")
    return buf.getvalue()


def _tensors(detections: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Detections as tensors (the sliced path hands numpy arrays)."""
    return {k: torch.as_tensor(np.asarray(detections[k])) for k in ("boxes", "scores", "labels", "levels")}


# ----------------------------------------------------------------------------------------------- matching


def parse_pick(customdata: Any) -> tuple[str, int] | None:
    """A clicked centre marker's ``customdata`` -> ``("det", detection index)`` or ``("gt", GT index)``: the level
    view carries a bare detection index, the matching view ``["det", i]`` / ``["gt", j]``."""
    if customdata is None:
        return None
    if isinstance(customdata, list | tuple):
        if len(customdata) == 2 and customdata[0] in ("det", "gt"):
            return str(customdata[0]), int(customdata[1])
        customdata = customdata[0] if customdata else None
    try:
        return "det", int(customdata)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def bucket_rows(counts: Mapping[str, Mapping[str, int]], alarms: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per size bucket (vt ... l): ground-truth objects, found, missed, recall, and false alarms of that size."""
    out = []
    for b in BUCKETS:
        c = counts.get(b, {"gt": 0, "found": 0, "missed": 0})
        out.append({"size": b, "objects": c["gt"], "found": c["found"], "missed": c["missed"],
                    "recall": f"{100 * c['found'] / c['gt']:.0f} %" if c["gt"] else "–",
                    "false alarms": int(alarms.get(b, 0))})
    return out


def _per_level(values: Mapping[str, float], digits: int | None = None) -> str:
    return " · ".join(f"{lv} {v:.{digits}f}" if digits is not None else f"{lv} {v}" for lv, v in values.items())


def miss_rows(misses: Sequence[MissDiagnosis], gt_names: Sequence[str]) -> list[dict[str, Any]]:
    """The missed-objects table: one flat row per miss (st.dataframe shows no nested values); ``gt_names`` the
    class name of every ground-truth box, by GT index."""
    rows = []
    for m in misses:
        rows.append({
            "GT": m.gt_index,
            "class": gt_names[m.gt_index] if 0 <= m.gt_index < len(gt_names) else str(m.label),
            "size px": round(m.size, 1),
            "bucket": m.bucket,
            "cause": m.cause,
            "positives": _per_level({lv: n for lv, n in m.positives.items() if n}) or "none",
            "best score": round(m.best_score, 3),
            "best level": m.best_level or "–",
            "best IoU": round(m.best_iou, 2),
            "gates at centre": _per_level(m.gates, 2) or "no gate",
        })
    return rows


def rule_rows(m: MissDiagnosis, score_thresh: float, iou_thresh: float) -> list[dict[str, str]]:
    """The decision rule of ``efpn.explain`` applied to one miss, step by step: what was measured, the rule's
    limit, and whether the object got past that step. The first step it did not pass is its cause."""
    floor = min(SCORE_FLOOR, score_thresh / 2)
    positives = sum(m.positives.values())
    top_gate = max(m.gates.values()) if m.gates else None
    passing = m.best_score >= score_thresh
    steps = [
        ("1 positives (model's assigner)",
         f"{positives} ({_per_level({k: v for k, v in m.positives.items() if v}) or 'none'})"
         + (", none regular" if m.starved and positives else ""),
         "starved when none, or only fallback ones", not m.starved),
        ("2 FBSM gate at the centre", _per_level(m.gates, 3) if m.gates else "no gate (not gated)",
         f"closed when every gate < {GATE_LOW:g}", top_gate is None or top_gate >= GATE_LOW),
        ("3 best covering prior's score", f"{m.best_score:.3f}" + (f" on {m.best_level}" if m.best_level else ""),
         f"never scored below {floor:g}", m.best_score >= floor),
        ("4 ... against the score threshold", f"{m.best_score:.3f}", f"under threshold below {score_thresh:g}",
         passing),
    ]
    out, stopped = [], False
    for name, measured, rule, ok in steps:
        verdict = "not reached" if stopped else ("passed" if ok else f"stopped here: {m.cause}")
        stopped = stopped or not ok
        out.append({"step": name, "measured": measured, "rule": rule, "verdict": verdict})
    lost = m.passing_iou >= iou_thresh
    out.append({"step": "5 best passing prior's IoU", "measured": f"{m.passing_iou:.2f}",
                "rule": f"lost in NMS from {iou_thresh:g}, else mislocalised",
                "verdict": "not reached" if stopped else ("lost_in_nms" if lost else "mislocalised")})
    return out


# ----------------------------------------------------------------------------------------------- learn

#: What each training loss of the detectors measures, in words.
LOSS_TEXT = {
    "loss_cls": "classification: how wrong the class scores are, over every prior (positives should score high, "
                "the rest low)",
    "loss_box": "box regression: how far the positives' boxes are from their object",
    "loss_dfl": "distribution focal loss: how sharply the positives place each box edge",
    "loss_mask": "FBSM mask: how far the gates are from the objects' mask",
}


def cem_change(alpha: float, fused: Any, before: Any) -> float:
    """How much CEM changes a level, on average over its locations: ‖α·F‖ / ‖p‖ (channel norms), from the fused
    context ``fused`` and the level ``before`` CEM, both (C, H, W)."""
    f = np.linalg.norm(_np(fused).reshape(_np(fused).shape[0], -1), axis=0)
    p = np.linalg.norm(_np(before).reshape(_np(before).shape[0], -1), axis=0)
    return float(np.mean(abs(alpha) * f / np.maximum(p, 1e-12)))


def alpha_sentence(level: str, alpha: float, change: float) -> str:
    """α of CEM on one level, in words."""
    if abs(alpha) < 1e-12:
        return (f"**{level}**: α = 0, so CEM adds nothing yet: the level is the plain FPN's (α starts at 0 and "
                "grows only if the context helps the loss).")
    sign = "added to" if alpha > 0 else "subtracted from"
    return (f"**{level}**: α = {alpha:.3g}, so the fused context F is {sign} {level}, scaled by {abs(alpha):.3g}. "
            f"On this image that changes {level}'s features by about {100 * change:.1f} % of their size.")


def beta_sentence(level: str, beta: float, gate: Any) -> str:
    """β of FBSM on one level, with its gate map M on this image, in words."""
    m = _np(gate).astype(float)
    return (f"**{level}**: β = {beta:.3g}. Where the gate M is 1 the features are multiplied by 1 + β = "
            f"{1 + beta:.2f}; where it is 0 they pass unchanged. On this image the mean gate is {m.mean():.2f} "
            f"(an average gain of ×{1 + beta * m.mean():.2f}) and {100 * (m > 0.5).mean():.1f} % of the cells are "
            "more than half open.")


# ----------------------------------------------------------------------------------------------- attribution

#: Display names of the attribution maps and of the random reference (deletion curves, tables, titles).
ATTRIBUTION_NAMES = {"integrated_gradients": "Integrated Gradients", "occlusion": "Occlusion",
                     "gradcam": "LayerGradCAM, all levels", "random": "random pixel order"}
#: What one image through the network is, per kind of pass, and the unit a part of a long run counts.
PASS_WORDS = {"forward_backward": "forward+backward", "forward": "forward"}
PART_UNITS = {"clean": "pass", "integrated_gradients": "step", "occlusion": "occluded image",
              "deletion": "masked image"}
PART_NAMES = {**ATTRIBUTION_NAMES, "clean": "Clean score", "deletion": "Deletion curves"}


def estimate_seconds(passes: Mapping[str, int], pass_ms: Mapping[str, float]) -> float | None:
    """Seconds that ``passes`` (``{"forward_backward": n, "forward": m}`` images) take at the measured ``pass_ms``
    (ms per image of each kind, ``efpn.explain.Explanation.pass_ms``); ``None`` when a kind that is needed was not
    measured."""
    total = 0.0
    for kind, n in passes.items():
        if n <= 0:
            continue
        if kind not in pass_ms:
            return None
        total += n * pass_ms[kind] / 1e3
    return total


def estimate_text(passes: Mapping[str, int], pass_ms: Mapping[str, float]) -> str:
    """How an estimate is made, in words: "8 forward+backward × 0.21 s + 31 forward × 0.05 s"."""
    parts = [f"{n} {PASS_WORDS.get(kind, kind)} × {pass_ms[kind] / 1e3:.2f} s" for kind, n in passes.items()
             if n > 0 and kind in pass_ms]
    return " + ".join(parts)


def plan_images(plan: Sequence[tuple[str, Mapping[str, int]]]) -> int:
    """Images through the network in a plan of ``(part, passes)`` (``app.analyses.long_plan``)."""
    return sum(sum(p.values()) for _, p in plan)


def _work_done(done: int, plan: Sequence[tuple[str, Mapping[str, int]]],
               pass_ms: Mapping[str, float]) -> tuple[float, float]:
    """(estimated ms of the first ``done`` passes of ``plan``, of all of them) at ``pass_ms`` per pass of each kind:
    a forward+backward pass costs several forward ones, so passes are not equal units of time."""
    start, so_far, whole = 0, 0.0, 0.0
    for _, passes in plan:
        n = sum(passes.values())
        cost = sum(k * pass_ms.get(kind, 0.0) for kind, k in passes.items())  # this part's ms
        whole += cost
        if n:
            so_far += cost * min(max(done - start, 0), n) / n
        start += n
    return so_far, whole


def progress_text(done: int, plan: Sequence[tuple[str, Mapping[str, int]]], elapsed_s: float | None = None,
                  pass_ms: Mapping[str, float] | None = None) -> str:
    """The progress bar's text after ``done`` images of ``plan`` (one image through the network = one pass): the
    part running and how far it is ("Integrated Gradients: step 5 of 16"), the passes overall and, with
    ``elapsed_s``, the time left at the pace so far: with ``pass_ms`` (ms per pass of each kind, as measured for
    the estimate) each remaining pass weighs what its kind costs, else every pass the same."""
    total = plan_images(plan)
    start = 0
    where = ""
    for part, passes in plan:
        n = sum(passes.values())
        if done < start + n or part == plan[-1][0]:
            k = min(max(done - start, 0), n)
            name = PART_NAMES.get(part, part)
            where = f"{name}: {PART_UNITS.get(part, 'image')} {k} of {n}"
            break
        start += n
    text = f"{where} · {done}/{total} passes through the network"
    if elapsed_s is not None and done > 0 and done < total:
        so_far, whole = _work_done(done, plan, pass_ms) if pass_ms else (float(done), float(total))
        if so_far > 0:
            text += f" · about {elapsed_s / so_far * (whole - so_far):.0f} s left"
    return text


def percent(share: float) -> str:
    """A share in [0, 1] as a percentage readable at any size: "12 %", "3.4 %", "0.021 %" (two significant digits
    below 1 %, where a tiny object's box shares live), "0 %"."""
    v = 100 * float(share)
    if v == 0:
        return "0 %"
    if abs(v) >= 10:
        return f"{v:.0f} %"
    if abs(v) >= 1:
        return f"{v:.1f} %"
    return f"{v:.2g} %"


def faithfulness_rows(mass: Mapping[str, float], aucs: Mapping[str, float],
                      names: Sequence[str]) -> list[dict[str, str]]:
    """The Faithfulness table: one row per map in ``names`` (keys of ``mass``/``aucs``, e.g. "gradcam"), each value
    beside its random baseline: the share of |attribution| inside the box · the box's area share (``mass["box_area"]``,
    what a random map puts there), and the deletion AUC · the random pixel order's (``aucs["random"]``)."""
    area = mass.get("box_area")
    rand = aucs.get("random")
    rows = []
    for k in names:
        in_box = percent(mass[k]) if k in mass else "–"
        auc = f"{aucs[k]:.3f}" if k in aucs else "–"
        rows.append({
            "map": ATTRIBUTION_NAMES.get(k, k),
            "in box · random": f"{in_box} · {percent(area) if area is not None else '–'}",
            "deletion AUC · random": f"{auc} · {f'{rand:.3f}' if rand is not None else '–'}",
        })
    return rows


def object_differences(
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    class_names: Sequence[str],
    detections: Mapping[str, Mapping[str, np.ndarray]],
    iou: float,
    class_aware: bool,
) -> list[dict[str, Any]]:
    """Per ground-truth object, which of two checkpoints found it: one row per object that exactly one of them
    finds (``detections`` maps each checkpoint's name to its boxes/scores/labels in the image's pixels, both
    matched to the same GT at ``iou``, same class when ``class_aware``). Rows: object index, class, size (px),
    bucket, ``found by`` / ``missed by`` names and the finder's score and IoU."""
    if len(detections) != 2:
        raise ValueError(f"object_differences compares two checkpoints, got {len(detections)}")
    (name_a, det_a), (name_b, det_b) = detections.items()
    ma = match_detections(det_a["boxes"], det_a["scores"], det_a["labels"], gt_boxes, gt_labels, iou, class_aware)
    mb = match_detections(det_b["boxes"], det_b["scores"], det_b["labels"], gt_boxes, gt_labels, iou, class_aware)
    rows = []
    for i in range(len(gt_boxes)):
        fa, fb = int(ma.gt_match[i]) >= 0, int(mb.gt_match[i]) >= 0
        if fa == fb:
            continue
        finder, det, match = (name_a, det_a, ma) if fa else (name_b, det_b, mb)
        label = int(gt_labels[i])
        rows.append({
            "object": i,
            "class": class_names[label] if 0 <= label < len(class_names) else str(label),
            "size (px)": round(float(box_size(torch.as_tensor(np.asarray(gt_boxes[i], dtype=np.float32)))), 1),
            "bucket": BUCKETS[int(ma.gt_bucket[i])],
            "found by": finder,
            "missed by": name_b if fa else name_a,
            "score": round(float(det["scores"][int(match.gt_match[i])]), 3),
            "IoU": round(float(match.gt_iou[i]), 2),
        })
    return rows


# ----------------------------------------------------------------------------------------------- learn

def learn_notice(step: int, ins: Any, gt_boxes: np.ndarray | None = None,
                 score_maps: Mapping[str, np.ndarray] | None = None, score: float = 0.25) -> str:
    """One "what to notice" sentence for step ``step`` (0-8) of the Learn page, from this image's inspection ``ins``
    (``efpn.Inspection``): numbers of this image, not of the model in general. ``gt_boxes`` (M, 4) original px;
    ``score_maps`` level -> best class score per cell (steps 6 and 8)."""
    levels = list(ins.levels)
    if step == 0:
        if gt_boxes is not None and len(gt_boxes):
            def side(b: np.ndarray) -> np.ndarray:  # sqrt(w * h) of xyxy boxes
                return np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))

            i = int(np.argmin(side(np.asarray(gt_boxes, np.float32))))
            here = float(side(np.asarray(gt_boxes, np.float32))[i])
            seen = float(side(np.asarray(ins.to_network(np.asarray(gt_boxes[i : i + 1], np.float32)))[0:1])[0])
            stride = ins.network_stride(levels[0])
            return (f"the smallest object here is {here:.1f} px; the network sees it as {seen:.1f} px, "
                    f"{seen / stride:.2f} of one {levels[0]} cell ({stride} px).")
        if ins.scale < 1:
            return (f"everything is scaled by {ins.scale:.3f} before the network sees it: small objects shrink with "
                    "it.")
        if ins.scale > 1:
            return (f"everything is enlarged {ins.scale:.3g}x before the network sees it: the image is smaller than "
                    "the network's input, and enlarging adds no detail a small object did not have.")
        return "the image enters the network at its own size: one image pixel is one input pixel."
    if step == 1:
        name, feat = list(ins.backbone.items())[-1]
        return (f"{name} is only {feat.shape[-1]}x{feat.shape[-2]} cells for the whole image: compare its blobs with "
                f"the sharp structure of {next(iter(ins.backbone))}.")
    if step == 2:
        first, last = ins.pyramid_before_cem[levels[0]], ins.pyramid_before_cem[levels[-1]]
        ratio = first.shape[-1] * first.shape[-2] / max(1, last.shape[-1] * last.shape[-2])
        return (f"{levels[0]} has {ratio:.0f}x as many cells as {levels[-1]}: only the fine levels can place "
                "objects a few pixels apart.")
    if step == 3:
        if not ins.cem_alpha:
            return "without CEM the fine levels see only what the top-down FPN path gives them."
        lv, a = max(ins.cem_alpha.items(), key=lambda kv: abs(kv[1]))
        return (f"the largest |α| is on {lv} ({a:.3g}); the fused term F is smooth: it carries where the context is, "
                "not object detail.")
    if step == 4:
        if not ins.gates:
            return "without FBSM every cell of a level is weighted alike, background included."
        lv, m = next(iter(ins.gates.items()))
        m = _np(m).astype(float)
        target = ins.gate_targets.get(lv)
        if target is not None and float(_np(target).sum()) > 0 and m.sum() > 0:
            share = float((m * _np(target)).sum() / m.sum())
            return (f"on {lv}, {100 * share:.1f} % of the gate's mass lies on box cells, which are "
                    f"{100 * float(_np(target).mean()):.1f} % of the map: the gate concentrates on objects if the "
                    "first number is much larger.")
        return f"on {lv} the gate opens more than half on {100 * float((m > 0.5).mean()):.1f} % of the cells."
    if step == 5:
        if not ins.kernels:
            return "a static convolution applies one kernel everywhere: nothing here varies per pixel."
        layer, km = next(iter(ins.kernels.items()))
        if km.entropy is None:
            return f"{layer}'s kernels differ per pixel; the Kernels page shows them one by one."
        e = _np(km.entropy).mean(0)
        k2 = int(km.dynamic.shape[1])
        k = int(round(k2 ** 0.5))
        return (f"on {layer} the kernel entropy runs from {float(e.min()):.2f} to {float(e.max()):.2f} nats (a uniform "
                f"{k}x{k} kernel has {np.log(k2):.2f}): lower means a sharper, more selective kernel.")
    if step == 6:
        if not score_maps:
            return "each level scores every cell; tiny objects can only light up the fine ones."
        lv, best = max(((k, float(np.max(v))) for k, v in score_maps.items()), key=lambda kv: kv[1])
        return f"the highest score on this image is {best:.2f}, on {lv}."
    if step == 7:
        if ins.assignment is None:
            return "with ground truth, this step shows which priors each box trains."
        acc = ins.assignment.accounting.to_dict()
        coarse = sum(v for k, v in acc.get("positives_per_level", {}).items() if k in levels[-2:])
        return (f"{len(acc['starved'])} of {acc['num_gt']} boxes get no regular positive (at most low-IoU fallback "
                f"matches: starved), and {levels[-2]}/{levels[-1]} get {coarse} positives from this image.")
    cands = 0 if not score_maps else int(sum((np.asarray(v) >= score).sum() for v in score_maps.values()))
    kept = len(ins.detections["boxes"])
    return (f"{_count(cands, 'cell scores', 'cells score')} above {score:.2f}; after NMS "
            f"{_count(kept, 'detection remains', 'detections remain')}.")


def _count(n: int, one: str, many: str) -> str:
    """``n`` with its words in the singular or the plural: "1 cell scores", "3 cells score"."""
    return f"{n} {one if n == 1 else many}"
