"""Hostile files for `efpn detect` and the image reader: each gets a clear message, and the good images beside it
are still processed."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import efpn
from efpn.cli.main import main
from efpn.data import CorruptImageError, ImageTooLargeError, read_image


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR declares ``width`` x ``height`` with almost no pixel data (a decompression bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=1, class_names=("target",)).eval()
    return efpn.save_checkpoint(model, folder / "m.safetensors")


def test_declared_huge_png_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 60000, 60000)
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png is too large to decode safely.*tiles or downscale"):
        read_image(bomb)
    with pytest.raises(CorruptImageError):
        efpn.data.image_size(bomb)


def test_one_bad_file_never_stops_the_batch(ckpt: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a_good.png"), np.full((64, 80, 3), 90, np.uint8))
    _png_header_only(src / "b_bomb.png", 60000, 60000)
    cv2.imwrite(str(src / "c_thin.png"), np.full((8, 20000, 3), 90, np.uint8))  # 20000 x 8: too thin for one input
    (src / "d_truncated.png").write_bytes((src / "a_good.png").read_bytes()[:60])
    cv2.imwrite(str(src / "e_good.png"), np.full((50, 50, 3), 30, np.uint8))
    out = tmp_path / "out"
    main(["detect", str(src), "--weights", str(ckpt), "--out", str(out)])
    summary = json.loads((out / "detections.json").read_text())
    assert sorted(Path(p).name for p in summary["images"]) == ["a_good.png", "e_good.png"]
    errors = {Path(p).name: msg for p, msg in summary["errors"].items()}
    assert set(errors) == {"b_bomb.png", "c_thin.png", "d_truncated.png"}
    assert "too large" in errors["b_bomb.png"]
    assert "20000x8 px image" in errors["c_thin.png"] and "--slice" in errors["c_thin.png"]
    # the thin image is exactly what slicing is for
    main(["detect", str(src / "c_thin.png"), "--weights", str(ckpt), "--out", str(tmp_path / "sliced"),
          "--slice", "256"])
    sliced = json.loads((tmp_path / "sliced" / "detections.json").read_text())
    assert not sliced["errors"] and len(sliced["images"]) == 1


def test_out_under_an_existing_file_is_a_clear_error(ckpt: Path, tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.full((32, 32, 3), 90, np.uint8))
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(SystemExit) as exit_info:
            main(["detect", str(img), "--weights", str(ckpt), "--out", str(out)])
        assert exit_info.value.code == 2


def test_quoted_patterns_and_image_lists_are_sources(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in" / "sub"
    src.mkdir(parents=True)
    for name in ("a.png", "b.jpg"):
        cv2.imwrite(str(src / name), np.full((40, 48, 3), 90, np.uint8))
    (src / "notes.txt.png.md").write_text("not an image")
    out = tmp_path / "out"
    main(["detect", str(tmp_path / "in" / "**" / "*.png"), "--weights", str(ckpt), "--out", str(out)])
    assert [Path(p).name for p in json.loads((out / "detections.json").read_text())["images"]] == ["a.png"]

    listing = tmp_path / "list.txt"
    listing.write_text(f"./in/sub/b.jpg\n\n{src / 'a.png'}\n./in/sub/gone.png\n")
    main(["detect", str(listing), "--weights", str(ckpt), "--out", str(tmp_path / "out2")])
    summary = json.loads((tmp_path / "out2" / "detections.json").read_text())
    assert sorted(Path(p).name for p in summary["images"]) == ["a.png", "b.jpg"]
    assert [(Path(p).name, "listed in list.txt" in why) for p, why in summary["errors"].items()] == [("gone.png", True)]

    with pytest.raises(SystemExit) as stop:
        main(["detect", str(tmp_path / "in" / "*.tif"), "--weights", str(ckpt), "--out", str(tmp_path / "out3")])
    assert stop.value.code == 2 and "read as a pattern it matches no image file" in capsys.readouterr().err

    # one image through a folder, a list (relative to the working folder) and a pattern is detected once
    monkeypatch.chdir(tmp_path)
    main(["detect", "in", "list.txt", "in/sub/*.jpg", "--weights", str(ckpt), "--out", str(tmp_path / "out4")])
    summary = json.loads((tmp_path / "out4" / "detections.json").read_text())
    assert sorted(Path(p).name for p in summary["images"]) == ["a.png", "b.jpg"]


def test_yolo_labels_class_filter_and_no_drawings(ckpt: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from efpn.cli.detect import class_filter, select
    from efpn.infer.draw import yolo_lines

    det = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 8.0, 8.0]]), "scores": torch.tensor([0.9, 0.3]),
           "labels": torch.tensor([1, 0]), "levels": torch.tensor([0, 1])}
    assert yolo_lines(det, (100, 200)) == "1 0.100000 0.400000 0.100000 0.400000 0.90000\n" \
                                          "0 0.020000 0.040000 0.040000 0.080000 0.30000\n"
    keep = class_filter(["cat", "0"], ["dog", "cat"])
    assert keep.tolist() == [0, 1]
    picked = select(det, torch.isin(det["labels"], class_filter(["cat"], ["dog", "cat"])))
    assert picked["labels"].tolist() == [1] and picked["levels"].tolist() == [0]
    with pytest.raises(ValueError, match=r"'bird' is not a class of this model.*0=dog, 1=cat"):
        class_filter(["bird"], ["dog", "cat"])

    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.full((40, 48, 3), 90, np.uint8))
    out = tmp_path / "out"
    main(["detect", str(src), "--weights", str(ckpt), "--out", str(out), "--save-txt", "--no-draw", "--max-det", "2",
          "--score", "0.0"])
    summary = json.loads((out / "detections.json").read_text())
    found = summary["images"][str(src / "a.png")]
    assert summary["drawn"] == {} and sorted(p.name for p in out.iterdir()) == ["detections.json", "labels"]
    assert 1 <= len(found) <= 2
    lines = (out / "labels" / "a.txt").read_text().splitlines()
    assert len(lines) == len(found)
    for line, d in zip(lines, found, strict=True):
        cls, cx, cy, w, h, score = line.split()
        x1, y1, x2, y2 = d["box"]
        assert int(cls) == d["class_id"] and abs(float(score) - d["score"]) < 1e-4
        assert abs(float(cx) * 48 - (x1 + x2) / 2) < 0.05 and abs(float(h) * 40 - (y2 - y1)) < 0.05
    assert summary["labels"] == {str(src / "a.png"): str(out / "labels" / "a.txt")}
    with pytest.raises(SystemExit) as stop:
        main(["detect", str(src), "--weights", str(ckpt), "--out", str(tmp_path / "o2"), "--classes", "nope"])
    assert stop.value.code == 2 and "'nope' is not a class of this model" in capsys.readouterr().err

    # the class filter comes before the cap: --max-det counts detections of the kept classes
    from efpn.cli.detect import top_scoring

    capped = top_scoring(select(det, torch.isin(det["labels"], torch.tensor([0, 1]))), 1)
    assert capped["scores"].tolist() == [pytest.approx(0.9)] and capped["levels"].tolist() == [0]
    with pytest.raises(ValueError, match="not a class"):
        class_filter(["²"], ["dog", "cat"])


def test_videos_are_detected_frame_by_frame_and_a_broken_one_is_reported(ckpt: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    writer = cv2.VideoWriter(str(src / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MPEG-4 video")
    for i in range(7):
        frame = np.full((64, 96, 3), 40, np.uint8)
        cv2.circle(frame, (10 + 10 * i, 30), 3, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    (src / "broken.mov").write_bytes(b"\0\0\0\x18ftypqt  not a movie" * 8)
    cv2.imwrite(str(src / "still.png"), np.full((64, 96, 3), 90, np.uint8))
    out = tmp_path / "out"
    main(["detect", str(src), "--weights", str(ckpt), "--out", str(out), "--vid-stride", "3", "--save-txt",
          "--score", "0.0", "--max-det", "3"])
    summary = json.loads((out / "detections.json").read_text())
    frames = sorted(k for k in summary["images"] if "#frame=" in k)
    assert frames == [f"{src / 'clip.mp4'}#frame={i}" for i in (0, 3, 6)]
    assert str(src / "still.png") in summary["images"]
    assert "cannot open video" in summary["errors"][str(src / "broken.mov")]
    drawn = cv2.VideoCapture(summary["drawn"][str(src / "clip.mp4")])
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert (int(drawn.get(cv2.CAP_PROP_FRAME_WIDTH)), int(drawn.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (96, 64)
    drawn.release()
    for key in frames:
        lines = Path(summary["labels"][key]).read_text().splitlines()
        assert len(lines) == len(summary["images"][key]) <= 3


def test_a_truncated_video_says_how_many_of_its_frames_were_read(ckpt: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    whole = tmp_path / "whole.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write Motion-JPEG video")
    for i in range(6):  # noise frames: each JPEG is large, so the cut below loses whole frames
        writer.write(np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    data = whole.read_bytes()
    (src / "cut.avi").write_bytes(data[: int(len(data) * 0.6)])  # the header still declares 6 frames
    out = tmp_path / "out"
    main(["detect", str(src), "--weights", str(ckpt), "--out", str(out), "--no-draw"])
    summary = json.loads((out / "detections.json").read_text())
    read = len([k for k in summary["images"] if "#frame=" in k])
    assert 0 < read < 6
    assert summary["notes"][str(src / "cut.avi")].startswith(f"read {read} of the 6 frames the file declares")
    assert not summary["errors"]  # the frames read were detected: a note, not a skipped file


def test_a_large_stride_on_a_short_tiny_video_writes_its_drawn_video(ckpt: Path, tmp_path: Path) -> None:
    """A drawn video used to be written at fps / stride: 0.1 fps here, at which libavcodec's MPEG-4 encoder aborts
    the process (SIGABRT), losing every other file's results. Run in a child process, so a regression fails this
    test instead of killing the test session."""
    import subprocess
    import sys

    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.full((48, 48, 3), 90, np.uint8))
    writer = cv2.VideoWriter(str(src / "tiny.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (2, 2))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for _ in range(3):
        writer.write(np.zeros((2, 2, 3), np.uint8))
    writer.release()
    out = tmp_path / "out"
    code = ("import sys; from efpn.cli.main import main; "
            f"main(['detect', {str(src)!r}, '--weights', {str(ckpt)!r}, '--out', {str(out)!r}, '--vid-stride', '100'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "detections.json").read_text())
    assert str(src / "a.png") in summary["images"] and f"{src / 'tiny.avi'}#frame=0" in summary["images"]
    drawn = cv2.VideoCapture(summary["drawn"][str(src / "tiny.avi")])
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 1
    drawn.release()


def test_a_binary_file_named_txt_is_read_as_a_list_of_missing_files_not_a_crash(
        ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Random bytes in a .txt source: its "lines" (some longer than a file name may be) are missing files, reported
    in detections.json; only the first few are echoed, without their control bytes; the good image is detected."""
    import random

    rnd = random.Random(0)
    lines = [bytes(rnd.randrange(1, 256) for _ in range(rnd.choice([5, 40, 600]))).replace(b"\n", b"")
             for _ in range(40)]
    (tmp_path / "garbage.txt").write_bytes(b"\n".join(lines))
    cv2.imwrite(str(tmp_path / "good.png"), np.full((48, 48, 3), 90, np.uint8))
    out = tmp_path / "out"
    main(["detect", str(tmp_path / "garbage.txt"), str(tmp_path / "good.png"), "--weights", str(ckpt),
          "--out", str(out)])
    summary = json.loads((out / "detections.json").read_text())
    assert list(summary["images"]) == [str(tmp_path / "good.png")]
    assert len(summary["errors"]) >= 30
    printed = capsys.readouterr()
    echoed = [ln for ln in (printed.out + printed.err).splitlines() if ln.startswith("skipped /")]
    assert len(echoed) == 10 and all(c.isprintable() for ln in echoed for c in ln)


def test_a_video_and_an_output_folder_whose_names_are_not_utf8(ckpt: Path, tmp_path: Path) -> None:
    """OpenCV's binding crashes the process (a segmentation fault, every result lost) on a file name that is not
    valid UTF-8: such a video is opened, and its drawing written, under names OpenCV can take. Its frames' label files
    have a folder of their own, so the image clip_0.png's label file is not overwritten by frame 0's. Run in a child
    process, so a regression fails this test instead of killing the test session."""
    import os
    import subprocess
    import sys

    src = tmp_path / "in"
    src.mkdir()
    video = src / os.fsdecode(b"clip\xe9.mp4")
    writer = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MPEG-4 video")
    for i in range(2):
        writer.write(np.full((48, 64, 3), 40 + 50 * i, np.uint8))
    writer.release()
    (tmp_path / "clip.mp4").rename(video)
    cv2.imwrite(str(src / "clip_0.png"), np.full((48, 64, 3), 90, np.uint8))
    out = tmp_path / os.fsdecode(b"out\xe9")
    code = ("import os, sys; from efpn.cli.main import main; "
            "main(['detect', os.fsdecode(sys.argv[1]), '--weights', sys.argv[2], '--out', os.fsdecode(sys.argv[3]), "
            "'--save-txt', '--score', '0.0', '--max-det', '2'])")
    done = subprocess.run([sys.executable, "-c", code, os.fsencode(src), str(ckpt), os.fsencode(out)],
                          capture_output=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:].decode(errors="replace")
    summary = json.loads((out / "detections.json").read_text())
    frames = [k for k in summary["images"] if "#frame=" in k]
    assert len(frames) == 2 and not summary["errors"]
    assert Path(summary["drawn"][str(video)]).is_file()  # written under a UTF-8 name, then moved into `out`
    labels = [summary["labels"][k] for k in (*frames, str(src / "clip_0.png"))]
    assert len(set(labels)) == 3 and all(Path(p).is_file() for p in labels)
