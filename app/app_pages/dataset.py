"""Dataset: open a dataset's images with their ground truth, and see what the checkpoint misses over many images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import streamlit as st

from app import analyses, charts, dataset_rows, focusing, loaders, state
from efpn import BUCKET_LABELS, BUCKETS
from efpn.data import AnnotationError, category_ids, category_ids_for
from efpn.explain import CAUSE_TEXT, CAUSES

KEPT = "dataset_page"  # path, split, N of this page, outside its widgets (cleared when another page runs)

ctx = state.context()
st.title("Dataset")
st.caption(
    "Pick a dataset (a data YAML of the project, the bundled samples, or a folder named by EFPN_DATA_DIR), browse "
    "its images with their ground truth, and diagnose the checkpoint over many of them: recall by object size, and "
    "why each missed object was missed."
)
model = state.require_model(ctx)

choices = loaders.dataset_choices()
present = [c for c in choices if c.present]
absent = [c for c in choices if not c.present]
if absent:
    with st.expander(f"{len(absent)} dataset(s) not available on this machine"):
        for c in absent:
            st.markdown(f"- **{c.label}**: {c.missing}")
if not present:
    st.info("No dataset's data is on this machine. Write one with `efpn data synth --out data/synth` (then "
            "recipes/data/synth.yaml opens), or point EFPN_DATA_DIR at a folder of data YAMLs.")
    st.stop()

by_path = {c.path: c for c in present}
kept = st.session_state.get(KEPT, {})  # the choices below, kept while other pages are open
state.keep_valid("dsd_choice", list(by_path))
c1, c2 = st.columns([3, 1])
options = list(by_path)
path = c1.selectbox("Dataset", options, key="dsd_choice", format_func=lambda p: by_path[p].label,
                    index=options.index(kept["path"]) if kept.get("path") in options else 0,
                    help="Only data YAMLs of the project and of EFPN_DATA_DIR are offered; those without their data "
                         "are listed above.")
choice = by_path[path]
splits = list(choice.splits)
state.keep_valid("dsd_split", splits)
default_split = splits.index("val") if "val" in splits else len(splits) - 1  # the split the cards report
split = c2.selectbox("Split", splits, key="dsd_split",
                     index=splits.index(kept["split"]) if kept.get("split") in splits else default_split)
try:
    records, names, report = loaders.load_dataset(path, split, Path(path).stat().st_mtime_ns)
except (ValueError, OSError, AnnotationError) as e:
    st.error(f"{choice.label} could not be loaded: {e}")
    st.stop()
if not records:  # an empty list, a carved split of a tiny set, or annotations whose image files are missing
    lines = "\n".join(f"- {line.strip()}" for line in report.splitlines() if line.strip())
    st.info(f"The {split} split of {choice.label} holds no image to show: its list is empty, it is carved from a "
            f"train set too small to spare one, or its image files are missing. The loader's report:\n\n{lines}"
            "\n\nChoose another split, or check the split's entries in the YAML.")
    st.stop()
name = Path(path).stem if Path(path).name != "data.yaml" else Path(path).parent.name
model_names = ctx.class_names
same_classes = list(names) == list(model_names)
if not same_classes:  # class-aware matching would compare unrelated indices: boxes alone decide instead
    def _n(k: int) -> str:
        return f"{k} class" + ("" if k == 1 else "es")

    st.warning(f"The checkpoint knows {_n(len(model_names))} ({', '.join(model_names[:6])}) and the dataset "
               f"{len(names)} ({', '.join(names[:6])}). Found/missed is judged here by boxes alone, whatever the "
               "class: pick the checkpoint trained on this dataset for a class-aware diagnosis.")
with st.expander("Loader report"):
    st.code(report)

# ----------------------------------------------------------------------------------------------- diagnosis
st.subheader("What the checkpoint misses")
c1, c2, c3 = st.columns([2, 2, 3])
n_max = len(records)
n0 = min(int(kept.get("n", 50)), n_max) if kept.get("path") == path else min(50, n_max)
n = int(c1.number_input("Images to diagnose", 1, n_max, n0, key=f"dsd_n_{choice.label}",  # a dataset's own
                        help="The first N images of the split; each is inspected once and cached, so a larger N only "
                             "runs the new ones."))
iou = c2.slider("Match IoU", 0.1, 0.95, focusing.match_settings()[0], 0.05, key="dsd_iou",
                help="A detection finds an object when their boxes overlap by at least this IoU (same class).")
st.session_state[KEPT] = {"path": path, "split": split, "n": n}
request = (ctx.ckpt_key, path, split, n, ctx.score, ctx.nms, iou, same_classes)
c3.caption(f"Score threshold {ctx.score:.2f} and NMS IoU {ctx.nms:.2f} (sidebar, as on Detect); whole-image "
           f"inference at the model's {model.config.image_size} px; "
           + ("same class only." if same_classes else "any class (the class lists differ)."))
what = f"{n} image" + ("s" if n != 1 else "")
if c3.button(f"Diagnose {what}", type="primary", key="dsd_run"):
    st.session_state["dsd_request"] = request

diagnosis = None
if st.session_state.get("dsd_request") == request:
    bar = st.progress(0.0, text="Diagnosing ...")
    parts = []
    for i, rec in enumerate(records[:n], start=1):
        parts.append(analyses.diagnose_record(model, ctx.ckpt_key, rec, analyses.record_key(rec), tuple(names),
                                              ctx.score, iou, same_classes, ctx.nms))
        bar.progress(i / n, text=f"{i}/{n} images")
    bar.empty()
    diagnosis = analyses.merge_diagnoses(parts, ctx.score, iou, names, same_classes)
else:
    st.info(f"Press **Diagnose {what}** to inspect them (about 0.1-0.5 s each on a CPU, cached). Meanwhile the "
            "images below can be opened with their ground truth.")

if diagnosis is not None:
    table = diagnosis.table()
    total = sum(t["gt"] for t in table.values())
    found = sum(t["found"] for t in table.values())
    tiny_missed = sum(table[b]["gt"] - table[b]["found"] for b in ("vt", "t"))
    m = [*st.columns(2), *st.columns(2)]  # two rows: the labels stay whole on a narrow page
    m[0].metric("Images", len(diagnosis.images))
    if diagnosis.errors:  # left out of every number below: say which and why
        listed = "\n".join(f"- **{Path(f).name}**: {why}" for _, f, why in diagnosis.errors[:10])
        more = f"\n- ... and {len(diagnosis.errors) - 10} more" if len(diagnosis.errors) > 10 else ""
        st.warning(f"{len(diagnosis.errors)} of {n} images could not be diagnosed and are left out of the numbers "
                   f"below (the All (JSON) download lists them):\n{listed}{more}")
    m[1].metric("Objects", total)
    m[2].metric("Recall", f"{100 * found / total:.1f} %" if total else "–")
    m[3].metric("Tiny objects missed", tiny_missed, help="Very tiny (< 8 px) and tiny (8-16 px) objects missed.")
    st.plotly_chart(charts.recall_cause_figure(table, CAUSES), width="stretch", key="dsd_recall")
    rows = [{"size": BUCKET_LABELS[b], "objects": table[b]["gt"], "found": table[b]["found"],
             "recall": f"{100 * table[b]['found'] / table[b]['gt']:.0f} %" if table[b]["gt"] else "–",
             **{c: table[b][c] for c in CAUSES}} for b in BUCKETS]
    st.dataframe(rows, hide_index=True, width="stretch", key="dsd_table")
    st.caption("Causes, in the order the rule tries them: " + "; ".join(f"**{c}**: {CAUSE_TEXT[c]}" for c in CAUSES)
               + ". The rule is documented in `efpn/explain/diagnose.py`.")

    stem = f"{name}_{split}_{n}"
    # files named from the dataset's own image folder in the downloads, not by this server's folders
    folders = [str(r.path.parent) for r in records[:n] if r.path is not None]
    root = os.path.commonpath(folders) if folders else None
    d1, d2, d3 = st.columns(3)
    # each model class as the dataset's category of the same name: scored as annotated (others left out)
    ids = category_ids_for(list(model.config.class_names or []), list(names), category_ids(path, split))
    d1.download_button("COCO results", json.dumps(diagnosis.coco_results(ids)),
                       file_name=f"{stem}_results.json", mime="application/json", key="dsd_dl_coco",
                       help="The predictions as COCO results JSON, one entry per detection above the threshold: "
                            "image_id, category_id (the dataset's id of the class of the same name; class index "
                            "+ 1 for formats without ids; classes the dataset lacks are left out), bbox (x, y, w, h), "
                            "score.")
    d2.download_button("Misses (CSV)", diagnosis.csv_text(root), file_name=f"{stem}_misses.csv", mime="text/csv",
                       key="dsd_dl_csv", help="One row per missed object: its image, cause and the numbers.")
    d3.download_button("All (JSON)", json.dumps(diagnosis.to_json(root), indent=1),
                       file_name=f"{stem}_diagnosis.json", mime="application/json", key="dsd_dl_json")

# ----------------------------------------------------------------------------------------------- images
st.subheader("Images")
per_image = {rec.image_id: d for rec, d in diagnosis.images} if diagnosis is not None else {}
shown = records[:n] if diagnosis is not None else records[: min(len(records), 500)]
image_rows = dataset_rows.dataset_image_rows(shown, per_image)
sorts = ["most missed tiny objects first", "most missed objects first", "file name"] if per_image else ["file name"]
c1, c2 = st.columns([2, 2])
how = c1.selectbox("Order", sorts, key="dsd_sort" if per_image else "dsd_sort_files")
only = c2.toggle("Missed tiny only", key="dsd_only", disabled=not per_image,
                 help="Only images where a very tiny (< 8 px) or tiny (8-16 px) object was missed.")
image_rows = dataset_rows.sort_dataset_rows(image_rows, how, only and bool(per_image))
if not per_image:
    st.caption(f"The first {len(shown)} of {len(records)} images; diagnose them to sort by what is missed.")
by_id = {rec.image_id: rec for rec in shown}


def _open(image_id: int) -> None:
    rec = by_id[image_id]
    boxes, labels = rec.target_boxes()
    state.open_dataset_image(state.DatasetImage(str(rec.path), boxes, labels, list(names), name,
                                                rec.ignore_regions()))  # crowds, ignored areas
    st.session_state["dsd_opened"] = rec.path.name if rec.path is not None else str(image_id)


def _open_row() -> None:
    chosen = (st.session_state.get("dsd_images") or {}).get("selection", {}).get("rows", [])
    if chosen and chosen[0] < len(image_rows):
        _open(image_rows[chosen[0]]["id"])


def _open_pick() -> None:
    picked = st.session_state.get("dsd_open")
    if picked is not None and picked in by_id:
        _open(picked)


st.dataframe(image_rows, hide_index=True, width="stretch", key="dsd_images", on_select=_open_row,
             selection_mode="single-row", height=min(420, 38 + 35 * len(image_rows)))
files = {r["id"]: r["file"] for r in image_rows}
st.selectbox("Open", [None, *files], key="dsd_open", on_change=_open_pick,
             format_func=lambda i: "an image (or select a row above)" if i is None else files[i])
opened = st.session_state.get("dsd_opened")
if opened:
    st.success(f"**{opened}** is now the current image of every page, with its ground truth (sidebar: Image).")
    st.page_link(state.PAGE_FILES["detect"], label="See its found and missed objects on Detect",
                 icon=":material/center_focus_strong:")
else:
    st.caption("Select a row to open that image, with its ground truth, on every page.")
