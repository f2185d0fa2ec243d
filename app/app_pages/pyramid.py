"""Pyramid: every level before and after CEM, the CEM fused term and its weight, and where gradient reaches."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import analyses, charts, focusing, heatmaps, state
from efpn import Detector, level_stride
from efpn.explain import Inspection, reduce_channels

ctx = state.context()
st.title("Pyramid")
st.caption(
    "The FPN turns backbone stages into levels p2 (fine, stride 4) ... p6 (coarse, stride 64). CEM (Context "
    "Enhancement Module) adds a fused summary F of the coarse levels to the fine ones: p' = p + α·F."
)
model = state.require_model(ctx)
image = state.require_image(ctx)
ins = state.inspection(ctx, model, image)

has_cem = model.config.neck.cem is not None
has_fbsm = model.config.neck.fbsm is not None
focus = focusing.focus_banner(ctx, model, image, "Here: the cell holding its centre is outlined on every level"
                              + (", before and after CEM." if has_cem else "."))
labels = {"mean": "channel mean", "max": "channel max", "pca": "PCA → RGB"}
how = st.radio("Show channels as", list(labels), format_func=labels.get, horizontal=True, key="pyr_reduce",
               help="PCA → RGB colours each location by its first three principal components over channels.")
if not has_cem:  # no before/after to compare: each level once
    st.info("This checkpoint has no CEM (its config has `neck.cem = null`), so there is no before and after: each "
            "level's output is shown once. Choose an E-FPN-BS or efpn_n checkpoint to see what CEM adds.")

interactive = st.toggle("Interactive heatmaps (hover values)", key="pyr_interactive",
                        help="Off: quick pictures, all levels at once. On: plotly heatmaps with the value under the "
                             "cursor (slower to draw).")
if how != "pca" and not interactive:
    st.caption("Each map on its own scale, written under it: dark purple = its lowest value, yellow = its highest "
               "(Viridis). Compare where a map is bright, not how bright two maps are.")
for lv in ins.levels:
    before = ins.pyramid_before_cem[lv]
    after = ins.pyramid[lv]
    c, fh, fw = tuple(after.shape)
    cell = ins.cell_of(lv, *focus.centre) if focus is not None else None
    where = f" · focused object in cell (row {cell[0]}, col {cell[1]})" if cell is not None else ""
    st.markdown(f"**{lv}** · stride {level_stride(lv)} · {c} x {fh} x {fw}{where}")
    title = "after CEM" + (" and FBSM" if has_fbsm and lv in (model.config.neck.fbsm.levels or ()) else "")
    panels: list[tuple[str, object]] = [("FPN output (before CEM)", before)]
    if not has_cem:
        gated = has_fbsm and lv in (model.config.neck.fbsm.levels or ())
        panels = [(f"{lv} output" + (" (after FBSM)" if gated else ""), after)]
    elif lv in ins.cem_fused:
        panels.append((f"CEM fused F (α = {ins.cem_alpha.get(lv, 0.0):.3g})", ins.cem_fused[lv]))
    else:
        panels.append(("CEM does not write to this level.", None))
    if has_cem:
        panels.append((title, after))
    cols = st.columns(3)
    for i, (col, (name, feature)) in enumerate(zip(cols, panels)):
        if feature is None:
            col.caption(name)
        elif interactive:
            col.plotly_chart(heatmaps.map_figure(reduce_channels(feature, how), name, height=220, mark=cell),
                             width="stretch", key=f"pyr_{lv}_{i}")
        else:
            reduced = reduce_channels(feature, how)  # (h, w) map, or (h, w, 3) RGB for PCA
            scale = f" · {float(reduced.min()):.3g} → {float(reduced.max()):.3g}" if reduced.ndim == 2 else ""
            col.image(heatmaps.thumbnail(reduced, side=320, mark=cell), caption=name + scale,
                      width="stretch", output_format="PNG")

if ins.cem_alpha:
    st.subheader("CEM weight α")
    cols = st.columns(len(ins.cem_alpha))
    for col, (lv, a) in zip(cols, ins.cem_alpha.items()):
        col.metric(f"α on {lv}", f"{a:.4g}")
    if all(abs(a) < 1e-12 for a in ins.cem_alpha.values()):
        st.caption("α starts at 0 (training begins as the plain FPN); at α = 0 CEM passes no gradient yet.")


@st.fragment
def _gradient_reach(ctx: state.Context, model: Detector, image: state.ImageItem, ins: Inspection,
                    has_cem: bool) -> None:
    """The gradient-reach section as a fragment: opening it or switching the loss reruns this section only, not the
    page's pictures above it (~0.4 s of the click otherwise)."""
    st.subheader("Gradient reaching p5/p6" + (", with and without CEM" if has_cem else ""))
    # lazy: two backward passes (~0.5 s on a laptop CPU) run only while this is open, not on every visit of the page
    reach_box = st.expander("Measure it on this image (two backward passes)", icon=":material/insights:",
                            key="pyr_reach_open", on_change="rerun")
    if not reach_box.open:
        st.caption("Open to measure the gradient norm that reaches the p5/p6 output convolutions from this image's "
                   "boxes, with CEM and with CEM bypassed.")
        return
    with reach_box:
        st.caption(
            "Tiny objects get positives only on the fine levels, so the p5/p6 output convolutions and head inputs "
            "receive no positive-driven gradient (c5 still gets some through the top-down path). CEM routes p5/p6 into "
            "the fine levels, so their gradient is no longer zero. Numbers from `efpn.explain.gradient_reach` on this "
            "image."
        )
        gt, how_boxes = state.boxes_for_analysis(ctx, ins.detections)
        st.caption(how_boxes)
        if gt is None:
            st.info("Add ground truth on the Assignment page, or lower the score threshold, to measure gradient reach.")
            return
        try:
            with st.spinner("Two backward passes: with CEM and with CEM bypassed ..."):
                reach = analyses.gradient_reach_pair(model, ctx.ckpt_key, image.rgb, image.digest,
                                                     gt.for_model(model.num_classes))
        except ValueError as e:
            st.error(f"Gradient reach could not be measured for these boxes: {e}")
            return
        part = st.radio("Loss", ["positive", "total"], horizontal=True, key="pyr_part",
                        help="positive: the regression losses only positives produce; total: every loss term.")
        # static bars, not a chart: one scale, values written on the bars, and nothing for the browser to mount on
        # each open and loss switch (no wall-clock gain measurable on the 2-core benchmark machine, README)
        with st.container(key="pyr_reach"):
            st.markdown(f"**‖gradient‖ reaching the coarse levels ({part} loss)**")
            st.html(charts.gradient_reach_html(reach["with"], reach["without"] if has_cem else None, part))
            st.caption(("Bar heights on a log scale shared by both series" if has_cem else
                        "Bar heights on a log scale (this checkpoint has no CEM: one series, the model itself)")
                       + ", from a tenth of the smallest value above 0; each value is written over its bar. An exact "
                       "0 has no bar and is written \"0\" on the baseline: no gradient reaches that place.")
        table = [
            {"quantity": k, "with CEM": f"{reach['with'][k]:.3e}",
             "CEM bypassed": f"{reach['without'].get(k, 0.0):.3e}"} if has_cem
            else {"quantity": k, "this model (no CEM)": f"{reach['with'][k]:.3e}"}
            for k in reach["with"]
        ]
        st.markdown("**All numbers**")
        st.table(pd.DataFrame(table).set_index("quantity"))  # static: drawn at once, nothing to sort in a dozen rows


_gradient_reach(ctx, model, image, ins, has_cem)
