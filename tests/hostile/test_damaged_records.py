"""Damaged and pathological files around runs and reports: a telemetry line cut short by a killed run, a broken
model card among good ones, JSON and YAML nested too deeply to read. Each gets a message naming the file; the rest
of the work goes on."""

from __future__ import annotations

import json
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
