"""Training configuration: :class:`TrainConfig` (flat, simple-typed fields) and its recipe YAML reader.

Each field maps to a ``--field-name`` flag of ``efpn train`` and a recipe YAML key, and carries a one-line ``help``
in its metadata. Values are checked by the shared walker (:mod:`efpn.config.schema`: types, finite numbers) and
by :meth:`TrainConfig.__post_init__` (ranges); that the preset exists is checked where presets live, when a run
starts (:func:`efpn.engine.train.train`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from efpn.config.model import MAX_IMAGE_SIZE
from efpn.config.schema import ConfigError, coerce, field_hints, from_mapping, read_yaml

__all__ = ["RESUME_FREE", "TrainConfig", "load_train_config"]




def _field(default: Any, help: str) -> Any:
    """A dataclass field with a one-line ``help`` in its metadata (the CLI's flag help)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, as flat simple-typed fields: each maps to a ``--field-name`` flag and
    a recipe YAML key, and carries a one-line ``help`` in its field metadata (``dataclasses.fields``), which
    the CLI can show. Values are checked on construction (ValueError naming the field); the data YAML's
    existence when training starts (FileNotFoundError).

    ``batch_size`` is GLOBAL: each optimizer step consumes ``batch_size`` images over ``world_size x
    accumulate`` micro-batches. ``max_steps`` only stops the run early; the schedule always spans ``epochs``.
    Paths in a recipe YAML are relative to the recipe (see :func:`load_train_config`).
    """

    # model and data
    model: str = _field("efpn_n", "model preset (efpn.zoo.PRESETS); classes come from the data YAML")
    data: str = _field("", "data YAML (efpn's schema or an Ultralytics dataset YAML; see efpn.config.data)")
    train_split: str = _field("train", "split of the data YAML to train on")
    val_split: str | None = _field("val", "split to validate on; None/'none' = no validation")
    val_fraction: float = _field(0.1, "share of train carved out as val when the data YAML has no val split and "
                                      "no val_fraction of its own (ids recorded in data_split.json)")
    image_size: int = _field(640, "network input side S (train letterbox; val resizes the long side to S)")
    val_image_size: int | None = _field(None, "validation and inference size (long side resized to it); None = "
                                              "image_size. Train on small native tiles, validate whole images")
    tile: bool = _field(True, "train on native-resolution S x S crops of larger images (each holding a box when "
                              "possible; zoom_in/zoom_out vary the crop side) instead of shrinking them: tiny "
                              "objects keep their pixels")
    mosaic: bool = _field(False, "YOLO mosaic of 4 native-resolution crops, with probability 0.5")
    close_mosaic: int = _field(0, "the last N epochs train without mosaic, on plain crops like the images "
                                  "validated (Ultralytics' close_mosaic); 0 = mosaic to the end")
    zoom_in: float = _field(1.0, "scale augmentation that enlarges: tiles down to S / zoom_in px, resized to S "
                                 "(objects up to zoom_in x larger, none shrunk; mosaic quadrants stay native; "
                                 "images under S px are enlarged to S anyway, so it adds less to them); "
                                 "1 = native scale only")
    zoom_out: float = _field(1.0, "scale augmentation that shrinks: tiles up to S x zoom_out px, resized to S "
                                  "(Ultralytics' scale=0.5 is zoom_in 1.5, zoom_out 2); 1 = none")
    flip_vertical: bool = _field(True, "vertical flips too (right for aerial/SAR/microscopy, not street scenes)")
    # optimisation
    epochs: int = _field(100, "epochs (the lr schedule spans all of them)")
    batch_size: int = _field(16, "GLOBAL batch per optimizer step, over all processes and micro-batches")
    accumulate: int = _field(1, "micro-batches per optimizer step in each process (gradient accumulation)")
    optimizer: Literal["adamw", "sgd"] = _field("adamw", "adamw, or sgd (Nesterov momentum)")
    lr: float = _field(0.002, "peak learning rate")
    weight_decay: float = _field(0.01, "weight decay on conv/linear weights (none on biases, norms, gains)")
    momentum: float = _field(0.9, "SGD momentum, or AdamW beta1")
    warmup_iters: int = _field(500, "linear lr warm-up in optimizer steps (at most a third of the run)")
    final_lr_ratio: float = _field(0.01, "cosine decay from lr to lr * final_lr_ratio")
    backbone_lr_scale: float = _field(0.1, "lr multiplier for a pretrained backbone (ImageNet or local weights); "
                                           "1 = same lr as the rest")
    dcloss_warmup_fraction: float | None = _field(0.1, "DCLoss warm-up (weights 1) as a share of the run's steps, "
                                                       "so every run re-weights; None = the preset's fixed count")
    clip_grad: float | None = _field(10.0, "max gradient norm; None/0 = no clipping")
    nonfinite_limit: int = _field(10, "stop with an error after this many consecutive non-finite steps")
    # weight averaging and speed
    ema: bool = _field(True, "keep an EMA of the weights; it is what gets validated and saved")
    ema_decay: float = _field(0.9999, "EMA decay d (ramped: d * (1 - exp(-updates / ema_tau)))")
    ema_tau: float = _field(2000.0, "EMA ramp length in updates")
    amp: Literal["off", "bf16", "fp16"] = _field("off", "mixed precision: off, bf16, or fp16 (GradScaler; CUDA)")
    channels_last: bool = _field(False, "channels-last memory format (faster convs on tensor cores)")
    compile: bool = _field(False, "torch.compile backbone, neck and head (assignment and losses stay eager)")
    sync_bn: bool = _field(False, "SyncBatchNorm across GPUs (CUDA, several processes)")
    workers: int = _field(4, "DataLoader worker processes per training process")
    device: Literal["auto", "cpu", "cuda"] = _field("auto", "auto (CUDA when available), cpu or cuda")
    # reproducibility and run control
    seed: int = _field(0, "seed of weights, shuffling and per-sample augmentation")
    deterministic: bool = _field(False, "deterministic kernels (process-wide; slower on GPU)")
    out: str = _field("runs", "folder holding run directories")
    name: str | None = _field(None, "run directory name under out (default {model}_{dataset}; -2, -3... "
                                    "appended when it exists and this is not a resume)")
    resume: str | None = _field(None, "resume from a run dir or its last_state.pt; 'auto' = out/name if it "
                                      "holds a state, else start fresh")
    val_every: int = _field(1, "validate (and save best) every this many epochs, and after the last")
    val_batch_size: int | None = _field(None, "validation batch (default 2 x the per-process train batch)")
    max_steps: int | None = _field(None, "stop after this many optimizer steps in total (tests, smoke runs)")
    half_checkpoint: bool = _field(False, "store the .safetensors weights in fp16")
    log_every: int = _field(10, "log a CSV/TensorBoard row every this many steps")
    progress: bool = _field(True, "progress bars and per-epoch lines on stdout (rank 0)")

    def __post_init__(self) -> None:
        # command-line spellings of "off" for the optional fields (a flag cannot pass None)
        if isinstance(self.val_split, str) and self.val_split.lower() == "none":
            object.__setattr__(self, "val_split", None)
        if self.clip_grad == 0:
            object.__setattr__(self, "clip_grad", None)

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

        need(bool(self.model), "model must name a preset of efpn.zoo (see `efpn models`)")
        need(self.optimizer in ("adamw", "sgd"), f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        need(self.amp in ("off", "bf16", "fp16"), f"amp must be 'off', 'bf16' or 'fp16', got {self.amp!r}")
        need(self.device in ("auto", "cpu", "cuda"), f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.close_mosaic >= 0, f"close_mosaic must be >= 0, got {self.close_mosaic}")
        for name in ("zoom_in", "zoom_out"):
            value = getattr(self, name)
            need(math.isfinite(value) and 1 <= value <= 8, f"{name} must be in [1, 8] (1 = no zoom), got {value}")
        need(self.tile or (self.zoom_in == 1 and self.zoom_out == 1),
             "zoom_in/zoom_out zoom the training tiles; with tile=False there are none (set tile=True or zoom 1)")
        need(self.accumulate >= 1, f"accumulate must be >= 1, got {self.accumulate}")
        need(32 <= self.image_size <= MAX_IMAGE_SIZE and self.image_size % 32 == 0,
             f"image_size must be a multiple of 32 from 32 to {MAX_IMAGE_SIZE}, got {self.image_size}")
        need(self.val_image_size is None or (32 <= self.val_image_size <= MAX_IMAGE_SIZE
                                             and self.val_image_size % 32 == 0),
             f"val_image_size must be a multiple of 32 from 32 to {MAX_IMAGE_SIZE} or None, got {self.val_image_size}")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}")
        need(self.weight_decay >= 0 and math.isfinite(self.weight_decay),
             f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(self.warmup_iters >= 0, f"warmup_iters must be >= 0, got {self.warmup_iters}")
        need(0 < self.backbone_lr_scale <= 1, f"backbone_lr_scale must be in (0, 1], got {self.backbone_lr_scale}")
        need(self.dcloss_warmup_fraction is None or 0 <= self.dcloss_warmup_fraction < 1,
             f"dcloss_warmup_fraction must be in [0, 1) or None, got {self.dcloss_warmup_fraction}")
        need(0 <= self.final_lr_ratio <= 1, f"final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")
        need(self.clip_grad is None or (self.clip_grad > 0 and math.isfinite(self.clip_grad)),
             f"clip_grad must be a finite number > 0 (or 0 / None: no clipping), got {self.clip_grad}")
        need(self.nonfinite_limit >= 1, f"nonfinite_limit must be >= 1, got {self.nonfinite_limit}")
        need(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        need(self.ema_tau > 0 and math.isfinite(self.ema_tau),
             f"ema_tau must be a finite number > 0, got {self.ema_tau}")
        need(0 <= self.seed < 2**32, f"seed must be a whole number in [0, 2**32), got {self.seed}")
        need(self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        need(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        need(self.val_every >= 1, f"val_every must be >= 1, got {self.val_every}")
        need(self.val_batch_size is None or self.val_batch_size >= 1,
             f"val_batch_size must be >= 1, got {self.val_batch_size}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        need(self.train_split in ("train", "val"), f"train_split must be 'train' or 'val', got {self.train_split!r}")
        need(self.val_split in (None, "train", "val"),
             f"val_split must be 'train', 'val' or None, got {self.val_split!r}")
        need(bool(self.out), "out (the runs folder) must not be empty")
        need(self.name is None or (self.name and "/" not in self.name and self.name not in (".", "..")
                                    and self.name.isprintable()),
             f"name must be a plain folder name, got {self.name!r}")

    @property
    def eval_size(self) -> int:
        """The side validation and the shipped model use: ``val_image_size`` when set, else ``image_size``."""
        return self.val_image_size or self.image_size

    def check_paths(self) -> None:
        """Filesystem checks done when training starts: the data YAML must be given and exist."""
        if not self.data:
            raise ValueError("TrainConfig: data is required: the path of a data YAML (e.g. recipes/data/synth.yaml)")
        if not Path(self.data).exists():  # a folder or a pipe: loading it (load_data_config) says what it is
            raise FileNotFoundError(
                f"TrainConfig: data YAML {self.data} does not exist (resolved: {Path(self.data).resolve()}); "
                "give the path of a data YAML, e.g. recipes/data/ssdd.yaml, or write one with `efpn data synth`"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Fields whose change on resume does not change what the run computes.
RESUME_FREE = frozenset({"resume", "epochs", "max_steps", "val_every", "val_batch_size", "log_every", "workers",
                          "progress", "out", "name", "half_checkpoint"})


def load_train_config(yaml_path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
    """Read a training recipe YAML (keys = :class:`TrainConfig` fields) and apply ``overrides`` on top.

    A relative ``data`` path written in the recipe is resolved against the recipe's folder (a ``data``
    override is taken as given, relative to the working directory). Overrides whose value is None are ignored
    (unset CLI flags). Raises FileNotFoundError for a missing recipe, :class:`~efpn.config.schema.ConfigError`
    (a ValueError) for an unknown key (listing the valid ones), a wrong type, or an invalid value, naming the
    recipe and the key.
    """
    path = Path(yaml_path)
    where = f"training recipe {path}"
    raw = read_yaml(path, "training recipe")
    raw = {} if raw is None else raw
    hints = field_hints(TrainConfig)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(hints))
    if unknown:
        raise ConfigError(f"override: unknown key(s) {unknown}; valid keys: {', '.join(hints)}")
    checked = {k: coerce(v, hints[k], "override", k) for k, v in overrides.items()}
    base = from_mapping(TrainConfig, raw, where)  # every recipe key checked, defaults filled
    values = base.to_dict()
    if isinstance(raw, dict) and raw.get("data") and not Path(str(raw["data"])).is_absolute():
        values["data"] = str((path.resolve().parent / str(raw["data"])).resolve())
    values.update(checked)
    try:
        return TrainConfig(**values)
    except ValueError as e:
        raise ConfigError(f"{where} with overrides: {e}") from e
