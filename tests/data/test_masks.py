"""Mask-annotated data (SIRST layout): one box per 8-connected component, instance ids, odd files, the real set."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from torch.testing import assert_close

from efpn.data import boxes_from_mask, load_masks, load_voc
from efpn.data.masks import faint_regions
from efpn.data.splits import load_split

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_components_give_tight_boxes_and_diagonals_join_at_8_connectivity() -> None:
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:6] = 255  # a 3x3 target
    mask[10, 10] = 255  # a 1-pixel target
    mask[11, 11] = 255  # touches it diagonally: one target at 8-connectivity, two at 4
    mask[15:17, 20:28] = 200  # at least half the largest value: target
    expected = np.array([[3, 2, 6, 5], [10, 10, 12, 12], [20, 15, 28, 17]], np.float32)
    assert_close(boxes_from_mask(mask), expected)
    assert len(boxes_from_mask(mask, connectivity=4)) == 4
    assert_close(boxes_from_mask((mask > 0).astype(np.uint8)), expected)  # a 0/1 mask: the same targets
    noisy = mask.copy()
    noisy[5, 3:6], noisy[0, 29], noisy[19, 0:30] = 2, 1, 3  # what a lossy save leaves around and across a mask
    assert_close(boxes_from_mask(noisy), expected)  # faint values are neither targets nor parts of one
    assert boxes_from_mask(np.zeros((5, 5), np.uint8)).shape == (0, 4)


def test_faint_regions_apart_from_targets_are_counted_and_noise_is_not(tmp_path: Path) -> None:
    """A target painted at 100 beside one at 255, or instance ids 1..6 read without ``instances``, vanished without a
    word (under half the peak); such regions are now counted, while a lossy save's faint noise and a target's soft
    edge are not."""
    mask = np.zeros((20, 40), np.uint8)
    mask[2:5, 3:6] = 255
    mask[5, 3:6] = 90  # a soft edge touching the target
    mask[19, :] = 3  # lossy-save noise, far below 1/8 of the peak
    assert faint_regions(mask) == 0
    mask[10:13, 20:23] = 100  # a second target painted fainter
    assert faint_regions(mask) == 1 and len(boxes_from_mask(mask)) == 1
    ids = np.zeros((20, 40), np.uint8)
    for i in range(6):
        ids[2:5, 1 + 6 * i:4 + 6 * i] = i + 1  # ids 1..6: 1 and 2 are under half of 6
    assert faint_regions(ids) == 2 and len(boxes_from_mask(ids)) == 4 and len(boxes_from_mask(ids, instances=True)) == 6
    _write(tmp_path / "images", "a.png", np.zeros((20, 40, 3), np.uint8))
    _write(tmp_path / "masks", "a_pixels0.png", ids)
    records, _, report = load_masks(tmp_path / "images", tmp_path / "masks")
    assert len(records[0].boxes) == 4 and report.faint_mask_regions == 2
    assert "options: {instances: true}" in report.summary()
    _, _, report = load_masks(tmp_path / "images", tmp_path / "masks", instances=True)
    assert report.faint_mask_regions == 0


def test_instance_ids_are_one_box_each_even_when_split() -> None:
    mask = np.zeros((10, 10), np.uint16)
    mask[1:3, 1:3] = 1
    mask[7:9, 7:9] = 1  # the same instance in two pieces
    mask[4, 4:6] = 2
    assert_close(boxes_from_mask(mask, instances=True), np.array([[1, 1, 9, 9], [4, 4, 6, 5]], np.float32))


def test_colour_and_alpha_masks_keep_their_targets() -> None:
    gray = np.zeros((12, 12), np.uint8)
    gray[2:4, 2:4] = 255
    gray[8, 8:11] = 255
    expected = boxes_from_mask(gray)
    opaque = np.dstack([gray, gray, gray, np.full_like(gray, 255)])  # an RGBA save: alpha is opacity everywhere
    assert_close(boxes_from_mask(opaque), expected)
    assert_close(boxes_from_mask(np.dstack([gray, np.full_like(gray, 255)])), expected)  # grey + opaque alpha
    on_alpha = np.dstack([np.zeros_like(gray)] * 3 + [gray])  # targets drawn as opacity on a transparent layer
    assert_close(boxes_from_mask(on_alpha), expected)
    colours = np.zeros((12, 12, 3), np.uint8)
    colours[2:4, 2:4] = (255, 0, 0)
    colours[3, 4] = (0, 255, 0)  # touches the red one: two colours, two instances
    assert_close(boxes_from_mask(colours, instances=True),
                 np.array([[2, 2, 4, 4], [4, 3, 5, 4]], np.float32))
    assert len(boxes_from_mask(colours)) == 1  # as a binary mask they are one target


def _write(folder: Path, name: str, array: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), array)


def test_loader_counts_what_it_skips(tmp_path: Path) -> None:
    img, msk = tmp_path / "images", tmp_path / "masks"
    for stem in ("a", "b", "c", "d"):
        _write(img, f"{stem}.png", np.full((24, 32, 3), 40, np.uint8))
    one = np.zeros((24, 32), np.uint8)
    one[5:8, 6:9] = 255
    _write(msk, "a_pixels0.png", one)
    _write(msk, "c_pixels0.png", np.zeros((10, 10), np.uint8))  # wrong size: malformed, image dropped
    _write(msk, "e_pixels0.png", one)  # no image
    (img / "d.png").write_bytes(b"not a png")  # unreadable image
    records, names, report = load_masks(img, msk)
    assert names == ["target"]
    assert [r.path.name for r in records] == ["a.png", "b.png"]
    assert_close(records[0].boxes, np.array([[6, 5, 9, 8]], np.float32))
    assert len(records[1].boxes) == 0
    assert report.image_without_labels == 1 and report.malformed == 1
    assert report.label_without_image == 1 and report.unreadable_image == 1
    lst = tmp_path / "list.txt"
    lst.write_text("b\na\nzz\nb\n")  # b twice: one record
    records, _, report = load_masks(img, msk, lst)
    assert [r.path.name for r in records] == ["b.png", "a.png"] and report.label_without_image == 1
    with pytest.raises(FileNotFoundError, match="masks folder"):
        load_masks(img, tmp_path / "nope")


@pytest.mark.realdata
def test_sirst_trainval_has_its_424_targets() -> None:
    if not (SHARED / "sirst").is_dir():
        pytest.skip("../shared/data/sirst is not present")
    repo = Path(__file__).resolve().parents[2]
    train, names, _ = load_split(repo / "recipes" / "data" / "sirst.yaml", "train")
    val, _, _ = load_split(repo / "recipes" / "data" / "sirst.yaml", "val")
    assert names == ["target"] and (len(train), len(val)) == (256, 85)
    sizes = np.concatenate([np.sqrt(np.prod(r.boxes[:, 2:] - r.boxes[:, :2], axis=1)) for r in train + val])
    assert len(sizes) == 424 and float(np.mean(sizes < 16)) > 0.95
    assert not {r.path for r in train} & {r.path for r in val}
    assert not {r.image_id for r in train} & {r.image_id for r in val}  # ids from the stems, not the lists


@pytest.mark.realdata
def test_voc_loader_warns_about_sirst_single_box_xml() -> None:
    if not (SHARED / "sirst").is_dir():
        pytest.skip("../shared/data/sirst is not present")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_voc(SHARED / "sirst", annotations="masks", images="images")
    assert any("ONE box per image" in str(w.message) and "format 'masks'" in str(w.message) for w in caught)


def test_a_corrupt_mask_is_reported_by_efpn_alone(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """OpenCV printed its own '[ERROR:0@...] readHeader' line for a broken PNG before efpn's report of the file."""
    from efpn.data.images import CorruptImageError
    from efpn.data.masks import _read_mask

    bad = tmp_path / "m.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDRgarbage")
    level = cv2.utils.logging.getLogLevel()
    with pytest.raises(CorruptImageError, match="could not be read as an image"):
        _read_mask(bad)
    assert "[ERROR" not in capfd.readouterr().err
    assert cv2.utils.logging.getLogLevel() == level  # the process's own setting is back


def test_masks_with_names_that_are_not_utf8_and_a_mask_that_is_a_pipe(tmp_path: Path) -> None:
    """A mask whose file name is not valid UTF-8 is read (OpenCV's imread crashed the process on it: the loader
    decodes the bytes itself); a mask that is a pipe is no mask file, instead of blocking the loader. Run in a
    child process, so a regression fails this test instead of killing the test session."""
    import os
    import subprocess
    import sys

    img, msk = tmp_path / "images", tmp_path / "masks"
    one = np.zeros((24, 32), np.uint8)
    one[5:8, 6:9] = 255
    for stem in (os.fsdecode(b"t\xe9_1"), "p_2"):
        _write(img, "x.png", np.full((24, 32, 3), 40, np.uint8))
        (img / "x.png").rename(img / f"{stem}.png")
    _write(msk, "x.png", one)
    (msk / "x.png").rename(msk / (os.fsdecode(b"t\xe9_1") + "_pixels0.png"))
    os.mkfifo(msk / "p_2_pixels0.png")
    code = ("import os, sys; from efpn.data.masks import load_masks; "
            "recs, _, rep = load_masks(os.fsdecode(sys.argv[1]), os.fsdecode(sys.argv[2])); "
            "print(len(recs), [len(r.boxes) for r in recs], rep.unreadable_image)")
    done = subprocess.run([sys.executable, "-c", code, os.fsencode(img), os.fsencode(msk)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[0].startswith("2 [0, 1]")  # the pipe is no mask file: p_2 has no targets


def test_two_files_of_one_stem_are_reported_and_a_png_mask_is_preferred(tmp_path: Path) -> None:
    """frame1.jpg beside frame1.png: one was read, the other never mentioned; an empty .bmp preview beside the real
    .png mask won by sort order and the image got no targets."""
    img, msk = tmp_path / "images", tmp_path / "masks"
    _write(img, "frame1.png", np.zeros((20, 20, 3), np.uint8))
    _write(img, "frame1.jpg", np.zeros((20, 20, 3), np.uint8))
    real = np.zeros((20, 20), np.uint8)
    real[5:8, 5:8] = 255
    _write(msk, "frame1_pixels0.png", real)
    _write(msk, "frame1_pixels0.bmp", np.zeros((20, 20), np.uint8))
    records, _, report = load_masks(img, msk)
    assert len(records) == 1 and len(records[0].boxes) == 1  # the PNG mask
    assert report.same_stem == 2
    assert sorted(report.examples["same_stem"]) == ["frame1.png (beside frame1.jpg)",
                                                    "frame1_pixels0.bmp (beside frame1_pixels0.png)"]


def test_faint_regions_of_a_lossy_mask_are_not_counted(tmp_path: Path) -> None:
    """A JPEG mask at quality 50 rings at 1/8 to 1/2 of its peak away from the targets; counted, the report advised
    instances: true, which would make every noise value an object there."""
    mask = np.zeros((40, 40), np.uint8)
    mask[5:10, 5:10] = 255
    mask[25:28, 25:28] = 100  # what would be counted in a lossless mask
    _write(tmp_path / "images", "a.png", np.zeros((40, 40, 3), np.uint8))
    _write(tmp_path / "masks", "a_pixels0.jpg", mask)
    _, _, report = load_masks(tmp_path / "images", tmp_path / "masks")
    assert report.faint_mask_regions == 0
