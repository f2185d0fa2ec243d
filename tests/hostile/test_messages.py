"""Mistakes get messages that name the real problem: a folder given for a data YAML, an input size under the
network's minimum, thresholds outside [0, 1] through the Python API, an unknown protocol before the data loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import efpn
from efpn.cli.main import main
from efpn.config.data import load_data_config
from efpn.infer.predict import predict_image


def test_a_folder_given_as_data_yaml_is_named_a_folder(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("format: coco\n")
    with pytest.raises(IsADirectoryError, match=rf"is a folder \(it holds data.yaml\); pass the data YAML file itself, "
                                                 rf"e.g. {tmp_path / 'data.yaml'}"):
        load_data_config(tmp_path)


@pytest.fixture(scope="module")
def model() -> efpn.Detector:
    return efpn.build_model("tiny_efpn_n", num_classes=2).eval()


def test_predict_image_says_when_the_input_size_is_too_small(model) -> None:
    with pytest.raises(ValueError, match="image_size 7 is under the network's"):
        predict_image(model, np.zeros((64, 64, 3), np.uint8), image_size=7)


@pytest.mark.parametrize("kw", [{"score_thresh": -1.0}, {"nms_iou": 5.0}, {"score_thresh": float("nan")},
                                {"max_det": 0}])
def test_predict_image_refuses_settings_outside_their_meaning(model, kw: dict) -> None:
    with pytest.raises(ValueError, match="must be"):
        predict_image(model, np.zeros((64, 64, 3), np.uint8), **kw)


def test_assign_refuses_an_unknown_protocol_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:  # the data YAML does not even exist: the protocol is checked first
        main(["assign", "--data", str(tmp_path / "absent.yaml"), "--protocol", "maxiou", "foo"])
    assert e.value.code == 2 and "unknown assignment protocol foo; choose from" in capsys.readouterr().err
