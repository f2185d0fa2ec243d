"""The shape of a model card's known fields, checked where a card is read (:func:`efpn.checkpoint.read_card`).

A card is JSON a person may edit. A known field of the wrong type (``"classes": 5``, ``"data": "sirst"``,
``"metrics": {"AP": [0.3]}``) used to pass the reader and fail later, far from the card, in whatever tool read
that field (the studio's every page, Compare's formatting, ``efpn report``). Checked once here, the card is
refused with the field, what it holds and what is expected; unknown fields stay free (tools add their own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: field -> (accepted JSON types, what to write instead); ``None`` (JSON null) is accepted for every field.
_TEXT = ((str,), "a string")
_COUNT = ((int,), "a whole number")
_OBJECT = ((dict,), "a JSON object ({...})")
_LIST = ((list,), "a JSON list ([...])")
FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    **dict.fromkeys(("name", "preset", "created", "weights", "weights_dtype", "checkpoint", "storage",
                     "torch_version", "efpn_version", "recipe"), _TEXT),
    **dict.fromkeys(("image_size", "num_parameters", "epochs", "steps"), _COUNT),
    **dict.fromkeys(("config", "pretrained", "data", "training", "hardware", "metrics", "metrics_fp32",
                     "telemetry", "storage_trials", "storage_trials_detail", "sanity", "nms_sweep"), _OBJECT),
    **dict.fromkeys(("classes", "val_image_ids"), _LIST),
}


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def card_field_problems(card: Mapping[str, Any]) -> list[str]:
    """What is wrong with the card's known fields, one sentence each (empty: nothing).

    Checked: the JSON type of every field in :data:`FIELDS`; ``classes`` holds strings; every ``AP*`` / ``AR*``
    entry of ``metrics`` and ``metrics_fp32`` is a number or null (they are formatted and plotted as numbers).
    """
    problems = []
    for key, (types, expected) in FIELDS.items():
        value = card.get(key)
        if value is None:
            continue
        if not isinstance(value, types) or (int in types and isinstance(value, bool)):
            problems.append(f"'{key}' is {_describe(value)}, expected {expected}")
    classes = card.get("classes")
    if isinstance(classes, list) and not all(isinstance(c, str) for c in classes):
        problems.append(f"'classes' must list class names as strings, got {_describe(classes)}")
    for key in ("metrics", "metrics_fp32"):
        metrics = card.get(key)
        if not isinstance(metrics, dict):
            continue
        bad = [k for k, v in metrics.items() if k.startswith(("AP", "AR")) and v is not None
               and (isinstance(v, bool) or not isinstance(v, int | float))]
        if bad:
            problems.append(f"'{key}' holds non-numbers under {', '.join(map(repr, bad[:4]))} (e.g. "
                            f"{_describe(metrics[bad[0]])}); AP and AR values are numbers or null")
    return problems
