"""Matching detections to ground truth, and the missed object every page focuses on, kept per session.

The Detect page sets the matching (IoU, class-aware) and picks a missed object from its table; every other page
reads both from here, so a choice made once follows the user across pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from app import analyses
from app.state import Context, ImageItem, inspection
from efpn import BUCKET_LABELS, Detector, Inspection
from efpn.explain import ImageDiagnosis, MissDiagnosis

FOCUS = "focused_object"  # the missed object every page focuses on (a Focus)
MATCH = "match_settings"  # (IoU, class-aware) of detections <-> ground truth, set on the Detect page
DEFAULT_MATCH = (0.5, True)


def match_settings() -> tuple[float, bool]:
    """(IoU threshold, class-aware) for matching detections to ground truth: the Detect page's choice, kept outside
    its widgets so every page (and a return to Detect) uses the same."""
    iou, aware = st.session_state.get(MATCH, DEFAULT_MATCH)
    return float(iou), bool(aware)


def set_match_settings(iou: float, class_aware: bool) -> None:
    st.session_state[MATCH] = (float(iou), bool(class_aware))


def diagnosis(ctx: Context, model: Detector, image: ImageItem, ins: Inspection | None = None,
              sliced: tuple[int, float] | None = None, detections: dict[str, Any] | None = None
              ) -> ImageDiagnosis | None:
    """Found / missed / false alarms of the current image and the cause of every miss (cached with the inspection's
    key), or ``None`` when the image has no ground truth. ``sliced`` = (tile, overlap) with its ``detections``
    matches the sliced detections instead of the whole-image ones."""
    if ctx.gt is None or not len(ctx.gt.boxes):
        return None
    ins = ins if ins is not None else inspection(ctx, model, image)
    iou, aware = match_settings()
    return analyses.diagnose(model, ctx.ckpt_key, ins, image.digest, ctx.score, ctx.nms,
                             ctx.gt.for_model(model.num_classes), iou, aware, sliced,
                             detections if sliced is not None else None, ctx.gt.ignore_key())


@dataclass(frozen=True)
class Focus:
    """The object every page focuses on: a ground-truth box of one image (its pixels), chosen among the misses."""

    digest: str
    gt_index: int
    box: tuple[float, float, float, float]
    label: int

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


def set_focus(digest: str, gt_index: int, box: Any, label: int) -> None:
    st.session_state[FOCUS] = Focus(digest, int(gt_index), tuple(round(float(v), 2) for v in box), int(label))


def clear_focus() -> None:
    st.session_state.pop(FOCUS, None)


def focus(ctx: Context) -> Focus | None:
    """The focused object when it belongs to the current image and its ground truth still holds that box."""
    f = st.session_state.get(FOCUS)
    if not isinstance(f, Focus) or ctx.image is None or ctx.gt is None or f.digest != ctx.image.digest:
        return None
    if not 0 <= f.gt_index < len(ctx.gt.boxes):
        return None
    if not np.allclose(np.asarray(ctx.gt.boxes[f.gt_index], dtype=float), f.box, atol=0.01):
        return None
    return f


def focused_miss(ctx: Context, model: Detector, image: ImageItem) -> tuple[Focus, MissDiagnosis | None] | None:
    """The focus and its diagnosis now (whole-image detections at the current thresholds and matching settings);
    the diagnosis is ``None`` when the object is found at these settings."""
    f = focus(ctx)
    if f is None:
        return None
    diag = diagnosis(ctx, model, image)
    miss = next((m for m in diag.misses if m.gt_index == f.gt_index), None) if diag is not None else None
    return f, miss


def class_name(ctx: Context, label: int) -> str:
    """A label's name: the model's classes, else the ground truth's."""
    names = ctx.class_names or (ctx.gt.class_names if ctx.gt is not None else [])
    return names[label] if 0 <= label < len(names) else str(label)


def gt_names(ctx: Context) -> list[str]:
    """The class name of every ground-truth box of the image (its annotation's names first)."""
    if ctx.gt is None:
        return []
    own = ctx.gt.class_names
    return [own[int(c)] if 0 <= int(c) < len(own) else class_name(ctx, int(c)) for c in ctx.gt.labels]


def miss_summary(miss: MissDiagnosis, name: str) -> str:
    """One line for a miss: what it is, its cause and the numbers the cause rests on."""
    where = ", ".join(f"{lv} {n}" for lv, n in miss.positives.items() if n) or "none"
    gates = ", ".join(f"{lv} {v:.2f}" for lv, v in miss.gates.items())
    best = (f"best covering prior {miss.best_score:.3f} on {miss.best_level}, IoU {miss.best_iou:.2f}"
            if miss.best_level else "no prior covers it")
    return (f"GT {miss.gt_index} · {name} · {miss.size:.1f} px ({BUCKET_LABELS[miss.bucket]}) — **{miss.cause}**: "
            f"{miss.why}. Positives: {where}" + (f" · gates at centre: {gates}" if gates else "") + f" · {best}.")


def focus_banner(ctx: Context, model: Detector, image: ImageItem, what: str) -> Focus | None:
    """On pages other than Detect: the focused missed object, its cause with the numbers, what this page shows of
    it (``what``) and a button to clear the focus. Returns the focus (``None``: nothing focused, page as usual)."""
    found = focused_miss(ctx, model, image)
    if found is None:
        return None
    f, miss = found
    with st.container(border=True):
        name = gt_names(ctx)[f.gt_index]
        if miss is not None:
            st.markdown(f":material/center_focus_strong: **Focused missed object** · {miss_summary(miss, name)}")
        else:
            st.markdown(f":material/center_focus_strong: **Focused object** · GT {f.gt_index} · {name}: found by the "
                        "whole-image detections at these settings.")
        st.caption(what + " Chosen in the Detect page's missed-objects table.")
        st.button("Clear focus", key="focus_clear", on_click=clear_focus, help="Back to the page's usual view.")
    return f


