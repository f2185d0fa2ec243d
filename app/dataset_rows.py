"""The Dataset page's image table: one row per image with what its diagnosis found, sorted and filtered (pure: no
Streamlit, no model)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from efpn import BUCKETS, size_bucket
from efpn.explain import CAUSES

TINY = ("vt", "t")


def dataset_image_rows(records: Sequence[Any], diagnoses: Mapping[int, Any]) -> list[dict[str, Any]]:
    """One row per dataset image (efpn ImageRecords): file, objects, tiny objects and, for the diagnosed ones
    (``diagnoses``: image id -> ``efpn.explain.ImageDiagnosis``), found, missed, missed tiny and the commonest
    cause."""
    out = []
    for rec in records:
        boxes = np.asarray(rec.target_boxes()[0], dtype=np.float32).reshape(-1, 4)
        buckets = [BUCKETS[k] for k in size_bucket(torch.from_numpy(boxes)).tolist()]
        row: dict[str, Any] = {"id": int(rec.image_id), "file": rec.path.name if rec.path is not None else "?",
                               "objects": len(boxes), "tiny objects": sum(b in TINY for b in buckets)}
        diag = diagnoses.get(rec.image_id)
        if diag is not None:
            causes = [m.cause for m in diag.misses]
            row.update({"found": int(diag.matching.found.sum()), "missed": len(diag.misses),
                        "missed tiny": sum(m.bucket in TINY for m in diag.misses),
                        # the most frequent cause; a tie goes to the earlier stage of the rule (CAUSES order), so
                        # the same image always shows the same one
                        "main cause": max(CAUSES, key=lambda c: (causes.count(c), -CAUSES.index(c)))
                        if causes else ""})
        out.append(row)
    return out


def sort_dataset_rows(rows: Sequence[Mapping[str, Any]], how: str, only_missed_tiny: bool) -> list[dict[str, Any]]:
    """Rows of :func:`dataset_image_rows` ordered by ``how`` ("most missed tiny objects first", "most missed
    objects first" or "file name"), optionally only those with a missed tiny object."""
    out = [dict(r) for r in rows if not only_missed_tiny or r.get("missed tiny", 0) > 0]
    if how.startswith("most missed tiny"):
        out.sort(key=lambda r: (-r.get("missed tiny", 0), -r.get("missed", 0), r["file"]))
    elif how.startswith("most missed"):
        out.sort(key=lambda r: (-r.get("missed", 0), -r.get("missed tiny", 0), r["file"]))
    else:
        out.sort(key=lambda r: r["file"])
    return out
