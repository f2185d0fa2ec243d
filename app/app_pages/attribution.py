"""Attribution: which pixels and which pyramid levels a chosen detection depends on (Captum).

LayerGradCAM on every level runs as soon as the page has a box (one forward+backward per level: seconds; cached).
Integrated Gradients and Occlusion run only when asked, inside this script run, with a progress bar, a Cancel
button and beforehand an estimate timed on this machine by the LayerGradCAM run. Cancel works through Streamlit:
its click reruns the script, and Streamlit stops the running one at its next call, the progress bar update; the
exception this raises comes out of ``efpn.explain`` and nothing is returned or kept. A long request starts only in
the run where Compute was pressed, so no rerun ever restarts it; a finished result is kept in the session, keyed
by its request.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st

from app import analyses, charts, figures, focusing, heatmaps, state, views
from efpn.explain import Explanation

LONG = "attr_long"  # the last long request: {"request", "state": running|cancelled|interrupted|failed, "done", ...}
RESULTS = "attr_results"  # request -> Explanation of the long methods, finished runs only
KEEP_RESULTS = 4  # finished long results kept per session (the oldest goes first)

ctx = state.context()
st.title("Attribution")
st.caption(
    "For one box, the target is T(x) = max over priors of class score x IoU(predicted box, chosen box): smooth in "
    "the pixels, and equal to the detection's score on the clean image. LayerGradCAM (which pyramid level carries "
    "T) runs at once; Integrated Gradients and Occlusion (which input pixels) run when you ask for them."
)
model = state.require_model(ctx)
image = state.require_image(ctx)
ins = state.inspection(ctx, model, image)
rows = views.detection_rows(ins.detections, model.levels, ctx.class_names)
names = ctx.class_names

found = focusing.focused_miss(ctx, model, image)
focus, focus_miss = found if found is not None else (None, None)
focusing.focus_banner(ctx, model, image, "Here: the best prior covering it is explained for the object's class: what "
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
                   f"{focus_miss.best_level}, scoring {focus_miss.best_score:.3f} for "
                   f"{focusing.class_name(ctx, label)} with IoU {focus_miss.best_iou:.2f} against the object. The "
                   "target T below is that class's score times the IoU with this box.")
    else:
        box = tuple(float(v) for v in focus.box)
        st.caption(f"GT {focus.gt_index} "
                   + ("is found at these settings" if focus_miss is None else "has no covering prior")
                   + f": its own box is explained for {focusing.class_name(ctx, label)}.")
elif source == "a detection":
    chosen = st.session_state.get("selected_detection")
    picked = views.selected_row(rows, chosen, image.digest)  # by its box: the same detection at any threshold
    if picked is not None and (chosen, picked) != st.session_state.get("attr_det_applied"):
        st.session_state["attr_det"] = picked  # the detection clicked on the Detect page
        st.session_state["attr_det_applied"] = (chosen, picked)
    idx = st.selectbox(  # the choice is kept while other pages are shown
        "Detection", list(range(len(rows))), key=state.sticky("attr_det", 0, list(range(len(rows)))),
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

names_of = views.ATTRIBUTION_NAMES

# ------------------------------------------------------------------ the fast default: LayerGradCAM on every level
fast = analyses.explain_gradcam(model, ctx.ckpt_key, image.rgb, image.digest, box, label)
net_rgb = analyses.network_rgb(model, image.rgb)  # the explanation's maps and box are in network pixels
box_net = np.array([fast.box], dtype=np.float32)
area = fast.mass_inside["box_area"]

m = st.columns(3)
m[0].metric("Target score T", f"{fast.score:.4f}")
m[1].metric("Box share of the image", f"{100 * area:.2f} %")
m[2].metric("Class", names[fast.label] if fast.label < len(names) else str(fast.label))

st.subheader("LayerGradCAM per pyramid level")
top = max((float(v.max()) for v in fast.gradcam.values()), default=0.0) or 1.0  # one scale: the levels compare
net_hw = net_rgb.shape[:2]
# PNG thumbnails, not plotly: they wrap onto more rows in a narrow window instead of shrinking to dots
st.image([heatmaps.mark_box(heatmaps.thumbnail(v, "Inferno", side=240, zmin=0.0, zmax=top), fast.box, net_hw)
          for v in fast.gradcam.values()],
         caption=[f"{lv} · {views.percent(fast.mass_inside[f'gradcam.{lv}'])} in box" for lv in fast.gradcam],
         width=170, output_format="PNG")
took = fast.timings_ms.get("gradcam")  # measured by the run that made these maps
st.caption(f"One colour scale for every level: black 0 → pale yellow {top:.2g}, the largest value of any level. "
           "Ringed: the box. Under each map, its share inside the box; a map blind to the box puts "
           f"{views.percent(area)} there (the box's area share). A black level carries none of this box's evidence "
           "(for a tiny object, usually the coarse ones)."
           + (f" Computed in {took / 1000:.1f} s ({len(fast.gradcam)} forward+backward passes)." if took else ""))

# ------------------------------------------------------------------ on request: Integrated Gradients and Occlusion


def _cancel() -> None:
    """Cancel's callback (runs first in the rerun its click starts, while the computing run is being stopped)."""
    run = st.session_state.get(LONG)
    if run is not None and run.get("state") == "running":
        run["state"] = "cancelled"


def _keep(request: tuple, ex: Explanation) -> None:
    """Keep a finished long result for its request (at most KEEP_RESULTS, the oldest dropped first)."""
    results: dict[tuple, Explanation] = st.session_state.setdefault(RESULTS, {})
    results.pop(request, None)
    results[request] = ex
    while len(results) > KEEP_RESULTS:
        results.pop(next(iter(results)))


run = st.session_state.get(LONG)
if run is not None and run.get("state") == "running":
    # A new script run while a long request was running: the run computing it was stopped (a control changed, the
    # page was left) and its work is gone. It is never restarted: only Compute starts a long request.
    run["state"] = "interrupted"

st.subheader("Integrated Gradients and Occlusion")
methods = st.multiselect("Methods", list(analyses.LONG_METHODS), format_func=names_of.get,
                         key=state.sticky("attr_methods", list(analyses.LONG_METHODS)),
                         help="Pixel attributions: many passes through the network, so they run only when you press "
                              "Compute.")
c_steps, c_evals = st.columns(2)
steps = c_steps.slider("IG steps", 4, 64, step=4, key=state.sticky("attr_ig_steps", 8),
                       disabled="integrated_gradients" not in methods,
                       help="Integrated Gradients: forward+backward passes along the path from a blurred copy of "
                            "the image to the image.")
evals = c_evals.slider("Occlusion budget (forwards)", 16, 400, step=16, key=state.sticky("attr_occ_evals", 64),
                       disabled="occlusion" not in methods,
                       help="Occluded images evaluated around the box; more = a finer occlusion grid.")
request = (image.digest, ctx.ckpt_key, box, label, tuple(methods), steps, evals)
results: dict[tuple, Explanation] = st.session_state.get(RESULTS, {})
done_ex = results.get(request)
plan = analyses.long_plan(model, image.rgb, box, methods, steps, evals) if methods else []

if methods and done_ex is None:
    parts = [(part, p) for part, p in plan if part in analyses.LONG_METHODS]
    estimates = {part: views.estimate_seconds(p, fast.pass_ms) for part, p in parts}
    passes_all: dict[str, int] = {}
    for _, p in plan:
        for kind, n in p.items():
            passes_all[kind] = passes_all.get(kind, 0) + n
    whole = views.estimate_seconds(passes_all, fast.pass_ms)
    if whole is not None:
        each = " · ".join(f"{names_of[part]} about {sec:.0f} s" for part, sec in estimates.items() if sec is not None)
        st.caption(f"Estimated on this machine: **about {whole:.0f} s** in all ({each}, and their deletion curves): "
                   f"{views.estimate_text(passes_all, fast.pass_ms)}, each pass timed during the LayerGradCAM run "
                   "above.")
pressed = st.button("Compute", type="primary", key="attr_run", disabled=not methods or done_ex is not None,
                    help="Already computed for these settings." if done_ex is not None else None)

if pressed and methods and done_ex is None:
    total = views.plan_images(plan)
    run = {"request": request, "state": "running", "done": 0, "total": total}
    st.session_state[LONG] = run
    slot = st.empty()
    with slot.container():
        st.button("Cancel", key="attr_cancel", on_click=_cancel, icon=":material/cancel:",
                  help="Stop now; nothing computed so far is kept.")
        bar = st.progress(0.0, text="Starting ...")
    t0 = time.perf_counter()

    def _progress(done: int, of: int) -> None:
        run["done"], run["total"] = done, of
        # a Streamlit call: where a Cancel (or any other control's rerun) stops this script run
        bar.progress(done / max(of, 1), text=views.progress_text(done, plan, time.perf_counter() - t0,
                                                                     fast.pass_ms))

    def _waiting() -> None:
        # a Streamlit call too: Cancel also works while the request waits for the server's heavy-work slot
        bar.progress(0.0, text="Queued: another heavy request (attribution or sliced inference) is running on this "
                               "server; this one starts when it ends.")

    try:
        done_ex = analyses.explain_long(model, image.rgb, box, label, methods, steps, evals, _progress, _waiting)
    except Exception as e:  # a failure of the computation; Streamlit's stop (a BaseException) passes through
        run["state"] = "failed"
        run["error"] = f"{type(e).__name__}: {e}"
    else:
        _keep(request, done_ex)
        st.session_state[LONG] = None
        st.rerun()  # draw the page afresh with the result (Compute then shows it is done)
    slot.empty()

run = st.session_state.get(LONG)
if run is not None and run.get("request") == request and done_ex is None:
    where = f"after {run['done']} of {run['total']} passes"
    if run["state"] == "cancelled":
        st.warning(f"Cancelled {where}; nothing was kept. Press **Compute** to run it again.",
                   icon=":material/cancel:")
    elif run["state"] == "interrupted":
        st.info(f"Stopped {where} when the page reran (another control was used, or the page was left); nothing "
                "was kept. Press **Compute** to run it again.")
    elif run["state"] == "failed":
        st.error(f"The attribution failed {where}: {run.get('error')}")

if done_ex is not None:
    cols = st.columns(max(1, len(done_ex.maps)))
    for col, (method, a) in zip(cols, done_ex.maps.items()):
        fig = figures.attribution_figure(net_rgb, a, box_net, names_of[method], height=320,
                                         view=figures.zoom_window(fast.box, net_hw))
        col.plotly_chart(fig, width="stretch", key=f"attr_map_{method}")
        spent = done_ex.timings_ms.get(method)  # measured by the run that made this map
        col.caption(f"Around the box (green; the plot's autoscale shows the whole image). Red: the pixel raises T; "
                    "blue: it lowers T. "
                    f"{views.percent(done_ex.mass_inside[method])} of |attribution| inside the box (a random map: "
                    f"{views.percent(area)})" + (f" · computed in {spent / 1000:.1f} s" if spent is not None else "")
                    + ".")

# ------------------------------------------------------------------ faithfulness, against the random baselines
st.subheader("Faithfulness")
curves = dict(fast.deletion)
aucs = dict(fast.deletion_auc)
mass = dict(fast.mass_inside)
shown = ["gradcam"]
if done_ex is not None:
    for method in done_ex.maps:
        curves[method], aucs[method] = done_ex.deletion[method], done_ex.deletion_auc[method]
        mass[method] = done_ex.mass_inside[method]
        shown.append(method)
st.caption("Read each map against its random baseline: a deletion AUC below the random pixel order's means the map "
           "points at pixels the score depends on, and an in-box share above the box's area share means it "
           "concentrates on the object.")
if aucs and min(aucs.values()) >= 0.98:  # every curve stays at its start: the test has nothing to tell apart
    st.info("Deleting pixels barely changes the score on this image (every deletion AUC is about 1, the random "
            "order's too): its blurred baseline is almost the image itself (a tiny or uniform image), so the deletion "
            "test cannot tell the maps apart here. The in-box shares still can.")
# a static table: its few rows wrap in a narrow window instead of scrolling out of sight
st.table(pd.DataFrame(views.faithfulness_rows(mass, aucs, shown)).set_index("map"))
if done_ex is None:
    st.caption("Compute Integrated Gradients or Occlusion above to add their rows and curves.")
st.plotly_chart(charts.deletion_figure(curves, aucs, names_of), width="stretch", key="attr_deletion")
