"""Data YAML -> :class:`DataConfig` -> records: the one place a dataset description is read.

Schema (paths are relative to ``root``; ``root`` is relative to the YAML file and defaults to its folder)::

    format: coco            # one of coco, yolo, voc, visdrone, dota
    root: ../shared/data/ssdd
    names: [ship]           # optional: a list, an {index: name} mapping, or a names.yaml / classes.txt path
    train:                  # keys depend on the format (see SOURCE_KEYS)
      annotations: annotations/instances_train.json
      images: images
    val:                    # optional; without it ...
      ...
    val_fraction: 0.1       # ... a fixed, seeded share of train becomes val (default 0: no val split)
    split_seed: 0
    options:                # optional keyword options of the format's loader
      crowd: crowd          # coco: crowd, check_images | voc, dota: difficult | visdrone: others

Source keys per format (``*`` = required):

* ``coco``: ``annotations*`` (JSON file), ``images`` (folder; omitted = boxes-only records)
* ``yolo``: ``images*`` (folder), ``labels`` (folder; default: ``images`` with ``images`` -> ``labels``);
  ``names`` required
* ``voc``: ``list`` (``ImageSets/Main/train.txt``; omitted = every XML), ``annotations`` (default
  ``Annotations``), ``images`` (default ``JPEGImages``)
* ``visdrone``: ``annotations*`` (folder), ``images`` (folder or null), ``image_sizes`` (COCO JSON or null)
* ``dota``: ``labels*`` (folder), ``images`` (folder or null)

Every problem raises ``ValueError`` (bad value, unknown key or format) or ``FileNotFoundError`` (a path that
does not exist) naming the YAML file, the key, the resolved path and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from efpn.data.coco import load_coco
from efpn.data.dota import load_dota
from efpn.data.names import parse_names, read_names
from efpn.data.records import ImageRecord, SkipReport
from efpn.data.visdrone import load_visdrone
from efpn.data.voc import load_voc
from efpn.data.yolo import load_yolo

__all__ = [
    "FORMATS",
    "LOADERS",
    "OPTIONS",
    "SOURCE_KEYS",
    "DataConfig",
    "load_data_config",
    "load_split",
    "parse_data_config",
    "split_records",
]

#: format -> the loader function (every loader returns ``(records, class_names, SkipReport)``).
LOADERS: dict[str, Callable[..., tuple[list[ImageRecord], list[str], SkipReport]]] = {
    "coco": load_coco,
    "yolo": load_yolo,
    "voc": load_voc,
    "visdrone": load_visdrone,
    "dota": load_dota,
}
FORMATS: tuple[str, ...] = tuple(LOADERS)

#: format -> {source key: (required, "file" | "dir")}.
SOURCE_KEYS: dict[str, dict[str, tuple[bool, str]]] = {
    "coco": {"annotations": (True, "file"), "images": (False, "dir")},
    "yolo": {"images": (True, "dir"), "labels": (False, "dir")},
    "voc": {"list": (False, "file"), "annotations": (False, "dir"), "images": (False, "dir")},
    "visdrone": {"annotations": (True, "dir"), "images": (False, "dir"), "image_sizes": (False, "file")},
    "dota": {"labels": (True, "dir"), "images": (False, "dir")},
}

#: format -> loader keyword options a YAML may set under ``options``.
OPTIONS: dict[str, tuple[str, ...]] = {
    "coco": ("crowd", "check_images"),
    "yolo": (),
    "voc": ("difficult",),
    "visdrone": ("others",),
    "dota": ("difficult",),
}

_TOP_KEYS = (
    "format",
    "root",
    "names",
    "train",
    "val",
    "val_fraction",
    "split_seed",
    "options",
    "nc",
    "description",
)
SPLITS = ("train", "val")


@dataclass(frozen=True)
class DataConfig:
    """A validated data YAML. Source paths are absolute (resolved against ``root``); ``None`` = not given.

    Attributes:
        format: one of :data:`FORMATS`.
        root: dataset folder.
        sources: ``{"train": {key: Path | None}, "val": {...}}``; a split missing from the YAML is absent.
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
        raise ValueError(f"{where}: '{split}' must be a mapping with keys {keys} (* = required), got {value!r}")
    unknown = sorted(set(value) - set(spec))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {unknown} in '{split}' for format {fmt}; valid keys: {', '.join(spec)}"
        )
    out: dict[str, Path | None] = {}
    for key, (required, kind) in spec.items():
        raw = value.get(key)
        if raw is None or raw == "":
            if required:
                raise ValueError(
                    f"{where}: '{split}.{key}' is required for format {fmt} (a {kind} relative to root {root})"
                )
            out[key] = None
            continue
        path = (root / str(raw)).resolve()
        exists = path.is_file() if kind == "file" else path.is_dir()
        if not exists:
            raise FileNotFoundError(
                f"{where}: '{split}.{key}: {raw}' -> {path} is not an existing {kind}; paths are relative to "
                f"root {root}; fix the path in the YAML or put the {kind} there"
            )
        out[key] = path
    return out


def parse_data_config(data: Any, base_dir: str | Path = ".", yaml_path: str | Path | None = None) -> DataConfig:
    """Validate an already-parsed data YAML mapping; relative ``root`` is resolved against ``base_dir``."""
    where = _where(Path(yaml_path) if yaml_path is not None else None)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping with keys format, root, train, ...; got {type(data).__name__}")
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(_TOP_KEYS)}")
    fmt = data.get("format")
    if fmt is None:
        raise ValueError(f"{where}: missing key 'format'; set it to one of {', '.join(FORMATS)}")
    if fmt not in LOADERS:
        raise ValueError(f"{where}: unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")

    root = (Path(base_dir) / str(data.get("root") or ".")).resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{where}: 'root: {data.get('root')}' -> {root} is not an existing folder; root is relative "
            "to the YAML file's folder; fix it or move the YAML"
        )
    sources = {s: _parse_source(fmt, s, data[s], root, where) for s in SPLITS if data.get(s) is not None}
    if not sources:
        raise ValueError(f"{where}: missing key 'train' (and 'val'); give at least one split source")

    names: tuple[str, ...] | None = None
    raw_names = data.get("names")
    if isinstance(raw_names, str):
        path = root / raw_names
        if not path.is_file():
            raise FileNotFoundError(f"{where}: 'names: {raw_names}' -> {path} does not exist (relative to root)")
        names = tuple(read_names(path))
    elif raw_names is not None:
        names = tuple(parse_names(raw_names, source=f"{where}: 'names'"))
    if fmt == "yolo" and names is None:
        raise ValueError(
            f"{where}: format yolo needs 'names': a list, an {{index: name}} mapping, or a names.yaml path "
            "relative to root"
        )
    if names is not None and data.get("nc") is not None and int(data["nc"]) != len(names):
        raise ValueError(f"{where}: 'nc: {data['nc']}' does not match the {len(names)} names")

    val_fraction = float(data.get("val_fraction") or 0.0)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"{where}: 'val_fraction' must be in [0, 1), got {val_fraction}")
    if val_fraction > 0 and "val" in sources:
        raise ValueError(f"{where}: give either a 'val' source or 'val_fraction', not both")
    if "train" not in sources and val_fraction > 0:
        raise ValueError(f"{where}: 'val_fraction' splits the 'train' source, which is missing")

    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"{where}: 'options' must be a mapping, got {options!r}")
    bad = sorted(set(options) - set(OPTIONS[fmt]))
    if bad:
        valid = ", ".join(OPTIONS[fmt]) or "none"
        raise ValueError(f"{where}: unknown option(s) {bad} for format {fmt}; valid options: {valid}")
    return DataConfig(
        format=fmt,
        root=root,
        sources=sources,
        names=names,
        val_fraction=val_fraction,
        split_seed=int(data.get("split_seed") or 0),
        options=dict(options),
        yaml_path=Path(yaml_path) if yaml_path is not None else None,
    )


def load_data_config(path: str | Path) -> DataConfig:
    """Read and validate a data YAML file (see the module docstring for the schema)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data YAML {p} does not exist; pass the path of a data YAML (e.g. data/ssdd.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"data YAML {p} is not valid YAML: {e}") from e
    return parse_data_config(data, base_dir=p.resolve().parent, yaml_path=p)


def _call_loader(
    cfg: DataConfig, split: str, names: Sequence[str] | None
) -> tuple[list[ImageRecord], list[str], SkipReport]:
    src = cfg.sources[split]
    opts = dict(cfg.options)
    label = f"{cfg.name}/{split}"
    fmt = cfg.format
    if fmt == "coco":
        return load_coco(src["annotations"], src["images"], name=label, **opts)
    if fmt == "yolo":
        return load_yolo(src["images"], src["labels"], names=list(names or ()), name=label, **opts)
    if fmt == "voc":
        kw = {k: src[k] for k in ("annotations", "images") if src[k] is not None}
        return load_voc(cfg.root, src["list"], names=names, name=label, **kw, **opts)
    if fmt == "visdrone":
        return load_visdrone(src["annotations"], src["images"], image_sizes=src["image_sizes"], name=label, **opts)
    return load_dota(src["labels"], src["images"], names=names, name=label, **opts)


def _class_names(cfg: DataConfig) -> Sequence[str] | None:
    """Names passed to the loader: the YAML's, or for VOC the sorted union over every split (same indices)."""
    if cfg.names is not None or cfg.format != "voc":
        return cfg.names
    found: set[str] = set()
    for split in cfg.sources:
        found.update(_call_loader(cfg, split, None)[1])
    return sorted(found)


def load_split(cfg: DataConfig | str | Path, split: str = "train") -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Load one split (``"train"`` or ``"val"``) of a data YAML -> ``(records, class_names, report)``.

    When the YAML has no ``val`` source but a ``val_fraction``, both splits come from the train source via
    :func:`split_records` (so they never overlap); the report then covers the whole train source.
    YAML ``names`` must agree with the names a format defines itself (COCO categories, VisDrone classes).
    """
    if not isinstance(cfg, DataConfig):
        cfg = load_data_config(cfg)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if not cfg.has_split(split):
        raise ValueError(
            f"{_where(cfg.yaml_path)}: no '{split}' split; add a '{split}:' source"
            + (" or 'val_fraction:' to split train" if split == "val" else "")
        )
    names = _class_names(cfg)
    carve = cfg.val_fraction > 0 and "val" not in cfg.sources
    records, class_names, report = _call_loader(cfg, "train" if carve else split, names)
    if cfg.names is not None and list(cfg.names) != list(class_names):
        raise ValueError(
            f"{_where(cfg.yaml_path)}: 'names' {list(cfg.names)[:5]}... do not match the {len(class_names)} "
            f"classes the {cfg.format} files define {class_names[:5]}...; remove 'names' or fix it"
        )
    if carve:
        train, val = split_records(records, cfg.val_fraction, cfg.split_seed)
        records = train if split == "train" else val
    return records, class_names, report


def split_records(
    records: Sequence[ImageRecord], val_fraction: float, seed: int = 0
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Deterministic train/val split by image id -> ``(train, val)``, each in the input order.

    The same ids go to val for the same ``(set of image ids, val_fraction, seed)`` whatever the input order:
    ids are sorted, permuted by ``numpy.random.default_rng(seed)``, and the first ``round(N * val_fraction)``
    (at least 1 when ``val_fraction > 0`` and N > 1) become val. Record ``[r.image_id for r in val]`` with a
    run to reproduce it.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted({r.image_id for r in records})
    if len(ids) != len(records):
        raise ValueError("split_records needs unique image ids")
    n_val = round(len(ids) * val_fraction)
    if val_fraction > 0 and len(ids) > 1:
        n_val = min(max(n_val, 1), len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    val_ids = {ids[i] for i in order[:n_val]}
    return [r for r in records if r.image_id not in val_ids], [r for r in records if r.image_id in val_ids]
