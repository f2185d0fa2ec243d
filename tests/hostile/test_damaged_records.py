"""Damaged and pathological files around runs and reports: a telemetry line cut short by a killed run, a broken
model card among good ones, JSON and YAML nested too deeply to read. Each gets a message naming the file; the rest
of the work goes on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import efpn
from efpn.checkpoint import CheckpointError, read_card
from efpn.cli.claims import _cards
from efpn.cli.records import read_jsonl
from efpn.config.names import read_names
from efpn.config.schema import ConfigError, read_yaml
from efpn.data.coco import read_json
from efpn.engine.telemetry import RunLogger

DEEP = 200_000  # far past Python's recursion limit


def test_a_telemetry_line_cut_short_is_skipped_with_its_file_and_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "m.telemetry.jsonl"
    path.write_text('{"epoch": 1, "AP": 0.2}\n{"epoch": 2, "AP": 0.3}\n{"epoch": 3, "A')
    assert read_jsonl(path) == [{"epoch": 1, "AP": 0.2}, {"epoch": 2, "AP": 0.3}]
    assert f"{path}: line 3 is not a JSON object" in capsys.readouterr().err


def test_a_resumed_run_survives_a_telemetry_line_cut_short_by_the_kill(tmp_path: Path) -> None:
    (tmp_path / "telemetry.jsonl").write_text('{"step": 1, "kind": "epoch"}\n{"step": 5, "kind": "epoch"}\n{"st')
    RunLogger(tmp_path, resume_step=3, tensorboard=False).close()
    lines = (tmp_path / "telemetry.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1]


def test_a_broken_card_leaves_its_checkpoint_out_of_the_report_not_the_others(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=1, class_names=("target",))
    efpn.save_checkpoint(model, tmp_path / "good.safetensors")
    efpn.save_checkpoint(model, tmp_path / "zz_broken.safetensors")
    (tmp_path / "zz_broken.json").write_text("{bad")
    cards = _cards(tmp_path)
    assert list(cards) == [read_card(tmp_path / "good.safetensors").get("name") or "good"]
    err = capsys.readouterr().err
    assert "zz_broken.json is not readable JSON" in err and "zz_broken.safetensors is left out" in err


def test_json_nested_too_deeply_is_a_clear_error(tmp_path: Path) -> None:
    deep = "[" * DEEP + "]" * DEEP
    (tmp_path / "ann.json").write_text(deep)
    with pytest.raises(ValueError, match=r"ann\.json nests its JSON too deeply"):
        read_json(tmp_path / "ann.json")
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=1)
    efpn.save_checkpoint(model, tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text(deep)
    with pytest.raises(CheckpointError, match=r"m\.json nests its JSON too deeply"):
        read_card(tmp_path / "m.safetensors")


def test_yaml_nested_too_deeply_is_a_clear_error(tmp_path: Path) -> None:
    deep = "names: " + "[" * 5000 + "]" * 5000 + "\n"
    (tmp_path / "data.yaml").write_text(deep)
    with pytest.raises(ConfigError, match=r"data\.yaml nests its YAML too deeply"):
        read_yaml(tmp_path / "data.yaml", "data YAML")
    with pytest.raises(ValueError, match=r"class-name file .*data\.yaml is not readable YAML"):
        read_names(tmp_path / "data.yaml")


def test_training_on_images_none_of_which_decode_says_so_in_one_line(tmp_path: Path) -> None:
    """Every image empty: one error naming the split's data file and the first image, raised before the DataLoader
    (whose worker processes would wrap it in their traceback), and no run folder left behind."""
    from efpn.config import TrainConfig
    from efpn.data.synthetic import write_synthetic_dataset
    from efpn.engine.train import train

    write_synthetic_dataset(tmp_path / "ds", num_images=4, image_size=64, max_size=12)
    for png in (tmp_path / "ds" / "images").glob("*.png"):
        png.write_bytes(b"")
    cfg = TrainConfig(model="tiny_efpn_n", data=str(tmp_path / "ds" / "data.yaml"), image_size=64, epochs=1,
                      batch_size=2, workers=2, device="cpu", val_split=None, progress=False, out=str(tmp_path / "runs"),
                      name="run")
    with pytest.warns(UserWarning, match="skipping unreadable image"), \
            pytest.raises(ValueError, match=r"the train split of .*data\.yaml: none of the \d+ images .* could be "
                                            r"decoded \(the first: .*000000\.png\)") as err:
        train(cfg)
    assert "Traceback" not in str(err.value)
    assert not (tmp_path / "runs" / "run").exists()


@pytest.mark.parametrize(("key", "value", "says"), [
    (("postprocess", "max_det"), 0, "postprocess.max_det must be >= 1"),
    (("postprocess", "nms_iou"), -1, r"postprocess.nms_iou must be a number in \[0, 1\]"),
    (("postprocess", "score_thresh"), 2.0, r"postprocess.score_thresh must be a number in \[0, 1\]"),
    (("pixel_std",), [0, 0, 0], "pixel_std must be > 0"),
    (("image_size",), 0, "image_size .* must be between 8 and 4096"),
    (("num_classes",), 100_000_000, "num_classes must be between 1 and 100,000"),
])
def test_a_card_edited_out_of_range_is_refused_naming_the_file(tmp_path: Path, key: tuple[str, ...], value: object,
                                                               says: str) -> None:
    """Values that made every prediction silently empty (max_det 0, pixel_std 0) or unsuppressed (nms_iou -1), or a
    class count that became a terabyte allocation, are refused when the checkpoint is loaded."""
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=1, class_names=("target",))
    efpn.save_checkpoint(model, tmp_path / "m.safetensors")
    card = json.loads((tmp_path / "m.json").read_text())
    node = card["config"]
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=rf"m\.json.*{says}"):
        efpn.load_model(tmp_path / "m.safetensors")


@pytest.mark.skipif(os.name == "nt", reason="flock is POSIX")
def test_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path: Path) -> None:
    """Two resumes of one run at once wrote each other's checkpoints and logged epochs twice: the second is refused
    before it reads or rewrites anything, and the lock goes with the process that held it."""
    from efpn.config import TrainConfig
    from efpn.engine.state import LOCK_FILE, STATE_FILE, hold_run, release_run
    from efpn.engine.train import train

    run = tmp_path / "run"
    run.mkdir()
    (run / STATE_FILE).write_bytes(b"state of the run")
    held = hold_run(run)
    from efpn.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "ds", num_images=4, image_size=64, max_size=12)
    cfg = TrainConfig(model="tiny_efpn_n", data=str(tmp_path / "ds" / "data.yaml"), image_size=64, resume=str(run),
                      progress=False, workers=0, device="cpu")
    with pytest.raises(ValueError, match="being trained by another process right now"):
        train(cfg)
    with pytest.raises(ValueError, match="being trained by another process"):
        hold_run(run)
    assert (run / STATE_FILE).read_bytes() == b"state of the run"
    release_run(run, held)
    assert not (run / LOCK_FILE).exists()
    release_run(run, hold_run(run))  # free again


@pytest.mark.parametrize(("names", "says"), [
    ({0: "disc", 1: "square", 2: ["x"]}, r"class 2 is named \['x'\]; every class name is a string"),
    (["disc", None], "class 1 is named None"),
    (["disc", True], "class 1 is named True"),
])
def test_class_names_that_are_not_names_are_refused(names: object, says: str) -> None:
    """A list or a null among the names used to become the class "['x']" or "None"."""
    from efpn.config.names import parse_names

    with pytest.raises(ValueError, match=says):
        parse_names(names)
    assert parse_names({0: "a", 1: 2}) == ["a", "2"]  # numbers as names stay accepted, as YOLO files have them


@pytest.mark.skipif(os.name == "nt", reason="no FIFOs on Windows")
def test_a_data_yaml_that_is_a_pipe_or_a_folder_is_named_as_such(tmp_path: Path) -> None:
    from efpn.config import TrainConfig
    from efpn.config.data import load_data_config
    from efpn.engine.data import load_train_data

    fifo = tmp_path / "data.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is not a regular file"):
        load_data_config(fifo)
    with pytest.raises(ValueError, match="is not a regular file"):
        load_train_data(TrainConfig(model="tiny_efpn_n", data=str(fifo)), False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ssdd.yaml").write_text("format: coco\n")
    with pytest.raises(IsADirectoryError, match=r"is a folder \(it holds ssdd\.yaml\)"):
        load_train_data(TrainConfig(model="tiny_efpn_n", data=str(tmp_path / "d")), False)


@pytest.mark.parametrize("names", [["ship", ""], ["   ", "ship"], ["a\nb"], ["tab\there"]])
def test_blank_class_names_or_names_with_line_breaks_are_refused(names: list[str]) -> None:
    """They trained and reached the model card: an empty name reads as a missing one, a line break splits a class
    in two in classes.txt and in the tables."""
    from efpn.config.names import parse_names

    with pytest.raises(ValueError, match="a class name needs a visible character"):
        parse_names(names)
    assert parse_names(["traffic light", "ship"]) == ["traffic light", "ship"]  # spaces inside a name are fine
