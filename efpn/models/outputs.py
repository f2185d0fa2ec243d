"""Typed results of a detector's forward: what :meth:`efpn.models.Detector.run` returns.

Every internal the studio, the explainers and the exporter need is a named field here, so no code outside
``efpn/models`` reaches into the backbone, neck, head or decoder. Tensors keep the batch dimension N and stay in
the autograd graph when the caller runs with gradients (attribution, gradient reach); callers that only look
detach and copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from efpn.det.priors import Priors
from efpn.layers.internals import CEMInternals, GateInternals, KernelInternals
from efpn.models.criterion import CriterionStats
from efpn.models.heads import HeadOutput

#: Detections of one image: ``boxes`` (D, 4) xyxy input px, ``scores`` (D,), ``labels`` (D,) int64,
#: ``levels`` (D,) int64 index into ``Detector.levels``.
Detections = dict[str, Tensor]


@dataclass(frozen=True)
class KernelLayer:
    """One dynamic-convolution layer in place: its ``name`` (e.g. ``"c3.down"``, ``"pan.down3"``), the ``stride`` of
    its output in input pixels, and its per-pixel ``kernels``."""

    name: str
    stride: int
    kernels: KernelInternals


@dataclass
class NeckInternals:
    """What a neck reveals: the FPN's own levels before CEM/FBSM (``fpn``), CEM per target level, FBSM per gated
    level, and the kernels of dynamic layers inside the neck (PAN downsampling). Absent parts are empty dicts."""

    fpn: dict[str, Tensor] = field(default_factory=dict)
    cem: dict[str, CEMInternals] = field(default_factory=dict)
    gates: dict[str, GateInternals] = field(default_factory=dict)
    kernels: dict[str, KernelLayer] = field(default_factory=dict)


@dataclass(frozen=True)
class LevelRun:
    """One pyramid level the head reads.

    ``features`` (N, C, H, W): what the head reads (after CEM and FBSM); ``before_cem``: the neck's own output
    (equal to ``features`` without CEM/FBSM); ``cem``: CEM's term and α here (None where CEM does not act);
    ``gate``: the FBSM gate (None where there is none); ``gate_target`` (N, 1, H, W): the rasterised GT boxes
    the gate is trained towards, when targets were given and the level is gated. ``stride`` in input px.
    """

    name: str
    stride: int
    features: Tensor
    before_cem: Tensor
    cem: CEMInternals | None = None
    gate: GateInternals | None = None
    gate_target: Tensor | None = None


@dataclass
class DetectorRun:
    """Everything one forward produced (see :meth:`efpn.models.Detector.run` for which parts are filled).

    ``input_hw``: the images' size before padding; ``backbone``: ``{c*: (N, C, H, W)}``; ``levels``: per pyramid
    level the head reads, in :attr:`Detector.levels` order; ``kernels``: per dynamic layer (backbone and neck);
    ``head``: raw per-prior predictions; ``priors``; ``decoded``: ``(boxes (N, R, 4) input px, scores (N, R, K))``
    for every prior; ``detections``: per image after threshold and NMS; ``losses`` / ``stats``: with targets.
    """

    input_hw: tuple[int, int]
    backbone: dict[str, Tensor]
    levels: dict[str, LevelRun]
    kernels: dict[str, KernelLayer]
    head: HeadOutput
    priors: Priors
    decoded: tuple[Tensor, Tensor] | None = None
    detections: list[Detections] | None = None
    losses: dict[str, Tensor] | None = None
    stats: CriterionStats | None = None

    @property
    def pyramid(self) -> dict[str, Tensor]:
        """``{level: features}``: the pyramid exactly as the head read it."""
        return {lv: r.features for lv, r in self.levels.items()}
