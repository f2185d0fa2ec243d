"""The miss-cause rule on hand-made cases: priors with chosen scores and boxes, one ground-truth box per cause."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import efpn
from efpn.data.records import REASONS
from efpn.evaluation.matching import match_detections
from efpn.explain.diagnose import CAUSES, diagnose_image, recall_by_bucket_and_cause
from efpn.explain.diagnose_dataset import write_html
from efpn.models.heads import HeadOutput


def test_matching_is_greedy_by_score_and_class_aware() -> None:
    gt = [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 54, 54]]
    det = [[0, 0, 10, 11], [1, 0, 10, 10], [20, 20, 30, 30], [80, 80, 90, 90]]
    m = match_detections(det, [0.5, 0.9, 0.8, 0.7], [0, 0, 1, 0], gt, [0, 0, 0])
    assert m.gt_match.tolist() == [1, -1, -1]  # the 0.9 detection takes GT 0; the 0.8 one has the wrong class
    assert m.det_match.tolist() == [-1, 0, -1, -1] and int(m.false_alarms.sum()) == 3
    assert m.counts_by_bucket()["vt"] == {"gt": 1, "found": 0, "missed": 1}
    assert m.counts_by_bucket()["t"] == {"gt": 2, "found": 1, "missed": 1}
    agnostic = match_detections(det, [0.5, 0.9, 0.8, 0.7], [0, 0, 1, 0], gt, [0, 0, 0], class_aware=False)
    assert agnostic.gt_match.tolist() == [1, 2, -1]
    with pytest.raises(ValueError, match="iou_thresh"):
        match_detections(det, [1, 1, 1, 1], [0, 0, 0, 0], gt, [0, 0, 0], iou_thresh=0.0)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _square_anchor(priors, cx: float, cy: float, side: float = 16.0) -> int:
    want = torch.tensor([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])
    return int((priors.boxes - want).abs().sum(1).argmin())


@pytest.fixture()
def staged():
    """tiny_fpn (MaxIoU, anchors of 4 x stride) on a 128 px image; head outputs replaced by hand."""
    torch.manual_seed(0)
    model = efpn.build_model("tiny_fpn", num_classes=1).eval()
    ins = efpn.inspect(model, np.zeros((128, 128, 3), np.uint8))
    assert ins.scale == 1.0
    cls = torch.full_like(ins.head.cls_logits, -20.0)  # every prior scores ~0
    box = torch.zeros_like(ins.head.box)  # decoded boxes = the anchors
    return model, ins, cls, box


def test_every_cause_on_its_own_object(staged) -> None:
    model, ins, cls, box = staged
    pr = ins.priors
    gts = {  # cause -> GT box (the p2 square anchor at that centre, so it is a true positive for MaxIoU)
        "under_threshold": (18.0, 18.0), "lost_in_nms": (82.0, 18.0), "mislocalised": (18.0, 82.0),
        "never_scored": (82.0, 82.0),
    }
    boxes = [[cx - 8, cy - 8, cx + 8, cy + 8] for cx, cy in gts.values()] + [[110.0, 110.0, 112.0, 112.0]]
    i_under = _square_anchor(pr, *gts["under_threshold"])
    i_nms = _square_anchor(pr, *gts["lost_in_nms"])
    i_mis = _square_anchor(pr, *gts["mislocalised"])
    cls[0, i_under, 0] = _logit(0.1)  # above the floor, under the 0.3 threshold
    cls[0, i_nms, 0] = _logit(0.9)  # passes, box exact, but no detection survived (as if NMS removed it)
    cls[0, i_mis, 0] = _logit(0.9)  # passes, covers the object, but its box is moved away
    box[0, i_mis, 0] = 3.0  # dx = 3 anchor widths: IoU 0 with the object
    ins = dataclasses.replace(ins, head=HeadOutput(cls, box, None, ins.head.feature_sizes),
                              detections={k: v[:0] for k, v in ins.detections.items()})
    diag = diagnose_image(model, ins, boxes, [0] * 5, score_thresh=0.3)
    causes = {tuple(m.box): m.cause for m in diag.misses}
    assert [causes[tuple(b)] for b in boxes] == [*gts, "starved"]
    by = {m.cause: m for m in diag.misses}
    assert by["under_threshold"].best_score == pytest.approx(0.1, abs=1e-3) and by["under_threshold"].best_level == "p2"
    assert by["lost_in_nms"].passing_iou == pytest.approx(1.0) and by["mislocalised"].best_iou == 0.0
    assert by["starved"].starved and sum(by["under_threshold"].positives.values()) >= 1
    assert by["starved"].bucket == "vt" and by["never_scored"].bucket == "s"  # 16 px is small, not tiny
    table = recall_by_bucket_and_cause([diag])
    assert table["s"]["gt"] == 4 and sum(table["s"][c] for c in CAUSES) == 4 and table["vt"]["starved"] == 1


def test_a_found_object_is_not_diagnosed_and_a_detection_matches(staged) -> None:
    model, ins, cls, box = staged
    gt = [[10.0, 10.0, 26.0, 26.0]]
    det = {"boxes": torch.tensor([[10.0, 10.0, 26.0, 26.0], [60, 60, 70, 70]]), "scores": torch.tensor([0.9, 0.2]),
           "labels": torch.tensor([0, 0]), "levels": torch.tensor([0, 0])}
    diag = diagnose_image(model, ins, gt, [0], score_thresh=0.3, detections=det)
    assert diag.misses == [] and diag.matching.gt_match.tolist() == [0]
    assert diag.matching.det_match.tolist() == [0, -1]  # the 0.2 one is under the threshold: no match, indexed


def test_gated_out_when_every_gate_is_closed() -> None:
    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_bs", num_classes=1).eval()
    ins = efpn.inspect(model, np.zeros((128, 128, 3), np.uint8))
    gt = [[10.0, 10.0, 26.0, 26.0]]
    closed = dataclasses.replace(ins, gates={lv: torch.zeros_like(g) for lv, g in ins.gates.items()},
                                 detections={k: v[:0] for k, v in ins.detections.items()})
    diag = diagnose_image(model, closed, gt, [0], score_thresh=0.5)
    assert [m.cause for m in diag.misses] == ["gated_out"] and set(diag.misses[0].gates) == {"p2", "p3"}
    assert set(diag.misses[0].cem_share) == set(model.config.neck.cem.target_levels)


def test_diagnose_records_skips_a_bad_image_reports_progress_and_exports(tmp_path) -> None:
    """A dataset with one unreadable image: it is listed in ``errors`` with the reason, every other image is
    diagnosed; ``on_image`` counts every record; ``csv_text`` is what ``write_csv`` writes; class-agnostic matching
    never finds fewer objects than class-aware matching."""
    import efpn
    from efpn.data.splits import load_split
    from efpn.data.synthetic import write_synthetic_dataset
    from efpn.explain import diagnose_records

    write_synthetic_dataset(tmp_path / "d", 4, image_size=64, seed=0, val_fraction=0.0)
    records, names, _ = load_split(tmp_path / "d" / "data.yaml", "train")
    assert len(records) == 4
    records[1].path.write_bytes(b"not an image at all")  # type: ignore[union-attr]
    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=len(names)).eval()
    seen: list[tuple[int, int]] = []
    aware = diagnose_records(model, records, names, score_thresh=0.0, on_image=lambda d, t, r: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [e[0] for e in aware.errors] == [records[1].image_id] and aware.errors[0][2]
    assert len(aware.images) == 3 and records[1].image_id not in aware.detections
    assert aware.to_json()["errors"][0]["image_id"] == records[1].image_id
    # files relative to a root (a server's download), as given otherwise
    assert aware.to_json(tmp_path / "d")["errors"][0]["file"] == records[1].path.relative_to(tmp_path / "d").as_posix()
    assert aware.to_json(tmp_path / "elsewhere")["errors"][0]["file"] == str(records[1].path)
    assert all(r["file"].startswith("images/") for r in aware.rows(tmp_path / "d"))
    csv_file = aware.write_csv(tmp_path / "m.csv")
    assert csv_file.read_bytes().decode("utf-8") == aware.csv_text()
    assert aware.csv_text().splitlines()[0].startswith("image_id,file,gt_index,box,label,class,")
    assert all(r["class"] == aware.class_names[r["label"]] for r in aware.rows())  # the name beside the index
    agnostic = diagnose_records(model, records, names, score_thresh=0.0, class_aware=False)
    found = lambda d: sum(t["found"] for t in d.table().values())  # noqa: E731
    assert not agnostic.class_aware and found(agnostic) >= found(aware)


def test_an_image_the_network_cannot_take_is_skipped_not_the_dataset(tmp_path) -> None:
    """A 600x1 strip decodes but is too thin for the network's input (whole image), and a tiny tile on it means too
    many tiles (sliced): each time that image is listed in ``errors`` with the reason and the others are
    diagnosed."""
    import cv2

    import efpn
    from efpn.data.splits import load_split
    from efpn.data.synthetic import write_synthetic_dataset
    from efpn.explain import diagnose_records

    write_synthetic_dataset(tmp_path / "d", 3, image_size=64, seed=0, val_fraction=0.0)
    records, names, _ = load_split(tmp_path / "d" / "data.yaml", "train")
    model = efpn.build_model("tiny_efpn_n", num_classes=len(names)).eval()
    strip = records[0].path
    assert strip is not None
    cv2.imwrite(str(strip), np.full((1, 600, 3), 90, np.uint8))
    whole = diagnose_records(model, records, names, score_thresh=0.0)
    assert [e[0] for e in whole.errors] == [records[0].image_id] and "minimum" in whole.errors[0][2]
    assert len(whole.images) == 2
    cv2.imwrite(str(strip), np.full((800, 600, 3), 90, np.uint8))  # 100 x 75 tiles of 8 px
    sliced = diagnose_records(model, records, names, score_thresh=0.0, slice_size=8, overlap=0.0)
    assert [e[0] for e in sliced.errors] == [records[0].image_id] and "tiles" in sliced.errors[0][2]
    page = write_html(sliced, tmp_path / "r.html", loader={"counts": {"duplicate_boxes": 2},
                                                           "examples": {"duplicate_boxes": ["a.txt"]}}).read_text()
    assert "1 image(s) could not be diagnosed" in page and strip.name in page and "tiles of 8 px" in page
    assert REASONS["duplicate_boxes"] in page and "a.txt" in page  # the loader's report, in words


def test_with_tiles_an_image_too_thin_for_one_input_is_matched_on_its_tiles(tmp_path) -> None:
    """Sliced, a strip the whole-image pass cannot take is still detected on its tiles and scored, as efpn val
    scores it: its objects count in recall, and its misses are counted as ``not_diagnosed`` (no inspection to
    name a cause from); the JSON and the HTML report say which image and why."""
    import cv2

    import efpn
    from efpn.data.splits import load_split
    from efpn.data.synthetic import write_synthetic_dataset
    from efpn.explain import diagnose_records

    write_synthetic_dataset(tmp_path / "d", 3, image_size=64, seed=0, val_fraction=0.0)
    records, names, _ = load_split(tmp_path / "d" / "data.yaml", "train")
    model = efpn.build_model("tiny_efpn_n", num_classes=len(names)).eval()
    strip = records[0].path
    assert strip is not None
    cv2.imwrite(str(strip), np.full((16, 900, 3), 90, np.uint8))  # whole: under 8 px high; 64 px tiles: fine
    diag = diagnose_records(model, records, names, score_thresh=0.5, slice_size=64, overlap=0.0)
    assert not diag.errors and len(diag.images) == 3
    assert [t[0] for t in diag.tiles_only] == [records[0].image_id] and "minimum" in diag.tiles_only[0][2]
    strip_diag = next(d for rec, d in diag.images if rec.image_id == records[0].image_id)
    missed = int(strip_diag.matching.missed.sum())
    assert missed > 0 and strip_diag.misses == []
    table = diag.table()
    assert sum(t["not_diagnosed"] for t in table.values()) == missed
    assert all(t["gt"] - t["found"] == t["not_diagnosed"] + sum(t[c] for c in CAUSES) for t in table.values())
    report = diag.to_json()
    assert report["tiles_only"][0]["image_id"] == records[0].image_id and report["overlap"] == 0.0
    page = write_html(diag, tmp_path / "r.html").read_text()
    assert "matched on tiles only" in page and "<th>not_diagnosed</th>" in page and strip.name in page


def test_labels_outside_the_models_classes(tmp_path) -> None:
    """Data annotated with more classes than the model predicts: class-aware diagnosis refuses up front, saying what
    to do (no IndexError deep inside); class-agnostic diagnosis runs, judging each miss by the best score over all
    classes."""
    from efpn.data.splits import load_split
    from efpn.data.synthetic import write_synthetic_dataset
    from efpn.explain import diagnose_records

    write_synthetic_dataset(tmp_path / "d", 2, image_size=64, seed=0, val_fraction=0.0)
    records, names, _ = load_split(tmp_path / "d" / "data.yaml", "train")
    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=1).eval()
    with pytest.raises(ValueError, match=r"\[disc, square, cross\] are not the model.s \[1 unnamed\].*--any-class"):
        diagnose_records(model, records, names, score_thresh=0.0)
    ins = efpn.inspect(model, np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"labels \[2\] are outside the model's 1 class"):
        diagnose_image(model, ins, [[10.0, 10.0, 20.0, 20.0]], [2], score_thresh=0.5)
    for preset in ("tiny_efpn_n", "tiny_yolov8_sgdm"):  # ATSS and TAL: the assigner never sees a foreign label
        torch.manual_seed(0)
        one = efpn.build_model(preset, num_classes=1).eval()
        agnostic = diagnose_records(one, records, names, score_thresh=0.99, class_aware=False)
        assert len(agnostic.images) == 2 and not agnostic.errors, preset
        misses = [m for _, d in agnostic.images for m in d.misses]
        assert misses and all(m.cause in CAUSES for m in misses)
        # at threshold 0 the untrained model keeps detections, so the category ids below are really checked
        kept = diagnose_records(one, records, names, score_thresh=0.0, class_aware=False)
        results = kept.coco_results([11, 22, 33])  # the dataset's category ids, by class index
        assert results and {r["category_id"] for r in results} == {11}  # a 1-class model: class 0 is the first id
        assert {r["category_id"] for r in kept.coco_results()} == {1}  # without ids: COCO's index + 1


def test_coco_results_carry_the_datasets_category_ids(tmp_path) -> None:
    """efpn diagnose --coco on COCO data with sparse category ids writes those ids (pycocotools scores the file
    against the original annotations); formats without ids get index + 1."""
    import json

    from efpn.cli.main import main
    from efpn.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "d", 2, image_size=64, seed=0, val_fraction=0.0).parent
    ann = root / "annotations.json"
    doc = json.loads(ann.read_text())
    remap = {c["id"]: 10 * c["id"] + 5 for c in doc["categories"]}
    for c in doc["categories"]:
        c["id"] = remap[c["id"]]
    for a in doc["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    ann.write_text(json.dumps(doc))
    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=3, class_names=("disc", "square", "cross"))
    weights = efpn.save_checkpoint(model, tmp_path / "m.safetensors")
    out = tmp_path / "res.json"
    main(["diagnose", "--weights", str(weights), "--data", str(root / "data.yaml"), "--score", "0.0",
          "--split", "train", "--coco", str(out)])
    ids = {r["category_id"] for r in json.loads(out.read_text())}
    assert ids and ids <= set(remap.values())

    # --any-class with a model of other classes: its labels are its own indices, not the data's; each detection is
    # written as the data's class of the same name, and those of classes the data lacks are left out (said on
    # stderr), never given the data's ids of unrelated classes
    other = efpn.build_model("tiny_efpn_n", num_classes=2, class_names=("car", "square"))
    weights = efpn.save_checkpoint(other, tmp_path / "other.safetensors")
    main(["diagnose", "--weights", str(weights), "--data", str(root / "data.yaml"), "--score", "0.0",
          "--split", "train", "--any-class", "--coco", str(out)])
    square = next(c["id"] for c in doc["categories"] if c["name"] == "square")  # the data's (sparse) id
    assert {r["category_id"] for r in json.loads(out.read_text())} == {square}


def test_coco_results_name_images_as_their_file_does(tmp_path) -> None:
    """COCO image ids that are strings ("frame_0", and "0042" which reads as a number) are written back as spelled:
    pycocotools scores the results against the original annotations (it refused renumbered ids)."""
    import contextlib
    import io
    import json

    from pycocotools.coco import COCO

    from efpn.cli.main import main
    from efpn.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "d", 2, image_size=64, seed=0, val_fraction=0.0).parent
    ann = root / "annotations.json"
    doc = json.loads(ann.read_text())
    spelled = {doc["images"][0]["id"]: "frame_0", doc["images"][1]["id"]: "0042"}
    for im in doc["images"]:
        im["id"] = spelled[im["id"]]
    for a in doc["annotations"]:
        a["image_id"] = spelled[a["image_id"]]
    ann.write_text(json.dumps(doc))
    model = efpn.build_model("tiny_efpn_n", num_classes=3, class_names=("disc", "square", "cross"))
    weights = efpn.save_checkpoint(model, tmp_path / "m.safetensors")
    out = tmp_path / "res.json"
    main(["diagnose", "--weights", str(weights), "--data", str(root / "data.yaml"), "--score", "0.0",
          "--split", "train", "--coco", str(out)])
    results = json.loads(out.read_text())
    assert {r["image_id"] for r in results} == {"frame_0", "0042"}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        assert len(gt.loadRes(str(out)).getAnnIds()) == len(results)  # matched to the original images


def test_diagnose_writes_its_tables_for_file_names_that_are_not_utf8(tmp_path) -> None:
    """The CSV and HTML tables name such a file with its odd bytes written as \\xe9 (valid UTF-8 that still says
    which bytes the name has); writing them used to fail after the whole run, losing every output."""
    import json
    import os

    from efpn.cli.main import main
    from efpn.data.synthetic import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "d", 2, image_size=64, seed=0, val_fraction=0.0).parent
    odd = os.fsdecode(b"a\xe9.png")
    ann = root / "annotations.json"
    doc = json.loads(ann.read_text())
    (root / "images" / doc["images"][0]["file_name"]).rename(root / "images" / odd)
    doc["images"][0]["file_name"] = odd
    ann.write_text(json.dumps(doc))  # the name as JSON escapes it; read back as the same lone surrogate
    model = efpn.build_model("tiny_efpn_n", num_classes=3, class_names=("disc", "square", "cross"))
    weights = efpn.save_checkpoint(model, tmp_path / "m.safetensors")
    main(["diagnose", "--weights", str(weights), "--data", str(root / "data.yaml"), "--score", "0.999",
          "--split", "train", "--csv", str(tmp_path / "m.csv"), "--html", str(tmp_path / "m.html")])
    assert "a\\xe9.png" in (tmp_path / "m.csv").read_text(encoding="utf-8")
    assert "a\\xe9.png" in (tmp_path / "m.html").read_text(encoding="utf-8")


def test_detections_in_an_ignore_region_are_no_false_alarms() -> None:
    """A detection left unmatched with at least the IoU threshold of its area inside a crowd or ignored area is
    neither found object nor false alarm (COCO's crowd rule); one outside stays a false alarm, and a detection that
    finds an object keeps it even inside a region."""
    from efpn.evaluation import IGNORED, match_detections

    gt = np.array([[10, 10, 20, 20]], np.float32)
    det = np.array([[10, 10, 20, 20], [52, 52, 58, 58], [45, 45, 55, 55], [80, 80, 90, 90]], np.float32)
    m = match_detections(det, np.array([0.9, 0.8, 0.7, 0.6]), np.zeros(4), gt, np.zeros(1),
                         ignore_boxes=np.array([[50, 50, 70, 70]], np.float32))
    assert m.det_match.tolist() == [0, IGNORED, -1, -1]  # 25 % of the third inside: not enough
    assert m.false_alarms.tolist() == [False, False, True, True] and m.ignored.tolist() == [False, True, False, False]
    plain = match_detections(det, np.array([0.9, 0.8, 0.7, 0.6]), np.zeros(4), gt, np.zeros(1))
    assert plain.false_alarms.sum() == 3


def test_dataset_diagnosis_at_another_nms_iou(tmp_path) -> None:
    """The studio's Dataset page diagnoses at the sidebar's NMS IoU, as Detect does (it used the model's own)."""
    from efpn.data.splits import load_split
    from efpn.data.synthetic import write_synthetic_dataset
    from efpn.explain import diagnose_records

    root = write_synthetic_dataset(tmp_path / "d", 2, image_size=64, seed=0, val_fraction=0.0).parent
    records, names, _ = load_split(root / "data.yaml", "train")
    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=3, class_names=tuple(names)).eval()
    counts = {iou: sum(len(d["scores"]) for d in diagnose_records(model, records, names, score_thresh=0.0,
                                                                 nms_iou=iou).detections.values())
              for iou in (0.05, 0.95)}
    assert counts[0.05] < counts[0.95]
