"""Outputs never destroy inputs, and bad option values stop a command before it runs: `efpn detect` into its own
source folder, colliding names, undecodable file names; `val` / `diagnose` / `export` / `ship` writing over what they
read; out-of-range counts, sizes and devices; label files and weights that would give silently wrong results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import efpn
from efpn.checkpoint import CheckpointError
from efpn.cli.main import main
from efpn.data.records import SkipReport
from efpn.data.synthetic import write_synthetic_dataset
from efpn.data.yolo import parse_yolo_labels


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=3, class_names=("disc", "square", "cross")).eval()
    return efpn.save_checkpoint(model, folder / "m.safetensors")


def _image(path: Path, value: int = 90) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((40, 48, 3), value, np.uint8))
    return path.read_bytes()


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return int(e.value.code)


def test_detect_refuses_to_draw_among_its_inputs_and_never_reads_its_own_output(
        ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    original = _image(src / "a.png")
    assert _exit_code(["detect", str(src), "--weights", str(ckpt), "--out", str(src)]) == 2
    assert "is or contains the source folder" in capsys.readouterr().err
    assert (src / "a.png").read_bytes() == original  # untouched
    nested = src / "det"
    for _ in range(3):  # later runs must not detect in the earlier runs' drawings, nor replace their results
        main(["detect", str(src), "--weights", str(ckpt), "--out", str(nested)])
    for folder in (nested, src / "det-2", src / "det-3"):  # numbered as training runs are
        summary = json.loads((folder / "detections.json").read_text())
        assert [Path(p).name for p in summary["images"]] == ["a.png"]
        assert sorted(p.name for p in folder.iterdir()) == ["a.png", "detections.json"]


def test_detect_gives_every_input_its_own_drawing(ckpt: Path, tmp_path: Path) -> None:
    src = tmp_path / "mix"
    for name in ("ok.png", "ok.jpg", "sub/ok.png", "OK.bmp"):
        _image(src / name)
    out = tmp_path / "out"
    main(["detect", str(src), "--weights", str(ckpt), "--out", str(out)])
    summary = json.loads((out / "detections.json").read_text())
    drawn = summary["drawn"]
    assert len(drawn) == 4 and len(set(drawn.values())) == 4 and all(Path(p).is_file() for p in drawn.values())


@pytest.mark.skipif(os.name == "nt", reason="file names are Unicode on Windows")
def test_detect_survives_a_file_name_that_is_not_utf8(ckpt: Path, tmp_path: Path) -> None:
    src = tmp_path / "bytes"
    _image(src / "good.png")
    raw = os.fsencode(src) + b"/\xff\xfe.png"
    with open(raw, "wb") as f:
        f.write((src / "good.png").read_bytes())
    out = tmp_path / "out"
    main(["detect", str(src), "--weights", str(ckpt), "--out", str(out)])
    summary = json.loads((out / "detections.json").read_text())
    assert len(summary["images"]) == 2 and len(summary["drawn"]) == 2
    assert sorted(p.name for p in out.glob("*.png")) == ["__.png", "good.png"]  # each undecodable byte is a _


def test_detect_exits_non_zero_when_no_image_could_be_read(ckpt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "zero.png"
    bad.write_bytes(b"")
    assert _exit_code(["detect", str(bad), "--weights", str(ckpt), "--out", str(tmp_path / "o")]) == 1
    errors = json.loads((tmp_path / "o" / "detections.json").read_text())["errors"]
    assert [Path(p).name for p in errors] == ["zero.png"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, 4, image_size=64, seed=0, val_fraction=0.5)
    return root / "data.yaml"


@pytest.mark.parametrize("argv, destroyed", [
    (["val", "--json", "{data}"], "the data YAML"),
    (["val", "--json", "{card}"], "model card"),
    (["diagnose", "--html", "{data}"], "the data YAML"),
    (["diagnose", "--coco", "{ann}"], "annotations"),
    (["diagnose", "--json", "{tmp}/x.json", "--csv", "{tmp}/x.json"], "both write"),
    # files inside the dataset's folders: an image replaced by a report, a chart read as an unlabelled image
    (["diagnose", "--html", "{image}"], "images folder"),
    (["diagnose", "--coco", "{images}/dets.json"], "images folder"),
    (["val", "--plots", "{images}"], "images folder"),
    (["val", "--plots", "{images}/plots"], "images folder"),
    (["val", "--json", "{telemetry}"], "training telemetry"),
])
def test_outputs_that_would_replace_an_input_are_refused_before_the_run(
        ckpt: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], destroyed: str) -> None:
    ann = data.parent / "annotations.json"
    image = sorted((data.parent / "images").iterdir())[0]
    telemetry = ckpt.with_name(f"{ckpt.stem}.telemetry.jsonl")
    telemetry.write_text('{"epoch": 1}\n')
    fill = {"data": str(data), "card": str(ckpt.with_suffix(".json")), "ann": str(ann), "tmp": str(tmp_path),
            "image": str(image), "images": str(image.parent), "telemetry": str(telemetry)}
    listing = sorted(image.parent.rglob("*"))
    before = {p: p.read_bytes() for p in (data, ckpt.with_suffix(".json"), ann, image, telemetry)}
    args = [a.format(**fill) for a in argv]
    assert _exit_code([args[0], "--weights", str(ckpt), "--data", str(data), *args[1:]]) == 2
    assert destroyed in capsys.readouterr().err
    assert all(p.read_bytes() == b for p, b in before.items())
    assert sorted(image.parent.rglob("*")) == listing  # nothing added to the images folder either


def test_assign_refuses_to_write_among_the_labels_it_reads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A YOLO label file replaced by the JSON report left the next load one image short; the label folder is the
    default one beside images/, named nowhere in the YAML."""
    root = tmp_path / "yolo"
    _image(root / "images" / "a.png")
    label = root / "labels" / "a.txt"
    label.parent.mkdir(parents=True)
    label.write_text("0 0.5 0.5 0.2 0.2\n")
    data = root / "data.yaml"
    data.write_text("format: yolo\nroot: .\nnames: [thing]\ntrain:\n  images: images\n")
    assert _exit_code(["assign", "--data", str(data), "--split", "train", "--json", str(label)]) == 2
    assert "labels folder" in capsys.readouterr().err and label.read_text() == "0 0.5 0.5 0.2 0.2\n"


def test_export_refuses_to_write_over_the_weights(ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    before = ckpt.read_bytes()
    assert _exit_code(["export", "--weights", str(ckpt), "--out", str(ckpt)]) == 2
    assert "the checkpoint's weights" in capsys.readouterr().err and ckpt.read_bytes() == before


def test_export_refuses_to_replace_an_existing_file_without_overwrite(ckpt: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Any existing --out (a data YAML, a run's resume state) is kept unless --overwrite says otherwise."""
    precious = tmp_path / "data.yaml"
    precious.write_text("names: [a]\n")
    assert _exit_code(["export", "--weights", str(ckpt), "--out", str(precious)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and precious.read_text() == "names: [a]\n"
    out = tmp_path / "m.onnx"
    main(["export", "--weights", str(ckpt), "--out", str(out)])
    first = out.stat().st_mtime_ns
    assert _exit_code(["export", "--weights", str(ckpt), "--out", str(out)]) == 2
    main(["export", "--weights", str(ckpt), "--out", str(out), "--overwrite"])
    assert out.stat().st_mtime_ns > first


@pytest.mark.parametrize("argv, says", [
    (["val", "--limit", "-1"], "must be >= 1"),
    (["val", "--limit", "0"], "must be >= 1"),
    (["val", "--image-size", "100000"], "multiple of 32 between 32 and"),
    (["diagnose", "--image-size", "7"], "multiple of 32"),
    (["val", "--device", "tpu"], "cpu, cuda, cuda:N or mps"),
])
def test_bad_option_values_stop_the_command_with_what_is_accepted(ckpt: Path, data: Path, argv: list[str], says: str,
                                                                  capsys: pytest.CaptureFixture) -> None:
    assert _exit_code([argv[0], "--weights", str(ckpt), "--data", str(data), *argv[1:]]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_an_option_error(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _exit_code(["detect", str(tmp_path), "--weights", str(ckpt), "--device", "cuda"]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err


def test_yolo_lines_with_extra_columns_are_reported_with_a_reason_not_misread() -> None:
    report = SkipReport()
    boxes, classes = parse_yolo_labels("0 0.5 0.5 0.2 0.2 0.9\n1 0.5 0.5 0.2 0.2 0.9 7\n2 0.5 0.5 0.1 0.1\n",
                                       100, 100, 3, report, "a.txt")
    assert classes == [2] and report.malformed == 2
    said = " ".join(report.examples["malformed"])
    assert "confidence" in said and "outside [0, 1]" in said


def test_yolo_class_ids_that_are_not_finite_are_malformed_lines() -> None:
    report = SkipReport()
    text = "inf 0.5 0.5 0.1 0.1\n1e400 0.5 0.5 0.1 0.1\nnan 0.5 0.5 0.1 0.1\n-inf 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1 0.1\n"
    boxes, classes = parse_yolo_labels(text, 100, 100, 3, report, "a.txt")
    assert classes == [1] and report.malformed == 4


@pytest.mark.skipif(os.name == "nt", reason="no FIFOs or /dev/zero on Windows")
def test_a_label_file_that_is_a_pipe_or_a_device_is_reported_not_read(tmp_path: Path) -> None:
    """A FIFO label file used to block the loader forever and a link to /dev/zero to fill the memory: each is now
    refused before reading, counted as malformed, and its image left out; the other images load."""
    from efpn.data import load_yolo
    from efpn.data.records import MAX_TEXT_BYTES, read_text

    for i in range(3):
        _image(tmp_path / "images" / f"{i}.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    os.mkfifo(tmp_path / "labels" / "1.txt")
    os.symlink("/dev/zero", tmp_path / "labels" / "2.txt")
    records, _, report = load_yolo(tmp_path / "images", names=["a"])
    assert [r.path.name for r in records] == ["0.png"] and report.malformed == 2
    assert all("not a regular file" in e for e in report.examples["malformed"])
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        f.truncate(MAX_TEXT_BYTES + 1)
    with pytest.raises(ValueError, match="holds more than 64 MiB"):
        read_text(big)


def test_weights_holding_nan_are_refused(tmp_path: Path) -> None:
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=1, class_names=("t",))
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    path = efpn.save_checkpoint(model, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match="non-finite values"):
        efpn.load_model(path)


def test_coco_categories_sharing_an_id_are_refused(tmp_path: Path) -> None:
    from efpn.data.coco import load_coco

    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "disc"}, {"id": 2, "name": "square"}, {"id": 1, "name": "disc2"}]}))
    with pytest.raises(ValueError, match=r"category id\(s\) \[1\] appear more than once.*'disc2'"):
        load_coco(ann, tmp_path)


def test_cards_from_a_newer_format_are_refused(tmp_path: Path) -> None:
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=1, class_names=("t",))
    path = efpn.save_checkpoint(model, tmp_path / "m.safetensors")
    card = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**card, "format_version": 99}))
    with pytest.raises(CheckpointError, match="written by a newer efpn"):
        efpn.load_model(path)


def test_assign_checks_its_chart_path_before_the_run(data: Path, capsys: pytest.CaptureFixture) -> None:
    assert _exit_code(["assign", "--data", str(data), "--plot", "chart.txt"]) == 2
    assert ".png, .svg, .pdf, .jpg or .html" in capsys.readouterr().err
    assert _exit_code(["assign", "--data", str(data), "--json", str(data)]) == 2
    assert "the data YAML" in capsys.readouterr().err


def test_overlap_without_slice_is_said_to_be_ignored(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _image(tmp_path / "in" / "a.png")
    main(["detect", str(tmp_path / "in"), "--weights", str(ckpt), "--out", str(tmp_path / "o"), "--overlap", "0.5"])
    assert "--overlap applies to --slice tiles" in capsys.readouterr().err
    main(["detect", str(tmp_path / "in"), "--weights", str(ckpt), "--out", str(tmp_path / "o2")])
    assert "--overlap" not in capsys.readouterr().err


def test_detect_skips_a_source_that_is_not_a_regular_file(ckpt: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    """/dev/null beside a folder of images: said and skipped, the folder's images detected."""
    src = tmp_path / "ok"
    _image(src / "a.png")
    main(["detect", "/dev/null", str(src), "--weights", str(ckpt), "--out", str(tmp_path / "o")])
    said = capsys.readouterr()
    assert "skipped /dev/null: not a regular file" in said.out + said.err
    summary = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert [Path(p).name for p in summary["images"]] == ["a.png"] and list(summary["errors"]) == ["/dev/null"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs symbolic links and named pipes (POSIX)")
def test_detect_searches_linked_folders_once_and_names_what_inside_a_folder_it_cannot_read(
        ckpt: Path, tmp_path: Path) -> None:
    """Inside a source folder a linked subfolder was not searched, and a broken link or a pipe named .png vanished:
    "0 skipped", nothing under errors."""
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    _image(src / "a.png")
    _image(elsewhere / "b.png")
    (src / "linked").symlink_to(elsewhere, target_is_directory=True)
    (src / "again").symlink_to(elsewhere, target_is_directory=True)  # the same folder twice: its image once
    (src / "loop").symlink_to(src, target_is_directory=True)  # a loop: walked no further
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(src / "pipe.png")  # never opened: reading it would wait forever
    out = tmp_path / "o"
    main(["detect", str(src), "--weights", str(ckpt), "--out", str(out)])
    summary = json.loads((out / "detections.json").read_text())
    assert sorted(Path(p).name for p in summary["images"]) == ["a.png", "b.png"]
    assert sorted(Path(p).name for p in summary["errors"]) == ["gone.png", "pipe.png"]
    assert "broken link" in summary["errors"][str(src / "gone.png")]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_folder_that_takes_no_file_is_refused_before_the_run() -> None:
    """/proc grants root the write permission and takes no file: a trial file finds that before the run, where its
    results used to be lost at the end."""
    from efpn.cli.guards import check_outputs

    with pytest.raises(ValueError, match=r"--json /proc/m\.json cannot be written .*a file cannot be created there"):
        check_outputs({"--json": "/proc/m.json"}, {})


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes and symbolic links (POSIX)")
def test_overwrite_never_turns_a_device_a_pipe_or_a_link_into_a_file(ckpt: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """export wrote its file beside --out and renamed it over whatever was there: with --overwrite, as root, it
    replaced a device (/dev/null, /dev/full) and a pipe with a regular file. A link keeps being a link; its file is
    what is replaced."""
    from efpn.files import atomic_write

    pipe = tmp_path / "pipe.onnx"
    os.mkfifo(pipe)
    assert _exit_code(["export", "--weights", str(ckpt), "--out", str(pipe), "--overwrite"]) == 2
    assert "not a regular file" in capsys.readouterr().err and pipe.is_fifo()
    with pytest.raises(ValueError, match="not a regular file"):
        atomic_write(pipe, lambda p: p.write_text("x"))
    assert pipe.is_fifo()
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    atomic_write(link, lambda p: p.write_text("new"))
    assert link.is_symlink() and target.read_text() == "new"
