"""Validation with an unreadable image: the image is reported and left out (its objects are not counted as
missed), the rest is evaluated, whole-image and sliced; the CLI's JSON lists it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import efpn
from efpn.cli.main import main
from efpn.config.data import load_data_config
from efpn.data.splits import load_split
from efpn.evaluation.validate import validate


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from efpn.checkpoint import save_checkpoint
    from efpn.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("val_bad")
    write_synthetic_dataset(root / "synth", num_images=5, image_size=128, seed=3, max_size=24)
    model = efpn.build_model("tiny_efpn_n", num_classes=3, class_names=("disc", "square", "cross"))
    ckpt = save_checkpoint(model.eval(), root / "tiny.safetensors", {"preset": "tiny_efpn_n"})
    bad = sorted((root / "synth" / "images").iterdir())[2]
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG
    return ckpt, root / "synth" / "data.yaml", bad


@pytest.mark.parametrize("slice_size", [None, 64], ids=["whole", "sliced"])
def test_an_unreadable_image_is_left_out_and_reported(model_and_data, slice_size: int | None) -> None:
    ckpt, data, bad = model_and_data
    model = efpn.load_model(ckpt)
    records, names, _ = load_split(load_data_config(data), "train")
    with pytest.warns(UserWarning, match="skipped unreadable image") as caught:
        result = validate(model, records, names, score_thresh=0.0, slice_size=slice_size)
    # the warning names the code that asked for the evaluation, not a torch wrapper or efpn's internals
    assert {Path(w.filename).name for w in caught if "skipped unreadable" in str(w.message)} == {Path(__file__).name}
    assert list(result.skipped) == [str(bad)] and result.num_images == len(records) - 1
    readable = [r for r in records if r.path != bad]
    assert result.metrics == validate(model, readable, names, score_thresh=0.0, slice_size=slice_size).metrics


def test_val_cli_lists_the_skipped_image(model_and_data, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, data, bad = model_and_data
    out = tmp_path / "m.json"
    with pytest.warns(UserWarning):
        main(["val", "--weights", str(ckpt), "--data", str(data), "--split", "train", "--json", str(out)])
    m = json.loads(out.read_text())
    records, _, _ = load_split(load_data_config(data), "train")
    assert list(m["skipped_images"]) == [str(bad)] and m["num_images"] == len(records) - 1
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().out
