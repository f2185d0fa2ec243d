"""Building blocks: the YOLO conv unit, the novel modules (CEM, FBSM, RDConv, SGDM) and CBAM to compare.

Every novel block has ``forward(..., return_internals=False)``; with ``True`` it returns ``(out, internals)``,
``internals`` a typed dataclass of :mod:`efpn.layers.internals`.
"""

from efpn.layers.cbam import CBAM, CBAMDown
from efpn.layers.cem import CEM
from efpn.layers.conv import ConvBNAct, autopad, check_nchw
from efpn.layers.fbsm import FBSM, box_mask_target, gate_mass_inside
from efpn.layers.internals import AttentionInternals, CEMInternals, GateInternals, KernelInternals
from efpn.layers.rdconv import (
    RazorKernelGenerator,
    RDConv,
    apply_dynamic_kernels,
    kernel_entropy,
    resolve_groups,
)
from efpn.layers.sgdm import SGDM, StaticBank, guide_kernels, laplacian_energy, num_params, sgdm_overhead

__all__ = [
    "AttentionInternals",
    "CBAM",
    "CBAMDown",
    "CEM",
    "CEMInternals",
    "ConvBNAct",
    "FBSM",
    "GateInternals",
    "KernelInternals",
    "RDConv",
    "RazorKernelGenerator",
    "SGDM",
    "StaticBank",
    "apply_dynamic_kernels",
    "autopad",
    "box_mask_target",
    "check_nchw",
    "gate_mass_inside",
    "guide_kernels",
    "kernel_entropy",
    "laplacian_energy",
    "num_params",
    "resolve_groups",
    "sgdm_overhead",
]
