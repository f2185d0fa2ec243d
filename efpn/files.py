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

__all__ = ["PREVIOUS", "atomic_write", "atomic_write_group", "previous_path", "replaceable"]


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


def _clear_stale(path: Path) -> None:
    """Remove temporary files of earlier saves of ``path`` whose process is gone (a save killed half-way)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or (int(pid) != os.getpid() and not _process_alive(int(pid))):
            stale.unlink(missing_ok=True)


def _write_temp(path: Path, write: Callable[[Path], None]) -> Path:
    """``write`` into ``path``'s temporary file (ordinary file mode) and return it; a writer's failure on a full disk,
    in whatever words it reports it, is raised as ``OSError(ENOSPC)`` saying so."""
    _clear_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as e:  # writers report a full disk in their own words (torch.save: "unexpected pos ...")
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        full = _disk_full(path.parent, e)
        if full is None:
            raise
        raise OSError(errno.ENOSPC, f"could not write {path}: {full}; free some space and run again (the previous "
                                    f"{path.name}, if any, is unchanged)") from e
    return tmp


def replaceable(path: str | Path) -> Path:
    """The regular file a write-then-rename of ``path`` may replace: ``path`` itself, or the file a symbolic link at
    ``path`` points to (the link stays a link; renaming over it would turn it into a file).

    Raises ValueError when ``path`` exists and is not a regular file (a device, a pipe, a socket, a folder): renaming a
    new file over it would destroy it (``--out /dev/null --overwrite`` run as root replaced the device with a file)."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # a dangling link: its target is created where the link points
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a device, a pipe or a socket)"
        raise ValueError(f"{path} is {kind}: writing a file there would replace it; give the path of a regular file")
    return path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file and rename, so an interrupted save never leaves a half-written file.

    Temporary files of earlier saves of the same path whose process is gone (a save killed half-way) are removed
    first; the file gets the ordinary mode of a new file (some writers create their files 0600). A writer's failure on
    a full disk, in whatever words it reports it, is raised as ``OSError(ENOSPC)`` saying so."""
    atomic_write_group([(path, write)])


#: Suffix of the copy :func:`atomic_write_group` keeps of a file it replaces, until the whole group is in place.
PREVIOUS = ".previous"


def previous_path(path: Path) -> Path:
    """Where :func:`atomic_write_group` keeps ``path``'s earlier version while it replaces a group of files."""
    return path.with_name(path.name + PREVIOUS)


def atomic_write_group(writes: list[tuple[Path, Callable[[Path], None]]], keep_previous: bool = False) -> None:
    """Write several files that belong together (a checkpoint's weights and card): every file is written whole to a
    temporary name first, then all are renamed into place in order, so a failed or full-disk write changes nothing.

    A process killed between two of the renames would leave new files beside old ones. With ``keep_previous`` the
    files being replaced are first linked (or copied) to ``NAME.previous`` (:func:`previous_path`) and removed only
    once the whole group is in place: a save killed in that window leaves the earlier group intact there, for the
    reader to restore. Nothing is kept unless every file of the group exists; an earlier ``.previous`` set is then
    replaced, so pass ``keep_previous`` only when the files in place belong together (else that set may be the only
    good copy). Once a whole group of two or more files is in place, with or without ``keep_previous``, no
    ``.previous`` copy of its files is needed any more and none is left: a set an interrupted earlier write left is
    removed too (it would otherwise lie beside the new files for good, and a reader would offer to restore an older
    group over a newer one)."""
    writes = [(replaceable(path), write) for path, write in writes]  # before anything is written
    temps: list[Path] = []
    try:
        for path, write in writes:
            temps.append(_write_temp(path, write))
        backups: list[Path] = []
        if keep_previous and all(path.is_file() for path, _ in writes):
            for path, _ in writes:
                backup = previous_path(path)
                backup.unlink(missing_ok=True)
                try:
                    os.link(path, backup)  # the old file stays where it is until the rename replaces it
                except OSError:  # a file system without hard links
                    shutil.copy2(path, backup)
                backups.append(backup)
        for (path, _), tmp in zip(writes, temps, strict=True):
            os.replace(tmp, path)
        # the whole new group is in place: no earlier one is needed (this write's, or an interrupted one's). A lone
        # file is no group: its .previous may belong to a pair it is one half of (a card written alone)
        for path, _ in writes if len(writes) > 1 else []:
            with contextlib.suppress(OSError):  # a copy that cannot be removed does not undo a finished write
                previous_path(path).unlink(missing_ok=True)
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):  # a failed clean-up (e.g. a read-only disk) must not hide an error
                tmp.unlink(missing_ok=True)
