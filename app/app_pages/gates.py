"""Gates: the FBSM foreground masks per level over the image, and how much of each falls on the objects."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import figures, focusing, heatmaps, state
from efpn import level_stride
from efpn.explain import gate_stats
from efpn.layers import box_mask_target

ctx = state.context()
st.title("Gates")
st.caption(
    "FBSM (Foreground-Background Separation Module) predicts a mask M in [0, 1] per fine level and amplifies "
    "the features under it: x' = x·(1 + β·M). A good gate puts its mass on the objects."
)
model = state.require_model(ctx)
image = state.require_image(ctx)
ins = state.inspection(ctx, model, image)
if not ins.gates:
    st.info("This checkpoint has no FBSM gates (its config has `neck.fbsm = null`). Choose an E-FPN-BS or efpn_n "
            "checkpoint to see them.")
    st.stop()

focus = focusing.focus_banner(ctx, model, image, "Here: its centre ringed on every gate map, with the gate's value "
                                              "there (closed below 0.1).")
opacity = st.slider("Mask opacity", 0.0, 1.0, 0.55, 0.05, key="gate_opacity")
gt, how_boxes = state.boxes_for_analysis(ctx, ins.detections)
st.caption(f"Colour key of every gate map: M = 0 black → 1 pale yellow (the bar beside each map over the image, "
           f"drawn at the opacity above; the gate and its FBSM target beside it share that scale); boxes in cyan. "
           f"{how_boxes}")
boxes_orig = gt.boxes if gt is not None else np.zeros((0, 4), np.float32)
boxes_net = ins.to_network(boxes_orig)  # what the gate saw: network px, like its strides
det_net = ins.to_network(ins.detections["boxes"])

SIDE_PX = 160  # the gate and its target side by side, cells enlarged by an integer factor (nearest: square cells)
stats = []
for lv, mask in ins.gates.items():
    stride = level_stride(lv)
    m = mask.numpy()
    cell = ins.cell_of(lv, *focus.centre) if focus is not None else None
    at_focus = f" · gate at the focused object's centre **{m[cell]:.3f}**" if cell is not None else ""
    st.markdown(f"**{lv}** · stride {stride} · {m.shape[0]} x {m.shape[1]} cells · mean gate {m.mean():.3f}{at_focus}")
    c1, c2 = st.columns([3, 2])
    fig = figures.heatmap_overlay_figure(image.rgb, m, ins.stride_in_image(lv), opacity, colorscale="Inferno", zmin=0,
                                         zmax=1, boxes=boxes_orig, colorbar_title="M", height=420)
    if focus is not None:
        fig.add_traces(figures.focus_marker(*focus.centre))
    c1.plotly_chart(fig, width="stretch", key=f"gate_{lv}")
    target = box_mask_target([boxes_net], m.shape, stride)[0, 0].numpy()
    # pictures, not plotly charts: the map at left already reads values on hover, and two more charts per level
    # were a third of the page's drawing time in the browser (measured with Chromium's profiler)
    pictures = [heatmaps.thumbnail(a, "Inferno", side=SIDE_PX, zmin=0.0, zmax=1.0, mark=cell) for a in (m, target)]
    c2.image([heatmaps.encode_png(p) for p in pictures], caption=["gate M", "FBSM target (1 on the boxes' cells)"],
             width=pictures[0].shape[1], output_format="PNG")  # shown at the size made: Streamlit resizes nothing
    row = {"level": lv}
    if gt is not None:
        s = gate_stats(m, boxes_net, stride)
        row.update({"mass inside boxes": s["mass_inside"], "box area share": s["area_inside"], "lift": s["lift"]})
        c2.metric("Gate mass inside the boxes", f"{100 * s['mass_inside']:.1f} %",
                  delta=f"{s['lift']:.2f}x a uniform gate", delta_color="off")
    if len(det_net):
        row["mass inside detections"] = gate_stats(m, det_net, stride)["mass_inside"]
    stats.append(row)

st.subheader("Summary")
st.dataframe(stats, hide_index=True, width="stretch", column_config={  # three digits say all a reader can use
    "mass inside boxes": st.column_config.NumberColumn(format="%.3f"),
    "box area share": st.column_config.NumberColumn(format="%.3f"),
    "lift": st.column_config.NumberColumn(format="%.2f"),
    "mass inside detections": st.column_config.NumberColumn(format="%.3f")})
st.caption("mass inside = Σ M inside the boxes / Σ M; area share = what a uniform gate would score; lift = their ratio "
           "(1 = no separation). Boxes are rasterised like the FBSM supervision (the centre cell always counts).")
