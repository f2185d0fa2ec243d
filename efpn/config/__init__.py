"""Configuration: the one place model, data and training settings are described and read.

Typed, frozen dataclasses (:mod:`.model`, :mod:`.train`, :mod:`.data`) filled from YAML/JSON mappings by one
validating walker (:mod:`.schema`), whose errors name the file, the key and what is accepted.
"""

from efpn.config.model import (
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
from efpn.config.schema import ConfigError, from_mapping, read_yaml, short
from efpn.config.train import RESUME_FREE, TrainConfig, load_train_config

__all__ = [
    "RESUME_FREE",
    "BackboneConfig",
    "CEMConfig",
    "ConfigError",
    "FBSMConfig",
    "HeadConfig",
    "LossConfig",
    "ModelConfig",
    "NeckConfig",
    "PostprocessConfig",
    "SGDMConfig",
    "TrainConfig",
    "from_mapping",
    "load_train_config",
    "read_yaml",
    "short",
]
