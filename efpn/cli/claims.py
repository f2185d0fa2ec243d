"""``efpn report``: the measured claims of both papers, regenerated from data, model cards and telemetry.

A command, not library: it reads this repository's checkpoints and runs and writes docs/claims. The dataset-wide
assignment accounting it starts from is library (:mod:`efpn.explain.starvation`).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from efpn.cli.tables import card_budget as _budget
from efpn.cli.tables import card_dataset as _dataset
from efpn.cli.tables import md_table as _md_table
from efpn.explain.starvation import AssignmentReport, accounting_for_records
from efpn.vocab import BUCKETS


def assignment_claims(
    shared_data: str | Path, image_size: int = 640, visdrone_limit: int | None = 200
) -> dict[str, AssignmentReport]:
    """Accounting of the box-only assigners on the SAR ships (SSDD, all 928 images), the SIRST infrared targets
    (341 trainval images at their native ~320 px) and VisDrone (the first
    ``visdrone_limit`` annotation files: ~75 boxes per image make MaxIoU the slow part), when the data is present."""
    from efpn.data.coco import load_coco
    from efpn.data.masks import load_masks
    from efpn.data.visdrone import load_visdrone

    root = Path(shared_data)
    out: dict[str, AssignmentReport] = {}
    protocols = ("maxiou", "atss", "yolov5", "fcos")
    ssdd = root / "ssdd" / "annotations" / "instances_train.json"
    if ssdd.is_file():
        recs, _, _ = load_coco(ssdd, None)
        out["ssdd"] = AssignmentReport(str(ssdd), "train", image_size, len(recs),
                                       accounting_for_records(recs, protocols, image_size, progress=True))
    sirst = root / "sirst"
    if (sirst / "masks").is_dir():
        # infrared small targets at their native size (~320 px): the images are not resized up to 640
        recs, _, _ = load_masks(sirst / "images", sirst / "masks", sirst / "splits" / "trainval.txt")
        out["sirst"] = AssignmentReport(str(sirst), "trainval", 320, len(recs),
                                        accounting_for_records(recs, protocols, 320, progress=True))
    vd = root / "visdrone-annotations" / "train"
    if vd.is_dir():
        recs, _, _ = load_visdrone(vd)
        recs = recs[:visdrone_limit] if visdrone_limit else recs
        out["visdrone"] = AssignmentReport(str(vd), "train", image_size, len(recs),
                                           accounting_for_records(recs, protocols, image_size, progress=True))
    return out


def _assignment_section(reports: dict[str, AssignmentReport]) -> str:
    rows = []
    for ds, rep in reports.items():
        for p, acc in rep.accounting.items():
            d = acc.to_dict()
            high = d.get("zero_high_level_share", {})
            tiny = [i for i, b in enumerate(acc.gt_buckets) if b in ("vt", "t")]
            tiny_starved = len(set(tiny) & set(acc.starved)) / max(1, len(tiny))
            rows.append([ds, p, acc.num_gt, high.get("p5"), high.get("p6"), d.get("starved_rate"), tiny_starved,
                         " ".join(f"{lv}:{acc.positives_per_level[lv]}" for lv in acc.levels)])
    return _md_table(
        ["data", "assigner", "GTs", "zero on p5+", "zero on p6+", "starved", "starved (<16 px)", "positives per level"],
        rows,
    )


def _cards(checkpoints: Path) -> dict[str, dict]:
    from efpn.checkpoint import read_card
    from efpn.cli.records import read_jsonl

    out = {}
    for p in sorted(checkpoints.glob("*.safetensors")):
        try:
            card = read_card(p)
        except ValueError as e:  # CheckpointError: a missing or damaged card leaves this checkpoint out, not the report
            print(f"efpn: warning: {e}; {p.name} is left out of the report", file=sys.stderr)
            continue
        card["_source"] = f"{checkpoints.name}/{p.name}"
        card["_telemetry"] = read_jsonl(checkpoints / f"{card.get('name') or p.stem}.telemetry.jsonl")
        out[card.get("name") or p.stem] = card
    return out


def _run_cards(records: dict[str, dict]) -> dict[str, dict]:
    """Cards of the finished training runs (:func:`efpn.cli.records.gather_runs`), named by the run: each run's
    best-epoch card (else its last) with its telemetry; the ablation runs that are measured but not shipped."""
    from efpn.cli.records import record_card

    return {name: record_card(rec, "best") for name, rec in records.items()}


def _delta(a: object, b: object) -> float | None:
    return None if not isinstance(a, int | float) or not isinstance(b, int | float) else round(a - b, 4)


#: E-FPN-BS ablation rows, in order: preset -> what it adds to the ResNet-18 FPN baseline.
ABLATION = {"fpn_r18": "baseline (FPN + MaxIoU + focal)", "fpn_r18_cem": "+ CEM", "fpn_r18_fbsm": "+ FBSM",
            "fpn_r18_dcloss": "+ DCLoss", "efpn_bs_r18": "+ CEM + FBSM + DCLoss (E-FPN-BS)",
            "fpn_mv2": "MobileNetV2 baseline (FPN + ATSS + focal)", "fpn_mv2_cem": "MobileNetV2 + CEM",
            "fpn_mv2_fbsm": "MobileNetV2 + FBSM", "fpn_mv2_dcloss": "MobileNetV2 + DCLoss",
            "efpn_bs_mv2": "MobileNetV2 + CEM + FBSM + DCLoss (E-FPN-BS)"}
#: The baseline each ablation preset is compared with.
ABLATION_BASE = {p: ("fpn_mv2" if "mv2" in p else "fpn_r18") for p in ABLATION}
#: SGDM comparison rows: preset -> its baseline preset.
SGDM_ROWS = {"yolov8n": "yolov8n", "yolov8n_rdconv": "yolov8n", "yolov8n_sgdm": "yolov8n",
             "yolov8n_sgdm_lite": "yolov8n", "yolov8n_sgdm_full": "yolov8n", "yolov8n_rdconv_full": "yolov8n",
             "yolov5n": "yolov5n", "yolov5n_rdconv": "yolov5n", "yolov5n_sgdm": "yolov5n"}
_METRICS = ("AP", "AP50", "AP_vt", "AP_t", "AP_s", "AP_m")


def _pick(cards: dict[str, dict], presets: Sequence[str] | None = None) -> dict[tuple[str, str], dict]:
    """One card per (dataset, preset) among ``presets`` (default all): a shipped checkpoint over a run of the
    same preset and data."""
    out: dict[tuple[str, str], dict] = {}
    for card in cards.values():
        preset = card.get("preset") or ""
        if presets is not None and preset not in presets:
            continue
        key = (_dataset(card), preset)
        shipped = not str(card.get("_source", "")).startswith("runs")
        if key not in out or (shipped and str(out[key].get("_source", "")).startswith("runs")):
            out[key] = card
    return out


def _same_budget(cards: dict[str, dict], ds: str, preset: str, budget: str) -> dict | None:
    """The card of ``preset`` on ``ds`` trained on ``budget`` (a shipped one first), None when there is none: a
    difference against another budget would measure the budget, not the module."""
    same = [c for c in cards.values()
            if _dataset(c) == ds and (c.get("preset") or "") == preset and _budget(c) == budget]
    same.sort(key=lambda c: str(c.get("_source", "")).startswith("runs"))  # shipped first (False sorts first)
    return same[0] if same else None


def ablation_rows(cards: dict[str, dict]) -> list[list[object]]:
    """The E-FPN-BS ablation table: per dataset, each ablation preset with its metrics and Δ vs the baseline trained on
    the same budget (None when there is none). A same-budget baseline that is not the baseline's own row (another
    budget was picked for it) gets a row of its own just before the first row measured against it."""
    picked = _pick(cards, list(ABLATION))
    shown = {id(c) for c in picked.values()}
    rows = []

    def row(ds: str, what: str, c: dict, base: dict | None) -> list[object]:
        m, bm = c.get("metrics") or {}, (base or {}).get("metrics") or {}
        return [ds, what, c["_source"], _budget(c), *[m.get(k) for k in _METRICS], _delta(m.get("AP"), bm.get("AP")),
                _delta(m.get("AP_vt"), bm.get("AP_vt")), _delta(m.get("AP_t"), bm.get("AP_t"))]

    for ds in sorted({k[0] for k in picked}):
        for preset, what in ABLATION.items():
            c = picked.get((ds, preset))
            if c is None:
                continue
            base = _same_budget(cards, ds, ABLATION_BASE[preset], _budget(c))
            if base is not None and id(base) not in shown:
                shown.add(id(base))
                rows.append(row(ds, ABLATION[ABLATION_BASE[preset]], base, base))
            rows.append(row(ds, what, c, base))
    return rows


def sgdm_rows(cards: dict[str, dict]) -> list[list[object]]:
    """SGDM vs its baseline and plain RDConv: metrics, parameters, and Δ params / Δ AP vs the baseline trained on the
    same budget (None when there is none). A same-budget baseline that is not the baseline's own row gets a row of
    its own just before the first row measured against it, so every Δ has its reference in the table."""
    import efpn

    picked = _pick(cards, list(SGDM_ROWS))
    shown = {id(c) for c in picked.values()}
    params_of: dict[int, int] = {}

    def params(c: dict) -> int:
        if id(c) not in params_of:
            params_of[id(c)] = efpn.count_params(efpn.build(efpn.ModelConfig.from_dict(c["config"])))
        return params_of[id(c)]

    def row(ds: str, preset: str, c: dict, base: dict | None, structure: dict | None) -> list[object]:
        m, bm = c.get("metrics") or {}, (base or {}).get("metrics") or {}
        return [ds, preset, c["_source"], _budget(c), *[m.get(k) for k in _METRICS], params(c),
                None if structure is None else params(c) - params(structure), _delta(m.get("AP"), bm.get("AP")),
                _delta(m.get("AP_vt"), bm.get("AP_vt")), _delta(m.get("AP_t"), bm.get("AP_t"))]

    rows = []
    for (ds, preset), c in sorted(picked.items(), key=lambda kv: (kv[0][0], list(SGDM_ROWS).index(kv[0][1]))):
        base = _same_budget(cards, ds, SGDM_ROWS[preset], _budget(c))
        if base is not None and id(base) not in shown:
            shown.add(id(base))
            rows.append(row(ds, SGDM_ROWS[preset], base, base, base))
        structure = base or picked.get((ds, SGDM_ROWS[preset]))  # parameters added do not depend on the budget
        rows.append(row(ds, preset, c, base, structure))
    return rows


def _grad_figure(series: dict[str, list[dict]]) -> go.Figure:
    fig = go.Figure()
    for name, rows in series.items():
        for lv in ("p5", "p6"):
            xs = [r["epoch"] for r in rows if (r.get("grad_norm_high") or {}).get(lv) is not None]
            ys = [r["grad_norm_high"][lv] for r in rows if (r.get("grad_norm_high") or {}).get(lv) is not None]
            if xs:
                fig.add_scatter(x=xs, y=ys, mode="lines+markers", name=f"{name} {lv}")
    fig.update_layout(title="Gradient norm reaching the p5/p6 output convs during training",
                      xaxis_title="epoch", yaxis_title="‖∂L/∂θ‖ (mean over steps)", height=420, width=900)
    return fig


#: Below this |ΔAP| a difference is not read as an effect: one seed, a small validation split.
NOISE_AP = 0.01


def _signed(v: float) -> str:
    return f"{v:+.3f}"


def gradient_findings(measured: dict[str, dict]) -> list[str]:
    """Sentences comparing the mean p5 gradient of runs with CEM against the baseline run on the same data."""
    def mean(card: dict, level: str) -> float | None:
        vals = [(r.get("grad_norm_high") or {}).get(level) for r in card["_telemetry"]]
        vals = [v for v in vals if isinstance(v, int | float)]
        return sum(vals) / len(vals) if vals else None

    out = []
    by = _pick(measured, list(ABLATION))
    for (ds, preset), card in sorted(by.items()):
        base = by.get((ds, ABLATION_BASE[preset]))
        cem = (card.get("config") or {}).get("neck", {}).get("cem")
        if preset == ABLATION_BASE[preset] or base is None or not cem:
            continue
        parts = []
        for level in ("p5", "p6"):
            a, b = mean(card, level), mean(base, level)
            if a is not None and b:
                parts.append(f"{a / b:.2f}x on {level} ({a:.3g} vs {b:.3g})")
        if parts:
            out.append(f"On {ds}, `{preset}` sends the baseline's mean gradient norm (total loss, over training) "
                       f"times {' and '.join(parts)} to the output convs.")
    return out


def ablation_findings(rows: list[list[object]]) -> list[str]:
    """One sentence per ablation row against the baseline (Δ columns are the last three), noise-aware."""
    out = []
    for r in rows:
        what, d_ap, d_vt, d_t = r[1], r[-3], r[-2], r[-1]
        if not isinstance(d_ap, int | float) or "baseline" in str(what):  # a baseline against itself says nothing
            continue
        verdict = ("within noise" if abs(d_ap) < NOISE_AP else "better" if d_ap > 0 else "worse")
        out.append(f"{r[0]}: {what} changes AP by {_signed(d_ap)} ({verdict}; ΔAP_vt {_signed(d_vt or 0.0)}, "
                   f"ΔAP_t {_signed(d_t or 0.0)}).")
    return out


def dcloss_warmup_findings(measured: dict[str, dict]) -> list[str]:
    """Runs whose DCLoss never re-weighted anything: its warm-up (weights fixed at 1) outlasted the run."""
    out = []
    for (ds, preset), card in sorted(_pick(measured, list(ABLATION)).items()):
        loss = (card.get("config") or {}).get("loss") or {}
        steps = card.get("steps")
        if loss.get("dcloss") and isinstance(steps, int) and steps <= int(loss.get("dcloss_warmup") or 0):
            out.append(f"{ds}: `{preset}` trained {steps} steps, inside DCLoss's {loss['dcloss_warmup']}-step warm-up "
                       "(weights held at 1): DCLoss never re-weighted a loss, so this row measures the model without "
                       "it. A run longer than the warm-up is needed to measure DCLoss.")
    return out


def sgdm_findings(rows: list[list[object]]) -> list[str]:
    """SGDM and RDConv against their baseline: parameters added and AP change, noise-aware."""
    out = []
    for r in rows:
        preset, d_params, d_ap = str(r[1]), r[-4], r[-3]
        if preset in SGDM_ROWS.values() or not isinstance(d_ap, int | float):
            continue
        verdict = ("within noise" if abs(d_ap) < NOISE_AP else "better" if d_ap > 0 else "worse")
        out.append(f"{r[0]}: `{preset}` adds {int(d_params or 0):,} parameters and changes AP by {_signed(d_ap)} "
                   f"({verdict}).")
    return out


def dcloss_weight_rows(measured: dict[str, dict], every: int = 5) -> list[list[object]]:
    """Per run with DCLoss: its bucket weights at the first epoch after the warm-up and every ``every`` epochs."""
    rows: list[list[object]] = []
    seen: list[list[dict]] = []  # a shipped checkpoint and the run it came from carry the same telemetry: list it once
    for name, card in sorted(measured.items()):
        loss = (card.get("config") or {}).get("loss") or {}
        if not loss.get("dcloss"):
            continue
        tel = [r for r in card.get("_telemetry") or [] if (r.get("dcloss") or {}).get("w")]
        if tel in seen:
            continue
        seen.append(tel)
        moved = [r for r in tel if any(abs(v - 1.0) > 1e-6 for v in r["dcloss"]["w"].values())]
        picked = [r for i, r in enumerate(moved) if i == 0 or i % every == 0 or r is moved[-1]]
        for r in picked:
            w = r["dcloss"]["w"]
            rows.append([name, _dataset(card), loss.get("dcloss_warmup"), r.get("epoch"),
                         *[round(w[b], 3) if b in w else None for b in BUCKETS]])
    return rows


#: per-GT arrays of an assignment report: ``efpn assign --json`` keeps them; the claims keep the summaries (the
#: VisDrone arrays alone were 7 MB of the repository)
_PER_GT_KEYS = ("positives_per_gt", "regular_per_gt", "positives_per_gt_level", "gt_buckets", "gt_sizes", "starved")


def _assignment_summary(report: dict) -> dict:
    """An assignment report's dict without its per-GT arrays (per protocol, under ``protocols``)."""
    protocols = report.get("protocols", {})
    slim = {name: {k: v for k, v in proto.items() if k not in _PER_GT_KEYS} for name, proto in protocols.items()}
    return {**report, "protocols": slim}


#: The files a report writes (its charts by pattern), all replaced when a new report is published.
REPORT_FILES = ("README.md", "claims.json", "assignment_*.png", "grad_p5_p6.png", "seeds_ap.png",
                "assignment_*.html", "grad_p5_p6.html", "seeds_ap.html")  # (.html: write_figure without kaleido)


def claims_report(
    out_dir: str | Path,
    shared_data: str | Path = "../shared/data",
    checkpoints: str | Path = "checkpoints",
    visdrone_limit: int | None = 200,
    runs: str | Path | None = None,
    records: str | Path | None = None,
) -> Path:
    """Regenerate the measured claims of both papers into ``out_dir`` (README.md, claims.json, charts).

    1. per-level positive accounting of the baseline assigners on SSDD and VisDrone (when the data is present);
    2. gradient norm reaching p5/p6 over training, from the shipped checkpoints' telemetry;
    3. the E-FPN-BS ablation and 4. SGDM vs baseline vs plain RDConv, from the shipped checkpoints' cards and,
    with ``runs``, the cards of training runs there (ablation runs measured but not shipped; a shipped
    checkpoint wins over a run of the same preset and data). The complete runs under ``runs`` are recorded in
    ``records`` (default ``out_dir/run_records``, :mod:`efpn.cli.records`) and every record there is read, so the runs'
    numbers outlive their folders. Sections without their inputs say so instead of inventing numbers.
    """
    final = Path(out_dir)
    final.mkdir(parents=True, exist_ok=True)
    # written into a hidden folder inside out_dir first, then swapped in whole: a report that fails half-way
    # leaves the old one as it was, and no chart of the old report outlives the new one
    for stale in final.glob(".staging-*"):  # left by a report that was killed
        shutil.rmtree(stale, ignore_errors=True)
    from efpn.cli.records import RECORDS_DIR, gather_runs

    # records first and outside the staging folder: they only ever gain runs (a run present replaces its record)
    recorded = gather_runs(runs, final / RECORDS_DIR if records is None else records)
    out = Path(tempfile.mkdtemp(prefix=".staging-", dir=final))
    try:
        readme = _write_report(out, shared_data, checkpoints, visdrone_limit, recorded)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    written = {f.name for f in out.iterdir()}
    for f in out.iterdir():  # the new files first: the folder never lacks a README
        os.replace(f, final / f.name)
    out.rmdir()
    for pattern in REPORT_FILES:  # then the old report's files the new one did not write
        for old in final.glob(pattern):
            if old.name not in written:
                old.unlink()
    return final / readme.name


def _write_report(out: Path, shared_data: str | Path, checkpoints: str | Path, visdrone_limit: int | None,
                  records: dict[str, dict]) -> Path:
    """:func:`claims_report`'s files, written into ``out``; the README's path."""
    import json

    from efpn.cli.ship import ap_table_row
    from efpn.evaluation import write_figure

    ck = Path(checkpoints)
    cards = _cards(ck)
    measured = {**_run_cards(records), **cards}
    md = ["# The papers' claims, measured", "",
          "Regenerate with `efpn report --out docs/claims --runs runs`. Numbers come from the data and checkpoints "
          "on this machine and from the run records in `run_records/` beside this file (each finished training run's "
          "cards and telemetry, recorded by `--runs`; a record's `note` says where it came from); a section "
          "without its inputs says so.", ""]
    claims: dict[str, object] = {}

    md += ["## 1. Tiny objects get no positives on p5/p6 (E-FPN-BS's starting point)", ""]
    reports = assignment_claims(shared_data, visdrone_limit=visdrone_limit) if str(shared_data) else {}
    if reports:
        md += [_assignment_section(reports), ""]
        for ds, rep in reports.items():
            claims[f"assignment.{ds}"] = _assignment_summary(rep.to_dict())
            md.append(f"![{ds}]({write_figure(rep.figure(), out / f'assignment_{ds}.png').name})")
        md.append("")
    else:
        where = f"not found at {shared_data}" if str(shared_data) else "left out (--shared-data '')"
        md += [f"Shared data {where}; run `efpn assign` on your own data YAML.", ""]

    md += ["## 2. CEM routes gradient into p5/p6", "",
           "The training telemetry logs, per epoch, the mean norm of the gradient reaching the p5/p6 output convs "
           "from the *total* loss: large objects and background terms included, so on data with large objects "
           "the baseline's p5/p6 are not idle. `efpn.explain.gradient_reach` isolates the positives of the tiny "
           "objects on one image (zero in the plain FPN, non-zero with CEM; tested).", ""]
    unique = {c["_source"]: c for c in _pick(measured).values()}  # a shipped run is listed once, as shipped
    series = {n: c["_telemetry"] for n, c in measured.items()
              if c["_source"] in unique and any(r.get("grad_norm_high") for r in c["_telemetry"])}
    if series:
        rows = []
        for n, tel in series.items():
            first, last = tel[0].get("grad_norm_high") or {}, tel[-1].get("grad_norm_high") or {}
            rows.append([n, measured[n].get("preset"), _dataset(measured[n]), first.get("p5"), last.get("p5"),
                         last.get("p6"), len(tel)])
        md += [_md_table(["run", "preset", "data", "p5 grad (epoch 1)", "p5 grad (last epoch)", "p6 grad (last epoch)",
                          "epochs"], rows), ""]
        md.append(f"![grad]({write_figure(_grad_figure(series), out / 'grad_p5_p6.png').name})")
        md.append("")
        claims["gradient"] = {n: [r.get("grad_norm_high") for r in tel] for n, tel in series.items()}
        found = gradient_findings(measured)
        md += ([f"- {f}" for f in found] + [""]) if found else []
    else:
        md += ["No checkpoint or run carries training telemetry yet.", ""]

    header = ["checkpoint", "preset", "AP", "AP50", "AP_vt", "AP_t", "AP_s", "AP_m"]
    md += ["## 3. E-FPN-BS ablation (same data, same budget)", ""]
    abl = ablation_rows(measured)
    if abl:
        md += [_md_table(["data", "model", "source", "budget", *_METRICS, "ΔAP", "ΔAP_vt", "ΔAP_t"], abl), "",
               "Δ = against the baseline on the same data and budget. Rows from `runs/` are measured but not "
               "shipped (their cards and telemetry are kept in `run_records/` beside this report).", ""]
        claims["ablation"] = abl
        md += [f"- {f}" for f in ablation_findings(abl)] + [f"- {f}" for f in dcloss_warmup_findings(measured)]
        md += ["", f"|ΔAP| < {NOISE_AP} is read as noise here (one run a row, a small validation split); "
               "section 5 compares over seeds.", ""]
    else:
        md += ["No FPN baseline (ResNet-18 or MobileNetV2) checkpoints or runs are there yet.", ""]

    md += ["## 4. SGDM vs its baseline and plain RDConv", ""]
    sg = sgdm_rows(measured)
    if sg:
        md += [_md_table(["data", "preset", "source", "budget", *_METRICS, "params", "Δparams", "ΔAP", "ΔAP_vt",
                          "ΔAP_t"], sg), ""]
        claims["sgdm"] = sg
        md += [f"- {f}" for f in sgdm_findings(sg)] + [""]
    else:
        md += ["No YOLO checkpoints or runs are there yet.", ""]

    from efpn.cli.seeds import seed_comparisons, seed_figure, seed_runs, seed_section

    md += ["## 5. Over seeds: the headline comparisons and the ablations", ""]
    comparisons = seed_comparisons(seed_runs(records))
    if comparisons:
        md += seed_section(comparisons)
        md.append(f"![seeds]({write_figure(seed_figure(comparisons), out / 'seeds_ap.png').name})")
        md.append("")
        claims["seeds"] = comparisons
    else:
        md += ["No complete runs of a compared pair yet (pass `--runs` with the training runs).", ""]

    md += ["## 6. DCLoss re-weights the size buckets during training", ""]
    dc = dcloss_weight_rows(measured)
    if dc:
        md += [_md_table(["run", "data", "warm-up steps", "epoch", *BUCKETS], dc), "",
               "w per size bucket at the end of each listed epoch (1 during the warm-up; the bucket with more "
               "summed gradient per image gets less weight, by SPEC §4).", ""]
        claims["dcloss_weights"] = dc
    else:
        md += ["No run with DCLoss carries per-epoch weights yet.", ""]

    md += ["## All shipped checkpoints", ""]
    md += [_md_table(header, [ap_table_row(c) for c in cards.values()]) if cards else "None.", ""]
    claims["checkpoints"] = {n: c.get("metrics") for n, c in cards.items()}
    (out / "claims.json").write_text(json.dumps(claims, indent=1, default=str))
    readme = out / "README.md"
    readme.write_text("\n".join(md) + "\n")
    return readme
