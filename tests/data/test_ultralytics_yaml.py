"""Ultralytics dataset YAMLs (``path`` / ``train`` / ``val`` / ``names``) load as they are written: image folders,
image lists (``train.txt``), one-path lists; unknown keys and multi-folder splits are refused with what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from efpn.config.data import load_data_config
from efpn.config.schema import ConfigError
from efpn.data import load_yolo
from efpn.data.splits import load_split
from efpn.data.yolo import read_image_list


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_folder_splits_equal_efpns_own_schema(yolo_dir: Path) -> None:
    ours = _write(yolo_dir / "ours.yaml", "format: yolo\nnames: names.yaml\ntrain:\n  images: images/train\n")
    theirs = _write(yolo_dir / "data.yaml", "path: .\ntrain: images/train\nval: [images/train]\ntest: images/test\n"
                    "download: https://example.invalid/data.zip\nnames:\n  0: cat\n  1: dog\n")
    with pytest.warns(UserWarning, match=r"'test: images/test' -> .* does not exist.*; the test split is not"):
        cfg = load_data_config(theirs)
    assert cfg.format == "yolo" and cfg.root == yolo_dir.resolve() and cfg.names == ("cat", "dog")
    assert not cfg.has_split("test")
    a, names_a, report_a = load_split(ours, "train")
    b, names_b, report_b = load_split(cfg, "train")
    assert names_a == names_b == ["cat", "dog"]
    assert [r.path for r in a] == [r.path for r in b] and report_a.counts() == report_b.counts()
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ra.boxes, rb.boxes)
    assert [r.path for r in load_split(cfg, "val")[0]] == [r.path for r in b]  # the one-path list
    (yolo_dir / "test.txt").write_text("images/train/000002.png\n", encoding="utf-8")  # a test split on disk: read
    cfg = load_data_config(_write(yolo_dir / "data.yaml", "path: .\ntrain: images/train\ntest: test.txt\n"
                                  "names: [cat, dog]\n"))
    assert [r.path.name for r in load_split(cfg, "test")[0]] == ["000002.png"]
    with pytest.warns(UserWarning, match="'test' lists 2 paths.*; the test split is not available"):
        cfg = load_data_config(_write(yolo_dir / "data.yaml", "path: .\ntrain: images/train\n"
                                      "test: [test.txt, images/train]\nnames: [cat, dog]\n"))
    assert cfg.has_split("train") and not cfg.has_split("test")  # training still reads the YAML


def test_image_list_reads_as_ultralytics_does(yolo_dir: Path) -> None:
    train = yolo_dir / "images" / "train"
    _write(yolo_dir / "train.txt", f"./images/train/000002.png\n\n{train / '000001.png'}\n./images/train/000001.png\n"
           "images/train/gone.png\n# a comment\n")
    assert read_image_list(yolo_dir / "train.txt") == [train / "000002.png", train / "000001.png",
                                                       yolo_dir / "images" / "train" / "gone.png"]
    cfg = load_data_config(_write(yolo_dir / "data.yaml", "path: .\ntrain: train.txt\nnames: [cat, dog]\n"))
    assert cfg.format == "yolo" and cfg.sources["train"]["list"] == (yolo_dir / "train.txt").resolve()
    records, _, report = load_split(cfg, "train")
    assert [r.path.name for r in records] == ["000001.png", "000002.png"]  # listed ones only, in path order
    np.testing.assert_allclose(records[0].boxes, [[40, 15, 60, 35], [10, 10, 30, 30], [85, 20, 100, 30]], atol=1e-4)
    assert len(records[1].boxes) == 0
    assert report.label_without_image == 1 and report.examples["label_without_image"] == [
        f"{yolo_dir / 'images' / 'train' / 'gone.png'} (listed in train.txt)"]
    assert report.image_without_labels == 1


def test_label_beside_an_image_outside_an_images_folder(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (50, 40)).save(tmp_path / "a.png")
    _write(tmp_path / "a.txt", "0 0.5 0.5 0.2 0.5\n")
    _write(tmp_path / "list.txt", "a.png\n")
    records, _, _ = load_yolo(None, names=["x"], image_list=tmp_path / "list.txt")
    np.testing.assert_allclose(records[0].boxes, [[20, 10, 30, 30]], atol=1e-4)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("path: .\ntrain: [images/train, images/val]\nnames: [cat, dog]\n", "lists 2 paths.*one .txt file"),
        ("path: nowhere\ntrain: images/train\nnames: [cat, dog]\n", r"'path: nowhere' .* relative to the YAML"),
        ("path: .\ntrain: images/missing\nnames: [cat, dog]\n", r"'train: images/missing' .* does not exist; .*'path'"),
        ("path: .\ntrain: names.yaml\nnames: [cat, dog]\n", r"'train: names.yaml' .* not a folder or an image list"),
        ("path: .\ntrain: images/train\n", "format yolo needs 'names'"),
        ("train: 3\nnames: [cat, dog]\nval: images/train\n", "'train' must be an image folder or an image list"),
    ],
)
def test_bad_ultralytics_yaml_says_what_to_do(yolo_dir: Path, text: str, match: str) -> None:
    with pytest.raises((ConfigError, FileNotFoundError), match=match):
        load_data_config(_write(yolo_dir / "data.yaml", text))


@pytest.mark.realdata
def test_coco128_as_its_ultralytics_yaml(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "coco128"
    if not root.is_dir():
        pytest.skip(f"{root} is not present (real COCO128 sample)")
    names = (root / "names.yaml").read_text(encoding="utf-8").split("names:", 1)[1]
    cfg = load_data_config(_write(tmp_path / "coco128.yaml", f"path: {root}\ntrain: images/train2017\n"
                                  f"val: images/train2017\nnames:{names}"))
    records, class_names, _ = load_split(cfg, "val")
    assert len(class_names) == 80 and len(records) == 128
    assert sum(len(r.boxes) for r in records) > 900


def test_roboflow_export_reads_as_ultralytics_reads_it(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "export"
    for split in ("train", "valid"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir()
        Image.new("RGB", (40, 20)).save(root / split / "images" / "a.jpg")
        _write(root / split / "labels" / "a.txt", "1 0.5 0.5 0.5 0.5\n")
    # Roboflow writes its paths one folder too high, adds its own block, and older exports give nc without names
    yaml_path = _write(root / "data.yaml", "train: ../train/images\nvalidation: ../valid/images\nnc: 2\n"
                       "roboflow:\n  workspace: w\n  version: 3\n")
    cfg = load_data_config(yaml_path)
    assert cfg.names == ("class_0", "class_1")
    assert cfg.sources["val"]["images"] == (root / "valid" / "images").resolve()
    records, _, _ = load_split(cfg, "val")
    np.testing.assert_allclose(records[0].boxes, [[10, 5, 30, 15]])
    _write(root / "data.yaml", "path: .\ntrain: train/images\nnames: [a, b]\nepochs: 3\n")
    with pytest.warns(UserWarning, match=r"\['epochs'\] are not read"):
        load_data_config(root / "data.yaml")


def test_lists_relative_to_the_working_folder_and_links(yolo_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(yolo_dir.parent)
    _write(yolo_dir / "train.txt", "./images/train/000001.png\n")
    relative = Path(yolo_dir.name) / "train.txt"  # a relative list path: './' lines are still read from its folder
    assert read_image_list(relative) == [yolo_dir / "images" / "train" / "000001.png"]
    # an image that links to a file elsewhere keeps its own folder, where its label is (no symlink resolution)
    store = tmp_path / "store"
    store.mkdir()
    (yolo_dir / "images" / "train" / "000001.png").rename(store / "blob.png")
    (yolo_dir / "images" / "train" / "000001.png").symlink_to(store / "blob.png")
    records, _, _ = load_yolo(None, names=["cat", "dog"], image_list=relative)
    assert len(records) == 1 and len(records[0].boxes) == 3


def test_labels_beside_the_images_and_one_source_per_split(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (50, 40)).save(tmp_path / "a.png")
    _write(tmp_path / "a.txt", "0 0.5 0.5 0.2 0.5\n")
    cfg = load_data_config(_write(tmp_path / "d.yaml", "path: .\ntrain: .\nnames: [x]\n"))
    records, _, _ = load_split(cfg, "train")
    np.testing.assert_allclose(records[0].boxes, [[20, 10, 30, 30]], atol=1e-4)
    _write(tmp_path / "l.txt", "a.png\n")
    with pytest.raises(ConfigError, match="gives 'list' and 'images'"):
        load_data_config(_write(tmp_path / "e.yaml", "format: yolo\nnames: [x]\ntrain:\n  list: l.txt\n  images: .\n"))
