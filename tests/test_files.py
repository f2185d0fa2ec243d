"""efpn.files.atomic_write: whole or nothing, and a full disk said as such whatever words the writer used."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from efpn import files
from efpn.files import atomic_write


def _fails_with(message: str):
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError(message)
    return write


def test_a_full_disk_is_an_oserror_that_says_so_and_the_old_file_stays(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last_state.pt"
    target.write_bytes(b"previous")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda _: usage._replace(free=3 << 20))
    with pytest.raises(OSError, match=r"could not write .*last_state\.pt: only 3\.0 MiB free") as err:
        atomic_write(target, _fails_with("[enforce fail at inline_container.cc:672] . unexpected pos 4384832"))
    assert err.value.errno == errno.ENOSPC and "is unchanged" in str(err.value)
    assert target.read_bytes() == b"previous" and not list(tmp_path.glob(".*tmp*"))


def test_a_writer_saying_no_space_is_a_full_disk(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="no space left on the device"):
        atomic_write(tmp_path / "m.safetensors", _fails_with("I/O error: No space left on device (os error 28)"))


def test_other_writer_errors_pass_through_unchanged(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_write(tmp_path / "x.pt", _fails_with("cannot pickle 'generator' object"))
    atomic_write(tmp_path / "ok.txt", lambda tmp: tmp.write_text("done"))
    assert (tmp_path / "ok.txt").read_text() == "done"


def _write(text: str):
    return lambda tmp: tmp.write_text(text)


def test_a_group_is_written_whole_before_anything_is_replaced(tmp_path: Path) -> None:
    a, b = tmp_path / "m.safetensors", tmp_path / "m.json"
    files.atomic_write_group([(a, _write("old weights")), (b, _write("old card"))])
    with pytest.raises(RuntimeError, match="cannot pickle"):  # the second file fails: the first is not replaced
        files.atomic_write_group([(a, _write("new weights")), (b, _fails_with("cannot pickle 'x'"))],
                                 keep_previous=True)
    assert (a.read_text(), b.read_text()) == ("old weights", "old card")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # no temporaries, no backups


def test_a_group_killed_between_its_renames_leaves_the_previous_group_intact(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "m.safetensors", tmp_path / "m.json"
    files.atomic_write_group([(a, _write("old weights")), (b, _write("old card"))])
    renames = []

    def replace_then_die(src: str, dst: str) -> None:
        if renames:  # the second rename: the process is killed here
            raise KeyboardInterrupt
        renames.append(dst)
        real_replace(src, dst)

    real_replace = files.os.replace
    monkeypatch.setattr(files.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_group([(a, _write("new weights")), (b, _write("new card"))], keep_previous=True)
    monkeypatch.undo()
    assert (a.read_text(), b.read_text()) == ("new weights", "old card")  # the mixed state a kill leaves
    kept = files.previous_path(a), files.previous_path(b)
    assert [p.read_text() for p in kept] == ["old weights", "old card"]  # ... and the whole previous group
    files.atomic_write_group([(a, _write("newer weights")), (b, _write("newer card"))], keep_previous=True)
    assert not any(p.exists() for p in kept)  # a completed group leaves no backups


def test_a_whole_group_written_over_a_mixed_one_removes_the_kills_backups(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The files in place do not belong together after a kill, so the next write cannot keep them (no
    ``keep_previous``); the older group's backups are removed once the new group is whole, not left for good."""
    a, b = tmp_path / "m.safetensors", tmp_path / "m.json"
    files.atomic_write_group([(a, _write("old weights")), (b, _write("old card"))])
    real_replace = files.os.replace

    def die_at_the_card(src: str, dst: str) -> None:
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", die_at_the_card)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_group([(a, _write("new weights")), (b, _write("new card"))], keep_previous=True)
    monkeypatch.undo()
    assert files.previous_path(a).exists() and files.previous_path(b).exists()
    files.atomic_write_group([(a, _write("newer weights")), (b, _write("newer card"))], keep_previous=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    assert (a.read_text(), b.read_text()) == ("newer weights", "newer card")


def test_keep_previous_needs_every_file_of_the_group(tmp_path: Path) -> None:
    a, b = tmp_path / "m.safetensors", tmp_path / "m.json"
    a.write_text("weights without a card")
    files.atomic_write_group([(a, _write("w")), (b, _write("c"))], keep_previous=True)
    assert (a.read_text(), b.read_text()) == ("w", "c") and not files.previous_path(a).exists()
