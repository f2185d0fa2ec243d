"""Run records: what ``efpn report`` keeps of each finished training run, so the claims outlive the run folders.

A run folder holds weights and optimiser state (megabytes a run) on the machine that trained it and is not part of
the repository; the claims need only its cards and telemetry. ``efpn report --runs DIR`` copies those of every
complete run into ``RECORDS/RUN.json`` (``docs/claims/run_records/`` by default, tens of kilobytes a run) and
builds every section from the records, so a report regenerated after the folders are gone still has every seed. A
run folder that is present wins over its record of the same name, and its record is written again.

A record is ``{"run", "last", "best", "telemetry", "recorded", "note"}``: the run's last-epoch card (what the seed
comparisons use), its best-epoch card, its per-epoch telemetry rows, the time it was recorded and a free note (where
a record came from when that is not a run folder). Either card may be ``None`` in a record recovered from an older
report that kept only one of them; a record without a last-epoch card is left out of the seed comparisons.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from efpn.engine.telemetry import read_jsonl_rows

#: Where ``efpn report`` keeps the records, under its output folder.
RECORDS_DIR = "run_records"
#: How a record's cards name their source in the report's tables (rows measured in a training run, not shipped).
SOURCE_PREFIX = "runs"


def run_complete(last: dict) -> bool:
    """Whether a run's last-epoch card is the budget it names: its last epoch is its planned epochs."""
    planned = (last.get("training") or {}).get("epochs")
    return bool(last.get("metrics")) and planned is not None and last.get("epochs") == planned


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file (telemetry); ``[]`` when it is absent. Lines that are not a JSON object (the
    last one of a killed run, cut short) are skipped with a warning that names the file and the lines."""
    if not path.is_file():
        return []
    rows, bad = read_jsonl_rows(path)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        print(f"efpn: warning: {path}: line {shown} is not a JSON object (a run stopped mid-write?); skipped",
              file=sys.stderr)
    return rows


def read_run(run: Path) -> dict | None:
    """The record of the run folder ``run`` (``last.json``, ``best.json``, ``telemetry.jsonl``), or ``None`` while
    the run is incomplete (still training, or stopped before its planned epochs: not the budget its card names)."""
    from efpn.checkpoint import read_card

    if not (run / "last.json").is_file():
        return None
    last = read_card(run / "last.json")
    if not run_complete(last):
        return None
    best = read_card(run / "best.json") if (run / "best.json").is_file() else None
    return {"run": run.name, "last": last, "best": best if best and best.get("metrics") else None,
            "telemetry": read_jsonl(run / "telemetry.jsonl"), "recorded": time.strftime("%Y-%m-%d %H:%M:%S"),
            "note": f"from the run folder {run.name}", "folder": str(run.resolve())}


def _why_left_out(run: Path) -> str:
    """Why a run folder with a ``last.json`` has no record: it has not finished its epochs, or it finished without
    validation metrics (nothing to report)."""
    try:
        last = json.loads((run / "last.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        last = {}
    planned = (last.get("training") or {}).get("epochs") if isinstance(last, dict) else None
    if isinstance(last, dict) and planned is not None and last.get("epochs") == planned:
        return (f"the run {run.name} finished without validation metrics (trained with val_split none, or a val split "
                "without boxes), so it has nothing to report; it is left out")
    return (f"the run {run.name} has not finished its planned epochs (still training, or stopped early); it is left "
            f"out of the report until it does (efpn train --resume {run})")


def write_record(record: dict, records: Path) -> Path:
    """Write ``record`` as ``records/RUN.json`` (through a temporary file: a killed report leaves the old one)."""
    from efpn.files import atomic_write

    records.mkdir(parents=True, exist_ok=True)
    path = records / f"{record['run']}.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(_dumps(record)))
    return path


def _dumps(record: dict) -> str:
    """The record as JSON: its cards indented, one telemetry row per line (a 120-epoch run's rows would take
    thousands of lines indented, and a row is read as one)."""
    head = json.dumps({k: v for k, v in record.items() if k != "telemetry"}, indent=1, default=str)
    rows = ",\n  ".join(json.dumps(r, default=str) for r in record.get("telemetry") or [])
    return head[: head.rstrip().rfind("}")].rstrip() + (f',\n "telemetry": [\n  {rows}\n ]\n}}\n' if rows
                                                          else ',\n "telemetry": []\n}\n')


def load_records(records: Path) -> dict[str, dict]:
    """Every record under ``records``, by run name; a file that is not a record is named in a ValueError."""
    out: dict[str, dict] = {}
    for path in sorted(records.glob("*.json")) if records.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a run record ({e}); restore it from git or delete it") from None
        if not isinstance(record, dict) or not any(isinstance(record.get(k), dict) for k in ("last", "best")):
            raise ValueError(f"{path} is not a run record (no 'last' or 'best' card); restore it from git or delete "
                             "it")
        out[str(record.get("run") or path.stem)] = record
    return out


def gather_runs(runs: str | Path | None, records: str | Path | None) -> dict[str, dict]:
    """The records of every finished run: those kept under ``records``, then the complete runs found under ``runs``
    (each written to ``records`` as well, replacing a record of the same name). Incomplete runs are left out."""
    kept = load_records(Path(records)) if records else {}
    root = Path(runs) if runs else None
    for run in sorted(p for p in root.iterdir() if p.is_dir()) if root and root.is_dir() else []:
        try:
            record = read_run(run)
        except ValueError as e:  # CheckpointError: a damaged card leaves this run out, not the report
            print(f"efpn: warning: {e}; the run {run.name} is left out of the report", file=sys.stderr)
            continue
        if record is None:  # still training, stopped before its planned epochs (killed, --max-steps), or unscored
            if (run / "last.json").is_file():
                print(f"efpn: note: {_why_left_out(run)}", file=sys.stderr)
            continue
        key = run.name
        earlier = kept.get(key)
        if (earlier is not None and earlier.get("folder") not in (None, record["folder"])
                and _identity(earlier) != _identity(record)):
            # another run under the same folder name (another machine's runs folder, another seed): both are kept;
            # the same folder trained again replaces its record, as a record without a folder does
            key = f"{run.name}@{_identity(record)}"
            record = {**record, "run": key, "note": f"{record['note']} (another run of that name is recorded as "
                                                    f"{run.name})"}
            if key not in kept:
                print(f"efpn: note: the run {run} was trained with other settings than the recorded run "
                      f"{run.name}; it is recorded as {key}", file=sys.stderr)
        old = kept.get(key)
        if old is not None and {**old, "recorded": None} == {**record, "recorded": None}:
            continue  # unchanged since it was recorded: the file (and its time) stay as they are
        kept[key] = record
        if records:
            write_record(record, Path(records))
    return dict(sorted(kept.items()))


def _identity(record: dict) -> str:
    """A short digest of the settings a recorded run was trained with (its card's ``training``, less the fields a
    resume may change): two runs of one folder name with another seed, model or data differ in it, while a run
    recorded again after more epochs keeps it."""
    from efpn.config import RESUME_FREE

    card = record.get("last") or record.get("best") or {}
    training = {k: v for k, v in dict(card.get("training") or {}).items() if k not in RESUME_FREE}
    return hashlib.sha256(json.dumps(training, sort_keys=True, default=str).encode()).hexdigest()[:8]


def record_card(record: dict, which: str = "best") -> dict:
    """The record's ``which`` card (``"best"`` falls back to ``"last"``; a record with no last card gives its best)
    with the report's private keys: ``_source`` (``runs/RUN/best`` or ``runs/RUN/last``: measured, not shipped) and
    ``_telemetry``."""
    stem = "best" if (which == "best" and record.get("best")) or not record.get("last") else "last"
    card = dict(record[stem])
    card["_source"] = f"{SOURCE_PREFIX}/{record['run']}/{stem}"
    card["_telemetry"] = list(record.get("telemetry") or [])
    return card
