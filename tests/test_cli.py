"""The `efpn` command line: help, models, assign, data synth, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efpn.cli import build_parser, main


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
    main(["models", "--json"])
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


def test_parser_builds() -> None:
    assert build_parser().prog == "efpn"
