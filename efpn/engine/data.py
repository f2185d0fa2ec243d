"""What the training loop reads: the run's train/val records, per-sample seeded augmentation, and the
step-by-step batching that makes DDP, gradient accumulation and resume see the same batches."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, Sampler

from efpn.config import TrainConfig
from efpn.config.data import DataConfig, load_data_config
from efpn.data.dataset import DetectionDataset
from efpn.data.records import ImageRecord
from efpn.data.splits import load_split, split_records
from efpn.data.transforms import DetectionTransform, build_transforms
from efpn.data.uploads import map_class_names

__all__ = ["SeededSamples", "StepBatchSampler", "TrainData", "keep_recorded_split", "load_train_data", "record_key",
           "to_device", "train_samples", "train_transforms"]


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]) % (1 << 63)


class SeededSamples(Dataset):
    """``dataset[(epoch, index)]``: sample ``index`` with its augmentation RNG seeded by ``(seed, epoch, index)``.

    Random augmentation then depends on neither the DataLoader worker nor the rank that loads the sample, so
    runs with different ``workers``/``world_size`` and a resumed run see identical samples. The caller's
    torch RNG is left untouched (``workers=0`` loads in the training process). Adds ``scale`` = network px /
    original px to the target, read from the letterbox the train pipeline records.

    ``late`` (optional) is the dataset read from epoch ``late_from`` (0-based) on: the same records through
    another pipeline, e.g. without mosaic for a run's last epochs (``TrainConfig.close_mosaic``). Which one a
    sample comes from depends on its epoch alone, so workers built once and resumed runs agree.
    """

    def __init__(self, dataset: DetectionDataset, seed: int, late: DetectionDataset | None = None,
                 late_from: int | None = None):
        if (late is None) != (late_from is None):
            raise ValueError("SeededSamples: late and late_from go together")
        if late is not None and len(late) != len(dataset):
            raise ValueError(f"SeededSamples: late has {len(late)} samples, dataset {len(dataset)}")
        self.dataset = dataset
        self.seed = int(seed)
        self.late = late
        self.late_from = late_from

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, epoch, index))
            source = self.late if self.late is not None and epoch >= self.late_from else self.dataset
            image, target = source[index]
        # the train letterbox records [scale_x, scale_y, pad_left, pad_top]; tile and mosaic crops are native
        # resolution, so the letterbox's scale is the whole network/original scale (size buckets need it)
        target["scale"] = float(target["letterbox"][0]) if "letterbox" in target else 1.0
        return image, target


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """This process's micro-batches, step by step, from a :class:`DistributedSampler`.

    Step ``j`` of an epoch uses global shuffle positions ``[j*B, (j+1)*B)``; the DistributedSampler gives rank
    ``r`` the positions ``≡ r (mod W)`` of them, and micro-batch ``a`` of ``A`` takes every ``A``-th of those.
    So sample ``k`` of a step lands on "virtual replica" ``r + W*a = k mod (W*A)``: the world-size-2 run and
    the one-process ``accumulate=2`` run group the same images into the same (BatchNorm) micro-batches.
    Yields lists of ``(epoch, index)`` keys for :class:`SeededSamples`; ``start_step`` skips already-done
    steps of the first epoch after a resume.
    """

    def __init__(self, sampler: DistributedSampler, per_rank_batch: int, accumulate: int):
        if per_rank_batch % accumulate:
            raise ValueError(f"per-process batch {per_rank_batch} is not divisible by accumulate={accumulate}")
        self.sampler = sampler
        self.per_rank_batch = per_rank_batch
        self.accumulate = accumulate
        self.epoch = 0
        self.start_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler) // self.per_rank_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch = epoch
        self.start_step = start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accumulate

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = list(self.sampler)
        b, a = self.per_rank_batch, self.accumulate
        for j in range(self.start_step, self.steps_per_epoch):
            chunk = order[j * b : (j + 1) * b]
            for m in range(a):
                yield [(self.epoch, int(i)) for i in chunk[m::a]]


def train_transforms(cfg: TrainConfig, mosaic: bool | None = None) -> DetectionTransform:
    """The data package's train pipeline, with the letterbox recording its scale (for ``scale`` in targets),
    tiles zoomed by ``cfg.zoom_in``/``cfg.zoom_out``, and without the random tile crop when ``tile=False``;
    ``mosaic`` overrides ``cfg.mosaic``."""
    return build_transforms(True, cfg.image_size, mosaic=cfg.mosaic if mosaic is None else mosaic,
                            flip_vertical=cfg.flip_vertical, tile=cfg.tile, zoom_in=cfg.zoom_in,
                            zoom_out=cfg.zoom_out, record_letterbox=True)


def train_samples(cfg: TrainConfig, records: Sequence[ImageRecord]) -> SeededSamples:
    """The run's seeded train samples; with ``mosaic`` and ``close_mosaic = N`` the last N epochs read the
    same records without mosaic (plain crops, as Ultralytics closes its mosaic before the end)."""
    dataset = DetectionDataset(list(records), train_transforms(cfg), skip_corrupt=True)
    if not (cfg.mosaic and cfg.close_mosaic):
        return SeededSamples(dataset, cfg.seed)
    plain = DetectionDataset(list(records), train_transforms(cfg, mosaic=False), skip_corrupt=True)
    return SeededSamples(dataset, cfg.seed, late=plain, late_from=max(0, cfg.epochs - cfg.close_mosaic))


@dataclass
class TrainData:
    """The records of a run and how they were split (``split`` is written to ``data_split.json``)."""

    train: list[ImageRecord]
    val: list[ImageRecord]
    class_names: list[str]
    config: DataConfig
    split: dict[str, Any]


def onto_class_names(records: list[ImageRecord], names: list[str], target: list[str], where: str
                     ) -> list[ImageRecord]:
    """Records labelled in ``names`` relabelled in ``target`` by class name (two COCO files may list their
    categories differently: index k of one is not index k of the other). Raises ValueError naming both lists when
    a class of ``names`` that the records use is not in ``target``."""
    if list(names) == list(target):
        return records
    index, _ = map_class_names(list(target), list(names), np.arange(len(names)))  # file index -> target index
    used = sorted({int(v) for r in records for v in r.labels.tolist()})
    missing = [names[k] for k in used if index[k] >= len(target)]
    if missing:
        raise ValueError(f"{where} uses classes [{', '.join(missing)}] that the train split does not have (train: "
                         f"[{', '.join(target)}]); give both splits the same categories")
    return [dataclasses.replace(r, labels=index[r.labels]) for r in records]


def load_train_data(cfg: TrainConfig, verbose: bool) -> TrainData:
    """Train and val records from the data YAML; val is carved from train when the YAML gives none."""
    data_cfg = load_data_config(cfg.data)
    train_records, names, report = load_split(data_cfg, cfg.train_split)
    if verbose:
        print(report.summary())
    split: dict[str, Any] = {"data": str(Path(cfg.data).resolve()), "train_split": cfg.train_split,
                             "val_split": cfg.val_split, "dataset": data_cfg.name}
    val_records: list[ImageRecord] = []
    if cfg.val_split is None:
        split["val_source"] = "none"
    elif cfg.val_split == cfg.train_split:  # asked for explicitly: measures fitting, not generalisation
        val_records = list(train_records)
        split["val_source"] = "the train split itself"
    elif data_cfg.has_split(cfg.val_split):
        val_records, val_names, val_report = load_split(data_cfg, cfg.val_split)
        carved = cfg.val_split == "val" and "val" not in data_cfg.sources
        if not val_records:  # a split the YAML gives, and nothing in it: training would pick no best weights, silently
            raise ValueError(f"data YAML {cfg.data}: split {cfg.val_split!r} has no images to validate on; what the "
                             f"loader dropped and why:\n{val_report.summary()}\nFix its source in the YAML, or leave "
                             "the split out (val_fraction then carves one from train)")
        if not carved:  # its own source: what its loader dropped is said too (validation picks the best weights)
            if verbose:
                print(val_report.summary())
            split["val_loader"] = val_report.to_json_dict()
        val_records = onto_class_names(val_records, val_names, names, f"data YAML {cfg.data}: split "
                                       f"{cfg.val_split!r}")
        split["val_source"] = "carved from train by the data YAML" if carved else "data YAML"
        if carved:
            split.update(val_fraction=data_cfg.val_fraction, split_seed=data_cfg.split_seed)
    else:
        train_records, val_records = split_records(train_records, cfg.val_fraction, data_cfg.split_seed)
        split.update(val_source="carved from train by the trainer", val_fraction=cfg.val_fraction,
                     split_seed=data_cfg.split_seed)
    if not train_records:
        raise ValueError(f"data YAML {cfg.data}: split {cfg.train_split!r} has no images to train on")
    if not any(r.num_targets for r in train_records):  # a detector learns nothing from background alone
        raise ValueError(f"data YAML {cfg.data}: split {cfg.train_split!r} has {len(train_records)} images but no "
                         f"object boxes to train on; what the loader dropped and why:\n{report.summary()}")
    split["train_loader"] = report.to_json_dict()
    split["num_train"], split["num_val"] = len(train_records), len(val_records)
    split["val_ids"] = [r.image_id for r in val_records]
    split["train_ids"] = [r.image_id for r in train_records]
    # ids are positions for most formats (assign_image_ids): an added image shifts them; the files do not move
    root = Path(cfg.data).resolve().parent
    split["val_files"] = [record_key(r, root) for r in val_records]
    split["train_files"] = [record_key(r, root) for r in train_records]
    return TrainData(train_records, val_records, list(names), data_cfg, split)


def record_key(record: ImageRecord, root: Path) -> str:
    """What names an image across loads of a dataset: its file relative to ``root`` (the data YAML's folder;
    absolute when elsewhere), ``#id`` when it has no file. Ids are not enough: for every format but COCO and
    numeric file names they are positions in the sorted file list, so an added or left-out image shifts them."""
    if record.path is None:
        return f"#{record.image_id}"
    path = Path(record.path).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def keep_recorded_split(data: TrainData, recorded: Path) -> TrainData:
    """A resumed run's records split as its ``data_split.json`` (``recorded``) says, where that can be done.

    A carve moves when the images loaded change (one added, or one the loader now leaves out: ``split_records``
    permutes over all of them), and a resume must neither train on images it validated on nor validate on images it
    trained on. So a val split carved from train (by the trainer or by the data YAML) is carved again from the
    recorded val files (:func:`record_key`), the train list in the recorded order; an image the run never saw
    trains; a recorded val image that is not loaded now is said (the loader's report says why). A val split with
    its own source cannot be re-carved, nor can a record without file names (ids alone do not say which images
    moved): a difference from the record is warned about. Returns ``data`` itself when nothing differs or nothing
    was recorded. Every DDP rank computes the same result from the same file (rank 0 rewrites it atomically).
    """
    try:
        before = json.loads(recorded.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return data
    def differs(moved: str) -> TrainData:
        warnings.warn(f"the validation split differs from the one this run recorded in {recorded}{moved}: the data "
                      "changed, or its loader now leaves out images (see its report above); validation may score "
                      "images the run trained on", stacklevel=3)
        return data

    if not isinstance(before, dict) or not isinstance(before.get("val_files"), list):
        # a record without file names (an older run): ids alone cannot say which images moved
        ids = before.get("val_ids") if isinstance(before, dict) else None
        same = not isinstance(ids, list) or sorted(map(str, ids)) == sorted(map(str, data.split.get("val_ids") or []))
        return data if same else differs("")
    root = Path(str(data.split.get("data", "."))).parent
    wanted = [str(k) for k in before["val_files"]]
    wanted_set = set(wanted)
    now = set(data.split.get("val_files") or [])
    if wanted_set == now:
        return data
    moved = len(wanted_set ^ now)
    if not all(str(d.get("val_source", "")).startswith("carved") for d in (before, data.split)):
        return differs(f" ({moved} images in one and not the other)")  # its own source: nothing to carve again
    rank = {k: i for i, k in enumerate(str(k) for k in before.get("train_files") or [])}
    pool = {record_key(r, root): r for r in [*data.train, *data.val]}
    val = [pool[k] for k in wanted if k in pool]  # in the recorded order
    # the recorded order first (the sampler then permutes the same list as before), images new to the run after it
    train_keys = sorted((k for k in pool if k not in wanted_set), key=lambda k: rank.get(k, len(rank)))
    train = [pool[k] for k in train_keys]
    gone = sum(1 for k in wanted if k not in pool)
    new = sum(1 for k in train_keys if k not in rank)
    warnings.warn(
        f"the carve of the images loaded now differs from the one this run recorded in {recorded} ({moved} images "
        f"in one and not the other): the run keeps its recorded val split ({len(val)} images)"
        + (f"; val images not loaded now (see the loader's report above): {gone}" if gone else "")
        + (f"; images new to the run, trained on: {new}" if new else ""), stacklevel=2)
    split = {**data.split, "val_ids": [r.image_id for r in val], "train_ids": [r.image_id for r in train],
             "val_files": [k for k in wanted if k in pool], "train_files": train_keys,
             "num_train": len(train), "num_val": len(val), "val_kept_from": str(recorded)}
    return dataclasses.replace(data, train=train, val=val, split=split)


def to_device(images: Tensor, targets: Sequence[Mapping[str, Any]], device: torch.device,
               channels_last: bool) -> tuple[Tensor, list[dict[str, Any]]]:
    """A collated batch on ``device`` (channels-last images if asked); targets keep boxes, labels and scale."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    moved = [{"boxes": t["boxes"].to(device, non_blocking=True), "labels": t["labels"].to(device, non_blocking=True),
              "scale": t["scale"]} for t in targets]
    return images, moved
