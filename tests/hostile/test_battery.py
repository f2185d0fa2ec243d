"""A battery of malformed and hostile inputs, generated at test time: every one gets a clear message (naming the
file, key or argument and what to do), and good data beside a bad file is still processed."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import efpn
from efpn.cli.main import main
from efpn.config import ConfigError, load_train_config
from efpn.config.data import load_data_config
from efpn.data import CorruptImageError, DetectionDataset, load_coco, read_image

# ------------------------------------------------------------------------------------------------------ images

GOOD_PNG = cv2.imencode(".png", np.full((20, 30, 3), 120, np.uint8))[1].tobytes()
IMAGE_CASES = {
    "empty file": b"",
    "text named png": b"this is not an image at all\n" * 10,
    "png signature only": b"\x89PNG\r\n\x1a\n",
    "truncated png": GOOD_PNG[: len(GOOD_PNG) // 2],
    "truncated jpeg": cv2.imencode(".jpg", np.full((64, 64, 3), 9, np.uint8))[1].tobytes()[:200],
    "gif header only": b"GIF89a" + struct.pack("<HH", 10, 10),
    "bmp with lying header": b"BM" + struct.pack("<IHHI", 10**9, 0, 0, 54) + b"\0" * 40,
    "zeros": b"\0" * 4096,
    "html": b"<html><body>not an image</body></html>",
    "json": json.dumps({"image": [1, 2, 3]}).encode(),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_bad_image_files_are_a_clear_error(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(IMAGE_CASES[case])
    with pytest.raises(CorruptImageError, match=r"bad\.png"):
        read_image(path)


def test_a_dataset_skips_bad_images_and_serves_the_rest(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    images, anns = [], []
    names = ["good_a.png", *[f"bad_{i}.png" for i in range(len(IMAGE_CASES))], "good_b.png"]
    for i, name in enumerate(names, start=1):
        data = GOOD_PNG if name.startswith("good") else list(IMAGE_CASES.values())[i - 2]
        (tmp_path / "images" / name).write_bytes(data)
        images.append({"id": i, "file_name": name, "width": 30, "height": 20})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 0})
    (tmp_path / "a.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                 "categories": [{"id": 1, "name": "t"}]}))
    records, _, _ = load_coco(tmp_path / "a.json", tmp_path / "images")
    ds = DetectionDataset(records, skip_corrupt=True)
    served = [ds[i] for i in range(len(ds))]
    assert len(served) == len(records)  # a bad image is replaced, never raised
    assert ds.report.unreadable_image == len(IMAGE_CASES)


@pytest.mark.parametrize("array", [np.zeros((0, 5, 3), np.uint8), np.zeros((5, 5, 7), np.uint8),
                                   np.full((5, 5, 3), np.nan, np.float32), np.zeros((5, 5, 3), np.complex64),
                                   "not an image", 12345])
def test_bad_in_memory_images_are_a_clear_error(array: object) -> None:
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=1).eval()
    with pytest.raises((ValueError, FileNotFoundError)):
        efpn.inspect(model, array)


def test_in_memory_image_conventions() -> None:
    """float [0, 1] with a resampling overshoot is still [0, 1]; normalised (mean/std) input is refused, not read as
    a black image; bfloat16 and float16 tensors convert; a meta tensor is named."""
    import torch

    from efpn.infer.preprocess import to_rgb_uint8

    rng = np.random.default_rng(0)
    unit = rng.random((6, 8, 3)).astype(np.float32)
    as_uint8 = to_rgb_uint8(unit)
    over = unit.copy()
    over[0, 0, 0] = 1.0001  # bicubic resampling of a [0, 1] image
    np.testing.assert_array_equal(to_rgb_uint8(over)[1:], as_uint8[1:])
    assert to_rgb_uint8(over)[0, 0, 0] == 255
    with pytest.raises(ValueError, match=r"negative values \(down to -2.1.*normalised"):
        to_rgb_uint8((unit - 0.485) / 0.229)
    t = torch.from_numpy(unit).permute(2, 0, 1)
    assert np.abs(to_rgb_uint8(t.to(torch.bfloat16)).astype(int) - as_uint8).max() <= 1
    np.testing.assert_array_equal(to_rgb_uint8(t.half()), to_rgb_uint8(t.half().float()))
    with pytest.raises(ValueError, match="meta device"):
        to_rgb_uint8(torch.empty(3, 6, 8, device="meta"))


@pytest.mark.parametrize(("targets", "says"), [
    ([{"boxes": [[1, 1, 5, 5]], "labels": [0]}], "targets must be a dict .* got a list"),
    ({"boxes": [[18, 18, 10, 10]], "labels": [0]}, r"\[18.0, 18.0, 10.0, 10.0\] has no area inside the 96x64 image"),
    ({"boxes": [[100, 10, 120, 20]], "labels": [0]}, "has no area inside the 96x64 image"),
    ({"boxes": [[1, 1, 5, 5, 0.9]], "labels": [0]}, r"must be \(M, 4\) xyxy in image pixels, got shape \(1, 5\)"),
    ({"boxes": [[1, 1, 5, 5]], "labels": [0.5]}, "must be whole class indices"),
    ({"boxes": [[1, 1, 5, 5]], "labels": [0, 1]}, "1 boxes but 2 labels"),
], ids=["list", "inverted", "outside", "five-columns", "fractional-label", "count"])
def test_inspect_targets_are_checked_in_the_images_own_pixels(targets: object, says: str) -> None:
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=3).eval()
    with pytest.raises(ValueError, match=says):
        efpn.inspect(model, np.zeros((64, 96, 3), np.uint8), targets=targets)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- data YAMLs

DATA_YAMLS = {
    "python tag": ("format: !!python/object/apply:os.system ['true']\n", "valid YAML|could not determine"),
    "wrong type": ("format: coco\nval_fraction: lots\ntrain: {annotations: a.json}\n", r"'val_fraction'"),
    "list top": ("- format\n- coco\n", "expected a mapping"),
    "unknown key": ("format: coco\nepochs: 3\ntrain: {annotations: a.json}\n", r"unknown key\(s\) \['epochs'\]"),
    "unknown format": ("format: parquet\ntrain: {annotations: a.json}\n", "unknown format"),
    "nan fraction": ("format: coco\nval_fraction: .nan\ntrain: {annotations: a.json}\n", "finite number"),
    "inf seed": ("format: coco\nsplit_seed: .inf\ntrain: {annotations: a.json}\n", r"'split_seed'"),
    "source not mapping": ("format: coco\ntrain: [a.json]\n", r"'train' must be a mapping"),
    "source key type": ("format: coco\ntrain: {annotations: [1, 2]}\n", r"'train.annotations' must be a path"),
    "missing file": ("format: coco\ntrain: {annotations: nope.json}\n", r"nope\.json.*not an existing file"),
    "bad yaml": ("format: coco\ntrain: {annotations: a.json\n", "not valid YAML"),
    "options type": ("format: coco\noptions: [crowd]\ntrain: {annotations: a.json}\n", r"'options'"),
}


@pytest.mark.parametrize("case", sorted(DATA_YAMLS))
def test_bad_data_yamls_name_the_file_and_key(tmp_path: Path, case: str) -> None:
    (tmp_path / "a.json").write_text("{}")
    text, match = DATA_YAMLS[case]
    path = tmp_path / "data.yaml"
    path.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=match) as err:
        load_data_config(path)
    assert "data.yaml" in str(err.value)


TRAIN_YAMLS = {
    "nan lr": ("model: tiny_efpn_n\nlr: .nan\n", r"'lr' must be a finite number"),
    "negative lr": ("model: tiny_efpn_n\nlr: -1\n", "lr must be > 0"),
    "string epochs": ("model: tiny_efpn_n\nepochs: ten\n", r"'epochs' must be an integer"),
    "float batch": ("model: tiny_efpn_n\nbatch_size: 7.5\n", r"'batch_size' must be an integer"),
    "bool as amp": ("model: tiny_efpn_n\namp: true\n", r"'amp' must be one of"),
    "unknown key": ("model: tiny_efpn_n\nlearning_rate: 1\n", r"unknown key\(s\) \['learning_rate'\]"),
    "nested": ("model: {name: x}\n", r"'model' must be a string"),
    "zero image size": ("model: tiny_efpn_n\nimage_size: 0\n", "image_size must be a multiple of 32 from 32 to"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_YAMLS))
def test_bad_training_recipes_name_the_file_and_key(tmp_path: Path, case: str) -> None:
    text, match = TRAIN_YAMLS[case]
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_train_config(path)
    assert "recipe.yaml" in str(err.value)


# ------------------------------------------------------------------------------------------------ checkpoints

@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=1).eval()
    return efpn.save_checkpoint(model, tmp_path_factory.mktemp("ck") / "m.safetensors")


def _copy(saved: Path, tmp_path: Path) -> Path:
    for suffix in (".safetensors", ".json"):
        (tmp_path / f"m{suffix}").write_bytes(saved.with_suffix(suffix).read_bytes())
    return tmp_path / "m.safetensors"


CHECKPOINT_CASES = {
    "pickle renamed": lambda p: p.write_bytes(pickle.dumps({"a": 1})),
    "torch save": lambda p: torch.save({"w": torch.zeros(1)}, p),
    "garbage header": lambda p: p.write_bytes(b"\xff" * 64),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "card not json": lambda p: p.with_suffix(".json").write_text("{ nope"),
    "card wrong type": lambda p: p.with_suffix(".json").write_text(
        json.dumps({**json.loads(p.with_suffix(".json").read_text()), "config": "yolo"})),
    "card wrong class count": lambda p: p.with_suffix(".json").write_text(json.dumps(
        {**json.loads(p.with_suffix(".json").read_text()),
         "config": {**json.loads(p.with_suffix(".json").read_text())["config"], "num_classes": 7}})),
    "card missing": lambda p: p.with_suffix(".json").unlink(),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_bad_checkpoints_are_refused_clearly(saved: Path, tmp_path: Path, case: str) -> None:
    path = _copy(saved, tmp_path)
    CHECKPOINT_CASES[case](path)
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        efpn.load_model(path)
    assert "m." in str(err.value) or "m.json" in str(err.value) or "m.safetensors" in str(err.value)


# ------------------------------------------------------------------------------------------------ CLI numbers

CLI_CASES = [
    ["detect", "x.png", "--weights", "w", "--score", "nan"], ["detect", "x.png", "--weights", "w", "--iou", "2"],
    ["detect", "x.png", "--weights", "w", "--slice", "-5"], ["detect", "x.png", "--weights", "w", "--overlap", "1"],
    ["val", "--weights", "w", "--data", "d", "--slice", "0"], ["diagnose", "--weights", "w", "--data", "d",
                                                               "--score", "inf"],
]


@pytest.mark.parametrize("argv", CLI_CASES, ids=lambda a: " ".join(a[-2:]))
def test_cli_numbers_are_checked(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2 and f"argument {argv[-2]}" in capsys.readouterr().err
