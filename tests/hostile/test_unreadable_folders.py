"""A subfolder that cannot be listed is said, never passed over in silence (pathlib's rglob skips it): by the
image index, the YOLO and mask loaders (whose labels would otherwise read as background) and `efpn detect`.

Permission bits do not stop root, which CI runs as, so the denial is made where the listing happens: ``os.scandir``
of the chosen folder raises the PermissionError a user without read access gets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import efpn
from efpn.cli.main import main
from efpn.data import load_yolo
from efpn.data.images import index_images, walk_files
from efpn.data.masks import load_masks


def _deny(monkeypatch: pytest.MonkeyPatch, *denied: Path) -> None:
    real = os.scandir

    def scandir(path: str | os.PathLike[str] = ".") -> object:
        if any(Path(path) == d for d in denied):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def _image(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((32, 40, 3), value, np.uint8))


def test_walk_files_records_an_unlistable_subfolder_and_refuses_an_unlistable_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _image(tmp_path / "a.png")
    _image(tmp_path / "open" / "b.png")
    _image(tmp_path / "closed" / "c.png")
    assert [p.relative_to(tmp_path).as_posix() for p in walk_files(tmp_path)] == ["a.png", "closed/c.png",
                                                                                   "open/b.png"]
    _deny(monkeypatch, tmp_path / "closed")
    unreadable: list[tuple[Path, str]] = []
    assert [p.name for p in walk_files(tmp_path, unreadable=unreadable)] == ["a.png", "b.png"]  # sorted by path
    assert unreadable == [(tmp_path / "closed", "Permission denied")]
    assert sorted(index_images(tmp_path, unreadable=(seen := []))) == ["a", "open/b"] and len(seen) == 1
    _deny(monkeypatch, tmp_path)
    with pytest.raises(PermissionError, match=r"cannot list the folder .*Permission denied; check that it exists and "
                                              r"that this user may read it"):
        walk_files(tmp_path)


def test_walk_files_does_not_follow_links_to_folders(tmp_path: Path) -> None:
    _image(tmp_path / "real" / "x.png")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "loop").symlink_to(tmp_path)  # a loop: followed, it would never end
    assert [p.relative_to(tmp_path).as_posix() for p in walk_files(tmp_path)] == ["real/x.png"]


def test_yolo_loader_reports_unlistable_image_and_label_subfolders(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for sub in ("day", "night"):
        _image(tmp_path / "images" / sub / "a.png")
        (tmp_path / "labels" / sub).mkdir(parents=True)
        (tmp_path / "labels" / sub / "a.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    _deny(monkeypatch, tmp_path / "labels" / "night")
    records, _, report = load_yolo(tmp_path / "images", names=["ship"])
    # night/a.png is readable but its labels are not: left out (kept, its ship would train as background), and said
    assert [(r.path.parent.name, len(r.boxes)) for r in records] == [("day", 1)]
    assert report.unreadable_folder == 1
    assert report.examples["unreadable_folder"] == [f"{tmp_path / 'labels' / 'night'}: Permission denied; images "
                                                    "whose labels are there, left out: 1"]
    assert "subfolders that could not be listed" in report.summary()

    monkeypatch.undo()
    _deny(monkeypatch, tmp_path / "images" / "night")
    records, _, report = load_yolo(tmp_path / "images", names=["ship"])
    assert [r.path.parent.name for r in records] == ["day"] and report.unreadable_folder == 1


def test_mask_loader_reports_an_unlistable_mask_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mask = np.zeros((32, 40), np.uint8)
    mask[10:14, 10:14] = 255
    for sub, stem in (("x", "a"), ("y", "b")):
        _image(tmp_path / "images" / f"{stem}.png")
        (tmp_path / "masks" / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "masks" / sub / f"{stem}_pixels0.png"), mask)
    assert [len(r.boxes) for r in load_masks(tmp_path / "images", tmp_path / "masks")[0]] == [1, 1]
    _deny(monkeypatch, tmp_path / "masks" / "y")
    records, _, report = load_masks(tmp_path / "images", tmp_path / "masks")
    # masks are matched by name: every image whose mask was not found elsewhere may have it there, and is left out
    assert [(r.path.stem, len(r.boxes)) for r in records] == [("a", 1)] and report.unreadable_folder == 1
    assert report.examples["unreadable_folder"] == [f"{tmp_path / 'masks' / 'y'}: Permission denied; images without "
                                                    "a mask found elsewhere, left out (theirs may be there): 1"]


def test_detect_says_which_folder_it_could_not_read_and_detects_the_rest(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=1, class_names=("target",)).eval()
    ckpt = efpn.save_checkpoint(model, tmp_path / "m.safetensors")
    _image(tmp_path / "in" / "a.png")
    _image(tmp_path / "in" / "closed" / "b.png")
    _deny(monkeypatch, tmp_path / "in" / "closed")
    main(["detect", str(tmp_path / "in"), "--weights", str(ckpt), "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [Path(p).name for p in summary["images"]] == ["a.png"]
    assert list(summary["errors"]) == [str(tmp_path / "in" / "closed")]
    assert "could not be listed (Permission denied): its images were not read" in next(iter(summary["errors"].values()))
