"""Assignment: which priors become positives for each GT box, on which level, and which GTs starve."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from app import analyses, charts, figures, focusing, loaders, state
from efpn import BUCKET_LABELS, level_stride
from efpn.data import AnnotationError, load_split, parse_annotation_bytes

ctx = state.context()
st.title("Assignment")
st.caption(
    "Training decides, for every ground-truth box, which priors (anchors or points) are its positives. Under "
    "standard assigners a tiny object gets positives only on the finest levels, so p5/p6 never learn from it: "
    "a 'semantic dead-end'. A GT with no positive at all is *starved*: the detector is never taught to find it."
)
model = state.require_model(ctx)
image = state.require_image(ctx)
h, w = image.hw
names = ctx.class_names or (ctx.gt.class_names if ctx.gt else ["object"])
focus = focusing.focus_banner(ctx, model, image, "Here: that object ringed in white, its own positives drawn thick "
                                              "and everyone else's faded, under the assigner you choose.")


def _assignment_section(gt: state.GroundTruth) -> None:
    """Assignment of the current GT, and the baseline vs E-FPN-BS comparison."""

    # ------------------------------------------------------------------------------------------- assignment
    st.subheader("Assignment")
    options = [analyses.MODEL_ASSIGNER, *analyses.BOX_PROTOCOLS, analyses.TAL]
    choice = st.radio("Assigner", options, horizontal=True, key="assigner",
                      help="Box-only protocols use their published priors on the image resized to the model's input "
                           "size; the model's own assigner and TAL use the checkpoint's priors.")
    gkey = gt.for_model(model.num_classes)
    try:
        if choice in analyses.BOX_PROTOCOLS:
            summary = analyses.box_assignment(analyses.BOX_PROTOCOLS[choice], gkey, (h, w), model.config.image_size)
        else:  # on the priors and predictions of the page's shared forward
            summary = analyses.model_assignment(model, ctx.ckpt_key, state.inspection(ctx, model, image), image.digest,
                                                gkey, tal=choice == analyses.TAL)
    except ValueError as e:
        st.error(f"These boxes cannot be assigned: {e}. Fix them in the table above.")
        return
    acc = summary.accounting
    if summary.note:
        st.caption(summary.note)

    m = [*st.columns(2), *st.columns(2)]  # two rows: the labels stay whole on a narrow page
    m[0].metric("GT boxes", acc["num_gt"])
    m[1].metric("Positive pairs", acc["num_positives"])
    m[2].metric("Starved GTs", len(acc["starved"]), help="No positive, or (IoU assigners) only fallback matches "
                "below the positive IoU.")
    zero = acc["zero_high_level_share"]
    if zero:
        lv0 = next(iter(zero))
        m[3].metric(f"GTs with no positive on {lv0}+", f"{100 * zero[lv0]:.0f} %",
                    help="Share of GTs that train none of the coarse levels: their semantic dead-end.")

    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.positives_bar_figure(acc), width="stretch", key="asg_bar")
    c2.plotly_chart(charts.level_bucket_figure(acc), width="stretch", key="asg_matrix")

    shown = st.multiselect("Draw the positives of", acc["levels"], default=acc["levels"],
                           key=f"asg_levels_{'_'.join(acc['levels'])}")
    hover = []
    for i, (size, bucket, npos) in enumerate(zip(acc["gt_sizes"], acc["gt_buckets"], acc["positives_per_gt"])):
        per = acc["positives_per_gt_level"][i] if acc["positives_per_gt_level"] else []
        where = ", ".join(f"{lv} {n}" for lv, n in zip(acc["levels"], per) if n) or "none"
        hover.append(f"GT {i} · {names[int(gt.labels[i])] if int(gt.labels[i]) < len(names) else gt.labels[i]}"
                     f"<br>size {size:.1f} px ({bucket})<br>{npos} positives: {where}")
    positives = {lv: b for lv, b in summary.positives.items() if lv in shown}
    focused = focus.gt_index if focus is not None and focus.gt_index < len(gt.boxes) else None
    st.plotly_chart(figures.assignment_figure(image.rgb, gt.boxes, hover, acc["starved"], positives,
                                              positive_gt=summary.positive_gt, focus=focused),
                    width="stretch", key="asg_image")
    if focused is not None:
        per = acc["positives_per_gt_level"][focused] if acc["positives_per_gt_level"] else []
        where = ", ".join(f"{lv} {n}" for lv, n in zip(acc["levels"], per) if n) or "none"
        st.caption(f"Focused GT {focused} ({acc['gt_sizes'][focused]:.1f} px): {acc['positives_per_gt'][focused]} "
                   f"positives under {summary.name} ({where})"
                   + (", starved." if focused in acc["starved"] else "."))
    c1, c2 = st.columns(2)
    if acc["histogram"]:
        c1.plotly_chart(charts.histogram_figure(acc["histogram"]), width="stretch", key="asg_hist")
    if acc["starved"]:
        c2.markdown("**Starved GTs** (no regular positive; fallback matches at most)")
        c2.dataframe([
            {"GT": i, "size px": round(acc["gt_sizes"][i], 1), "bucket": BUCKET_LABELS[acc["gt_buckets"][i]],
             "positives": acc["positives_per_gt"][i], "regular": acc["regular_per_gt"][i]}
            for i in acc["starved"]
        ], hide_index=True, width="stretch")
    else:
        c2.success("No starved GT under this assigner.")
    st.download_button("Download the accounting (JSON)", json.dumps(acc, indent=2), file_name="assignment.json",
                       mime="application/json", key="asg_dl")

    # ------------------------------------------------------------------------------------------- baseline vs E-FPN-BS
    st.subheader("Baseline FPN vs E-FPN-BS")
    if model.config.neck.cem is None:  # nothing to compare: one sentence instead of two identical series
        st.info("This checkpoint has no CEM, so it has no E-FPN-BS counterpart to compare here: where CEM sends the "
                "gradient of tiny objects' positives is shown for an E-FPN-BS or efpn_n checkpoint (sidebar).")
        return
    depends = ("Under TAL, assignment also depends on the model's own predictions, so the positives (left) are "
               "this checkpoint's; the baseline's may differ a little. " if model.config.head.assigner == "tal" else
               "Assignment depends only on boxes and priors, so CEM does not change it: the baseline and E-FPN-BS "
               "get the same positives (left). ")
    st.caption(
        depends + "What changes is where the gradient of those positives flows (right and below, one axis for "
        "both: the model with CEM bypassed, the baseline FPN path, and with CEM; measured with the checkpoint's own "
        "assigner and loss)."
    )
    try:
        reach = analyses.gradient_reach_pair(model, ctx.ckpt_key, image.rgb, image.digest, gkey)
    except ValueError as e:
        st.error(f"Gradient reach could not be measured for these boxes: {e}")
        return
    own = analyses.model_assignment(model, ctx.ckpt_key, state.inspection(ctx, model, image), image.digest, gkey,
                                    tal=False)
    coarse = [lv for lv in ("p5", "p6") if f"{lv}.output_conv.positive" in reach["with"]]
    left, right = st.columns(2)
    left.plotly_chart(charts.positives_bar_figure(own.accounting, title="Positives per level (both models)",
                                                  subtitle=f"assigner: {own.name}"), width="stretch", key="asg_side")
    with right:
        for lv in coarse:
            st.markdown(f"**‖∂L_pos/∂θ‖ of the {lv} output conv**")
            cols = st.columns(2)
            for col, title, r in ((cols[0], "baseline FPN", reach["without"]), (cols[1], "E-FPN-BS", reach["with"])):
                v = r[f"{lv}.output_conv.positive"]
                col.metric(title, "0 (none)" if v == 0 else f"{v:.3e}")
    # full width: the labels of seven groups of bars need it, and both models share its one axis
    st.plotly_chart(charts.gradient_reach_figure(reach["with"], reach["without"], "positive",
                                                 title="Positive-driven gradient reach, both models on one axis"),
                    width="stretch", key="asg_reach")


tab_image, tab_data = st.tabs(["This image", "Dataset-wide"])

# ----------------------------------------------------------------------------------------------- ground truth
with tab_image:
    st.subheader("Ground truth")
    gt = ctx.gt
    st.caption(f"{len(gt.boxes)} boxes from {gt.source}." if gt is not None else "This image has no ground truth yet.")
    version = st.session_state.setdefault("gt_version", 0)

    def _report_lines(report: str) -> str:
        """A loader's report as a markdown list: it wraps in a narrow column, where a code block would scroll."""
        return "\n".join(f"- {line.strip()}" for line in report.splitlines() if line.strip())

    def _set(boxes: np.ndarray, labels: np.ndarray, class_names: list[str], source: str) -> int:
        """Set the ground truth; returns how many boxes were left out (under 1 px once clipped to the image)."""
        b, ok = state.clean_boxes(boxes, (h, w))
        state.set_ground_truth(image.key, state.GroundTruth(b[ok], np.asarray(labels, np.int64)[ok],
                                                               class_names, source))
        st.session_state["gt_version"] = st.session_state.get("gt_version", 0) + 1
        return int((~ok).sum())

    def _under_a_pixel(n: int, what: str) -> list[str]:
        return [f"{n} {what} left out: under 1 px wide or high once clipped to this {w}x{h} image (no object the "
                "assigner or a match could use)."] if n else []

    # what the last upload's reader skipped or assumed: above the expander, which closes once there is ground truth
    report = st.session_state.pop("gt_report", None)
    if report:
        st.warning(f"Read with some entries skipped:\n\n{_report_lines(report)}")
    for note in st.session_state.pop("gt_notes", []):  # for the user to check
        st.warning(note)
    with st.expander("Change the ground truth: upload, draw, or edit", expanded=gt is None):
        c1, c2 = st.columns(2)
        ann = c1.file_uploader("Annotation file (COCO .json, YOLO .txt, Pascal VOC .xml)", type=["json", "txt", "xml"],
                               key=f"gt_upload_{version}")
        if ann is not None:
            try:
                parsed = parse_annotation_bytes(ann.getvalue(), ann.name, image.file_name, image.hw, names,
                                                original_hw=image.original_hw)
            except AnnotationError as e:
                st.error(f"{e}\n\nThe ground truth is unchanged.")
            else:
                if not len(parsed.boxes) and parsed.dropped:  # every entry refused: not an image without objects
                    st.error(f"Nothing usable in {ann.name}: every entry of it was skipped, so it is not taken for "
                             f"an image without objects.\n\n{_report_lines(parsed.report)}\n\nThe ground truth is "
                             "unchanged.")
                else:
                    small = _set(parsed.boxes, parsed.labels, parsed.class_names, f"uploaded {parsed.fmt}")
                    if "nothing skipped" not in parsed.report:
                        st.session_state["gt_report"] = parsed.report
                    st.session_state["gt_notes"] = [*parsed.notes, *_under_a_pixel(small, "box(es) of the file")]
                    st.rerun()
        with c2:
            if st.button("Use the detections as ground truth", key="gt_from_det"):
                ins = state.inspection(ctx, model, image)
                small = _set(ins.detections["boxes"].numpy(), ins.detections["labels"].numpy(), names, "detections")
                st.session_state["gt_notes"] = _under_a_pixel(small, "detection(s)")
                st.rerun()
            if st.button("Reset to the original ground truth", key="gt_reset"):
                state.set_ground_truth(image.key, None)
                st.session_state["gt_version"] = version + 1
                st.rerun()
            state.keep_valid("gt_draw_class", list(range(len(names))))
            new_class = st.selectbox("Class of drawn boxes", list(range(len(names))), format_func=lambda i: names[i],
                                     key="gt_draw_class")

        st.markdown("**Draw**: drag a rectangle on the image to add a box.")
        base = gt.boxes if gt is not None else np.zeros((0, 4), np.float32)
        event = st.plotly_chart(figures.draw_gt_figure(image.rgb, base), width="stretch", key=f"gt_draw_{version}",
                                on_select="rerun", selection_mode=("box",))
        boxes_sel = (event.selection.box if event and event.selection else []) or []
        if boxes_sel:
            xs, ys = boxes_sel[-1].get("x", []), boxes_sel[-1].get("y", [])
            if len(xs) >= 2 and len(ys) >= 2:
                new = np.array([[min(xs), min(ys), max(xs), max(ys)]], dtype=np.float32)
                old_labels = gt.labels if gt is not None else np.zeros(0, np.int64)
                _set(np.concatenate([base, new]), np.concatenate([old_labels, [new_class]]), names, "drawn")
                st.rerun()

        st.markdown("**Edit** the table (add or delete rows), then apply.")
        rows = [{"x1": float(b[0]), "y1": float(b[1]), "x2": float(b[2]), "y2": float(b[3]),
                 "class": names[int(c)] if 0 <= int(c) < len(names) else names[0]}
                for b, c in zip(base, gt.labels if gt is not None else [])]
        edited = st.data_editor(
            rows or [{"x1": 0.0, "y1": 0.0, "x2": 0.0, "y2": 0.0, "class": names[0]}][:0], num_rows="dynamic",
            key=f"gt_table_{version}", width="stretch",
            column_config={"class": st.column_config.SelectboxColumn("class", options=names, required=True)},
        )
        if st.button("Apply the table", key="gt_apply"):
            table = [r for r in (edited or []) if all(r.get(k) is not None for k in ("x1", "y1", "x2", "y2"))]
            boxes = np.array([[r["x1"], r["y1"], r["x2"], r["y2"]] for r in table], dtype=np.float32).reshape(-1, 4)
            labels = np.array([names.index(r["class"]) if r.get("class") in names else 0 for r in table], np.int64)
            _set(boxes, labels, names, "edited table")
            st.rerun()

    gt = state.context().gt
    if gt is None or not len(gt.boxes):
        st.info("Add at least one ground-truth box to see its assignment.")
    else:
        _assignment_section(gt)

# ----------------------------------------------------------------------------------------------- dataset-wide
with tab_data:
    st.caption("Positive accounting over a whole dataset (box-only protocols, no model needed).")
    choices = {c.path: c for c in loaders.dataset_choices() if c.present}
    c1, c2 = st.columns([3, 1])
    yaml_path = c1.selectbox("Dataset", list(choices), key="ds_yaml", format_func=lambda p: choices[p].label,
                             help="The project's data YAMLs (recipes/data), the bundled samples and those of "
                                  "EFPN_DATA_DIR whose data is on this machine (the Dataset page lists the others).")
    state.keep_valid("ds_split", list(choices[yaml_path].splits) if yaml_path else [])
    split = c2.selectbox("Split", list(choices[yaml_path].splits) if yaml_path else [], key="ds_split")
    c1, c2, c3 = st.columns(3)
    protocol_name = c1.selectbox("Protocol", list(analyses.BOX_PROTOCOLS), key="ds_protocol")
    long_side = c2.number_input("Resize long side to (0 = native)", 0, 4096, int(model.config.image_size), 32,
                                key="ds_long_side")
    limit = c3.number_input("At most this many images", 1, 100_000, 500, key="ds_limit")
    if st.button("Run over the dataset", key="ds_run", disabled=yaml_path is None or split is None):
        try:
            records, class_names, report = load_split(yaml_path, split)
        except (ValueError, FileNotFoundError, OSError) as e:
            st.session_state.pop("ds_result", None)  # an earlier dataset's numbers under this error would mislead
            st.error(f"The dataset could not be loaded: {e}")
        else:
            records = records[: int(limit)]
            bar = st.progress(0.0, text="Assigning ...")
            total = None
            steps = analyses.iter_dataset_accounting(records, analyses.BOX_PROTOCOLS[protocol_name],
                                                     int(long_side) or None)
            for i, running in steps:
                total = running
                if i % 10 == 0 or i == len(records):
                    bar.progress(i / max(len(records), 1), text=f"{i}/{len(records)} images")
            bar.empty()
            st.session_state["ds_result"] = {
                "data": choices[yaml_path].label, "split": split, "protocol": protocol_name,
                "long_side": int(long_side),
                "accounting": total.to_dict() if total is not None else None, "report": report.summary(),
            }
    result = st.session_state.get("ds_result")
    if result and result["accounting"]:
        acc = result["accounting"]
        st.markdown(f"**{result['data']}** · {result['split']} · {result['protocol']} · long side "
                    f"{result['long_side'] or 'native'}")
        m = [*st.columns(2), *st.columns(2)]
        m[0].metric("Images", acc["num_images"])
        m[1].metric("GT boxes", acc["num_gt"])
        m[2].metric("Starved", f"{100 * acc['starved_rate']:.1f} %")
        m[3].metric("No positive at all", f"{100 * acc['zero_positive_rate']:.1f} %")
        c1, c2 = st.columns(2)
        c1.plotly_chart(charts.positives_bar_figure(acc), width="stretch", key="ds_bar")
        c2.plotly_chart(charts.level_bucket_figure(acc), width="stretch", key="ds_matrix")
        if acc["histogram"]:
            st.plotly_chart(charts.histogram_figure(acc["histogram"]), width="stretch", key="ds_hist")
        st.dataframe([{"coarse level": lv, "stride": level_stride(lv), "GTs training none of it or coarser":
                       f"{100 * v:.1f} %"} for lv, v in acc["zero_high_level_share"].items()], hide_index=True)
        with st.expander("Loader report"):
            st.code(result["report"])
        st.download_button("Download (JSON)", json.dumps(result, indent=2), file_name="dataset_assignment.json",
                           mime="application/json", key="ds_dl")
    elif result:
        st.info("The dataset has no images in this split.")
