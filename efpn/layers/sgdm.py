"""SGDM — Static-Guided Dynamic Module (SPEC §6), a drop-in for a stride-2 3x3 ``ConvBNAct``.

    D   = RazorKernelGenerator(x)                  (N, G, k*k, H', W')  per-pixel softmax kernels (RDConv)
    S_g = W_sq + pad(W_h) + pad(W_v)               (G, k*k)             static asymmetric skeleton per group
    K_p = S_g * D_p / (sum_q |S_g * D_p| + eps)    (N, G, k*k, H', W')  static-guided kernel, sum |K_p| < 1
    dyn = sum_q K_p[q] * x[s*p + q]                (N, c_in, H', W')    aggregated at the output resolution
    y   = act(BN(pw(dyn)) + static(x))             (N, c_out, H', W')   static = the conv SGDM replaces

Design choices [design] and their reasons:

- The aggregation runs on ``c_in`` and directly at stride ``s`` (only output pixels are computed), so the
  dynamic branch costs ``c_in * k^2`` multiply-adds per output pixel, far below the static conv's
  ``c_in * c_out * k^2``.
- ``pw`` is a pointwise inverted bottleneck ``c_in -> e*c_in -> c_out`` (ConvNeXt-style: spatial mixing
  first, then a channel MLP at the output resolution; ``expansion=None`` gives the SPEC's single 1x1). The MLP
  carries nearly all of SGDM's extra parameters; ``expansion=2.75`` puts the overhead at the paper's budget
  (+0.33 M over the six YOLOv5n stride-2 convs, +0.19 M over the four YOLOv8n backbone ones; see
  :func:`sgdm_overhead` and tests/layers/test_sgdm.py) while its FLOPs stay ~1.5x the replaced conv's.
- The static bank starts as a uniform box (``W_sq = 1/k^2``, ``W_h = W_v = 0``), for which ``K = D``:
  training starts as plain RDConv and learns the guiding skeleton (as CEM starts as the FPN with alpha = 0).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efpn.layers.conv import ActLayer, ConvBNAct, check_nchw, make_act
from efpn.layers.internals import KernelInternals
from efpn.layers.rdconv import (
    Impl,
    RazorKernelGenerator,
    apply_dynamic_kernels,
    check_kernel_size,
    kernel_entropy,
)


class StaticBank(nn.Module):
    """``n_banks`` static asymmetric kernels (ACNet-style): ``S = W_sq + pad(W_h) + pad(W_v)`` (n_banks, k*k).

    ``W_sq`` (n, k, k) square, ``W_h`` (n, 1, k) horizontal (on the middle row), ``W_v`` (n, k, 1) vertical
    (middle column). One bank per group shares it across the group's channels; one per channel is the
    unshared ablation. Parameters: ``n_banks * (k^2 + 2k)``.
    """

    def __init__(self, n_banks: int, kernel_size: int = 3):
        super().__init__()
        k = kernel_size
        self.kernel_size = k
        # uniform box + zero bars: S is constant, so K = D at initialisation (see module docstring)
        self.square = nn.Parameter(torch.full((n_banks, k, k), 1.0 / (k * k)))
        self.horizontal = nn.Parameter(torch.zeros(n_banks, 1, k))
        self.vertical = nn.Parameter(torch.zeros(n_banks, k, 1))

    def forward(self) -> Tensor:
        c = self.kernel_size // 2
        s = (
            self.square
            + F.pad(self.horizontal, (0, 0, c, c))  # (n, 1, k) -> (n, k, k), middle row
            + F.pad(self.vertical, (c, c, 0, 0))  # (n, k, 1) -> (n, k, k), middle column
        )
        return s.flatten(1)  # (n_banks, k*k)

    def extra_repr(self) -> str:
        return f"n_banks={self.square.shape[0]}, k={self.kernel_size}"


def guide_kernels(dynamic: Tensor, bank: Tensor, eps: float = 1e-6) -> Tensor:
    """``K = S ⊙ D / (Σ_q |S ⊙ D| + eps)``: (N, G, k*k, H', W') x (G, k*k) -> (N, G, k*k, H', W').

    The static bank modulates every per-pixel kernel by the same structural prior; the L1 normalisation
    bounds each kernel's energy (``Σ_q |K_p[q]| < 1``), so the dynamic branch cannot amplify noise however
    sharp D gets.
    """
    if dynamic.dim() != 5 or bank.dim() != 2 or bank.shape != dynamic.shape[1:3]:
        raise ValueError(
            f"guide_kernels: need dynamic (N, G, k*k, H', W') and bank (G, k*k) with matching G and k*k, "
            f"got {tuple(dynamic.shape)} and {tuple(bank.shape)}"
        )
    sd = dynamic * bank[None, :, :, None, None]  # (N, G, k^2, H', W')
    return sd / (sd.abs().sum(2, keepdim=True) + eps)


@functools.lru_cache(maxsize=8)
def _laplacian_operator(kernel_size: int) -> Tensor:
    """(k*k, k*k) matrix applying the 5-point Laplacian with zero boundary to a row-major k x k kernel."""
    k = kernel_size
    lap = torch.zeros(k * k, k * k)
    for i in range(k):
        for j in range(k):
            p = i * k + j
            lap[p, p] = -4.0
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                if 0 <= i + di < k and 0 <= j + dj < k:
                    lap[p, (i + di) * k + j + dj] = 1.0
    return lap


def laplacian_energy(kernels: Tensor, kernel_size: int) -> Tensor:
    """High-frequency energy ``||Δ K_p||_2`` of per-pixel kernels: (N, B, k*k, H', W') -> (N, B, H', W').

    Δ is the 5-point Laplacian with zero padding; a constant (box) kernel only has energy at its border, a
    checkerboard kernel has the most. Divide kernels by their L1 norm first to compare shapes, not magnitudes.
    """
    kk = kernel_size * kernel_size
    if kernels.dim() != 5 or kernels.shape[2] != kk:
        raise ValueError(f"laplacian_energy: need kernels (N, B, {kk}, H', W'), got {tuple(kernels.shape)}")
    lap = _laplacian_operator(kernel_size).to(kernels.device, kernels.dtype)
    return torch.einsum("pq,nbqhw->nbphw", lap, kernels).norm(dim=2)


class SGDM(nn.Module):
    """Static-guided dynamic downsampling: (N, c_in, H, W) -> (N, c_out, H', W'), ``H' = ceil(H / stride)``.

    Same interface and output shape as ``ConvBNAct(c_in, c_out, kernel_size, stride)``; the static branch is
    that conv (without its activation, attribute ``static``); the dynamic branch joins it before the act.

    Args:
        groups: kernel groups G over ``c_in`` (None: 8, or ``max(1, c_in // 16)`` when c_in < 128).
        guided: False drops the static bank and applies D directly (plain RDConv + pw).
        shared_bank: False gives every input channel its own static bank (unshared ablation); the bank and the
            guided kernel are then per channel, (c_in, k*k) and (N, c_in, k*k, H', W').
        expansion: hidden width ``round(expansion * c_in)`` of the pointwise MLP; None: one 1x1 c_in -> c_out.
        impl: aggregation path, ``"shift"`` (memory-linear) or ``"unfold"`` (reference).
        static: the static branch, when it is given (a pretrained stride-2 conv with its BatchNorm, no activation,
            mapping c_in -> c_out at ``stride``); default a fresh k x k ConvBNAct.
        zero_init_dynamic: start the dynamic branch's output at zero (y = act(static(x))), to wrap pretrained convs.

    ``forward(x, return_internals=True)`` returns ``(y, KernelInternals)``: D (N, G, k*k, H', W'), softmax over
    k*k; K (N, G or c_in, k*k, H', W'), the kernel actually applied (D when unguided); S (G or c_in, k*k), only
    when guided; the entropy of D (N, G, H', W') and the Laplacian norm of K (N, G or c_in, H', W').
    """

    exposes_internals = True

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int = 3,
        stride: int = 2,
        groups: int | None = None,
        guided: bool = True,
        shared_bank: bool = True,
        act_layer: ActLayer = nn.SiLU,
        expansion: float | None = 2.75,
        learned_razor: bool = False,
        impl: Impl = "shift",
        eps: float = 1e-6,
        static: nn.Module | None = None,
        zero_init_dynamic: bool = False,
    ):
        super().__init__()
        check_kernel_size(kernel_size, stride)
        if impl not in ("shift", "unfold"):
            raise ValueError(f"impl must be 'shift' or 'unfold', got {impl!r}")
        self.c_in, self.c_out = c_in, c_out
        self.kernel_size, self.stride = kernel_size, stride
        self.guided, self.shared_bank = guided, shared_bank
        self.impl: Impl = impl
        self.eps = eps
        self.generator = RazorKernelGenerator(c_in, kernel_size, stride, groups, learned_razor)
        self.groups = self.generator.groups
        self.bank = StaticBank(self.groups if shared_bank else c_in, kernel_size) if guided else None
        if expansion is None:
            self.pw: nn.Module = ConvBNAct(c_in, c_out, 1, act_layer=None)
        else:
            hidden = max(1, round(expansion * c_in))
            self.pw = nn.Sequential(
                ConvBNAct(c_in, hidden, 1, act_layer=act_layer),
                ConvBNAct(hidden, c_out, 1, act_layer=None),
            )
        # the static branch: the k x k conv SGDM replaces, or a given (e.g. pretrained) one with the same contract
        self.static = static if static is not None else ConvBNAct(c_in, c_out, kernel_size, stride, act_layer=None)
        self.act = make_act(act_layer)
        if zero_init_dynamic:
            # the dynamic branch's last BatchNorm starts at gamma 0: y = act(static(x)) exactly, so wrapping a
            # pretrained conv starts training from the pretrained network; gamma learns from the first step
            last = self.pw[-1] if isinstance(self.pw, nn.Sequential) else self.pw
            nn.init.zeros_(last.bn.weight)

    def forward(self, x: Tensor, return_internals: bool = False) -> Tensor | tuple[Tensor, KernelInternals]:
        check_nchw(x, self.c_in, type(self).__name__)
        k, s = self.kernel_size, self.stride
        d = self.generator(x)  # (N, G, k^2, H', W'), softmax over k^2
        bank: Tensor | None = None
        kernel: Tensor | None = None  # the applied kernel, when it exists as one tensor
        if self.bank is None:
            kernel = d
            dyn = apply_dynamic_kernels(x, d, k, s, self.impl)  # (N, c_in, H', W')
        elif self.shared_bank:
            bank = self.bank()  # (G, k^2)
            kernel = guide_kernels(d, bank, self.eps)  # (N, G, k^2, H', W')
            dyn = apply_dynamic_kernels(x, kernel, k, s, self.impl)
        else:
            bank = self.bank()  # (c_in, k^2)
            # K[c] = S[c] ⊙ D[g(c)] / (Σ_q |S[c] ⊙ D[g(c)]| + eps) without materialising the per-channel
            # (N, c_in, k^2, H', W') kernel: D >= 0, so the normaliser is Σ_q |S[c, q]| D[g(c), q], a map
            norm = self._unshared_norm(d, bank)  # (N, c_in, H', W')
            dyn = apply_dynamic_kernels(x, d, k, s, self.impl, channel_weights=bank) / (norm + self.eps)
        y = self.act(self.pw(dyn) + self.static(x))  # (N, c_out, H', W')
        if not return_internals:
            return y
        if kernel is None:  # unshared bank: build the per-channel K only for inspection
            assert bank is not None
            n, g, kk, h, w = d.shape
            sd = bank.view(1, g, self.c_in // g, kk, 1, 1) * d.unsqueeze(2)  # (N, G, C/G, k^2, H', W')
            kernel = sd.reshape(n, self.c_in, kk, h, w) / (norm.unsqueeze(2) + self.eps)
        return y, KernelInternals(
            dynamic=d, guided=kernel, bank=bank, entropy=kernel_entropy(d), hf_energy=laplacian_energy(kernel, k)
        )

    def _unshared_norm(self, d: Tensor, bank: Tensor) -> Tensor:
        n, g, kk, h, w = d.shape
        per_group = bank.abs().view(g, self.c_in // g, kk)  # (G, C/G, k^2)
        return torch.einsum("gjq,ngqhw->ngjhw", per_group, d).reshape(n, self.c_in, h, w)

    def extra_repr(self) -> str:
        return (
            f"{self.c_in}, {self.c_out}, k={self.kernel_size}, stride={self.stride}, groups={self.groups}, "
            f"guided={self.guided}, shared_bank={self.shared_bank}, impl={self.impl}"
        )


def num_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def sgdm_overhead(c_in: int, c_out: int, **kwargs: object) -> int:
    """Parameters ``SGDM(c_in, c_out, **kwargs)`` adds over the ``ConvBNAct(c_in, c_out, k, s)`` it replaces.

    Built on the meta device, so it is instant for any width.
    """
    k = int(kwargs.get("kernel_size", 3))  # type: ignore[arg-type]
    s = int(kwargs.get("stride", 2))  # type: ignore[arg-type]
    with torch.device("meta"):
        sgdm = SGDM(c_in, c_out, **kwargs)  # type: ignore[arg-type]
        plain = ConvBNAct(c_in, c_out, k, s)
    return num_params(sgdm) - num_params(plain)
