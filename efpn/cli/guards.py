"""Checks the command line makes before a long run (option values, the device, outputs that would destroy inputs)
and how it words the file-system errors a run meets.

Every check raises ``argparse.ArgumentTypeError`` (as an option's ``type``) or ``ValueError`` with what was wrong and
what to do, before a model is loaded or an image is read, so a bad option never costs a run.
"""

from __future__ import annotations

import argparse
import errno
import os
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path

from efpn.config.model import MAX_IMAGE_SIZE as MODEL_MAX_IMAGE_SIZE

#: Network input sides the CLI accepts: a multiple of 32 (the coarsest stride the presets use) up to the largest a
#: model config takes (a larger single input does not fit in memory on most machines; --slice tiles large images).
MAX_IMAGE_SIZE = MODEL_MAX_IMAGE_SIZE
#: The largest side ``data synth`` writes: DOTA-sized scenes for tiling, 0.75 GiB of pixels at most.
MAX_SYNTH_SIDE = 16384


def _whole_number(text: str, minimum: int, unit: str, hint: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number{unit}, got {text[:40]!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value} ({hint})")
    return value


def at_least_one(text: str) -> int:
    """argparse type of ``--limit``: a whole number >= 1."""
    return _whole_number(text, 1, " >= 1", "leave the option out to use every image")


def count(text: str) -> int:
    """argparse type of a count such as ``--num-images`` or ``--batch-size``: a whole number >= 1."""
    return _whole_number(text, 1, " >= 1", "at least one")


def non_negative(text: str) -> int:
    """argparse type of a count where 0 means "no limit" (``report --visdrone-limit``): a whole number >= 0."""
    return _whole_number(text, 0, "", "0 for no limit")


def seed(text: str) -> int:
    """argparse type of a random seed: a whole number in [0, 2**32 - 1] (what NumPy's generators take)."""
    value = _whole_number(text, 0, "", "a seed is 0 or more")
    if value > 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be at most {2**32 - 1}, got {value} (a 32-bit seed)")
    return value


def tile_size(text: str) -> int:
    """argparse type of a tile side (``--slice``): a whole number of at least 8 px."""
    return _whole_number(text, 8, " of pixels", "a tile of at least 8 px; leave the option out to not slice")


def image_side(text: str) -> int:
    """argparse type of an image's side to write (``data synth --image-size``): a whole number in [16,
    MAX_SYNTH_SIDE] px (100000 px asked numpy for 112 GiB and left an empty folder; sides above a network input are
    for tiled inference, so the bound is memory, not the network)."""
    value = _whole_number(text, 16, " of pixels", "an image side of at least 16 px")
    if value > MAX_SYNTH_SIDE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SYNTH_SIDE} px (a {MAX_SYNTH_SIDE} px image is "
                                         f"{3 * MAX_SYNTH_SIDE ** 2 / 2 ** 30:.2g} GiB in memory), got {value}")
    return value


def _in_range(text: str, upper_open: bool) -> float:
    """A finite number in [0, 1] (``upper_open``: [0, 1)); ArgumentTypeError saying what is accepted."""
    accepted = "[0, 1)" if upper_open else "[0, 1]"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in {accepted}, got {text[:40]!r}") from None
    if not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in {accepted}, got {text[:40]}")
    return value


def fraction(text: str) -> float:
    """argparse type of an overlap: a finite number in [0, 1)."""
    return _in_range(text, upper_open=True)


def unit(text: str) -> float:
    """argparse type of a threshold: a finite number in [0, 1]."""
    return _in_range(text, upper_open=False)


def match_iou(text: str) -> float:
    """argparse type of the IoU that makes a detection find an object: a number in (0, 1] (at 0 every detection of
    the class would find every object)."""
    value = unit(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError("must be in (0, 1]: at 0 any detection would find any object; 0.5 is "
                                         "COCO's AP50 match")
    return value


def unit_or_auto(text: str) -> float | str:
    """argparse type of a threshold that may also be chosen by measurement: ``auto`` or a number in [0, 1]."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return unit(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e}, or auto") from None


def image_size(text: str) -> int:
    """argparse type of ``--image-size``: a multiple of 32 in [32, MAX_IMAGE_SIZE] (the network's long side)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of pixels, got {text[:40]!r}") from None
    if not 32 <= value <= MAX_IMAGE_SIZE or value % 32:
        raise argparse.ArgumentTypeError(
            f"must be a multiple of 32 between 32 and {MAX_IMAGE_SIZE} px, got {value} (leave it out for the "
            "default; detect, val and diagnose take large images in tiles with --slice)")
    return value


def device(text: str) -> str:
    """argparse type of ``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and present on this machine."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps, got {text[:40]!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r}: CUDA is not available here (no NVIDIA GPU or driver, or a CPU-only torch); "
                "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: Apple's MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps, got {text[:40]!r}")
    return text


def checkpoint_files(weights: str | Path) -> dict[Path, str]:
    """A checkpoint's files: the weights, their model card (``.json`` beside them) and the training telemetry
    ``ship`` copies beside them (``NAME.telemetry.jsonl``, which the studio's training page reads)."""
    w = Path(weights)
    return {w: "the checkpoint's weights", w.with_suffix(".json"): "the checkpoint's model card",
            w.with_name(f"{w.stem}.telemetry.jsonl"): "the checkpoint's training telemetry"}


def data_files(data_yaml: str | Path) -> dict[Path, str]:
    """The files a data YAML names (the YAML and its annotation files; folders are not files a run could replace).
    An unreadable YAML names only itself (loading it later says what is wrong)."""
    from efpn.config.data import load_data_config

    files: dict[Path, str] = {Path(data_yaml): "the data YAML"}
    try:
        cfg = load_data_config(data_yaml)
    except (ValueError, OSError):
        return files
    for split, source in cfg.sources.items():
        for key, path in source.items():
            if path is not None and Path(path).is_file():
                files[Path(path)] = f"the {split} split's {key}"
    return files


def data_folders(data_yaml: str | Path) -> dict[Path, str]:
    """The folders a data YAML's splits read (images, labels, masks, annotation folders, and the defaults the loaders
    fill in: YOLO's ``labels`` beside ``images``, VOC's ``Annotations`` and ``JPEGImages``). A file written into one
    would replace an image or a label, or join the split as an unlabelled image. An unreadable YAML names none."""
    from efpn.config.data import load_data_config
    from efpn.data.yolo import default_label_dir

    try:
        cfg = load_data_config(data_yaml)
    except (ValueError, OSError):
        return {}
    folders: dict[Path, str] = {}
    for split, source in cfg.sources.items():
        for key, path in source.items():
            if path is not None and path.is_dir():
                folders[path] = f"the {split} split's {key} folder"
        images = source.get("images")
        if cfg.format == "yolo" and images is not None and source.get("labels") is None:
            try:
                folders[default_label_dir(images)] = f"the {split} split's labels folder"
            except ValueError:  # no 'images' component: the loader says so when it runs
                pass
        if cfg.format == "voc":
            for key, default in (("annotations", "Annotations"), ("images", "JPEGImages")):
                if source.get(key) is None:
                    folders[cfg.root / default] = f"the {split} split's {key} folder"
    return {f: what for f, what in folders.items() if f.is_dir()}


def check_outputs(outputs: Mapping[str, str | Path | None], inputs: Mapping[Path, str],
                  folders: Collection[str] = (), input_folders: Mapping[Path, str] | None = None) -> None:
    """Refuse outputs that would replace an input, outputs given twice, and paths that cannot be written.

    ``outputs`` maps an option (``"--json"``) to its path (None: not given); the options in ``folders`` name a
    folder to write into, every other one a file. ``inputs`` maps files the run reads to what they are;
    ``input_folders`` the folders it reads (a dataset's images, labels, masks): no output may lie in one, since a
    file written there replaces an input or is read as one by the next run. Raises ValueError naming the option, the
    path and what it would destroy.
    """
    given = {flag: Path(p) for flag, p in outputs.items() if p is not None}
    seen: dict[Path, str] = {}
    for flag, path in given.items():
        for inp, what in inputs.items():
            if _same_file(path, inp):
                raise ValueError(f"{flag} {path} is {what}, which this run reads: writing there would replace it. "
                                 "Give another path")
        for folder, what in (input_folders or {}).items():
            if _inside(path, folder):
                raise ValueError(f"{flag} {path} lies in {folder}, {what}, which this run reads: a file written "
                                 "there would replace a dataset file or be read as one. Give a path outside the "
                                 "dataset's folders")
        key = path.resolve()
        if key in seen:
            raise ValueError(f"{seen[key]} and {flag} both write {path}; give each its own path")
        seen[key] = flag
        if flag in folders and path.exists() and not path.is_dir():
            raise ValueError(f"{flag} {path} is an existing file; give a folder")
        if flag not in folders and path.is_dir():
            raise ValueError(f"{flag} {path} is a folder; give a file path")
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise ValueError(f"{flag} {path} lies under {parent}, which is a file; give another path")
        check_writable(path, flag)


def check_writable(path: Path, flag: str) -> None:
    """Raise ValueError unless ``path`` (a file or folder to create or replace) could be written: the path itself
    when it exists, else the nearest folder above it that exists (a read-only file system or a folder without write
    permission is found here, before the run, not when its results are saved)."""
    # a folder is written into; a file (existing or new) is replaced through a temporary file beside it, so what
    # needs write permission is its folder, or the nearest existing one above
    target = path if path.is_dir() else next((p for p in path.parents if p.exists()), Path("."))
    where = "" if target == path else f" (its nearest existing folder {target})"
    if not os.access(target, os.W_OK):
        raise ValueError(f"{flag} {path} cannot be written{where}: no write permission or a read-only file system. "
                         "Give a path you can write to")
    if target.is_dir():  # a trial file: some folders grant the permission and take no file (/proc, /sys)
        try:
            with tempfile.TemporaryFile(dir=target):
                pass
        except OSError as e:
            raise ValueError(f"{flag} {path} cannot be written{where}: a file cannot be created there "
                             f"({e.strerror or e}). Give a path you can write to") from None


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (existing or not) is ``folder`` or lies under it, links resolved."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a link loop: not a path anything could be written to anyway
        return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


#: What to do about the file-system errors a run can meet, by errno.
_OS_ADVICE = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; give another path",
    errno.EISDIR: "it is a folder; give a file path",
    errno.EEXIST: "it already exists and is not a folder; give another path",
    errno.EACCES: "no permission; give a path you can use",
    errno.EPERM: "no permission; give a path you can use",
    errno.EROFS: "give a path on a writable disk",
    errno.ENOSPC: "the disk is full; free space or write to another disk",
}


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: the path, what went wrong in words, and what to do (no errno number). An error
    raised with a message of its own (no errno) is that message."""
    if e.errno is None or e.strerror is None:
        return str(e)
    what = e.strerror.rstrip(".")
    what = what[:1].lower() + what[1:]  # "No space left on device" -> "no space ...", "MiB" kept as written
    path = f"{e.filename}: " if e.filename is not None else ""
    advice = _OS_ADVICE.get(e.errno or -1)
    return f"{path}{what}" + (f"; {advice}" if advice else "")
