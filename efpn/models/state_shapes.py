"""A model's state_dict compared with stored tensors by key and shape, before either is held in memory.

A model card is a few KB of JSON a person may edit; its config decides how large the rebuilt model is. Built for
real, a card edited to ``neck.channels: 20000`` allocates gigabytes before the weights could show it does not
match them. :func:`efpn.checkpoint.load_model` therefore first builds the model on PyTorch's ``meta`` device (shapes
only, no memory: :func:`meta_state_dict`) and compares it with the shapes in the safetensors header
(:func:`read_header`, which reads no tensor data) through :func:`check_state_dict`, the same comparison that runs
on the real tensors afterwards (and on a resumed run's state, :mod:`efpn.engine.train`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from efpn.config import short
from efpn.storage import INT8_SCALE_PREFIX

C = TypeVar("C")

__all__ = ["check_state_dict", "meta_state_dict", "read_header", "stand_ins"]


def _describe(keys: list[str], limit: int = 10) -> str:
    """At most ``limit`` of ``keys``, each at most about 120 characters (keys come from the file), and how many
    more there are."""
    more = f", ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(k if len(k) <= 120 else short(k, 120) for k in keys[:limit]) + more


def check_state_dict(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], strict: bool = True
) -> list[str]:
    """Compare checkpoint tensors ``found`` with a model's ``expected`` state_dict.

    Returns one line per problem (missing keys, unexpected keys, shape or dtype-kind mismatches); with
    ``strict=False`` missing/unexpected keys are tolerated but mismatches are still reported. Only shapes and
    dtypes are read, so ``meta`` tensors compare as well as real ones.
    """
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if strict and missing:
        problems.append(f"missing from the weights ({len(missing)}): {_describe(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected in the weights ({len(unexpected)}): {_describe(unexpected)}")
    mismatched = []
    for key in sorted(set(expected) & set(found)):
        e, f = expected[key], found[key]
        if e.shape != f.shape:
            mismatched.append(f"{key} weights {tuple(f.shape)} vs model {tuple(e.shape)}")
        elif e.is_floating_point() != f.is_floating_point():
            mismatched.append(f"{key} weights {f.dtype} vs model {e.dtype}")
    if mismatched:
        problems.append(f"shape/dtype mismatch ({len(mismatched)}): {_describe(mismatched)}")
    return problems


def read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """``(metadata, {stored key: shape})`` of a safetensors file, from its header alone (no tensor data is read).

    Raises what :func:`safetensors.safe_open` raises for an unreadable file (``SafetensorError``, ``OSError``).
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return dict(f.metadata() or {}), {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def meta_state_dict(build: Callable[[C], nn.Module], config: C) -> dict[str, torch.Tensor] | None:
    """The state_dict ``build(config)`` would have, as ``meta`` tensors (shapes and dtypes, no memory), or None
    when ``build`` cannot build on the meta device.

    Building there costs the same whatever the sizes in ``config``; every zoo preset builds there.
    """
    try:
        with torch.device("meta"):
            model = build(config)
        return {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    except Exception:  # a custom builder that loads or computes with real data while building: built for real, as
        return None  # before; a config it rejects is rejected again by that build, with the builder's own error


def stand_ins(shapes: Mapping[str, tuple[int, ...]], like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta tensors of the stored ``shapes`` as the state_dict will hold them, for :func:`check_state_dict`.

    int8 scale entries are left out (an int8 weight keeps its float shape and is restored to it); each tensor
    takes the dtype of its entry in ``like`` (float32 when there is none), so only shapes and keys are compared
    here: dtypes and the scales are checked on the real tensors.
    """
    return {k: torch.empty(s, dtype=like[k].dtype if k in like else torch.float32, device="meta")
            for k, s in shapes.items() if not k.startswith(INT8_SCALE_PREFIX)}
