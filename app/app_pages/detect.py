"""Detect: upload images (or a sample, or a webcam photo), see the boxes coloured by the level that found them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import analyses, charts, figures, focusing, heatmaps, loaders, state, views
from efpn.explain import reduce_channels
from efpn.infer import TooManyTilesError, num_tiles, suggested_tile

ctx = state.context()
st.title("Detect")
st.caption(
    "Upload images or pick a sample in the sidebar. Each box is coloured by the pyramid level (p2 = stride 4, "
    "p3 = 8, ...) that produced it: tiny objects can only come from the fine levels."
)

up_col, opt_col = st.columns([5, 2])
with up_col:
    st.file_uploader(
        "Upload images (PNG, JPEG, BMP, TIFF incl. 16-bit and grayscale)", type=state.IMAGE_TYPES,
        accept_multiple_files=True, key="detect_uploader", on_change=state.on_upload, args=("detect_uploader",),
    )
with opt_col:
    mode = st.radio("Inference", ["Whole image", "Sliced (tiles)"], key=state.sticky("detect_mode", "Whole image"),
                    help="Sliced: detect on overlapping tiles at full resolution and merge with NMS (large images).")
    use_camera = st.toggle("Webcam", key="use_camera", help="Take a photo with your camera.")
if use_camera:
    st.camera_input("Take a photo", key="detect_camera", on_change=state.on_camera, args=("detect_camera",))

for err in st.session_state.pop("upload_errors", []) or []:
    st.error(f"{err}\n\nUpload a PNG, JPEG, BMP or TIFF file; the other images are unaffected.")
for note in st.session_state.pop(state.UPLOAD_NOTICES, []) or []:
    st.info(note)

model = state.require_model(ctx)
image = state.require_image(ctx)
if image.notice:
    st.warning(image.notice)

h, w = image.hw
tiles = None
if mode == "Sliced (tiles)":
    c1, c2 = st.columns(2)
    largest = max(64, h, w)
    if st.session_state.get("tile_side", 0) > largest:  # a smaller image than the last one
        del st.session_state["tile_side"]
    tile = c1.slider("Tile side (px)", 32, largest, suggested_tile((h, w), model.config.image_size), 16,
                     key="tile_side", help="Each tile is resized to the model's input size, so small tiles enlarge "
                                           "small objects.")
    overlap = c2.slider("Overlap", 0.0, 0.5, 0.2, 0.05, key="tile_overlap")
    st.caption(f"{num_tiles((h, w), tile, overlap)} tiles + one whole-image pass, merged with class-aware NMS.")
    try:
        out = analyses.sliced_detections(model, ctx.ckpt_key, image.rgb, image.digest, tile, overlap, ctx.score,
                                         ctx.nms)
    except TooManyTilesError as e:  # a tiny tile on a large image: minutes of forwards, refused before the first
        why = str(e)
        st.error(f"{why[:1].upper()}{why[1:]}. Move the tile slider up, or switch Inference back to Whole image.")
        st.stop()
    detections = out
    tiles = out["tiles"]
    timing = None
    ins = None
    sliced: tuple[int, float] | None = (tile, overlap)
else:
    sliced = None
    ins = state.inspection(ctx, model, image)
    detections = ins.detections
    timing = ins.timings_ms

rows = views.detection_rows(detections, model.levels, ctx.class_names)
has_gt = ctx.gt is not None and len(ctx.gt.boxes) > 0
gt_names = focusing.gt_names(ctx)

view = "pyramid level"
if has_gt:  # the matching settings first: the figure depends on them
    c_view, c_iou = st.columns(2)
    view = c_view.radio("Colour the boxes by", ["found / missed", "pyramid level"], key="detect_view",
                        horizontal=True,
                        help="found / missed: each object and detection matched against the ground truth; pyramid "
                             "level: each detection coloured by the level that produced it.")
    iou0, aware0 = focusing.match_settings()
    iou = c_iou.slider("Match IoU", 0.1, 0.95, iou0, 0.05, key="match_iou",
                       help="A detection finds an object when their boxes overlap by at least this IoU (greedy, "
                            "best score first, one detection per object).")
    aware = c_iou.toggle("Same class only", value=aware0, key="match_class_aware",
                           help="Match a detection only to an object of its class. Off: any class (localisation "
                                "only).")
    focusing.set_match_settings(iou, aware)
left, right = st.columns([5, 2])
diag = focusing.diagnosis(ctx, model, image, ins, sliced, detections) if has_gt else None
focus = focusing.focus(ctx)
miss_by_gt = {m.gt_index: m for m in diag.misses} if diag is not None else {}
focus_miss = miss_by_gt.get(focus.gt_index) if focus is not None else None

if diag is not None and view == "found / missed":
    assert ctx.gt is not None
    fig = figures.matching_figure(
        image.rgb, rows, ctx.gt.boxes, gt_names, diag.matching.gt_match.tolist(), diag.matching.gt_iou.tolist(),
        diag.matching.det_match.tolist(), {m.gt_index: m.cause for m in diag.misses},
        focus=focus.gt_index if focus is not None else None,
        focus_prior=focus_miss.best_box if focus_miss is not None else None, tiles=tiles)
else:
    fig = figures.detections_figure(image.rgb, rows, gt_boxes=ctx.gt.boxes if ctx.gt is not None and
                                    st.session_state.get("show_gt", True) else None, tiles=tiles)

with left:
    event = st.plotly_chart(fig, width="stretch", key="detect_fig", on_select="rerun", selection_mode="points")
    if diag is not None and view == "found / missed":
        st.caption(
            f"<span style='color:{figures.FOUND_COLOUR}'>■</span> **solid green**: object found (its ground-truth box; "
            f"hover for the detection) · <span style='color:{figures.FALSE_ALARM_COLOUR}'>■</span> **dashed orange**: "
            f"false alarm (a detection that found no object) · <span style='color:{figures.MISSED_COLOUR}'>■</span> "
            f"**thick red**: missed object. Matched at IoU ≥ {iou:g}"
            + (", same class." if aware else ", any class.")
            + (" White ring: the focused object; dotted white: the best prior covering it." if focus_miss else "")
            + " Click a red box's centre to focus on it.",
            unsafe_allow_html=True)
picks = [views.parse_pick(p.get("customdata")) for p in
         ((event.selection.points if event and event.selection else []) or [])]
picks = [pk for pk in picks if pk is not None]
if picks and picks[-1] != st.session_state.get("detect_last_pick"):  # a new click, not the one kept from before
    st.session_state["detect_last_pick"] = picks[-1]
    kind, idx = picks[-1]
    if kind == "det" and idx < len(rows):
        st.session_state["selected_detection"] = (image.digest, idx, tuple(rows[idx]["box"]))  # the box names it
    elif kind == "gt" and ctx.gt is not None and idx < len(ctx.gt.boxes):
        focusing.set_focus(image.digest, idx, ctx.gt.boxes[idx], int(ctx.gt.labels[idx]))
        st.rerun()
with right:
    st.metric("Detections", len(rows))
    counts = views.level_counts(rows, model.levels)
    if view == "pyramid level":
        # a static table: a handful of numbers, drawn at once (an interactive grid costs the browser ~0.1 s to mount)
        st.table(pd.DataFrame({"detections": list(counts.values())}, index=pd.Index(list(counts), name="level")))
        if ctx.gt is not None:
            st.toggle("Ground truth", value=True, key="show_gt")  # short: the side column is narrow on small screens
    if timing:
        st.caption(f"Forward {timing['forward']:.0f} ms on {w}x{h} px (network input "
                   f"{model.config.image_size} px long side), measured when this image was first run.")
    if not rows:
        st.info("No detection above the score threshold; lower it in the sidebar to see weaker ones.")
    sel = views.selected_row(rows, st.session_state.get("selected_detection"), image.digest)
    if sel is not None:
        r = rows[sel]
        st.caption(f"Selected #{sel}: {r['class']} {r['score']:.3f} on {r['level']}. The **Attribution** page "
                   "explains it.")
    else:
        st.caption("Click a detection's centre to select it for the Attribution page.")

if diag is not None:
    assert ctx.gt is not None
    st.subheader("Found and missed")
    m = diag.matching
    alarms = [rows[i]["bucket"] for i in m.false_alarms.nonzero().flatten().tolist() if i < len(rows)]
    by_bucket = m.counts_by_bucket()
    c = st.columns(3)
    c[0].metric("Found", f"{int(m.found.sum())} of {len(m.found)}")
    c[1].metric("Missed", int(m.missed.sum()))
    c[2].metric("False alarms", len(alarms))
    st.html(charts.found_missed_html(by_bucket))  # static HTML: a few bars, no plotly chart to mount
    # the table under the chart, not beside it: its six columns do not fit a side column of a narrow window
    st.table(pd.DataFrame(views.bucket_rows(by_bucket, {b: alarms.count(b) for b in set(alarms)})).set_index("size"))
    st.caption("Per size bucket (sqrt(w·h) in this image's pixels: vt < 8, t < 16, s < 32, m < 64 px, l); false "
               "alarms by their own box size.")

    st.subheader("Missed objects")
    if not diag.misses:
        st.success("Every ground-truth object is found at these settings.")
    else:
        misses = diag.misses
        gt_boxes, gt_labels = ctx.gt.boxes, ctx.gt.labels

        def _on_row() -> None:  # a table row chosen: focus on that object everywhere
            chosen = st.session_state.get("miss_table")
            rows_sel = (chosen or {}).get("selection", {}).get("rows", []) if chosen else []
            if rows_sel and rows_sel[0] < len(misses):
                g = misses[rows_sel[0]].gt_index
                focusing.set_focus(image.digest, g, gt_boxes[g], int(gt_labels[g]))

        st.caption("One row per missed object: its cause under the rule of `efpn.explain` (the first stage that lost "
                   "it) and the numbers the rule looked at. Select a row, or pick below, to focus on the object: "
                   "Assignment, Gates, Kernels, Attribution and Pyramid then show it.")
        st.dataframe(views.miss_rows(misses, gt_names), hide_index=True,
                     width="stretch", key="miss_table", on_select=_on_row, selection_mode="single-row")
        focus = focusing.focus(ctx)
        options = [-1, *miss_by_gt]
        if focus is not None and focus.gt_index not in options:
            options.append(focus.gt_index)  # found at these settings, still focused
        st.session_state["miss_focus_pick"] = focus.gt_index if focus is not None else -1

        def _on_pick() -> None:
            g = st.session_state.get("miss_focus_pick", -1)
            if g is None or g < 0:
                focusing.clear_focus()
            else:
                focusing.set_focus(image.digest, g, gt_boxes[g], int(gt_labels[g]))

        def _label(g: int) -> str:
            if g < 0:
                return "nothing (every page as usual)"
            mm = miss_by_gt.get(g)
            return (f"GT {g} · {gt_names[g]} · {mm.size:.1f} px · {mm.cause}" if mm is not None
                    else f"GT {g} · {gt_names[g]} · found at these settings")

        st.selectbox("Focus on", options, key="miss_focus_pick", format_func=_label, on_change=_on_pick)
        focus_miss = miss_by_gt.get(focus.gt_index) if focus is not None else None
        if focus_miss is not None:
            with st.container(border=True):
                summary = focusing.miss_summary(focus_miss, gt_names[focus_miss.gt_index])
                st.markdown(f":material/center_focus_strong: {summary}")
                st.dataframe(views.rule_rows(focus_miss, diag.score_thresh, diag.iou_thresh), hide_index=True,
                             width="stretch", key="miss_rule")
                st.caption("The rule tries the steps in order; the first one the object does not pass is its cause. "
                           "Disagree? The measured numbers are all here, and the rule is documented in "
                           "`efpn/explain/diagnose.py`.")
                links = [*st.columns(3), *st.columns(3)]  # two rows: the labels stay whole on a narrow page
                for col, (page, icon) in zip(links, (("assignment", ":material/assignment:"),
                                                     ("gates", ":material/filter_alt:"),
                                                     ("kernels", ":material/grid_on:"),
                                                     ("attribution", ":material/biotech:"),
                                                     ("pyramid", ":material/stacks:"))):
                    col.page_link(state.PAGE_FILES[page], label=page.capitalize(), icon=icon)

if ins is None:
    st.caption("The internals below the boxes (CEM, FBSM gates, kernels, positives) are shown for whole-image "
               "inference; switch Inference back to Whole image to see them.")
else:
    # Inside the network, from the same cached forward: the detailed pages reuse this inspection.
    st.subheader("Inside the network")
    gt, how_boxes = state.boxes_for_analysis(ctx, ins.detections)
    c_lv, c_maps = st.columns([2, 3])
    with c_lv:
        st.markdown("**Detections and positive anchors per level**")
        acc = (analyses.boxes_accounting(model, ctx.ckpt_key, ins, image.digest, gt.for_model(model.num_classes))
               if gt is not None else None)
        st.html(charts.level_summary_html(model.levels, counts, acc["positives_per_level"] if acc else None))
        if acc is not None:
            coarse = next(iter(acc["zero_high_level_share"].items()), None)  # the finest level >= p5
            zero = f" {100 * coarse[1]:.0f} % have none on {coarse[0]} or coarser." if coarse else ""
            st.caption(f"{how_boxes} Assigner: {model.config.head.assigner}. {len(acc['starved'])} of "
                       f"{acc['num_gt']} boxes starved (no regular positive).{zero}")
        else:
            st.caption(how_boxes)
        st.page_link(state.PAGE_FILES["assignment"], label="Assignment", icon=":material/assignment:")
    THUMB = 96  # px on the page: made at that size (nearest, cells stay square) and encoded once, so Streamlit
    # neither shrinks them bilinearly (blurring the cells) nor encodes them a second time

    def _thumb(a: np.ndarray, scale: str = "Viridis", zmin: float | None = None, zmax: float | None = None) -> bytes:
        return heatmaps.encode_png(heatmaps.thumbnail(a, scale, side=THUMB, zmin=zmin, zmax=zmax))

    kernel_maps = {n: km.entropy.numpy().mean(0) for n, km in ins.kernels.items() if km.entropy is not None}
    overview = [  # (title, pictures, captions, page, icon, what is missing)
        ("**CEM fused context F** (channel mean, per target level)",
         [_thumb(reduce_channels(f, "mean")) for f in ins.cem_fused.values()],
         [f"{lv} · α {ins.cem_alpha.get(lv, 0.0):.3g}" for lv in ins.cem_fused], "pyramid", ":material/stacks:",
         "No CEM in this checkpoint."),
        ("**FBSM gates M** (0 black → 1 yellow)",
         [_thumb(m.numpy(), "Inferno", zmin=0.0, zmax=1.0) for m in ins.gates.values()],
         [f"{lv} · mean {float(m.mean()):.2f}" for lv, m in ins.gates.items()], "gates", ":material/filter_alt:",
         "No FBSM gates in this checkpoint."),
        ("**Dynamic kernels** (entropy of D per pixel, mean over groups)",
         [_thumb(m) for m in kernel_maps.values()],
         [f"{n} · {float(m.mean()):.2f} nats" for n, m in kernel_maps.items()], "kernels", ":material/grid_on:",
         "No RDConv/SGDM layers in this checkpoint."),
    ]
    with c_maps:
        for title, pictures, captions, page, icon, missing in overview:
            st.markdown(title)
            if pictures:
                st.image(pictures, caption=captions, width=THUMB, output_format="PNG")
            else:
                st.caption(missing)
            st.page_link(state.PAGE_FILES[page], label=page.capitalize(), icon=icon)

    # any of the thumbnails full size, laid over the image cell for cell (the inspection owns the strides)
    full: dict[str, tuple[np.ndarray, float, str, float | None, float | None, str]] = {}
    for lv, f in ins.cem_fused.items():
        full[f"CEM fused context F on {lv} (channel mean)"] = (reduce_channels(f, "mean"), ins.stride_in_image(lv),
                                                             "Viridis", None, None, "F")
    for lv, m in ins.gates.items():
        full[f"FBSM gate M on {lv}"] = (m.numpy(), ins.stride_in_image(lv), "Inferno", 0.0, 1.0, "M")
    for n, m in kernel_maps.items():
        full[f"kernel entropy of {n} (nats)"] = (m, ins.stride_in_image(n), "Viridis", None, None, "nats")
    if full:
        # lazy: the figure (the image once more, plus the map) is built and sent only while the expander is open
        full_box = st.expander("Open a map full size, over the image", icon=":material/open_in_full:",
                               key="detect_full_open", on_change="rerun")
        if full_box.open:
            with full_box:
                pick = st.selectbox("Map", list(full), key="detect_full_map")
                z, stride, scale, lo, hi, unit = full[pick]
                st.plotly_chart(figures.heatmap_overlay_figure(image.rgb, z, stride, colorscale=scale, zmin=lo,
                                                               zmax=hi, boxes=gt.boxes if gt is not None else None,
                                                               title=pick, colorbar_title=unit),
                                width="stretch", key="detect_full_map_fig")
                st.caption("Each cell of the map covers the image pixels it was computed for; boxes: "
                           + (gt.source if gt is not None else "none") + ". The colour bar is the map's own scale.")

st.subheader("Detections")
st.dataframe(views.table_rows(rows), hide_index=True, width="stretch", key="detect_table")

d1, d2 = st.columns(2)
stem = views.download_stem(image.name)
d1.download_button(
    "Download JSON",
    views.detections_json(detections, model.levels, ctx.class_names, image.name, (h, w), ctx.checkpoint or "",
                          ctx.score, ctx.nms),
    file_name=f"{stem}_detections.json", mime="application/json", key="dl_json",
)
# drawn and encoded on click, not on every run of the page (~140 ms for a 640 px image)
d2.download_button("Download drawn image (PNG)",
                   lambda rgb=image.rgb, det=detections: views.drawn_png(rgb, det, model.levels, ctx.class_names),
                   file_name=f"{stem}_detections.png", mime="image/png", key="dl_png")

uploads: dict[str, bytes] = st.session_state.get(state.UPLOADS, {})
if len(uploads) > 1:
    # lazy: every other upload runs through the network only while this is open
    all_box = st.expander(f"All {len(uploads)} uploaded images", key="detect_all_open", on_change="rerun")
    if all_box.open:
        with all_box:
            summary = []
            bar = st.progress(0.0, text="Detecting on every upload ...")
            failed: list[str] = []
            for i, (name, data) in enumerate(uploads.items(), start=1):
                digest = loaders.digest_of(data)
                try:
                    decoded = loaders.decode_image(digest, data, loaders.max_pixels())
                    det = (detections if digest == image.digest and sliced is None  # this page's image: already run
                           else analyses.predict_detections(model, ctx.ckpt_key, decoded.rgb, digest, ctx.score,
                                                            ctx.nms))
                except ValueError as e:  # e.g. a strip too thin for one network input: that row, not the table
                    failed.append(f"**{name}**: {e}")
                    continue
                finally:
                    bar.progress(i / len(uploads), text=f"{i}/{len(uploads)} images")
                per = views.level_counts(views.detection_rows(det, model.levels, ctx.class_names), model.levels)
                scores = np.asarray(det["scores"], dtype=np.float32)  # numpy or a CPU tensor
                best = float(scores.max()) if scores.size else 0.0
                summary.append({"image": name, "size": f"{decoded.rgb.shape[1]}x{decoded.rgb.shape[0]}",
                                "detections": int(sum(per.values())), "best score": round(best, 3), **per})
            bar.empty()
            st.dataframe(summary, hide_index=True, width="stretch")
            if failed:
                st.warning("Not run whole (pick it in the sidebar and use Sliced inference, or remove it):\n\n- "
                           + "\n- ".join(failed))
            st.caption("Pick one in the sidebar's Image list to inspect it on every page.")
