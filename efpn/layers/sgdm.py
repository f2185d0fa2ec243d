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

Two execution paths compute the same function (``SGDM.path``; tests/layers/test_sgdm_paths.py holds them equal,
forward and backward, in training and eval mode):

- ``"reference"``: module by module, as written above: every conv, BatchNorm and activation its own pass.
- ``"fast"`` (default): the same arithmetic in fewer memory passes. In eval mode every BatchNorm is folded into
  the conv before it *at call time* (a few microseconds: the folded weights always follow the current
  parameters, so nothing goes stale after an optimiser step or a checkpoint load); on CPU the pointwise MLP
  runs as matrix products on the (N, C, H'*W') view instead of 1x1 convolutions (no layout reorders for small
  C); activations and the static + dynamic sum are applied in place when no gradient is recorded. The dynamic
  branch costs little arithmetic but many passes over (N, C, H', W') tensors, so passes are what it saves.
  (The aggregation itself, shared by both paths, has a hand-written backward: see ``efpn.layers.rdconv``.)
  At inference on CPU (eval mode, no gradient recorded, float32, a shared bank or none) the fast path runs the
  whole dynamic branch — razor, kernel generation, guidance, aggregation — as one native pass
  (:mod:`efpn.layers.native`, compiled on first use; tests/layers/test_sgdm_native.py holds it equal to the
  PyTorch ops, internals included); without a C compiler, or with ``EFPN_NATIVE=0``, it stays on PyTorch.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from efpn.layers import kernel_head, native
from efpn.layers.bn_act import batchnorm_act
from efpn.layers.conv import ActLayer, ConvBNAct, check_nchw, make_act
from efpn.layers.folding import (
    _activate,
    _fold_once,
    _records_grad,
    conv_bn_pair,
    conv_bn_unit,
    foldable,
    pointwise_unit,
)
from efpn.layers.internals import KernelInternals
from efpn.layers.rdconv import (
    Impl,
    RazorKernelGenerator,
    apply_dynamic_kernels,
    check_kernel_size,
    kernel_entropy,
    native_eligible,
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


#: SGDM execution paths (see the module docstring); both compute the same function.
Path = Literal["reference", "fast"]
PATHS: tuple[str, ...] = ("reference", "fast")


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
    n, b, _, h, w = kernels.shape
    lap = _laplacian_operator(kernel_size).to(kernels.device, kernels.dtype)
    # one product over the (k*k, H'*W') planes, then the norm over the taps as a plain sum of squares: reduced
    # along dim 1 of contiguous planes it is vectorised, where norm(dim=2) on the 5-D tensor took ~15x longer
    # (the clamp keeps the gradient finite where K = 0, as norm's is: sqrt's slope is infinite at 0)
    lk = torch.matmul(lap, kernels.reshape(n * b, kk, h * w))  # (N*B, k*k, H'*W')
    return (lk * lk).sum(1).clamp_min(torch.finfo(lk.dtype).tiny).sqrt().view(n, b, h, w)


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
        path: ``"fast"`` (default) or ``"reference"``: how the pointwise MLP, the static branch and their sum are
            executed (same function, see the module docstring); an attribute, switchable at any time
            (:func:`set_sgdm_path`).

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
        path: Path = "fast",
    ):
        super().__init__()
        check_kernel_size(kernel_size, stride)
        if impl not in ("shift", "unfold"):
            raise ValueError(f"impl must be 'shift' or 'unfold', got {impl!r}")
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.path: Path = path
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
        if self._native_ready(x):
            native_out = self._dynamic_native(x, return_internals)  # None without the compiled kernel
            if native_out is not None:
                if not return_internals:
                    return self._merge_fast(native_out, x)  # dyn (N, c_in, H', W')
                dyn, d, kernel = native_out  # D and K: (N, G, k^2, H', W')
                bank = self.bank() if self.bank is not None else None
                return self._merge_fast(dyn, x), KernelInternals(
                    dynamic=d, guided=kernel, bank=bank, entropy=kernel_entropy(d),
                    hf_energy=laplacian_energy(kernel, k))
        if self.path == "fast" and self.training and not return_internals and self.impl == "shift" and (
                self.bank is None or self.shared_bank):
            shared = self.bank() if self.bank is not None else None  # (G, k^2)
            if kernel_head.applies(self.generator.spatial_bn, x, shared, k * k):  # generator + guidance, natively
                # the native kernels read (N, C, H, W) memory: a channels-last x is reordered once here (and its
                # gradient once back) instead of inside each of them, and dyn returns to x's layout for the MLP
                xn = x.contiguous() if native.channels_last(x) else x
                fused = kernel_head.guided_kernels(*self.generator.pre_norm(xn), self.generator.spatial_bn, shared,
                                                   self.eps, self.groups)  # (N, G, k^2, H', W')
                dyn = apply_dynamic_kernels(xn, fused, k, s, self.impl)  # (N, c_in, H', W')
                if xn is not x:
                    dyn = dyn.contiguous(memory_format=torch.channels_last)
                return self._merge_fast(dyn, x)
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
        y = self._merge_fast(dyn, x) if self.path == "fast" else self.act(self.pw(dyn) + self.static(x))
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

    def _native_ready(self, x: Tensor) -> bool:
        """Whether the compiled dynamic branch (:mod:`efpn.layers.native`) computes this call: the fast path in
        eval mode, no gradient recorded, float32 on CPU, a shared bank (or none), and not inside a trace, an ONNX
        export or ``torch.compile`` (which would freeze the foreign call's output into the graph)."""
        return (self.path == "fast" and not self.training and not torch.is_grad_enabled() and native_eligible(x)
                and (self.bank is None or self.shared_bank) and foldable(self.generator.spatial_bn)
                and self.impl == "shift")

    def _dynamic_native(self, x: Tensor, keep_kernels: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor] | None:
        """The dynamic branch ``dyn`` in one native pass (same function as the generator, the guidance and the
        aggregation below), with ``keep_kernels`` also D and K; None when the kernel cannot be built here."""

        gen = self.generator
        n, c = x.shape[:2]
        weight, shift = _fold_once(gen.spatial, gen.spatial_bn)  # (G*k^2, 2, k, k), (G*k^2,)
        logits_c = gen.channel_logits(x.mean((2, 3)))  # (N, G*k^2): per-image tap biases
        bias = logits_c if shift is None else logits_c + shift
        razor_mean = torch.full((c,), 1.0 / c)
        razor_max: Tensor | None = None
        if gen.razor is not None:  # learned razor: a 1x1 C -> 2 added to [mean, max]
            rw = gen.razor.weight.view(2, c)
            razor_mean, razor_max = razor_mean + rw[0], rw[1]
        return native.sgdm_dynamic(x, razor_mean, razor_max, weight, bias,
                                   self.bank() if self.bank is not None else None, self.eps, self.groups,
                                   self.kernel_size, self.stride, keep_kernels)

    def _merge_fast(self, dyn: Tensor, x: Tensor) -> Tensor:
        """``act(pw(dyn) + static(x))`` in fewer passes: (N, c_in, H', W'), (N, c_in, H, W) -> (N, c_out, H', W').

        In eval mode on CPU the pointwise MLP runs as matrix products on the flattened (N, C, H'*W') map (a 1x1
        convolution there reorders small-C tensors into blocked layouts on every call). In training, on GPU and
        on channels-last tensors it runs as convolutions (folded in eval): there the matrix-product backward
        transposes its operands into copies and measured slower on CPU, and cuDNN serves convolutions well.
        """
        n, _, h, w = dyn.shape
        units = list(self.pw) if isinstance(self.pw, nn.Sequential) else [self.pw]
        if dyn.device.type == "cpu" and not self.training and native.channels_last(dyn):
            rows = self._merge_rows(units, dyn, x)
            if rows is not None:
                return rows
        if dyn.device.type == "cpu" and dyn.is_contiguous() and not self.training:
            a = dyn.view(n, self.c_in, h * w)  # (N, c_in, P)
            for unit in units[:-1]:
                a = pointwise_unit(unit, a, (h, w))  # (N, hidden, P)
            accumulated = self._static_plus_last_unit(units[-1], a, x)
            if accumulated is not None:
                return _activate(self.act, accumulated)
            out = pointwise_unit(units[-1], a, (h, w)).view(n, self.c_out, h, w)
        else:
            out = dyn
            for unit in units[:-1]:
                out = conv_bn_unit(unit, out)
            joined = self._join_training(units[-1], out, x)
            if joined is not None:
                return joined
            out = conv_bn_unit(units[-1], out)
        static = conv_bn_unit(self.static, x)  # (N, c_out, H', W')
        out = out + static if _records_grad(out) or _records_grad(static) else out.add_(static)
        return _activate(self.act, out)

    def _join_training(self, last: nn.Module, a: Tensor, x: Tensor) -> Tensor | None:
        """Training: ``act(BN(last.conv(a)) + BN(static.conv(x)))``, both BatchNorms, the sum and the activation in
        one native pass where it applies (:func:`~efpn.layers.bn_act.batchnorm_act`), else as modules on the same
        conv outputs (each conv runs once either way); None when the units are not two conv -> BN pairs."""
        pairs = self._joined_pairs(last) if self.training else None
        if pairs is None:
            return None
        (conv_l, bn_l), (conv_s, bn_s) = pairs
        u, v = conv_l(a), conv_s(x)  # (N, c_out, H', W') each
        fused = batchnorm_act(u, bn_l, self.act, v, bn_s)
        return fused if fused is not None else _activate(self.act, bn_l(u) + bn_s(v))

    def _joined_pairs(self, last: nn.Module) -> tuple[tuple[nn.Conv2d, nn.Module], tuple[nn.Conv2d, nn.Module]] | None:
        """The (conv, norm) pairs of the last pointwise unit and of the static branch, when both are conv -> BN
        units with no activation of their own (SGDM's activation follows their sum); None otherwise."""
        if not all(isinstance(getattr(u, "act", None), (nn.Identity, type(None))) for u in (last, self.static)):
            return None  # an activation before the sum
        pair_last, pair_static = conv_bn_pair(last), conv_bn_pair(self.static)
        return None if pair_last is None or pair_static is None else (pair_last, pair_static)

    def _folded_join(self, last: nn.Module, a: Tensor, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """Eval, no gradient: the last pointwise unit's folded weight (c_out, C) and the static branch's conv output
        (N, c_out, H', W') with both folded biases in it, for ``last(a) + static(x)`` to be finished by one matrix
        product accumulated in place; None when either unit is not a foldable conv -> BN pair (or the last not a
        plain 1x1), or when an in-place product would not be seen or not fit (a gradient, autocast, a trace, an
        export, ``torch.compile``, mixed dtypes)."""
        if (_records_grad(a) or torch.is_autocast_enabled(x.device.type)
                or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()):
            return None  # a trace or an export would not see the in-place product; autocast mixes dtypes
        pairs = self._joined_pairs(last)
        if pairs is None:
            return None
        pair_last, pair_static = pairs
        if (not foldable(pair_last[1]) or not foldable(pair_static[1])
                or pair_last[0].kernel_size != (1, 1) or pair_last[0].groups != 1 or pair_last[0].stride != (1, 1)):
            return None
        w_last, b_last = _fold_once(*pair_last)
        conv, norm = pair_static
        w_static, b_static = _fold_once(conv, norm)
        if not (w_last.dtype == w_static.dtype == a.dtype == x.dtype):
            return None
        bias = b_last if b_static is None else (b_static if b_last is None else b_static + b_last)
        out = F.conv2d(x, w_static, bias, conv.stride, conv.padding, conv.dilation, conv.groups)  # (N, c_out, H', W')
        return w_last.flatten(1), out

    def _static_plus_last_unit(self, last: nn.Module, a: Tensor, x: Tensor) -> Tensor | None:
        """``last(a) + static(x)`` with both BatchNorms folded, in two passes instead of four: the static conv runs
        with the last unit's bias added to its own, then the last 1x1 accumulates into its output in place (a
        matrix product with beta = 1: no broadcast bias copy, no separate sum). ``a`` (N, C, P) -> (N, c_out, H', W');
        None when :meth:`_folded_join` declines or x is not contiguous (then the caller runs them apart)."""
        joined = self._folded_join(last, a, x) if x.is_contiguous() else None
        if joined is None:
            return None
        w_last, out = joined
        n, c_out = out.shape[:2]
        if not out.is_contiguous() or out.shape[2] * out.shape[3] != a.shape[2]:
            raise RuntimeError(f"SGDM: the static branch's output {tuple(out.shape)} does not match the dynamic "
                               f"branch's {a.shape[2]} pixels")  # the module's own shape contract, broken
        out.view(n, c_out, -1).baddbmm_(w_last.expand(n, -1, -1), a)  # += W a, (N, c_out, P)
        return out

    def _merge_rows(self, units: list[nn.Module], dyn: Tensor, x: Tensor) -> Tensor | None:
        """Eval on CPU, channels-last ``dyn`` (N, c_in, H', W') and x: ``act(pw(dyn) + static(x))`` with the MLP as
        matrix products on the rows of the channels-last memory, (N*H'*W', C) @ W^T, the last one accumulated in
        place into the static conv's channels-last output. Nothing is reordered: the convs around SGDM keep the
        layout. None when a unit is not a foldable 1x1 conv -> BN pair (the caller runs the modules)."""
        if _records_grad(dyn) or not native.channels_last(x):
            return None  # _folded_join would decline after the hidden products: decide before them
        n, c, h, w = dyn.shape
        a = dyn.permute(0, 2, 3, 1).reshape(n * h * w, c)  # (N*P, c_in): a view of the channels-last memory
        for unit in units[:-1]:
            pair = conv_bn_pair(unit)
            if (pair is None or not foldable(pair[1]) or pair[0].kernel_size != (1, 1) or pair[0].groups != 1
                    or pair[0].stride != (1, 1)):
                return None
            weight, bias = _fold_once(*pair)
            wt = weight.flatten(1).t()  # (C, C'), a transposed view: the product reads it as is
            a = a @ wt if bias is None else torch.addmm(bias, a, wt)  # (N*P, C')
            act = getattr(unit, "act", None)
            a = a if act is None else _activate(act, a)
        joined = self._folded_join(units[-1], a, x)
        if joined is None:
            return None
        w_last, out = joined  # (c_out, C'), (N, c_out, H', W')
        if out.shape[2:] != dyn.shape[2:]:
            raise RuntimeError(f"SGDM: the static branch's output {tuple(out.shape)} does not match the dynamic "
                               f"branch's {tuple(dyn.shape[2:])} pixels")  # the module's own shape contract, broken
        if not out.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)  # not seen from oneDNN; kept correct anyway
        out.permute(0, 2, 3, 1).view(-1, out.shape[1]).addmm_(a, w_last.t())  # += a W^T on the (N*P, c_out) rows
        return _activate(self.act, out)

    def _unshared_norm(self, d: Tensor, bank: Tensor) -> Tensor:
        n, g, kk, h, w = d.shape
        per_group = bank.abs().view(g, self.c_in // g, kk)  # (G, C/G, k^2)
        return torch.einsum("gjq,ngqhw->ngjhw", per_group, d).reshape(n, self.c_in, h, w)

    def extra_repr(self) -> str:
        return (
            f"{self.c_in}, {self.c_out}, k={self.kernel_size}, stride={self.stride}, groups={self.groups}, "
            f"guided={self.guided}, shared_bank={self.shared_bank}, impl={self.impl}, path={self.path}"
        )


def set_sgdm_path(model: nn.Module, path: Path) -> int:
    """Set the execution path of every SGDM in ``model`` (in place); returns how many were set."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    count = 0
    for module in model.modules():
        if isinstance(module, SGDM):
            module.path = path
            count += 1
    return count


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
