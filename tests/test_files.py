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
