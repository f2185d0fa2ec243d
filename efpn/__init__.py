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
from efpn.inspect import Inspection, inspect
from efpn.models.detector import Detector
from efpn.models.profile import count_gflops, count_params
from efpn.zoo import MAIN_PRESETS, PRESETS, build, build_model, get_config

__version__ = "0.1.0"


def load_model(path: str, device: str = "cpu") -> Detector:
    """Load a checkpoint (``.safetensors`` + JSON model card) in eval mode; never unpickles weights."""
    from efpn.engine.checkpoint import load_model as _load

    return _load(path, device=device)


__all__ = [
    "BackboneConfig",
    "CEMConfig",
    "Detector",
    "FBSMConfig",
    "HeadConfig",
    "Inspection",
    "LossConfig",
    "MAIN_PRESETS",
    "ModelConfig",
    "NeckConfig",
    "PRESETS",
    "PostprocessConfig",
    "SGDMConfig",
    "build",
    "build_model",
    "count_gflops",
    "count_params",
    "get_config",
    "inspect",
    "load_model",
]
