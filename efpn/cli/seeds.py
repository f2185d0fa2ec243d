"""``efpn report`` section 5: the headline comparisons and the single-part ablations over seeds.

Reads the finished training runs (each run's last epoch), groups them by data, budget and preset, and says whether
a model beats its baseline beyond the spread of seeds (:func:`seed_verdict`).
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from efpn.cli.tables import card_budget as _budget
from efpn.cli.tables import card_dataset as _dataset
from efpn.cli.tables import md_table as _md_table

#: The comparisons both papers headline, then the single-part ablations: (model, its baseline) presets, compared on
#: the same data and budget over seeds.
SEED_COMPARISONS: tuple[tuple[str, str], ...] = (
    ("efpn_bs_mv2", "fpn_mv2"), ("efpn_mv2", "fpn_mv2"), ("yolov8n_sgdm", "yolov8n"), ("yolov8n_rdconv", "yolov8n"),
    ("fpn_mv2_cem", "fpn_mv2"), ("fpn_mv2_fbsm", "fpn_mv2"), ("fpn_mv2_dcloss", "fpn_mv2"),
    ("efpn_bs_r18", "fpn_r18"), ("yolov5n_sgdm", "yolov5n"), ("yolov8n_sgdm_lite", "yolov8n"),
    ("yolov8n_sgdm_full", "yolov8n"), ("yolov8n_sgdm", "yolov8n_sgdm_full"),
)
#: Seeds a side needs before a comparison gets a verdict.
MIN_SEEDS = 3
#: Metrics compared over seeds.
SEED_METRICS = ("AP", "AP50", "AP_vt", "AP_t")


def seed_runs(records: dict[str, dict]) -> dict[tuple[str, str, str], dict[int, dict]]:
    """The complete training runs among ``records`` (:func:`efpn.cli.records.gather_runs`), by (dataset, budget,
    preset) and seed: each run's *last-epoch* card, so no run's number is an epoch picked on the split it is scored
    on. A run stopped before its last epoch is left out (it is not the same budget); of two runs with one seed, the
    first by name."""
    from efpn.cli.records import record_card, run_complete

    out: dict[tuple[str, str, str], dict[int, dict]] = {}
    for _, record in sorted(records.items()):
        if not record.get("last"):
            continue
        card = record_card(record, "last")
        seed = (card.get("training") or {}).get("seed")
        if seed is None or not run_complete(card):
            continue
        out.setdefault((_dataset(card), _budget(card), str(card.get("preset"))), {}).setdefault(int(seed), card)
    return out


def seed_stats(values: Sequence[float]) -> dict[str, float | int]:
    """n, mean, sample standard deviation (0 for one value), min and max of ``values``."""
    n = len(values)
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def seed_verdict(model: Sequence[float], base: Sequence[float], min_seeds: int = MIN_SEEDS) -> str:
    """Whether ``model`` beats ``base`` beyond the spread of seeds: "supported" when every seed of the model is
    above every seed of the baseline, "reversed" when every one is below, "not supported" when the ranges overlap,
    and "too few seeds" while either side has fewer than ``min_seeds``."""
    if len(model) < min_seeds or len(base) < min_seeds:
        return f"too few seeds ({len(model)} vs {len(base)}; {min_seeds} needed)"
    if min(model) > max(base):
        return "supported"
    if max(model) < min(base):
        return "reversed"
    return "not supported (the seeds' ranges overlap)"


#: Budget-label suffixes of training-recipe variants (:func:`efpn.cli.tables.card_budget`): a run of a variant is
#: compared over seeds with the same preset trained without it, on the budget the label has before the suffix.
RECIPE_VARIANTS = (", zoom ",)


def _variant(budget: str) -> str | None:
    """What a recipe-variant budget adds to its plain budget ("zoom in 1.5"), None for a plain budget."""
    for marker in RECIPE_VARIANTS:
        if marker in budget:
            return budget[budget.index(marker):].lstrip(", ")
    return None


def _pairs(groups: dict[tuple[str, str, str], dict[int, dict]]
           ) -> list[tuple[str, str, str, dict[int, dict], str, str, dict[int, dict]]]:
    """(data, budget, model label, its runs, baseline label, baseline budget, its runs) of every comparison with runs
    on both sides: :data:`SEED_COMPARISONS` on one budget, then each recipe variant against its preset's plain
    budget."""
    out = []
    for (ds, budget, preset), runs in sorted(groups.items()):
        for model, base_preset in SEED_COMPARISONS:
            base = groups.get((ds, budget, base_preset))
            if preset == model and base:
                out.append((ds, budget, model, runs, base_preset, budget, base))
    for (ds, budget, preset), runs in sorted(groups.items()):
        variant = _variant(budget)
        if variant is None:
            continue
        plain = budget[: budget.index(variant)].rstrip(", ")
        base = groups.get((ds, plain, preset))
        if base:  # labelled by what the variant adds: "fpn_mv2 + zoom in 1.5"
            out.append((ds, budget, f"{preset} + {variant}", runs, preset, plain, base))
    return out


def seed_comparisons(groups: dict[tuple[str, str, str], dict[int, dict]],
                     metrics: Sequence[str] = SEED_METRICS) -> list[dict[str, object]]:
    """Per dataset and budget, each of :data:`SEED_COMPARISONS` with runs on both sides, then each training-recipe
    variant (:data:`RECIPE_VARIANTS`, e.g. a zoomed run as ``fpn_mv2 + zoom in 1.5``) against the same preset's plain
    budget; per metric: both sides' :func:`seed_stats`, the mean paired difference over the seeds both have, and
    :func:`seed_verdict`."""
    out: list[dict[str, object]] = []
    for ds, budget, model, runs, base_preset, base_budget, base in _pairs(groups):
        for metric in metrics:
            a = {s: c["metrics"][metric] for s, c in runs.items()
                 if isinstance(c["metrics"].get(metric), int | float)}
            b = {s: c["metrics"][metric] for s, c in base.items()
                 if isinstance(c["metrics"].get(metric), int | float)}
            if not a or not b:
                continue
            shared = sorted(set(a) & set(b))
            paired = [a[s] - b[s] for s in shared]
            out.append({"data": ds, "budget": budget, "model": model, "baseline": base_preset,
                        "baseline_budget": base_budget, "metric": metric,
                        "model_seeds": sorted(a), "baseline_seeds": sorted(b),
                        "model_values": [a[s] for s in sorted(a)], "baseline_values": [b[s] for s in sorted(b)],
                        "model_stats": seed_stats(list(a.values())), "baseline_stats": seed_stats(list(b.values())),
                        "paired_delta": seed_stats(paired) if paired else None,
                        "verdict": seed_verdict(list(a.values()), list(b.values()))})
    return out


def _spread(st: dict) -> str:
    return f"{st['mean']:.3f} ± {st['sd']:.3f} [{st['min']:.3f}, {st['max']:.3f}] (n={st['n']})"


def seed_section(comparisons: list[dict[str, object]]) -> list[str]:
    """Markdown: one table row per comparison and metric, then one sentence per comparison on AP."""
    if not comparisons:
        return []
    rows = []
    for c in comparisons:
        d = c["paired_delta"]
        rows.append([c["data"], c["budget"], f"`{c['model']}` vs `{c['baseline']}`", c["metric"],
                     _spread(c["model_stats"]),
                     _spread(c["baseline_stats"]),
                     "–" if d is None else f"{d['mean']:+.3f} [{d['min']:+.3f}, {d['max']:+.3f}]", c["verdict"]])
    md = [_md_table(["data", "budget (the model's)", "comparison", "metric", "model: mean ± sd [min, max]",
                     "baseline: mean ± sd [min, max]",
                     "Δ same seed: mean [min, max]", "verdict"], rows), "",
          f"Each run's last epoch (no epoch picked on the validation split). A difference is **supported** only when "
          f"every seed of the model scores above every seed of its baseline (the ranges do not overlap), with at "
          f"least {MIN_SEEDS} seeds a side; sd is the sample standard deviation over seeds. A row `preset + zoom ...` "
          f"compares a training-recipe variant (zoomed training tiles) with the same preset trained without it.", ""]
    for c in comparisons:
        if c["metric"] != "AP":
            continue
        m, b = c["model_stats"], c["baseline_stats"]
        seeds = "seed" if m["n"] == 1 else "seeds"
        md.append(f"- {c['data']} ({c['budget']}): `{c['model']}` {m['mean']:.3f} ± {m['sd']:.3f} AP over "
                  f"{m['n']} {seeds} against `{c['baseline']}` {b['mean']:.3f} ± {b['sd']:.3f} over {b['n']}: "
                  f"{c['verdict']}.")
    return [*md, ""]


_SEED_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def seed_figure(comparisons: list[dict[str, object]], metric: str = "AP") -> go.Figure:
    """Every seed's ``metric`` as a dot, per model and baseline of each comparison, with each side's mean."""
    fig = go.Figure()
    done: set[tuple[str, str, str]] = set()
    labels: set[str] = set()
    for c in (c for c in comparisons if c["metric"] == metric):
        for side in ("model", "baseline"):
            name, values = str(c[side]), list(c[f"{side}_values"])  # type: ignore[call-overload]
            budget = str(c["budget"] if side == "model" else c.get("baseline_budget", c["budget"]))
            variant = _variant(budget)
            if variant is not None:  # "fpn_mv2 + zoom in 1.5" and fpn_mv2 on the zoomed budget: the same runs
                name = name.split(f" + {variant}")[0]
            key = (str(c["data"]), budget, name)
            if key in done:  # runs shared by several comparisons are drawn once
                continue
            done.add(key)
            label = f"{c['data']} {name}" + (f" ({variant})" if variant is not None else "")
            if label in labels:  # the same preset on another budget of this data
                label += f" [{budget}]"
            labels.add(label)
            colour = _SEED_COLOURS[(len(done) - 1) % len(_SEED_COLOURS)]  # one colour per preset: dots and mean
            fig.add_scatter(x=[label] * len(values), y=values, mode="markers", name=f"{label} (seeds)",
                            marker=dict(size=10, opacity=0.7, color=colour), showlegend=False,
                            text=[f"seed {s}" for s in c[f"{side}_seeds"]],  # type: ignore[attr-defined]
                            hovertemplate="%{x} %{text}: %{y:.3f}<extra></extra>")
            fig.add_scatter(x=[label], y=[sum(values) / len(values)], mode="markers", showlegend=False,
                            marker=dict(symbol="line-ew-open", size=30, color=colour, line=dict(width=3, color=colour)),
                            name=f"{label} mean",
                            hovertemplate="%{x} mean: %{y:.3f}<extra></extra>")
    fig.update_layout(title=f"{metric} per seed (dots) and its mean (bar), last epoch of each run",
                      yaxis_title=metric, xaxis_title="data and preset", height=420, width=900)
    return fig
