"""Data YAML -> :class:`DataConfig` -> records: the one place a dataset description is read.

Schema (paths are relative to ``root``; ``root`` is relative to the YAML file and defaults to its folder)::

    format: coco            # one of coco, yolo, voc, visdrone, dota, masks
    root: ../shared/data/ssdd
    names: [ship]           # optional: a list, an {index: name} mapping, or a names.yaml / classes.txt path
    train:                  # keys depend on the format (see SOURCE_KEYS)
      annotations: annotations/instances_train.json
      images: images
    val:                    # optional; without it ...
      ...
    val_fraction: 0.1       # ... a fixed, seeded share of train becomes val (default 0: no val split)
    split_seed: 0
    test:                   # optional held-out split, never trained or tuned on (efpn val --split test)
      ...
    options:                # optional keyword options of the format's loader
      crowd: crowd          # coco: crowd, check_images | voc, dota: difficult | visdrone: others
                            # masks: mask_suffix ("_pixels0"), connectivity (8), instances (false)

Source keys per format (``*`` = required):

* ``coco``: ``annotations*`` (JSON file), ``images`` (folder; omitted = boxes-only records)
* ``yolo``: ``images`` (folder) or ``list`` (an image list file, one path per line, as Ultralytics' ``train.txt``),
  ``labels`` (folder; default: ``images`` with ``images`` -> ``labels``); ``names`` required
* ``voc``: ``list`` (``ImageSets/Main/train.txt``; omitted = every XML), ``annotations`` (default
  ``Annotations``), ``images`` (default ``JPEGImages``)
* ``visdrone``: ``annotations*`` (folder), ``images`` (folder or null), ``image_sizes`` (COCO JSON or null)
* ``dota``: ``labels*`` (folder), ``images`` (folder or null)
* ``masks``: ``images*`` (folder), ``masks*`` (folder of ``<stem><mask_suffix>.png``), ``list`` (id list file;
  omitted = every image); one box per connected target component (SIRST and other infrared small-target sets)

An **Ultralytics dataset YAML** (``path``, ``train``, ``val``, ``names``; no ``format`` key) is read as it is
written: format ``yolo``, ``root`` = ``path`` (relative to the YAML's folder; Ultralytics' own datasets folder is
not consulted), each split an image folder or an image list (``.txt``; its ``./`` lines relative to the list's
folder, other relative lines relative to ``path``); ``test`` is read as the test split, ``download`` is not
(nothing is downloaded); see :func:`from_ultralytics`.

Every problem raises ``ValueError`` (bad value, unknown key or format) or ``FileNotFoundError`` (a path that
does not exist) naming the YAML file, the key, the resolved path and what to do.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from efpn.config.names import parse_names, read_names
from efpn.config.schema import ConfigError, from_mapping, read_yaml, short

__all__ = [
    "FORMATS",
    "OPTIONS",
    "SOURCE_KEYS",
    "SPLITS",
    "ULTRALYTICS_KEYS",
    "DataConfig",
    "from_ultralytics",
    "is_ultralytics",
    "load_data_config",
    "parse_data_config",
]

#: Annotation formats a data YAML may name (each has a loader in :mod:`efpn.data`).
FORMATS: tuple[str, ...] = ("coco", "yolo", "voc", "visdrone", "dota", "masks")


#: format -> {source key: (required, "file" | "dir")}.
SOURCE_KEYS: dict[str, dict[str, tuple[bool, str]]] = {
    "coco": {"annotations": (True, "file"), "images": (False, "dir")},
    "yolo": {"images": (False, "dir"), "labels": (False, "dir"), "list": (False, "file")},
    "voc": {"list": (False, "file"), "annotations": (False, "dir"), "images": (False, "dir")},
    "visdrone": {"annotations": (True, "dir"), "images": (False, "dir"), "image_sizes": (False, "file")},
    "dota": {"labels": (True, "dir"), "images": (False, "dir")},
    "masks": {"images": (True, "dir"), "masks": (True, "dir"), "list": (False, "file")},
}

#: format -> loader keyword options a YAML may set under ``options``.
OPTIONS: dict[str, tuple[str, ...]] = {
    "coco": ("crowd", "check_images"),
    "yolo": (),
    "voc": ("difficult",),
    "visdrone": ("others",),
    "dota": ("difficult",),
    "masks": ("mask_suffix", "connectivity", "instances"),
}

#: option -> (its type, its allowed values or None): checked where the YAML is read, so a wrong type is named
#: with its key instead of failing inside a loader (``connectivity: 8.0`` reached OpenCV; ``instances: 'false'``
#: was a true string).
_OPTION_TYPES: dict[str, tuple[type, tuple[Any, ...] | None]] = {
    "crowd": (str, ("target", "crowd", "ignore", "drop")),
    "difficult": (str, ("target", "crowd", "ignore", "drop")),
    "others": (str, ("target", "crowd", "ignore", "drop")),
    "check_images": (bool, None),
    "mask_suffix": (str, None),
    "connectivity": (int, (4, 8)),
    "instances": (bool, None),
}


def _option_problems(options: dict[Any, Any]) -> list[str]:
    """What is wrong with each known option's value (type or allowed values), one line per option."""
    problems = []
    for key, value in options.items():
        kind, allowed = _OPTION_TYPES.get(str(key), (object, None))
        if kind is not object and (type(value) is not kind):  # bool is not an int here, nor 8.0 an int
            what = {bool: "true or false", int: "a whole number", str: "text"}[kind]
            problems.append(f"options.{key} must be {what}"
                            + (f" ({' or '.join(map(str, allowed))})" if allowed else "")
                            + f", got {value!r}")
        elif allowed is not None and value not in allowed:
            problems.append(f"options.{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return problems


SPLITS = ("train", "val", "test")

#: Top-level keys of an Ultralytics dataset YAML that efpn reads (docs.ultralytics.com/datasets/detect).
ULTRALYTICS_KEYS: tuple[str, ...] = ("path", "train", "val", "validation", "test", "names", "nc")
#: Keys such YAMLs carry for other tasks, splits and tools, not read here (no warning).
_ULTRALYTICS_UNREAD = frozenset({"minival", "download", "channels", "kpt_shape", "flip_idx", "roboflow",
                                 "yaml_file", "license", "author", "url", "description"})


@dataclass(frozen=True)
class _DataFile:
    """The top level of a data YAML as written (types checked by the shared walker; meaning checked below)."""

    format: str | None = None
    root: str | None = None
    names: tuple[str, ...] | dict | str | None = None
    train: dict | None = None
    val: dict | None = None
    test: dict | None = None
    val_fraction: float | None = None
    split_seed: int | None = None
    options: dict | None = None
    nc: int | None = None
    description: str | None = None


@dataclass(frozen=True)
class DataConfig:
    """A validated data YAML. Source paths are absolute (resolved against ``root``); ``None`` = not given.

    Attributes:
        format: one of :data:`FORMATS`.
        root: dataset folder.
        sources: ``{"train": {key: Path | None}, "val": {...}, "test": {...}}``; a split missing from the YAML
            is absent. ``test`` is a held-out split: training never reads it, ``val_fraction`` never carves it.
        names: class names from the YAML, or ``None`` (then the format decides: COCO categories, VOC
            discovery over all splits, DOTA-v1 list, VisDrone's 10 classes).
        val_fraction, split_seed: when ``val`` is not given, :func:`split_records` carves this share out of
            train (both splits then come from the train source).
        options: loader keyword options (see :data:`OPTIONS`).
        yaml_path: the YAML file, for messages.
    """

    format: str
    root: Path
    sources: dict[str, dict[str, Path | None]]
    names: tuple[str, ...] | None = None
    val_fraction: float = 0.0
    split_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    yaml_path: Path | None = None

    @property
    def train(self) -> dict[str, Path | None] | None:
        """The ``train`` source (resolved paths), or ``None``."""
        return self.sources.get("train")

    @property
    def val(self) -> dict[str, Path | None] | None:
        """The ``val`` source (resolved paths), or ``None`` (see ``val_fraction``)."""
        return self.sources.get("val")

    @property
    def name(self) -> str:
        """Short dataset name for reports: the YAML stem, else the root folder name."""
        return self.yaml_path.stem if self.yaml_path is not None else self.root.name

    def has_split(self, split: str) -> bool:
        """Whether ``split`` can be loaded (given, or carved out of train by ``val_fraction``)."""
        return split in self.sources or (split == "val" and self.val_fraction > 0 and "train" in self.sources)


def _where(yaml_path: Path | None) -> str:
    return f"data YAML {yaml_path}" if yaml_path is not None else "data config"


def _parse_source(fmt: str, split: str, value: Any, root: Path, where: str) -> dict[str, Path | None]:
    spec = SOURCE_KEYS[fmt]
    if not isinstance(value, dict):
        keys = ", ".join(f"{k}{'*' if req else ''}" for k, (req, _) in spec.items())
        raise ConfigError(f"{where}: '{split}' must be a mapping with keys {keys} (* = required), got {short(value)}")
    unknown = sorted(str(k) for k in value if k not in spec)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} in '{split}' for format {fmt}; valid keys: {', '.join(spec)}"
        )
    out: dict[str, Path | None] = {}
    for key, (required, kind) in spec.items():
        raw = value.get(key)
        if raw is None or raw == "":
            if required:
                raise ConfigError(
                    f"{where}: '{split}.{key}' is required for format {fmt} (a {kind} relative to root {root})"
                )
            out[key] = None
            continue
        if not isinstance(raw, str | int | float) or isinstance(raw, bool):
            raise ConfigError(f"{where}: '{split}.{key}' must be a path (a string), got {short(raw)}")
        path = (root / str(raw)).resolve()
        exists = path.is_file() if kind == "file" else path.is_dir()
        if not exists:
            raise FileNotFoundError(
                f"{where}: '{split}.{key}: {str(raw)[:200]}' -> {path} is not an existing {kind}; paths are "
                f"relative to "
                f"root {root}; fix the path in the YAML or put the {kind} there"
            )
        out[key] = path
    if fmt == "yolo" and out["images"] is None and out["list"] is None:
        raise ConfigError(f"{where}: '{split}' of format yolo needs 'images' (a folder) or 'list' (an image list "
                          f"file), relative to root {root}")
    if fmt == "yolo" and out["list"] is not None and (out["images"] is not None or out["labels"] is not None):
        raise ConfigError(f"{where}: '{split}' gives 'list' and 'images'/'labels': an image list names its images, "
                          "and each label is found from its image's path; give one or the other")
    return out


def is_ultralytics(data: Any) -> bool:
    """Whether a parsed data YAML is written in Ultralytics' form: no ``format``, and a ``path`` or a split given as
    a path (a string or a list) rather than a mapping."""
    return (isinstance(data, dict) and "format" not in data
            and ("path" in data or any(isinstance(data.get(s), str | list) for s in (*SPLITS, "validation"))))


def from_ultralytics(data: dict[str, Any], where: str, base_dir: str | Path = ".") -> dict[str, Any]:
    """An Ultralytics dataset YAML mapping -> the same dataset in this module's schema (format ``yolo``).

    ``path`` (relative to ``base_dir``, the YAML's folder) becomes ``root``; ``val`` or ``validation`` the val split;
    a split given as a ``.txt`` file becomes an image list, a folder an image folder (labels where Ultralytics looks:
    its last ``images`` folder -> ``labels``, else beside the images); a list of one path is that path; a split
    ``../x`` that does not exist is read as ``x`` (Roboflow exports, as Ultralytics does); ``nc`` without ``names``
    names the classes ``class_0``, ``class_1``, ...; ``test`` is the test split. Keys of other tasks and tools
    (``download``, ``kpt_shape``, ``roboflow``, ...) are not read; unknown ones are warned about. Raises ConfigError
    for a split that lists several paths and FileNotFoundError for a path that does not exist, in the YAML's own
    words.
    """
    unknown = sorted(str(k) for k in data if k not in ULTRALYTICS_KEYS and k not in _ULTRALYTICS_UNREAD)
    if unknown:
        warnings.warn(f"{where}: read as an Ultralytics dataset YAML (it has no 'format' key); {short(unknown)} "
                      f"are not read (efpn reads {', '.join(ULTRALYTICS_KEYS)})", stacklevel=3)
    raw_root = str(data.get("path") or ".")
    root = (Path(base_dir) / raw_root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{where}: 'path: {raw_root[:200]}' -> {root} is not an existing folder; efpn reads a relative 'path' "
            "against the YAML file's folder (Ultralytics would also try its own datasets folder): make it absolute "
            "or relative to the YAML"
        )
    out: dict[str, Any] = {"format": "yolo", "root": str(root)}
    if data.get("names") is not None:
        out["names"] = data["names"]
    elif isinstance(data.get("nc"), int) and not isinstance(data.get("nc"), bool) and data["nc"] > 0:
        out["names"] = [f"class_{i}" for i in range(data["nc"])]
    if data.get("nc") is not None:
        out["nc"] = data["nc"]
    for split in SPLITS:
        key = split if data.get(split) not in (None, "") or split != "val" else "validation"
        value = data.get(key)
        if value is None or value == "":
            continue
        try:
            out[split] = _ultralytics_source(key, value, root, where)
        except (ConfigError, FileNotFoundError) as e:
            if split != "test":
                raise
            # dataset YAMLs often name a test split that is not on disk (kept by its owners, not downloaded) or
            # list several folders: training and validation do not need it, so only its own use is lost
            warnings.warn(f"{e}; the test split is not available", stacklevel=3)
    return out


def _ultralytics_source(key: str, value: Any, root: Path, where: str) -> dict[str, str]:
    """One split of an Ultralytics YAML -> its source in this module's schema (``list`` or ``images``)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ConfigError(
                f"{where}: '{key}' lists {len(value)} paths; efpn reads one image folder or one image list per "
                "split: write every image path into one .txt file (one per line) and name that file"
            )
        value = value[0]
    if not isinstance(value, str):
        raise ConfigError(f"{where}: '{key}' must be an image folder or an image list (.txt), got {short(value)}")
    if not (root / value).exists() and value.startswith("../") and (root / value[3:]).exists():
        value = value[3:]  # Roboflow writes paths one level too high; Ultralytics retries them without '../'
    path = (root / value).resolve()
    if path.is_file() and path.suffix.lower() == ".txt":
        return {"list": str(path)}
    if path.is_dir():
        return {"images": str(path)}
    what = "is not a folder or an image list (.txt)" if path.exists() else "does not exist"
    raise FileNotFoundError(f"{where}: '{key}: {value[:200]}' -> {path} {what}; it is read relative to "
                            f"'path' ({root})")


def parse_data_config(data: Any, base_dir: str | Path = ".", yaml_path: str | Path | None = None) -> DataConfig:
    """Validate an already-parsed data YAML mapping; relative ``root`` is resolved against ``base_dir``.

    Types are checked by the shared walker (:func:`~efpn.config.schema.from_mapping`); the meaning of each key
    (formats, source keys per format, paths that must exist, names) here. Raises
    :class:`~efpn.config.schema.ConfigError` (a ValueError) or FileNotFoundError naming the file and the key.
    """
    where = _where(Path(yaml_path) if yaml_path is not None else None)
    if data is None:
        raise ConfigError(f"{where}: the file is empty; it needs at least 'format' and 'train'")
    if is_ultralytics(data):
        data = from_ultralytics(data, where, base_dir)
    top = from_mapping(_DataFile, data, where)
    fmt = top.format
    if fmt is None:
        raise ConfigError(f"{where}: missing key 'format'; set it to one of {', '.join(FORMATS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"{where}: unknown format {short(fmt)}; valid formats: {', '.join(FORMATS)}")

    root = (Path(base_dir) / (top.root or ".")).resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{where}: 'root: {(top.root or '')[:200]}' -> {root} is not an existing folder; root is relative "
            "to the YAML file's folder; fix it or move the YAML"
        )
    given = {"train": top.train, "val": top.val, "test": top.test}
    sources = {s: _parse_source(fmt, s, given[s], root, where) for s in SPLITS if given[s] is not None}
    if not sources:
        raise ConfigError(f"{where}: missing key 'train' (and 'val', 'test'); give at least one split source")

    names: tuple[str, ...] | None = None
    if isinstance(top.names, str):
        path = root / top.names
        if not path.is_file():
            raise FileNotFoundError(f"{where}: 'names: {top.names[:200]}' -> {path} does not exist (relative to root)")
        names = tuple(read_names(path))
    elif top.names is not None:
        names = tuple(parse_names(list(top.names) if isinstance(top.names, tuple) else top.names,
                                  source=f"{where}: 'names'"))
    if fmt == "yolo" and names is None:
        raise ConfigError(
            f"{where}: format yolo needs 'names': a list, an {{index: name}} mapping, or a names.yaml path "
            "relative to root"
        )
    if names is not None and top.nc is not None and top.nc != len(names):
        raise ConfigError(f"{where}: 'nc: {top.nc}' does not match the {len(names)} names")

    val_fraction = top.val_fraction or 0.0
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"{where}: 'val_fraction' must be in [0, 1), got {val_fraction}")
    if val_fraction > 0 and "val" in sources:
        raise ConfigError(f"{where}: give either a 'val' source or 'val_fraction', not both")
    if "train" not in sources and val_fraction > 0:
        raise ConfigError(f"{where}: 'val_fraction' splits the 'train' source, which is missing")

    options = top.options or {}
    bad = sorted(str(k) for k in options if k not in OPTIONS[fmt])
    if bad:
        valid = ", ".join(OPTIONS[fmt]) or "none"
        raise ConfigError(f"{where}: unknown option(s) {short(bad)} for format {fmt}; valid options: {valid}")
    problems = _option_problems(options)
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))
    if top.split_seed is not None and (type(top.split_seed) is not int or top.split_seed < 0):
        raise ConfigError(f"{where}: 'split_seed' must be a whole number >= 0, got {top.split_seed!r}")
    return DataConfig(
        format=fmt,
        root=root,
        sources=sources,
        names=names,
        val_fraction=val_fraction,
        split_seed=top.split_seed or 0,
        options=dict(options),
        yaml_path=Path(yaml_path) if yaml_path is not None else None,
    )


def load_data_config(path: str | Path) -> DataConfig:
    """Read and validate a data YAML file (see the module docstring for the schema)."""
    p = Path(path)
    if p.is_dir():
        yamls = sorted(q.name for q in p.glob("*.y*ml"))
        hint = f" (it holds {', '.join(yamls[:3])})" if yamls else ""
        raise IsADirectoryError(f"data YAML {p} is a folder{hint}; pass the data YAML file itself, e.g. "
                                f"{p / (yamls[0] if yamls else 'data.yaml')}")
    if p.exists() and not p.is_file():  # a pipe or a device: reading it could block or never end
        raise ValueError(f"data YAML {p} is not a regular file (a pipe or a device?); pass the data YAML file itself")
    if not p.is_file():
        raise FileNotFoundError(f"data YAML {p} does not exist; pass the path of a data YAML (e.g. data/ssdd.yaml)")
    return parse_data_config(read_yaml(p, "data YAML"), base_dir=p.resolve().parent, yaml_path=p)
