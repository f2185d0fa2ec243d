"""The `efpn` command line: help, models, assign, data synth, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from efpn.cli.main import build_parser, main


def test_help_of_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("models", "assign", "train", "val", "detect", "export", "report"):
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0
        assert "usage: efpn " + verb in capsys.readouterr().out


def test_models_json_lists_presets_with_sizes(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    import efpn.zoo

    monkeypatch.setattr(efpn.zoo, "MAIN_PRESETS", ("yolov8n", "yolov5n"))
    import efpn as top

    monkeypatch.setattr(top, "MAIN_PRESETS", ("yolov8n", "yolov5n"))
    import torch

    main(["models", "--json"])
    assert torch.is_grad_enabled(), "efpn models must not switch autograd off for the caller"
    rows = json.loads(capsys.readouterr().out)
    by = {r["name"]: r for r in rows}
    assert set(by) == {"yolov8n", "yolov5n"}
    assert abs(by["yolov8n"]["params"] - 3.2e6) < 0.05 * 3.2e6
    assert 7.8 < by["yolov8n"]["gflops"] < 9.6 and 4.0 < by["yolov5n"]["gflops"] < 5.0


def test_assign_on_synthetic_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["data", "synth", "--out", str(tmp_path / "synth"), "--num-images", "3", "--image-size", "128"])
    ann = next((tmp_path / "synth").rglob("*.json"))
    yaml = tmp_path / "d.yaml"
    rel = ann.relative_to(tmp_path / "synth")
    yaml.write_text(f"format: coco\nroot: {tmp_path / 'synth'}\ntrain:\n  annotations: {rel}\n")
    out = tmp_path / "acc.json"
    main(["assign", "--data", str(yaml), "--protocol", "maxiou", "atss", "--json", str(out), "--image-size", "128"])
    d = json.loads(out.read_text())
    assert d["num_images"] == 3 and set(d["protocols"]) == {"maxiou", "atss"}
    acc = d["protocols"]["maxiou"]
    assert acc["num_gt"] > 0 and sum(acc["positives_per_level"].values()) > 0
    assert "starved" in capsys.readouterr().out


def test_bad_data_yaml_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["assign", "--data", str(tmp_path / "missing.yaml")])
    assert e.value.code == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_unknown_protocol_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["data", "synth", "--out", str(tmp_path), "--num-images", "1", "--image-size", "64"])
    ann = next(tmp_path.rglob("*.json"))
    yaml = tmp_path / "d.yaml"
    yaml.write_text(f"format: coco\nroot: {tmp_path}\ntrain:\n  annotations: {ann.name}\n")
    with pytest.raises(SystemExit):
        main(["assign", "--data", str(yaml), "--protocol", "simota"])
    assert "unknown assignment protocol" in capsys.readouterr().err


def test_synth_refuses_an_image_side_no_network_takes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--image-size 100000 asked numpy for 112 GiB (a traceback, and an empty folder left behind)."""
    with pytest.raises(SystemExit) as e:
        main(["data", "synth", "--out", str(tmp_path / "s"), "--num-images", "2", "--image-size", "100000"])
    assert e.value.code == 2 and "must be at most 16384 px" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_warnings_print_as_messages_not_source_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A warning raised under a command prints as 'efpn: warning: ...', not with the file, line and source line of
    efpn's code (which broke into val's progress bar); the process's own formatter is restored afterwards."""
    import warnings

    before = warnings.formatwarning
    main(["data", "synth", "--out", str(tmp_path / "s"), "--num-images", "1", "--image-size", "64"])
    assert warnings.formatwarning is before
    from efpn.cli.main import _plain_warning

    assert _plain_warning(UserWarning("skipped unreadable image x.png"), UserWarning, "validate.py", 97,
                          "warnings.warn(...)") == "efpn: warning: skipped unreadable image x.png\n"


def test_parser_builds() -> None:
    assert build_parser().prog == "efpn"


@pytest.fixture
def tiny_ckpt_and_data(tmp_path: Path) -> tuple[Path, Path]:
    import efpn
    from efpn.checkpoint import save_checkpoint
    from efpn.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "synth", num_images=5, image_size=128, seed=1, max_size=24)
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=3, class_names=("disc", "square", "cross"))
    ckpt = save_checkpoint(model.eval(), tmp_path / "tiny.safetensors", {"preset": "tiny_yolov8_sgdm"})
    return ckpt, tmp_path / "synth" / "data.yaml"


def test_val_writes_json_in_unit_range(tiny_ckpt_and_data: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, data = tiny_ckpt_and_data
    out = tmp_path / "m.json"
    main(["val", "--weights", str(ckpt), "--data", str(data), "--split", "train", "--json", str(out)])
    m = json.loads(out.read_text())
    # the loader's header names the whole source; the split scored is part of it, and says so
    assert f"split 'train': {m['num_images']} of these 5 images (carved" in capsys.readouterr().out
    for k in ("AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "per_class"):
        assert k in m
    for k in ("AP", "AP50", "AP75"):
        assert 0.0 <= m[k] <= 1.0
    assert set(m["per_class"]) == {"disc", "square", "cross"}
    assert m["loader"]["images"] == 5 and m["loader"]["counts"] == {}  # the source; its val carve is left out
    # an image its loader leaves out (an annotation that cannot be read) is not scored: the JSON says so
    coco = data.parent / "annotations.json"
    doc = json.loads(coco.read_text())
    first = doc["images"][0]
    doc["annotations"].append({"id": 10**6, "image_id": first["id"], "category_id": 1, "bbox": [1, 2]})
    coco.write_text(json.dumps(doc))
    main(["val", "--weights", str(ckpt), "--data", str(data), "--split", "train", "--json", str(out)])
    m = json.loads(out.read_text())
    assert m["loader"]["counts"] == {"malformed": 1, "malformed_image": 1} and m["loader"]["images"] == 4
    assert m["loader"]["examples"]["malformed_image"] == [first["file_name"]]


def test_val_scores_a_held_out_test_split(tiny_ckpt_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    """A data YAML's ``test:`` source (never trained on) is scored by ``--split test``: here the train images under
    another split name, so the metrics equal the train split's."""
    import yaml

    ckpt, data = tiny_ckpt_and_data
    doc = yaml.safe_load(data.read_text())
    doc["test"] = doc["train"]
    held_out = data.with_name("with_test.yaml")
    held_out.write_text(yaml.safe_dump(doc))
    for split in ("train", "test"):
        main(["val", "--weights", str(ckpt), "--data", str(held_out), "--split", split, "--json",
              str(tmp_path / f"{split}.json")])
    a, b = (json.loads((tmp_path / f"{s}.json").read_text()) for s in ("train", "test"))
    assert a["AP"] == b["AP"] and a["per_class"] == b["per_class"]


def test_val_sliced_json_has_both(tiny_ckpt_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, data = tiny_ckpt_and_data
    out = tmp_path / "s.json"
    main(["val", "--weights", str(ckpt), "--data", str(data), "--split", "train", "--limit", "2", "--slice", "64",
          "--overlap", "0.25", "--json", str(out)])
    m = json.loads(out.read_text())
    assert m["slicing"] == {"tile": 64, "overlap": 0.25}
    for k in ("AP", "AP_vt", "AP_t", "AP_s", "AP_m"):
        assert k in m and k in m["without_slicing"]


@pytest.mark.parametrize(("flag", "value", "match"), [
    ("--slice", "0", "at least 8 px"), ("--slice", "x", "whole number"), ("--overlap", "1.5", r"in \[0, 1\)"),
    ("--overlap", "nan", r"in \[0, 1\)"),
])
def test_val_refuses_bad_slicing(flag: str, value: str, match: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["val", "--weights", "w.safetensors", "--data", "d.yaml", flag, value])
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and re.search(match, err)


@pytest.mark.parametrize(("flag", "value"), [("--score", "nan"), ("--score", "2"), ("--iou", "-1"), ("--slice", "0")])
def test_detect_refuses_bad_numbers(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["detect", "x.png", "--weights", "w.safetensors", flag, value])
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "must be" in err


def test_detect_whole_and_sliced(tiny_ckpt_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, data = tiny_ckpt_and_data
    images = data.parent / "images"
    for extra in ([], ["--slice", "64", "--overlap", "0.25"]):
        out = tmp_path / f"det{len(extra)}"
        main(["detect", str(images), "--weights", str(ckpt), "--out", str(out), "--score", "0.0", *extra])
        summary = json.loads((out / "detections.json").read_text())
        assert len(summary["images"]) == 5 and not summary["errors"]
        assert len(list(out.glob("*.png"))) == 5
        dets = next(iter(summary["images"].values()))
        assert dets and {"box", "score", "class", "size", "level"} <= set(dets[0])


def test_detect_reports_corrupt_images_and_goes_on(tiny_ckpt_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, data = tiny_ckpt_and_data
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    src = next((data.parent / "images").glob("*.png"))
    (folder / "good.png").write_bytes(src.read_bytes())
    main(["detect", str(folder), "--weights", str(ckpt), "--out", str(tmp_path / "o")])
    summary = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert len(summary["images"]) == 1 and len(summary["errors"]) == 1


def test_export_onnx_cli(tiny_ckpt_and_data: tuple[Path, Path], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, _ = tiny_ckpt_and_data
    main(["export", "--weights", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert (tmp_path / "m.onnx").is_file() and "onnxruntime max |diff|" in capsys.readouterr().out
    main(["export", "--weights", str(ckpt), "--out", str(tmp_path / "d.onnx"), "--dynamic"])
    assert "input (N, 3, H, W), H and W multiples of 32" in capsys.readouterr().out


def test_pickle_weights_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    torch.save({"a": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(SystemExit):
        main(["export", "--weights", str(tmp_path / "model.pt")])
    assert "unpickle" in capsys.readouterr().err


def test_diagnose_on_a_small_synthetic_set(tiny_ckpt_and_data: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, data = tiny_ckpt_and_data
    out = tmp_path / "d"
    main(["diagnose", "--weights", str(ckpt), "--data", str(data), "--split", "train", "--limit", "3", "--score",
          "0.3", "--json", str(out / "d.json"), "--csv", str(out / "m.csv"), "--coco", str(out / "r.json"),
          "--html", str(out / "r.html")])
    report = json.loads((out / "d.json").read_text())
    table = report["by_bucket_and_cause"]
    misses = report["misses"]
    assert sum(t["gt"] - t["found"] for t in table.values()) == len(misses) > 0  # a random model misses
    assert all(m["cause"] in report["causes"] for m in misses)
    assert (out / "m.csv").read_text().count("\n") == len(misses) + 1
    assert isinstance(json.loads((out / "r.json").read_text()), list)
    page = (out / "r.html").read_text()
    assert "Recall by object size" in page and page.count("data:image/png;base64") == min(24, len(misses))
    printed = capsys.readouterr().out
    assert "starved" in printed and "val's AP_m counts every object from 32 px up" in printed
    main(["diagnose", "--weights", str(ckpt), "--data", str(data), "--split", "train", "--limit", "2", "--slice", "64",
          "--json", str(out / "s.json")])
    sliced = json.loads((out / "s.json").read_text())
    assert sliced["slice"] == 64 and set(sliced["recall_by_bucket"]) == set(table)


def test_diagnose_match_and_nms_options(tiny_ckpt_and_data: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """diagnose's match IoU must be above 0 (refused before any work); --iou is its other name, not NMS's, which is
    --nms-iou as in val; the HTML report says the settings the JSON records."""
    ckpt, data = tiny_ckpt_and_data
    with pytest.raises(SystemExit) as e:
        main(["diagnose", "--weights", str(ckpt), "--data", str(data), "--iou", "0"])
    assert e.value.code == 2 and "must be in (0, 1]" in capsys.readouterr().err
    out = tmp_path / "d"
    main(["diagnose", "--weights", str(ckpt), "--data", str(data), "--split", "train", "--limit", "2", "--match-iou",
          "0.3", "--nms-iou", "0.45", "--any-class", "--json", str(out / "d.json"), "--html", str(out / "r.html")])
    report = json.loads((out / "d.json").read_text())
    assert report["iou_thresh"] == 0.3 and report["nms_iou"] == 0.45 and report["class_aware"] is False
    page = (out / "r.html").read_text()
    assert "NMS IoU 0.45, match IoU 0.3 with any class" in page


def test_val_refuses_an_nms_sweep_with_slicing_before_any_work(tiny_ckpt_and_data: tuple[Path, Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, data = tiny_ckpt_and_data
    with pytest.raises(SystemExit) as e:
        main(["val", "--weights", str(ckpt), "--data", str(data), "--slice", "64", "--nms-sweep"])
    err = capsys.readouterr()
    assert e.value.code == 2 and "--nms-sweep scores whole images" in err.err and "AP" not in err.out


def test_diagnose_that_diagnosed_no_image_exits_1(tiny_ckpt_and_data: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Every image a strip the network cannot take: each is named, and the run fails as detect's does, instead of an
    empty table and status 0."""
    import cv2
    import numpy as np

    ckpt, _ = tiny_ckpt_and_data
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for i in (1, 2):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), np.full((1, 200, 3), 90, np.uint8))
        images.append({"id": i, "file_name": f"{i}.png", "width": 200, "height": 1})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [10, 0, 20, 1], "iscrowd": 0})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(("disc", "square", "cross"))]
    (tmp_path / "a.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (tmp_path / "data.yaml").write_text(f"format: coco\nroot: {tmp_path}\ntrain: {{annotations: a.json, images: "
                                        "images}\n")
    with pytest.raises(SystemExit) as e:
        main(["diagnose", "--weights", str(ckpt), "--data", str(tmp_path / "data.yaml"), "--split", "train"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "none of the 2 images could be diagnosed" in err and err.count("skipped image") == 2


@pytest.mark.parametrize(("err", "said"), [
    (OSError(30, "Read-only file system", "out/x.json"), "out/x.json: read-only file system; give a path on a"),
    (PermissionError(13, "Permission denied", "/root/x"), "/root/x: permission denied; no permission"),
    (OSError(28, "No space left on device"), "no space left on device; the disk is full"),
    (NotADirectoryError(20, "Not a directory", "afile/x"), "afile/x: not a directory; a part of the path is a file"),
])
def test_file_system_errors_are_one_line_with_advice(err: OSError, said: str, monkeypatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """An OSError from any command (read-only disk, permissions, full disk) ends as `efpn: error:` with the path and
    what to do, never as a traceback or an errno number."""
    import sys

    cli = sys.modules["efpn.cli.main"]  # (efpn.cli.main as an attribute is the main function)

    def raises(args) -> None:
        raise err

    monkeypatch.setattr(cli, "cmd_models", raises)
    with pytest.raises(SystemExit) as e:
        main(["models"])
    assert e.value.code == 2
    out = capsys.readouterr().err
    assert out.startswith(f"efpn: error: {said}") and "Errno" not in out and "Traceback" not in out


def test_data_synth_refuses_a_folder_that_is_not_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A user's dataset in --out is never replaced unless --overwrite says so."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "annotations.json").write_text('{"mine": true}')
    with pytest.raises(SystemExit) as e:
        main(["data", "synth", "--out", str(mine), "--num-images", "1", "--image-size", "64"])
    assert e.value.code == 2 and "is not empty" in capsys.readouterr().err
    assert (mine / "annotations.json").read_text() == '{"mine": true}'
    main(["data", "synth", "--out", str(mine), "--num-images", "1", "--image-size", "64", "--overwrite"])
    assert "mine" not in (mine / "annotations.json").read_text()


def test_an_os_error_with_its_own_message_is_printed_as_written(monkeypatch, capsys) -> None:
    import sys

    cli = sys.modules["efpn.cli.main"]

    def raises(args) -> None:
        raise IsADirectoryError("data YAML ds is a folder; pass the data YAML file itself")

    monkeypatch.setattr(cli, "cmd_models", raises)
    with pytest.raises(SystemExit):
        main(["models"])
    assert capsys.readouterr().err == "efpn: error: data YAML ds is a folder; pass the data YAML file itself\n"


def test_val_prints_one_line_and_a_per_class_table_for_several_classes() -> None:
    from efpn.cli.tables import metrics_line, per_class_lines

    m = {"AP": 0.5, "AP50": 0.75, "AP_vt": None, "AR": 0.25, "per_class": {"ship": 0.5, "small boat": 0.25},
         "per_class_AP50": {"ship": 0.75, "small boat": None}}
    line = metrics_line(m, "tiles: ")
    assert line.startswith("tiles: AP 0.5000  AP50 0.7500  AP75 -  AP_vt -") and line.endswith("AR 0.2500")
    assert per_class_lines(m) == ["  class       AP      AP50", "  ship        0.5000  0.7500",
                                  "  small boat  0.2500       -"]
    assert per_class_lines({**m, "per_class": {"ship": 0.5}}) == []  # one class: the line says it all
    many = {"per_class": {f"c{i}": 0.1 for i in range(5)}, "per_class_AP50": {}}
    assert per_class_lines(many, limit=2)[-1] == "  ... 3 more classes in --json"


def test_models_with_more_classes_than_memory_holds_says_so(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--num-classes 100000 asked for a 4 GB head per dense preset and ended in the allocator's traceback."""
    import efpn

    def no_memory(*a, **kw):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 4147200000 bytes")

    monkeypatch.setattr(efpn, "build_model", no_memory)
    with pytest.raises(SystemExit) as e:
        main(["models", "--num-classes", "100000"])
    assert e.value.code == 1 and "100,000 classes needs more memory than this machine has" in capsys.readouterr().err
