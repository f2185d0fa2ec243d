"""Dataset-wide label-assignment accounting (what ``efpn assign`` prints): paper 1's starting point, on real boxes.

For every image of a split, the boxes are resized like the network input (long side = ``image_size``) and given
to box-only assigners with their published default priors; the per-image :class:`LevelAccounting` is merged into
one per protocol: positives per level, per level x size bucket, positives per GT, starved GTs, and the share of GTs
with zero positives on p5 and above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from efpn.det.accounting import LevelAccounting
from efpn.det.protocols import PROTOCOLS, assign_boxes
from efpn.infer.preprocess import network_hw
from efpn.vocab import BUCKETS

if TYPE_CHECKING:
    import plotly.graph_objects as go


@dataclass
class AssignmentReport:
    """Merged accounting per protocol over ``num_images`` images of one split."""

    data: str
    split: str
    image_size: int
    num_images: int
    accounting: dict[str, LevelAccounting]

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "split": self.split,
            "image_size": self.image_size,
            "num_images": self.num_images,
            "protocols": {p: acc.to_dict() for p, acc in self.accounting.items()},
        }

    def table(self) -> str:
        """Plain-text table: positives per level, starved rate, and zero-positive share on p5+ per protocol."""
        lines = [f"{self.data} [{self.split}]: {self.num_images} images, long side {self.image_size}px"]
        for p, acc in self.accounting.items():
            d = acc.to_dict()
            per = "  ".join(f"{lv} {acc.positives_per_level[lv]:>7}" for lv in acc.levels)
            high = d.get("zero_high_level_share", {})
            high_s = "  ".join(f"{k}:{v:.2f}" for k, v in high.items())
            lines.append(
                f"  {p:<7} GTs {acc.num_gt:>6}  starved {len(acc.starved):>6} ({d.get('starved_rate', 0):.1%})  "
                f"positives: {per}"
            )
            if high_s:
                lines.append(f"          share of GTs with zero positives on: {high_s}")
            by_bucket = "  ".join(
                f"{b}:{sum(acc.per_level_bucket[lv][b] for lv in acc.levels):>6}" for b in BUCKETS
            )
            lines.append(f"          positives by GT size bucket: {by_bucket}")
        return "\n".join(lines)

    def figure(self) -> go.Figure:
        """Bars of positives per level (one trace per protocol) and the starved rate per protocol."""
        from plotly.subplots import make_subplots  # plotting stays optional for scoring and training

        fig = make_subplots(rows=1, cols=2, subplot_titles=("positives per level", "starved GTs (share)"))
        for p, acc in self.accounting.items():
            fig.add_bar(x=acc.levels, y=[acc.positives_per_level[lv] for lv in acc.levels], name=p, row=1, col=1)
        fig.add_bar(
            x=list(self.accounting),
            y=[len(a.starved) / max(1, a.num_gt) for a in self.accounting.values()],
            name="starved", showlegend=False, row=1, col=2,
        )
        fig.update_layout(title=f"Label assignment on {Path(self.data).name} [{self.split}]", barmode="group",
                          height=420, width=1000)
        return fig

    def plot(self, path: str | Path) -> Path:
        from efpn.evaluation.figures import write_figure

        return write_figure(self.figure(), path)


def accounting_for_records(
    records: Sequence,
    protocols: Sequence[str],
    image_size: int = 640,
    progress: bool = False,
) -> dict[str, LevelAccounting]:
    """Merged accounting per protocol over :class:`~efpn.data.records.ImageRecord` s (target boxes, original px)."""
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"unknown assignment protocol(s) {bad}; choose from {list(PROTOCOLS)}")
    merged: dict[str, LevelAccounting | None] = dict.fromkeys(protocols)
    for rec in tqdm(records, desc="assigning", unit="img", disable=not progress):
        scale, hw = network_hw((rec.height, rec.width), image_size)
        target_boxes, _ = rec.target_boxes()  # crowd boxes are not targets
        boxes = torch.as_tensor(target_boxes, dtype=torch.float32).reshape(-1, 4) * scale
        for p in protocols:
            _, _, acc = assign_boxes(p, boxes, hw, scale=scale)
            merged[p] = acc if merged[p] is None else merged[p].merge(acc)
    return {p: a for p, a in merged.items() if a is not None}


def assignment_report(
    data_yaml: str | Path,
    split: str = "train",
    protocols: Sequence[str] = ("maxiou", "atss", "yolov5", "fcos"),
    image_size: int = 640,
    limit: int | None = None,
    progress: bool = False,
) -> AssignmentReport:
    """Load a split from a data YAML and account every box-only protocol over it (boxes only; no images read)."""
    from efpn.config.data import load_data_config
    from efpn.data.splits import load_split

    cfg = load_data_config(data_yaml)
    records, _, report = load_split(cfg, split)
    if progress:
        print(report.summary())
    if limit:
        records = records[:limit]
    if not records:
        raise ValueError(f"split {split!r} of {data_yaml} has no images (see the loader's report); nothing to account")
    acc = accounting_for_records(records, protocols, image_size, progress)
    return AssignmentReport(str(data_yaml), split, image_size, len(records), acc)
