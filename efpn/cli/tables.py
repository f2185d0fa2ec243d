"""Markdown tables and model-card labels shared by the sections of ``efpn report``."""

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
    """A run's training budget as one label: planned epochs, batch size and image size. A best-epoch card carries
    the epoch it was saved at in ``epochs``; the budget is the run's planned ``training.epochs`` when it is there."""
    t = card.get("training") or {}
    epochs = t.get("epochs", card.get("epochs", "?"))
    return f"{epochs} ep x b{t.get('batch_size', '?')} @ {card.get('image_size', '?')} px"
