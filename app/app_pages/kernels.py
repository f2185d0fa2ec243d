"""Kernels: click a pixel and see its RDConv dynamic kernel D, the SGDM-guided kernel K and the static bank S."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import focusing, heatmaps, picker, state
from efpn.explain import kernel_at, kernels_inside_outside


def _take_click(h: int, w: int) -> None:
    """A click on the picture (before this run): the picker's inputs move to it, clamped to the image."""
    hit = picker.clicked("kernel_pick")
    if hit is not None:
        st.session_state["kernel_x"] = float(min(max(int(hit[0]), 0), w - 1))  # the pixel clicked in
        st.session_state["kernel_y"] = float(min(max(int(hit[1]), 0), h - 1))


ctx = state.context()
st.title("Kernels")
st.caption(
    "SGDM replaces a stride-2 convolution with a per-pixel dynamic kernel D (RDConv: generated from a 2-channel "
    "'razor' summary), guided by a static bank S shared within each group: K = S⊙D / Σ|S⊙D|. The bank acts as a "
    "low-pass prior that keeps kernels from chasing pixel noise."
)
model = state.require_model(ctx)
image = state.require_image(ctx)
ins = state.inspection(ctx, model, image)
if not ins.kernels:
    st.info("This checkpoint has no RDConv/SGDM layers. Choose a *_sgdm or efpn_n checkpoint to see dynamic kernels.")
    st.stop()

focus = focusing.focus_banner(ctx, model, image, "Here: the picker starts on its centre (pick elsewhere freely).")
layers = list(ins.kernels)
state.keep_valid("kernel_layer", layers)
layer = st.selectbox("Layer", layers, key="kernel_layer",
                     format_func=lambda n: f"{n} (stride {ins.kernels[n].stride})")
km = ins.kernels[layer]
g, kk, fh, fw = tuple(km.dynamic.shape)
cell_px = ins.stride_in_image(layer)  # one kernel cell in the image's pixels
h, w = image.hw

# A newly focused object moves the picker to its centre (once: the user may pick elsewhere afterwards), before the
# picker's inputs are drawn; clicks move them in _take_click.
if focus is not None and (st.session_state.get("kernel_focus_applied") != focus or "kernel_x" not in st.session_state):
    st.session_state["kernel_focus_applied"] = focus
    st.session_state["kernel_x"], st.session_state["kernel_y"] = focus.centre
st.session_state["kernel_x"] = min(float(st.session_state.get("kernel_x", w // 2)), float(w - 1))
st.session_state["kernel_y"] = min(float(st.session_state.get("kernel_y", h // 2)), float(h - 1))
c_fig, c_side = st.columns([3, 2])
with c_side:
    what = st.radio("Map under the picker", ["entropy", "high-frequency energy", "none"], key="kernel_map",
                    help="Per-pixel kernel entropy (spread of D) or Laplacian energy of K, averaged over groups.")
    x = st.number_input("x (px)", 0.0, float(w - 1), key="kernel_x", step=1.0)
    y = st.number_input("y (px)", 0.0, float(h - 1), key="kernel_y", step=1.0)
    zoom = st.segmented_control("Zoom", picker.ZOOMS, key="kernel_zoom", default=1, format_func=lambda z: f"{z}x",
                                help="Shows a window of the image around the picked pixel, enlarged; from 4x the "
                                     "layer's cells are outlined, so a tiny object is picked cell by cell.") or 1

picked = ins.to_network(np.array([[x, y, x, y]]))[0, :2].tolist()  # the pixel where the network sees it
dyn, (row, col) = kernel_at(km.dynamic, *picked, km.stride)
maps = {"entropy": km.entropy, "high-frequency energy": km.hf_energy}
overlay = maps.get(what)
cell_map = None
if overlay is not None:
    name = what.split()[0]
    cell_map = picker.CellMap(overlay.numpy().mean(axis=0), cell_px, name,
                              f"{what} (mean over groups), dark purple = lowest, yellow = highest")
with c_fig:
    picker.pixel_picker("kernel_pick", picker.payload(
        image.rgb, (x, y), zoom, cell_map, cell=(row, col), cell_px=cell_px,
        box=focus.box if focus is not None else None, alt=f"{image.name}: click a pixel to see its kernels"),
        on_pick=lambda: _take_click(h, w))
    st.caption("White cross: the picked pixel; yellow square: its cell of the layer, whose kernels are shown below"
               + ("; dashed box: the focused object." if focus is not None else "."))

guided = kernel_at(km.guided, *picked, km.stride)[0] if km.guided is not None else None
side = km.kernel_size
bank = km.bank.numpy().reshape(-1, side, side) if km.bank is not None else None
with c_side:
    st.markdown(f"**Picked pixel** ({x:.0f}, {y:.0f}) → cell (row {row}, col {col}) of {fh} x {fw} "
                f"· {g} group(s) · {side} x {side} kernels")
    if km.entropy is not None:
        st.caption(f"entropy here {float(km.entropy[:, row, col].mean()):.3f} "
                   f"(max {np.log(kk):.3f} = uniform kernel)")

group = 0
if g > 1:
    state.keep_valid("kernel_group", list(range(g)))
    group = st.radio("Group", list(range(g)), horizontal=True, key="kernel_group", format_func=lambda i: f"g{i}",
                     help="The channels are split into groups; each group has its own kernel at every pixel.")
where = f"({x:.0f}, {y:.0f}) in {layer}" + (f", group {group}" if g > 1 else "")
st.html(heatmaps.kernel_panels_html(
    {"D dynamic (this pixel)": dyn[group], "K guided (this pixel)": guided[group] if guided is not None else None,
     "S bank (shared)": bank[group] if bank is not None else None}, title=f"Kernels at {where}"))
st.caption(f"Each cell is one weight of the {side} x {side} kernel, its value written in it; each kernel has its own "
           "colour key: white = 0, darker blue = larger (a kernel with a negative weight is drawn red for positive, "
           "blue for negative, around a white 0). D's weights sum to 1: a weighted average of the neighbourhood, "
           f"uniform at {1 / kk:.3f} each; K = S⊙D / Σ|S⊙D|.")
# drawn on request: every group's D, K and S is 3 x g tables, more than most visits read
if g > 1 and st.toggle(f"Show all {g} groups at this pixel", key="kernel_show_all_groups"):
    st.html(heatmaps.kernel_grid_html({"D dynamic": dyn, "K guided": guided, "S bank": bank}))
    st.caption("One line per kind, one colour scale per line, so the groups compare.")

MAP_PX = 320  # the two whole-layer maps at the bottom: made at this size, shown as made

st.subheader("Foreground vs background kernels")
gt, how_boxes = state.boxes_for_analysis(ctx, ins.detections)
st.caption(how_boxes)
if gt is not None:
    kind = st.radio("Kernel", ["guided K", "dynamic D"], horizontal=True, key="kernel_fgbg_kind")
    source = km.guided if (kind == "guided K" and km.guided is not None) else km.dynamic
    fg, bg = kernels_inside_outside(source, ins.to_network(gt.boxes), km.stride)
    diff = fg - bg if fg is not None and bg is not None else None
    diff_name = "inside − outside"
    st.html(heatmaps.kernel_panels_html(
        {"inside boxes": fg[group] if fg is not None else None, "outside": bg[group] if bg is not None else None,
         diff_name: diff[group] if diff is not None else None}, diverging=(diff_name,),
        title=f"Mean {kind} inside vs outside the boxes" + (f", group {group}" if g > 1 else "")))
    st.caption("The difference is red where the kernel inside the boxes weighs a neighbour more than outside, blue "
               "where less, white where they agree (a symmetric scale around 0).")
if km.hf_energy is not None and km.entropy is not None:
    # pictures, not a chart: the map under the picker above reads either one on hover; a second chart here cost
    # more browser drawing time than anything it adds
    both = {"entropy (nats, mean over groups)": km.entropy.numpy().mean(0),
            "high-frequency energy (mean over groups)": km.hf_energy.numpy().mean(0)}
    ranges = {name: (float(a.min()), float(a.max())) for name, a in both.items()}
    pictures = [heatmaps.thumbnail(a, "Viridis", side=MAP_PX, zmin=ranges[n][0], zmax=ranges[n][1], mark=(row, col))
                for n, a in both.items()]
    st.image([heatmaps.encode_png(p) for p in pictures], output_format="PNG", width=pictures[0].shape[1],
             caption=[f"{n}: {lo:.3g} dark purple → {hi:.3g} yellow" for n, (lo, hi) in ranges.items()])
    st.caption(f"Each map on its own scale, from its minimum (dark purple) to its maximum (yellow); the picked "
               f"pixel's cell (row {row}, col {col}) is outlined in white on both.")
