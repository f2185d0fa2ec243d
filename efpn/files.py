"""Files written whole or not at all: a save interrupted half-way (a killed run, a full disk) never leaves a
half-written checkpoint, card, resume state or run record where a reader would take it for a complete one."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
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


#: Free bytes under which a writer's failure is taken for a full disk (a checkpoint of these models is a few MiB).
_LOW_SPACE = 64 << 20


def _disk_full(folder: Path, error: Exception) -> str | None:
    """Why ``error`` looks like a full disk (the writer said so, or the file system holds less than
    :data:`_LOW_SPACE`), or None."""
    text = str(error)
    if "No space left" in text or "os error 28" in text:
        return "no space left on the device"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    return f"only {free / 2**20:.1f} MiB free on its file system" if free < _LOW_SPACE else None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file and rename, so an interrupted save never leaves a half-written file.

    Temporary files of earlier saves of the same path whose process is gone (a save killed half-way) are removed
    first; the file gets the ordinary mode of a new file (some writers create their files 0600). A writer's failure on
    a full disk, in whatever words it reports it, is raised as ``OSError(ENOSPC)`` saying so."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or (int(pid) != os.getpid() and not _process_alive(int(pid))):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError:
        raise
    except Exception as e:  # writers report a full disk in their own words (torch.save: "unexpected pos ...")
        full = _disk_full(path.parent, e)
        if full is None:
            raise
        raise OSError(errno.ENOSPC, f"could not write {path}: {full}; free some space and run again (the previous "
                                    f"{path.name}, if any, is unchanged)") from e
    finally:
        with contextlib.suppress(OSError):  # a failed clean-up (e.g. a read-only disk) must not hide the error above
            tmp.unlink(missing_ok=True)
