"""efpn — tiny-object detection you can see inside.

Detectors of two papers (E-FPN-BS: CEM, FBSM, DCLoss; RDConv/SGDM), their baselines, label assignment with
per-level positive accounting, losses, data formats, training, evaluation with tiny-object size splits, and
one-call inspection of every internal. Quick start::

    import efpn
    model = efpn.build_model("efpn_n", num_classes=1).eval()      # or efpn.load_model("checkpoints/x.safetensors")
    view = efpn.inspect(model, "image.jpg")                          # detections + every internal, named
    print(view.detections["boxes"], view.gates.keys(), view.kernels.keys())
"""

from __future__ import annotations

import efpn._limits  # noqa: F401 - first: sets OpenCV's decoding limit, read once when cv2 loads
from efpn.checkpoint import CheckpointError, list_checkpoints, read_card, save_checkpoint
from efpn.checkpoint import load_model as _load_model
from efpn.config import (
    BackboneConfig,
    CEMConfig,
    FBSMConfig,
    HeadConfig,
    LossConfig,
    ModelConfig,
    NeckConfig,
    PostprocessConfig,
    SGDMConfig,
)
from efpn.explain import Inspection, inspect
from efpn.models.detector import Detector
from efpn.models.profile import count_gflops, count_params
from efpn.runtime import freeze_long_lived_objects, keep_freed_memory
from efpn.vocab import (
    BUCKET_EDGES,
    BUCKET_LABELS,
    BUCKETS,
    LEVEL_COLOURS,
    box_size,
    level_colour,
    level_stride,
    size_bucket,
)
from efpn.zoo import MAIN_PRESETS, PRESETS, build, build_model, get_config

__version__ = "0.1.0"


def load_model(path: str, device: str = "cpu") -> Detector:
    """Load a checkpoint (``.safetensors`` + JSON model card) in eval mode; never unpickles weights."""
    return _load_model(path, device=device)


__all__ = [
    "BUCKETS",
    "BUCKET_EDGES",
    "BUCKET_LABELS",
    "BackboneConfig",
    "CEMConfig",
    "CheckpointError",
    "Detector",
    "FBSMConfig",
    "HeadConfig",
    "Inspection",
    "LEVEL_COLOURS",
    "LossConfig",
    "MAIN_PRESETS",
    "ModelConfig",
    "NeckConfig",
    "PRESETS",
    "PostprocessConfig",
    "SGDMConfig",
    "box_size",
    "build",
    "build_model",
    "count_gflops",
    "count_params",
    "freeze_long_lived_objects",
    "get_config",
    "inspect",
    "keep_freed_memory",
    "level_colour",
    "level_stride",
    "list_checkpoints",
    "load_model",
    "read_card",
    "save_checkpoint",
    "size_bucket",
]
