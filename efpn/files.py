"""Files written whole or not at all: a save interrupted half-way (a killed run, a full disk) never leaves a
half-written checkpoint, card, resume state or run record where a reader would take it for a complete one."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _file_mode() -> int:
    """The mode a plain new file gets here (0666 minus the umask), so every file of a checkpoint matches."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file and rename, so an interrupted save never leaves a half-written file.

    Temporary files of earlier saves of the same path whose process is gone (a save killed half-way) are removed
    first; the file gets the ordinary mode of a new file (some writers create their files 0600)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or (int(pid) != os.getpid() and not _process_alive(int(pid))):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # a failed clean-up (e.g. a read-only disk) must not hide the error above
            tmp.unlink(missing_ok=True)
