"""Attribution: which pixels and which pyramid levels a chosen detection depends on (Captum)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import analyses, charts, figures, heatmaps, state, views
from efpn.explain import METHODS, resize_map

ctx = state.context()
st.title("Attribution")
st.caption(
    "For one detection, the target is T(x) = max over priors of class score x IoU(predicted box, chosen box): "
    "smooth in the pixels, and equal to the detection's score on the clean image. Integrated Gradients and "
    "Occlusion explain T with input pixels; LayerGradCAM shows which pyramid level carries it."
)
model = state.require_model(ctx)
image = state.require_image(ctx)
ins = state.inspection(ctx, model, image)
rows = views.detection_rows(ins.detections, model.levels, ctx.class_names)
names = ctx.class_names

found = state.focused_miss(ctx, model, image)
focus, focus_miss = found if found is not None else (None, None)
state.focus_banner(ctx, model, image, "Here: the best prior covering it is explained for the object's class: what "
                                      "it looked at, and what it would need.")
FOCUSED = "the focused object's best prior"
has_gt = ctx.gt is not None and len(ctx.gt.boxes) > 0
sources = ([FOCUSED] if focus is not None else []) + (["a detection"] if rows else []) + \
    (["a ground-truth box"] if has_gt else [])
if not sources:
    st.info("Nothing to explain: no detection above the score threshold and no ground truth. Lower the threshold "
            "in the sidebar or add ground truth on the Assignment page.")
    st.stop()
state.keep_valid("attr_source", sources)
if focus is not None and st.session_state.get("attr_focus_applied") != focus:
    st.session_state["attr_focus_applied"] = focus  # a newly focused object: explain it first
    st.session_state["attr_source"] = FOCUSED
source = st.radio("Explain", sources, horizontal=True, key="attr_source")
if source == FOCUSED:
    assert focus is not None
    label = focus.label if 0 <= focus.label < model.num_classes else 0
    if focus_miss is not None and focus_miss.best_box is not None:
        box = tuple(focus_miss.best_box)
        shown = ", ".join(f"{v:.1f}" for v in box)
        st.caption(f"The best prior covering GT {focus.gt_index}: its predicted box ({shown}) on "
                   f"{focus_miss.best_level}, scoring {focus_miss.best_score:.3f} for {state.class_name(ctx, label)} "
                   f"with IoU {focus_miss.best_iou:.2f} against the object. The target T below is that class's score "
                   "times the IoU with this box.")
    else:
        box = tuple(float(v) for v in focus.box)
        st.caption(f"GT {focus.gt_index} "
                   + ("is found at these settings" if focus_miss is None else "has no covering prior")
                   + f": its own box is explained for {state.class_name(ctx, label)}.")
elif source == "a detection":
    digest, picked = st.session_state.get("selected_detection") or (None, None)
    chosen = (digest, picked)
    if digest == image.digest and picked is not None and picked < len(rows) \
            and chosen != st.session_state.get("attr_det_applied"):
        st.session_state["attr_det"] = picked  # the detection clicked on the Detect page
        st.session_state["attr_det_applied"] = chosen
    state.keep_valid("attr_det", list(range(len(rows))))
    idx = st.selectbox(
        "Detection", list(range(len(rows))), key="attr_det",
        format_func=lambda i: f"#{i} {rows[i]['class']} · score {rows[i]['score']:.3f} · {rows[i]['level']} · "
                              f"{rows[i]['size']:.1f} px",
    )
    box, label = tuple(rows[idx]["box"]), int(rows[idx]["label"])
else:
    gt = ctx.gt
    assert gt is not None
    gt_rows = views.detection_rows(
        {"boxes": gt.boxes, "scores": np.ones(len(gt.boxes)), "labels": gt.labels, "levels": np.zeros(len(gt.boxes))},
        ["-"], gt.class_names,
    )
    state.keep_valid("attr_gt", list(range(len(gt_rows))))
    gi = st.selectbox("Ground-truth box", list(range(len(gt_rows))), key="attr_gt",
                      format_func=lambda i: f"GT {i} · {gt_rows[i]['class']} · {gt_rows[i]['size']:.1f} px")
    box = tuple(gt_rows[gi]["box"])
    label = gt_rows[gi]["label"] if 0 <= gt_rows[gi]["label"] < model.num_classes else 0

labels = {"integrated_gradients": "Integrated Gradients", "occlusion": "Occlusion", "gradcam": "LayerGradCAM per level"}
methods = st.multiselect("Methods", list(METHODS), default=list(METHODS), format_func=labels.get, key="attr_methods")
c2, c3 = st.columns(2)
steps = c2.slider("IG steps", 4, 64, 8, 4, key="attr_ig_steps",
                  help="Integrated Gradients: forward+backward passes along the path from the baseline.")
evals = c3.slider("Occlusion budget (forwards)", 16, 400, 64, 16, key="attr_occ_evals",
                  help="Occluded images evaluated around the box; more = a finer occlusion grid.")
request = (image.digest, ctx.ckpt_key, box, label, tuple(methods), steps, evals)
if st.button("Explain this box", type="primary", key="attr_run", disabled=not methods):
    st.session_state["attr_request"] = request
if st.session_state.get("attr_request") != request:
    st.info("Choose a box and methods, then press **Explain this box**. It runs a few dozen forward/backward "
            f"passes at the model's input size ({model.config.image_size} px): seconds on a GPU, up to a minute or "
            "two on a CPU.")
    st.stop()

with st.spinner("Computing attributions ..."):
    ex = analyses.explain(model, ctx.ckpt_key, image.rgb, image.digest, box, label, tuple(methods), steps, evals)

net_rgb = analyses.network_rgb(model, image.rgb)  # the explanation's maps and box are in network pixels
box_net = np.array([ex.box], dtype=np.float32)

m = st.columns(3)
m[0].metric("Target score T", f"{ex.score:.4f}")
m[1].metric("Box share of the image", f"{100 * ex.mass_inside['box_area']:.2f} %")
m[2].metric("Class", names[ex.label] if ex.label < len(names) else str(ex.label))

cols = st.columns(max(1, len(ex.maps)))
for col, (method, a) in zip(cols, ex.maps.items()):
    fig = figures.attribution_figure(net_rgb, a, box_net, labels[method])
    col.plotly_chart(fig, width="stretch", key=f"attr_map_{method}")
    took = ex.timings_ms.get(method)  # measured by the run that made these maps
    col.caption(f"{100 * ex.mass_inside[method]:.1f} % of |attribution| inside the box"
                + (f" · computed in {took / 1000:.1f} s" if took is not None else ""))

if ex.gradcam:
    st.subheader("LayerGradCAM per pyramid level")
    small_hw, _ = figures.attribution_grid(net_rgb.shape[:2])
    small = {f"{lv}<br>{100 * ex.mass_inside[f'gradcam.{lv}']:.0f} % in box": resize_map(v, small_hw)
             for lv, v in ex.gradcam.items()}
    st.plotly_chart(heatmaps.maps_grid_figure(small, colorscale="Inferno", height=240), width="stretch",
                    key="attr_gradcam")
    st.caption("A level whose map is empty carries none of this box's evidence (for a tiny object, usually the "
               "coarse ones).")

st.subheader("Faithfulness")
table = [{"map": k, "in box": f"{100 * v:.1f} %"} for k, v in ex.mass_inside.items() if k != "box_area"]
c1, c2 = st.columns(2)
c1.dataframe(table, hide_index=True, width="stretch")
c1.caption("in box: the share of the map's |attribution| inside the box. A map that ignored the box would put about "
           "the box's area share there.")
if ex.deletion:
    c2.plotly_chart(charts.deletion_figure(ex.deletion, ex.deletion_auc), width="stretch", key="attr_deletion")
