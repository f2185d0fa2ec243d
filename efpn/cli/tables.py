"""Markdown tables and model-card labels shared by the sections of ``efpn report``, and the lines ``efpn val``
prints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; ``None`` reads "–", floats keep three decimals (three significant digits below 0.01)."""

    def fmt(v: object) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3g}" if 0 < abs(v) < 0.01 else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def card_dataset(card: dict) -> str:
    """The data a model card was trained on, by its YAML's stem (``"sirst"``); ``"?"`` when the card does not say."""
    data = card.get("data") or {}
    return Path(str(data.get("yaml") or data.get("dataset") or "?")).stem


def card_budget(card: dict) -> str:
    """A run's training budget as one label: planned epochs, batch size and image size (the training tile and the
    validation side when they differ), and the tiles' zoom when there is one. A best-epoch card carries the epoch it
    was saved at in ``epochs``; the budget is the run's planned ``training.epochs`` when it is there."""
    t = card.get("training") or {}
    epochs = t.get("epochs", card.get("epochs", "?"))
    train_side = t.get("image_size", card.get("image_size", "?"))
    eval_side = card.get("image_size", train_side)
    # trained on small native tiles, validated on whole images at another side: both are part of the budget
    sides = f"{train_side} px" if eval_side == train_side else f"{train_side} px tiles, val {eval_side} px"
    # scale augmentation changes what a run sees: a zoomed run is not another seed of the same budget
    zoom = [f"{k.replace('_', ' ')} {t[k]:g}" for k in ("zoom_in", "zoom_out") if t.get(k, 1.0) != 1.0]
    return f"{epochs} ep x b{t.get('batch_size', '?')} @ {sides}" + (f", {', '.join(zoom)}" if zoom else "")


#: The metrics ``efpn val`` prints on one line, in order (AI-TOD size splits after COCO's thresholds).
VAL_KEYS = ("AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "AR")


def metrics_line(metrics: dict, tag: str = "") -> str:
    """One line of :data:`VAL_KEYS` (``-`` where a split has no object), prefixed by ``tag``."""
    return tag + "  ".join(f"{k} {metrics[k]:.4f}" if isinstance(metrics.get(k), float) else f"{k} -"
                           for k in VAL_KEYS)


def per_class_lines(metrics: dict, limit: int = 80) -> list[str]:
    """A per-class AP / AP50 table (class names aligned) when the metrics hold more than one class, else nothing;
    at most ``limit`` rows, the rest counted."""
    ap, ap50 = metrics.get("per_class") or {}, metrics.get("per_class_AP50") or {}
    if len(ap) < 2:
        return []
    width = max(len(str(n)) for n in ap)

    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else "     -"

    rows = [f"  {'class':<{width}}  AP      AP50"]
    rows += [f"  {str(n):<{width}}  {cell(v)}  {cell(ap50.get(n))}" for n, v in list(ap.items())[:limit]]
    if len(ap) > limit:
        rows.append(f"  ... {len(ap) - limit} more classes in --json")
    return rows
