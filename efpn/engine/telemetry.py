"""Training telemetry: what the loss saw each epoch, and where the run's logs go.

:class:`EpochTelemetry` sums, over one epoch's batches and steps, the internals that explain *why* a tiny-object
detector learns or not (SPEC §1-§4): positives per level (and per level x size bucket), the starved-GT rate, the
share of fallback (low-quality) positives, the FBSM gate mass inside GT boxes, the DCLoss bucket statistics, and
the gradient norm reaching the p5/p6 output convolutions. Its :meth:`EpochTelemetry.summary` is one line of
``telemetry.jsonl``.

:class:`RunLogger` writes the run's logs (rank 0 only): ``metrics.csv`` (one row per logged step and per epoch),
TensorBoard event files under ``tb/`` and ``telemetry.jsonl`` (one JSON object per epoch).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from efpn.models.criterion import CriterionStats
from efpn.vocab import BUCKETS

#: CSV columns before the loss parts (which depend on the head family) and after them.
CSV_HEAD: tuple[str, ...] = ("kind", "epoch", "step", "lr", "loss")
CSV_TAIL: tuple[str, ...] = (
    "grad_norm", "img_per_s", "skipped", "positives_per_image", "starved_rate", "fallback_share",
    "val_AP", "val_AP50", "val_AP75", "val_AP_vt", "val_AP_t", "val_AP_s", "val_AP_m", "wall_time_s",
)  # fmt: skip


def finite_or_none(x: Any) -> Any:
    """``x`` with every non-finite float (recursively in dicts and lists) replaced by None: JSON-safe."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_or_none(v) for v in x]
    return x


def _add(sums: dict[str, float], key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + float(value)


def read_jsonl_rows(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The JSON-object rows of a JSON-lines file and the 1-based numbers of the lines that are not one: a run killed
    mid-write leaves its last line cut short, and that must not make the whole telemetry unreadable."""
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append(number)
    return rows, bad


class EpochTelemetry:
    """Additive accumulator of one epoch's training internals.

    Everything lives in one flat dict of sums (:attr:`sums`, ``str -> float``), so the state is plain data
    (saved with the training state for a mid-epoch resume) and ranks combine by adding their dicts
    (:func:`efpn.engine.distributed.gather_sum`). Key families: ``loss.{name}`` / ``batches``; ``images``;
    ``pos.{level}``, ``fallback.{level}``, ``pos.{level}.{bucket}``; ``gt``, ``starved``; ``gate.{level}`` /
    ``gate_n.{level}``; ``grad.{level}`` / ``grad_n``; ``grad_norm``; ``skipped``.
    """

    def __init__(self, sums: Mapping[str, float] | None = None):
        self.sums: dict[str, float] = dict(sums or {})
        #: the latest DCLoss statistics (running EMAs inside the loss: a snapshot, not a sum)
        self.dcloss: dict[str, Any] = {}

    def add_batch(self, losses: Mapping[str, float], stats: CriterionStats, num_images: int) -> None:
        """One micro-batch: its loss parts (floats), the criterion's statistics and its number of images."""
        s = self.sums
        _add(s, "batches", 1)
        _add(s, "images", num_images)
        for name, value in losses.items():
            _add(s, f"loss.{name}", value)
        acc = stats.accounting
        if acc is not None:
            for lv in acc.levels:
                _add(s, f"pos.{lv}", acc.positives_per_level.get(lv, 0))
                _add(s, f"fallback.{lv}", acc.fallback_per_level.get(lv, 0))
                for b in BUCKETS:
                    _add(s, f"pos.{lv}.{b}", acc.per_level_bucket.get(lv, {}).get(b, 0))
            _add(s, "gt", acc.num_gt)
            _add(s, "starved", len(acc.starved))
        for lv, mass in stats.gate_mass.items():
            if math.isfinite(mass):
                _add(s, f"gate.{lv}", mass)
                _add(s, f"gate_n.{lv}", 1)
        if stats.dcloss:
            self.dcloss = dict(stats.dcloss)

    def add_step(self, grad_norms: Mapping[str, float], grad_norm: float) -> None:
        """One optimizer step: ‖grad‖ reaching each high level's output conv, and the total gradient norm."""
        s = self.sums
        _add(s, "grad_n", 1)
        if math.isfinite(grad_norm):
            _add(s, "grad_norm", grad_norm)
        for lv, g in grad_norms.items():
            _add(s, f"grad.{lv}", g)

    def add_skipped(self) -> None:
        """One optimizer step skipped because its loss (or gradient) was not finite."""
        _add(self.sums, "skipped", 1)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "dcloss": dict(self.dcloss)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums = {str(k): float(v) for k, v in dict(state.get("sums", {})).items()}
        self.dcloss = dict(state.get("dcloss", {}))

    def summary(self) -> dict[str, Any]:
        """The epoch as JSON-ready data (means over batches/steps; shares in [0, 1]; None where undefined).

        ``{"images", "loss": {name: mean}, "loss_total", "positives_per_level": {lv: n},
        "positives_per_image": {lv: n / image}, "positives_per_level_bucket": {lv: {bucket: n}},
        "fallback_per_level": {lv: n}, "fallback_share", "num_gt", "starved", "starved_rate",
        "gate_mass": {lv: mean}, "dcloss": {"G", "N", "w", ...}, "grad_norm_high": {lv: mean},
        "grad_norm", "skipped"}``
        """
        s = self.sums
        batches = s.get("batches", 0.0)
        images = s.get("images", 0.0)
        loss = {k[5:]: v / batches for k, v in s.items() if k.startswith("loss.") and batches}
        levels = sorted({k.split(".")[1] for k in s if k.startswith("pos.")}, key=lambda lv: int(lv[1:]))
        pos = {lv: int(s.get(f"pos.{lv}", 0)) for lv in levels}
        fallback = {lv: int(s.get(f"fallback.{lv}", 0)) for lv in levels}
        total_pos = sum(pos.values())
        gt = int(s.get("gt", 0))
        steps = s.get("grad_n", 0.0)
        grad_high = {
            k[5:]: v / steps for k, v in s.items() if k.startswith("grad.") and steps
        }
        gate = {
            k[5:]: v / s[f"gate_n.{k[5:]}"] for k, v in s.items() if k.startswith("gate.") and s.get(f"gate_n.{k[5:]}")
        }
        out = {
            "images": int(images),
            "loss": loss,
            "loss_total": sum(loss.values()) if loss else None,
            "positives_per_level": pos,
            "positives_per_image": {lv: n / images for lv, n in pos.items()} if images else {},
            "positives_per_level_bucket": {lv: {b: int(s.get(f"pos.{lv}.{b}", 0)) for b in BUCKETS} for lv in levels},
            "fallback_per_level": fallback,
            "fallback_share": sum(fallback.values()) / total_pos if total_pos else None,
            "num_gt": gt,
            "starved": int(s.get("starved", 0)),
            "starved_rate": s.get("starved", 0.0) / gt if gt else None,
            "gate_mass": gate,
            "dcloss": self.dcloss,
            "grad_norm_high": grad_high,
            "grad_norm": s.get("grad_norm", 0.0) / steps if steps else None,
            "skipped": int(s.get("skipped", 0)),
        }
        return finite_or_none(out)


class RunLogger:
    """The run's log files, written by rank 0 only (``enabled=False`` makes every call a no-op).

    * ``metrics.csv``: one row per logged step (``kind=step``) and per epoch (``kind=epoch``, or
      ``partial_epoch`` for an epoch cut short by ``max_steps``); columns
      :data:`CSV_HEAD` + the loss parts (``loss_*``, fixed by the first row) + :data:`CSV_TAIL`.
    * ``tb/``: TensorBoard scalars (``train/*`` per logged step, ``epoch/*``, ``val/*``, ``telemetry/*``).
    * ``telemetry.jsonl``: one JSON object per epoch (:meth:`EpochTelemetry.summary` + lr, img/s, validation).

    ``resume_step``: when continuing a run, rows and lines written after that step by the interrupted run
    are dropped first (and TensorBoard purges them), so the logs read as one uninterrupted run.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        self.jsonl_path = self.run_dir / "telemetry.jsonl"
        self._columns: list[str] | None = None
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate(resume_step)
        if self.csv_path.is_file():
            with self.csv_path.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            self._columns = list(header) if header else None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events the interrupted run wrote after the checkpoint
            purge = resume_step + 1 if resume_step is not None else None
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    def _truncate(self, step: int) -> None:
        if self.csv_path.is_file():
            with self.csv_path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            if rows:
                i = rows[0].index("step") if "step" in rows[0] else None
                # rows after the checkpoint, and the record of the epoch it interrupted (logged again, complete)
                keep = [rows[0]] + [r for r in rows[1:] if i is None or (
                    r[i].isdigit() and int(r[i]) <= step and r[0] != "partial_epoch")]
                with self.csv_path.open("w", newline="", encoding="utf-8") as f:
                    csv.writer(f).writerows(keep)
        if self.jsonl_path.is_file():
            records, _ = read_jsonl_rows(self.jsonl_path)  # a line cut short by the kill is dropped, not fatal
            keep_lines = [json.dumps(r) for r in records if r.get("step", 0) <= step and not r.get("partial")]
            self.jsonl_path.write_text("".join(ln + "\n" for ln in keep_lines), encoding="utf-8")

    def _write_csv(self, row: Mapping[str, Any]) -> None:
        if self._columns is None:
            losses = sorted(k for k in row if k.startswith("loss_"))
            self._columns = [*CSV_HEAD, *losses, *CSV_TAIL]
            with self.csv_path.open("w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(self._columns)
        with self.csv_path.open("a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self._columns, extrasaction="ignore", restval="")
            w.writerow({k: _fmt(v) for k, v in row.items()})

    def log_step(self, epoch: int, step: int, values: Mapping[str, float]) -> None:
        """A logged training step: ``values`` holds ``lr``, ``loss``, ``loss_*``, ``grad_norm``, ``img_per_s``..."""
        if not self.enabled:
            return
        self._write_csv({"kind": "step", "epoch": epoch, "step": step, **values})
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def log_epoch(self, epoch: int, step: int, record: Mapping[str, Any]) -> None:
        """An epoch: ``record`` is the telemetry summary plus ``lr``, ``img_per_s``, ``wall_time_s`` and, when
        validated, ``val`` (an :meth:`EvalResult.to_json_dict`)."""
        if not self.enabled:
            return
        record = finite_or_none({"epoch": epoch, "step": step, **record})
        with self.jsonl_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        row: dict[str, Any] = {
            "kind": "partial_epoch" if record.get("partial") else "epoch", "epoch": epoch, "step": step,
            "lr": record.get("lr"), "loss": record.get("loss_total"),
            "grad_norm": record.get("grad_norm"), "img_per_s": record.get("img_per_s"),
            "skipped": record.get("skipped"), "starved_rate": record.get("starved_rate"),
            "fallback_share": record.get("fallback_share"), "wall_time_s": record.get("wall_time_s"),
            "positives_per_image": sum((record.get("positives_per_image") or {}).values()) or None,
        }  # fmt: skip
        for name, v in (record.get("loss") or {}).items():
            row[name if name.startswith("loss_") else f"loss_{name}"] = v
        val = record.get("val") or {}
        for k in ("AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m"):
            row[f"val_{k}"] = val.get(k)
        self._write_csv(row)
        if self._tb is not None:
            scalars = _flatten(
                {k: record.get(k) for k in ("loss", "loss_total", "lr", "img_per_s", "grad_norm", "starved_rate",
                                            "fallback_share", "skipped")},
                "epoch",
            )
            scalars.update(_flatten({k: v for k, v in val.items() if k.startswith(("AP", "AR"))}, "val"))
            scalars.update(_flatten({
                "positives_per_image": record.get("positives_per_image"),
                "gate_mass": record.get("gate_mass"),
                "grad_norm_high": record.get("grad_norm_high"),
                "dcloss": {k: v for k, v in (record.get("dcloss") or {}).items() if k in ("G", "N", "w")},
            }, "telemetry"))
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else "nan"
    return "" if v is None else v


def _flatten(d: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """Nested dict -> ``{prefix/a/b: float}`` for its finite numbers (TensorBoard tags)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        tag = f"{prefix}/{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, tag))
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[tag] = float(v)
    return out
