"""Compare: two checkpoints on the same image, and their validation metrics from the model cards."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import analyses, charts, figures, focusing, loaders, state, views
from efpn import CheckpointError

ctx = state.context()
st.title("Compare")
st.caption("Two checkpoints side by side on the current image, with the same thresholds, and their validation "
           "metrics (AP by object size) from their model cards.")
state.require_model(ctx)
image = state.require_image(ctx)

options = [e["path"] for e in ctx.entries if "error" not in e] + list(st.session_state.get(state.UPLOADED_CKPTS, []))
if ctx.checkpoint and ctx.checkpoint not in options:
    options.insert(0, ctx.checkpoint)
names = state.checkpoint_labels(ctx.entries)
label = lambda p: names.get(p, Path(p).stem)  # noqa: E731
if len(options) < 2:
    st.info("Only one checkpoint is available; add another to checkpoints/ (or upload one in the sidebar) to compare.")
state.keep_valid("cmp_a", options)
state.keep_valid("cmp_b", options)
c1, c2 = st.columns(2)
a = c1.selectbox("Checkpoint A", options, index=options.index(ctx.checkpoint) if ctx.checkpoint in options else 0,
                 format_func=label, key="cmp_a")
# B opens on another checkpoint than A whenever there is one, first one with A's classes (e.g. a baseline trained
# on the same data), so the per-object comparison below means something
classes = {e["path"]: tuple(e.get("classes") or ()) for e in ctx.entries}
others = sorted((p for p in options if p != a), key=lambda p: classes.get(p, ()) != classes.get(a, ()))
b = c2.selectbox("Checkpoint B", options, index=options.index(others[0]) if others else 0, format_func=label,
                 key="cmp_b")

def _dataset(card: dict) -> str:
    """What a card says it was evaluated on."""
    data = card.get("data") or card.get("dataset") or "?"
    if isinstance(data, dict):
        return str(data.get("dataset") or data.get("yaml") or "?") + (f" ({data['val_split']})" if
                                                                     data.get("val_split") else "")
    return str(data)


results = {}
found_by: dict[str, dict] = {}  # checkpoint -> its detections on this image (original px)
class_lists: list[list[str]] = []  # each loaded checkpoint's classes, to know whether class indices compare
for col, path in ((c1, a), (c2, b)):
    with col:
        try:
            model = loaders.load_detector(path)
        except CheckpointError as e:
            st.error(f"{label(path)} cannot be loaded: {e}")
            continue
        key = loaders.checkpoint_key(path)
        try:
            det = analyses.predict_detections(model, key, image.rgb, image.digest, ctx.score, ctx.nms)
        except ValueError as e:  # e.g. a strip too elongated for one input of this checkpoint
            st.error(f"{label(path)} cannot run on this image: {e}")
            continue
        names_k = list(model.config.class_names) or [str(i) for i in range(model.num_classes)]
        class_lists.append(names_k)
        rows = views.detection_rows(det, model.levels, names_k)
        fig = figures.detections_figure(image.rgb, rows, gt_boxes=ctx.gt.boxes if ctx.gt else None, height=420)
        st.plotly_chart(fig, width="stretch", key=f"cmp_fig_{'a' if col is c1 else 'b'}")
        card = dict(getattr(model, "card", {}) or {})
        st.caption(f"{card.get('preset', model.config.name)} · {card.get('num_parameters', 0) / 1e6:.2f} M params · "
                   f"input {model.config.image_size} px · {len(rows)} detections · "
                   f"forward {det['forward_ms']:.0f} ms (this image, measured on its first run)")
        results[label(path) + (" (A)" if col is c1 else " (B)")] = (rows, model.levels, card)
        found_by[label(path) + (" (A)" if col is c1 else " (B)")] = det

if results:
    counts = {name: views.level_counts(rows, levels) for name, (rows, levels, _) in results.items()}
    st.plotly_chart(charts.counts_by_level_figure(counts), width="stretch", key="cmp_counts")

    st.subheader("Objects one finds and the other misses")
    iou, aware = focusing.match_settings()
    if ctx.gt is None or not len(ctx.gt.boxes):
        st.info("This image has no ground truth, so there is nothing to be found or missed: pick a sample, open a "
                "dataset image, or add ground truth on the Assignment page.")
    elif len(found_by) == 2 and a != b:
        differ = len(class_lists) == 2 and class_lists[0] != class_lists[1]
        if differ and aware:  # class k of A is not class k of B: only the boxes can be compared
            aware = False
            st.warning(f"A predicts [{', '.join(class_lists[0][:6])}] and B [{', '.join(class_lists[1][:6])}]: "
                       "their class indices mean different things, so objects are matched here by boxes alone, "
                       "whatever the class.")
        diff = views.object_differences(ctx.gt.boxes, ctx.gt.labels, ctx.gt.class_names, found_by, iou, aware)
        if diff:
            st.dataframe(diff, hide_index=True, width="stretch", key="cmp_diff")
        else:
            st.success(f"No object is found by one and missed by the other at these settings (of "
                       f"{len(ctx.gt.boxes)} ground-truth objects).")
        st.caption(f"Matched at IoU ≥ {iou:.2f}, {'same class only' if aware else 'any class'} (the Detect page's "
                   f"setting), score ≥ {ctx.score:.2f} (sidebar). Object = index of the ground-truth box.")
    elif a != b:  # one of the two did not load (its error is above)
        st.info("Both checkpoints must load to list the objects one finds and the other misses.")
    else:
        st.info("Choose two different checkpoints to list the objects one finds and the other misses.")

    st.subheader("Validation metrics (from the model cards)")
    metrics = {name: card.get("metrics") or {} for name, (_, _, card) in results.items()}
    if any(metrics.values()):
        st.plotly_chart(charts.ap_by_size_figure(metrics), width="stretch", key="cmp_ap")
        keys = ["AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "AR"]
        st.dataframe([{"checkpoint": n, **{k: f"{m[k]:.3f}" if isinstance(m.get(k), (int, float)) else "n/a"
                                           for k in keys}} for n, m in metrics.items()],
                     hide_index=True, width="stretch")
        st.caption("Evaluated on: " + "; ".join(f"{n}: {_dataset(card)}" for n, (_, _, card) in results.items())
                   + ". n/a: not measured (e.g. no object of that size in the validation split).")
    else:
        st.info("Neither model card holds validation metrics (the `metrics` entry a training run with validation "
                "writes).")
    telemetry = {n: card.get("telemetry") for n, (_, _, card) in results.items() if card.get("telemetry")}
    if telemetry:
        st.subheader("Training telemetry (last epoch, from the model cards)")
        def fmt(v: object) -> str:
            if isinstance(v, dict):
                return ", ".join(f"{k} {x:.3g}" if isinstance(x, float) else f"{k} {x}" for k, x in v.items())
            return f"{v:.3g}" if isinstance(v, float) else "n/a" if v is None else str(v)

        st.dataframe([{"checkpoint": n, "starved GT rate": fmt(t.get("starved_rate")),
                       "fallback share": fmt(t.get("fallback_share")),
                       "positives per image": fmt(t.get("positives_per_image")),
                       "gate mass in boxes": fmt(t.get("gate_mass"))} for n, t in telemetry.items()],
                     hide_index=True, width="stretch")
