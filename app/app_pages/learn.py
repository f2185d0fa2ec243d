"""Learn: a step-by-step walk through the detector on the current image, each step explained and drawn live."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import analyses, charts, figures, heatmaps, state, views
from efpn.explain import count_candidates, reduce_channels

ctx = state.context()
st.title("Learn")
model = state.require_model(ctx)
image = state.require_image(ctx)
gt = ctx.gt
gkey = gt.for_model(model.num_classes) if gt is not None and len(gt.boxes) else None
try:
    ins = analyses.inspect_image(model, ctx.ckpt_key, image.rgb, image.digest, ctx.score, ctx.nms, gkey)
except ValueError as e:
    # an image the network cannot take whole (a long strip) stops the page here, with that reason; otherwise it
    # was the ground truth the model refuses (e.g. boxes outside the image)
    ins = state.inspection(ctx, model, image)
    st.warning(f"The ground truth cannot be used for the training steps ({e}); showing inference only.")

STEPS = ["1 Input", "2 Backbone", "3 FPN", "4 CEM", "5 FBSM", "6 Dynamic kernels", "7 Head",
         "8 Assignment and loss", "9 Decoding and NMS"]
st.session_state.setdefault("learn_step", STEPS[0])
c_prev, c_sel, c_next = st.columns([3, 10, 3])  # the buttons keep their labels on a narrow page
i = STEPS.index(st.session_state["learn_step"])
if c_prev.button("◀ Back", disabled=i == 0, key="learn_prev"):
    st.session_state["learn_step"] = STEPS[i - 1]
    st.rerun()
if c_next.button("Next ▶", disabled=i == len(STEPS) - 1, key="learn_next"):
    st.session_state["learn_step"] = STEPS[i + 1]
    st.rerun()
step = c_sel.select_slider("Step", STEPS, key="learn_step", label_visibility="collapsed")
st.header(step)


MAP_PX = 190  # shown width of one map: five side by side on a wide page, two a row at 800 px


def map_row(maps: dict[str, np.ndarray], colorscale: str = "Viridis", zmin: float | None = None,
            zmax: float | None = None) -> None:
    """Maps (H, W) or RGB pictures (H, W, 3) side by side, each captioned with its name, all the same width:
    pictures wrap onto more rows in a narrow window (a row of plotly subplots shrank them to slivers with small
    titles far above), and coarse maps are enlarged by whole cells (:func:`app.heatmaps.thumbnail`)."""
    pictures = [heatmaps.thumbnail(a, colorscale, side=2 * MAP_PX, zmin=zmin, zmax=zmax) for a in maps.values()]
    st.image([heatmaps.encode_png(p) for p in pictures], caption=list(maps), width=MAP_PX, output_format="PNG")


def pca_grid(feats: dict, title_suffix: str = "") -> None:
    """A row of PCA -> RGB pictures, one per named feature map."""
    map_row({f"{k} · {v.shape[-2]}x{v.shape[-1]}{title_suffix}": reduce_channels(v, "pca") for k, v in feats.items()})
    st.caption("Colours: the map's channels projected on their first three principal components, as red, green and "
               "blue. Within one map, similar colour = similar features; colours do not compare across maps.")


nh, nw = ins.network_hw
if step == STEPS[0]:
    ten = float(ins.to_network(np.array([[0.0, 0.0, 10.0, 10.0]]))[0, 2])  # a 10 px object, in network px
    st.markdown(
        f"The detector sees your {image.rgb.shape[1]}x{image.rgb.shape[0]} image resized so its long side is "
        f"**{model.config.image_size} px** (scale {ins.scale:.3f}): a {nw}x{nh} RGB tensor with values in [0, 1], "
        "normalised inside the model and padded at the bottom/right to a multiple of 32. An object of s px "
        f"becomes **{ins.scale:.2f}·s px**: a 10 px object becomes {ten:.1f} px. That is why tiny "
        "objects in large images are hard, and why the Detect page offers sliced inference."
    )
    net_rgb = analyses.network_rgb(model, image.rgb)
    c1, c2 = st.columns(2)
    c1.plotly_chart(figures.image_figure(image.rgb, height=380, title="your image"), width="stretch",
                    key="learn_input")
    c2.plotly_chart(figures.image_figure(net_rgb, height=380, title=f"network input, {nw}x{nh}"),
                    width="stretch", key="learn_net")
elif step == STEPS[1]:
    st.markdown(
        "The **backbone** turns pixels into features, halving the resolution at every stage: c2 (stride 4), c3 (8), "
        "c4 (16), c5 (32). Deeper stages know more *what* but less *where*: one c5 cell covers 32x32 px, so an 8 px "
        "object is a small fraction of a single cell. Below, each stage's channels projected on their first three "
        "principal components (similar colour = similar features)."
    )
    pca_grid(ins.backbone)
elif step == STEPS[2]:
    st.markdown(
        "The **FPN** (feature pyramid network) adds the coarse, semantic stages back into the fine ones (top-down) "
        "and outputs one map per level p2..p6 with the same channels, so one head can look at all of them. Small "
        "objects are predicted on fine levels (p2, p3), large ones on coarse levels."
    )
    pca_grid(ins.pyramid_before_cem)
elif step == STEPS[3]:
    if ins.cem_fused:
        st.markdown(
            "**CEM** (Context Enhancement Module) compresses p5/p6 (local branch: 1x1 conv, resize, align; global "
            "branch: pooled context), fuses them into F and adds it to the fine levels: p' = p + α·F. The fine "
            "levels get context, *and* p5/p6 now receive gradient from tiny objects' positives (see Pyramid)."
        )
        pca_grid(ins.cem_fused, " F")
        for lv, a in ins.cem_alpha.items():
            st.markdown(views.alpha_sentence(lv, a, views.cem_change(a, ins.cem_fused[lv], ins.pyramid_before_cem[lv])))
    else:
        st.info("This checkpoint has no CEM; with it, p5/p6 context would be fused into the fine levels.")
elif step == STEPS[4]:
    if ins.gates:
        st.markdown(
            "**FBSM** predicts a foreground mask M per fine level and amplifies features under it: x' = x·(1 + β·M). "
            "Trained with the boxes as target (the cell of every box centre always counts), it learns where small "
            "objects are, so the head is not drowned in background."
        )
        betas = ins.gate_beta  # the learned beta of each gated level, from the same forward
        for lv_b, m_b in ins.gates.items():
            if lv_b in betas:
                st.markdown(views.beta_sentence(lv_b, betas[lv_b], m_b))
        lv = next(iter(ins.gates))
        st.plotly_chart(figures.heatmap_overlay_figure(image.rgb, ins.gates[lv].numpy(), ins.stride_in_image(lv),
                                                       0.55, colorscale="Inferno", zmin=0, zmax=1, height=420,
                                                       title=f"FBSM gate on {lv}", colorbar_title="M"),
                        width="stretch", key="learn_gate")
        st.caption("The gate M over the image: black 0 (background) → pale yellow 1 (foreground).")
    else:
        st.info("This checkpoint has no FBSM gates.")
elif step == STEPS[5]:
    if ins.kernels:
        layer = next(iter(ins.kernels))
        km = ins.kernels[layer]
        st.markdown(
            f"**SGDM** downsampling (layer {layer}) uses a different 3x3 kernel at every pixel (RDConv), generated "
            "from a 2-channel summary of the input, and steered by a static bank shared within each group. Below: "
            "how spread out each pixel's kernel is (entropy; high = smooth averaging, low = a sharp, selective "
            "kernel). Explore single kernels on the Kernels page."
        )
        ent = km.entropy.numpy().mean(0) if km.entropy is not None else km.dynamic.numpy().std(1).mean(0)
        st.plotly_chart(figures.heatmap_overlay_figure(image.rgb, ent, ins.stride_in_image(layer), 0.5, height=420,
                                                       colorscale="Viridis", title=f"kernel entropy, {layer}",
                                                       colorbar_title="nats"), width="stretch", key="learn_kernels")
        st.caption("Kernel entropy over the image, as on the Kernels page: dark purple = lowest (sharp kernels), "
                   "yellow = highest (spread out).")
    else:
        st.info("This checkpoint uses ordinary (static) convolutions: the same kernel at every pixel.")
elif step == STEPS[6]:
    st.markdown(
        "The **head** predicts, at every location of every level (and for every anchor there), a score per class "
        "and a box. Below: the best class score at each location, per level. Tiny objects can only light up the "
        "fine levels: on p5 one cell is already 32 px wide."
    )
    maps = analyses.score_maps(model, ctx.ckpt_key, image.rgb, image.digest)
    # one scale for every level, up to this image's best score: on 0..1 the maps were black where scores are low
    top = max((float(np.max(v)) for v in maps.values()), default=0.0) or 1.0
    map_row({f"{lv} · best score {float(np.max(v)):.2f}": v for lv, v in maps.items()}, "Inferno", 0.0, top)
    st.caption(f"One colour scale for every level: black 0 → pale yellow {top:.2f}, the best score on this image.")
elif step == STEPS[7]:
    st.markdown(
        "In **training**, an assigner decides which priors are positive for each ground-truth box; only those "
        "learn to predict it. The losses then pull positives' scores up and boxes onto the GT, and negatives' "
        "scores down. A GT with no positive is never learnt (see the Assignment page)."
    )
    if ins.assignment is None:
        st.info("This image has no ground truth; add some on the Assignment page to see the assignment and loss.")
    else:
        acc = ins.assignment.accounting.to_dict()
        c1, c2 = st.columns([2, 1])
        c1.plotly_chart(charts.positives_bar_figure(acc, title=f"Positives per level ({ins.assignment.assigner})"),
                        width="stretch", key="learn_pos")
        c2.metric("Starved GTs", f"{len(acc['starved'])} of {acc['num_gt']}")
        st.markdown("**This image's losses** under the checkpoint's weights (lower = closer to what training asks):\n"
                    + "\n".join(f"- `{k.removeprefix('loss_')}` = {v:.3f}: {views.LOSS_TEXT.get(k, 'a training loss')}"
                                 for k, v in ins.losses.items()))
else:
    st.markdown(
        f"At **inference**, every (location, class) scoring above the threshold ({ctx.score:.2f}) is decoded into a "
        f"box; then non-maximum suppression keeps the best of overlapping boxes of the same class (IoU > "
        f"{ctx.nms:.2f}). Each final detection remembers the level it came from."
    )
    maps = analyses.score_maps(model, ctx.ckpt_key, image.rgb, image.digest)
    rows = views.detection_rows(ins.detections, model.levels, ctx.class_names)
    st.plotly_chart(charts.candidates_figure(count_candidates({k: np.asarray(v) for k, v in maps.items()}, ctx.score),
                                             views.level_counts(rows, model.levels)), width="stretch", key="learn_nms")
    st.plotly_chart(figures.detections_figure(image.rgb, rows, height=420), width="stretch", key="learn_dets")
    # the figure's legend keys the levels' colours; the caption counts every level, those with none too
    st.caption("Detections per level: " + " · ".join(f"{lv}: {n}" for lv, n in
                                                      views.level_counts(rows, model.levels).items()))

# one sentence per step about what this image shows, computed from the same inspection
_maps = analyses.score_maps(model, ctx.ckpt_key, image.rgb, image.digest) if STEPS.index(step) in (6, 8) else None
st.info("**What to notice:** " + views.learn_notice(STEPS.index(step), ins, gt.boxes if gt is not None else None,
                                                     _maps, ctx.score), icon=":material/visibility:")
