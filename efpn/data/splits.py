"""Records of a data YAML's splits: the format's loader on each source, and the seeded train/val carve-out.

The YAML itself is read and validated by :mod:`efpn.config.data`; this module only loads what it describes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from efpn.config.data import FORMATS, SPLITS, DataConfig, load_data_config
from efpn.data.coco import load_coco, read_json
from efpn.data.dota import load_dota
from efpn.data.masks import load_masks
from efpn.data.records import ImageRecord, SkipReport
from efpn.data.visdrone import load_visdrone
from efpn.data.voc import load_voc
from efpn.data.yolo import load_yolo

__all__ = ["LOADERS", "category_ids", "load_split", "split_records"]

#: format -> the loader function (every loader returns ``(records, class_names, SkipReport)``).
LOADERS: dict[str, Callable[..., tuple[list[ImageRecord], list[str], SkipReport]]] = {
    "coco": load_coco,
    "yolo": load_yolo,
    "voc": load_voc,
    "visdrone": load_visdrone,
    "dota": load_dota,
    "masks": load_masks,
}
assert tuple(LOADERS) == FORMATS, "every format a data YAML may name needs a loader"


def _where(yaml_path: Path | None) -> str:
    return f"data YAML {yaml_path}" if yaml_path is not None else "data config"


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
        return load_yolo(src["images"], src["labels"], names=list(names or ()), name=label,
                         image_list=src["list"], root=cfg.root, **opts)
    if fmt == "voc":
        kw = {k: src[k] for k in ("annotations", "images") if src[k] is not None}
        return load_voc(cfg.root, src["list"], names=names, name=label, **kw, **opts)
    if fmt == "visdrone":
        return load_visdrone(src["annotations"], src["images"], image_sizes=src["image_sizes"], name=label, **opts)
    if fmt == "masks":
        return load_masks(src["images"], src["masks"], src["list"], names=names, name=label, **opts)
    return load_dota(src["labels"], src["images"], names=names, name=label, **opts)


def category_ids(cfg: DataConfig | str | Path, split: str = "train") -> list[int] | None:
    """The dataset's own category id of every class index of ``split`` (COCO: its categories' ids, sorted, as
    :func:`~efpn.data.coco.load_coco` numbers its classes), for results a COCO tool scores against the original
    annotations; None for formats without category ids (results then use COCO's ``index + 1``)."""
    if not isinstance(cfg, DataConfig):
        cfg = load_data_config(cfg)
    if cfg.format != "coco":
        return None
    carve = _carved(cfg, split)
    doc = read_json(cfg.sources["train" if carve else split]["annotations"])  # errors name the file
    return sorted(int(c["id"]) for c in doc.get("categories", []))


def category_ids_for(classes: Sequence[str], data_names: Sequence[str],
                     data_ids: Sequence[int] | None) -> list[int | None]:
    """For results of a model whose classes are ``classes`` (in its order), scored against data annotated with
    ``data_names`` (and ``data_ids``, :func:`category_ids`; None: COCO's ``index + 1``): per model class, the data's
    category id of the class of the same name, or None when the data has no class of that name (such detections
    have nothing to be scored as). A model's classes that are the data's map one to one; an unnamed model (empty
    ``classes``) is taken as having the data's classes."""
    names = list(classes) or list(data_names)
    ids = list(data_ids) if data_ids is not None else [j + 1 for j in range(len(data_names))]
    where = {str(n): j for j, n in enumerate(data_names)}
    return [ids[where[str(n)]] if str(n) in where and where[str(n)] < len(ids) else None for n in names]


def _carved(cfg: DataConfig, split: str) -> bool:
    """Whether ``split`` is carved out of the train source (train or val with ``val_fraction`` and no val source)."""
    return split in ("train", "val") and cfg.val_fraction > 0 and "val" not in cfg.sources


def _class_names(cfg: DataConfig) -> Sequence[str] | None:
    """Names passed to the loader: the YAML's, or for VOC the sorted union over every split (same indices)."""
    if cfg.names is not None or cfg.format != "voc":
        return cfg.names
    found: set[str] = set()
    for split in cfg.sources:
        found.update(_call_loader(cfg, split, None)[1])
    return sorted(found)


def load_split(cfg: DataConfig | str | Path, split: str = "train") -> tuple[list[ImageRecord], list[str], SkipReport]:
    """Load one split (``"train"``, ``"val"`` or ``"test"``) of a data YAML -> ``(records, class_names, report)``.

    When the YAML has no ``val`` source but a ``val_fraction``, train and val come from the train source via
    :func:`split_records` (so they never overlap); the report then covers the whole train source. ``test`` is
    always its own source.
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
    carve = _carved(cfg, split)
    records, class_names, report = _call_loader(cfg, "train" if carve else split, names)
    if cfg.names is not None and list(cfg.names) != list(class_names):
        raise ValueError(
            f"{_where(cfg.yaml_path)}: 'names' {list(cfg.names)[:5]}... do not match the {len(class_names)} "
            f"classes the {cfg.format} files define {class_names[:5]}...; remove 'names' or fix it"
        )
    if not class_names:
        raise ValueError(f"{_where(cfg.yaml_path)}: the data defines no classes; list them under 'names:' (YOLO, "
                         "DOTA) or in the annotation files (COCO 'categories')")
    if len(set(class_names)) != len(class_names):
        twice = sorted({n for n in class_names if list(class_names).count(n) > 1})
        raise ValueError(f"{_where(cfg.yaml_path)}: class names {twice} appear more than once; each class needs one "
                         "name")
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
