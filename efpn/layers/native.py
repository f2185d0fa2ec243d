"""Native CPU kernels, compiled on first use with the system's C compiler and loaded with ctypes.

Kernels of ``native/sgdm_dynamic.c``, ``native/aggregate.c``, ``native/bn_act.c`` and ``native/kernel_head.c`` (one
library; headers ``native/vexp.h``, a vectorised e^x, and ``native/stats.h``, BatchNorm's batch statistics):

- SGDM's dynamic branch at inference (:func:`sgdm_dynamic`): the razor map, the per-pixel kernel logits, their
  softmax, the static guidance and the strided aggregation in one pass over bands of output rows, where the PyTorch
  path makes a dozen passes over (N, G, k*k, H', W') and (N, C, H', W') tensors. It computes the same function as
  ``RazorKernelGenerator`` + ``guide_kernels`` + ``apply_dynamic_kernels`` in eval mode, without autograd
  (tests/layers/test_sgdm_native.py holds them equal); ``SGDM`` calls it only when no gradient is recorded.
- For training (:func:`aggregate`, :func:`aggregate_backward`, :func:`razor_backward`): the shift aggregation on
  given kernels and its backward in one pass each (no polyphase copies of x, no per-tap temporaries), and the razor
  statistics' backward in one pass (PyTorch needs five over (N, C, H, W)); rdconv's autograd Functions call them for
  float32 CPU tensors (tests/layers/test_native_train.py holds them equal to the PyTorch arithmetic).
- SGDM's kernel generator in training (:func:`razor_forward`, :func:`kernel_head_forward`,
  :func:`kernel_head_backward`): the razor statistics in one read of x, and the BatchNorm (batch statistics), the
  channel logits, the softmax and the static guidance in three passes forward and two backward, where PyTorch runs
  about a dozen operators each way; :mod:`efpn.layers.kernel_head` wraps them in an autograd Function
  (tests/layers/test_kernel_head.py holds them equal to the modules).
- BatchNorm on batch statistics + SiLU, optionally of the sum of two BatchNorms (:func:`bn_act_forward`,
  :func:`bn_act_backward`): a YOLO Conv unit's and SGDM's join in training, in three passes forward and two backward
  where PyTorch's operators take about ten; :mod:`efpn.layers.bn_act` wraps them in an autograd Function.

The library is built once per source, compiler and CPU into ``$EFPN_NATIVE_CACHE`` (default
``~/.cache/efpn/native``) with ``-O3 -march=native`` (about a second). Without a C compiler, or with
``EFPN_NATIVE=0``, :func:`sgdm_library` returns None and SGDM stays on its PyTorch path (a warning says why, once).
Chunks of rows run in parallel on PyTorch's OpenMP threads (see :data:`CFLAGS`); ctypes releases the GIL meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

_DIR = Path(__file__).resolve().parent / "native"
#: Compiled together into one library; every file of the folder (the header too) keys the cached build.
SOURCES = (_DIR / "sgdm_dynamic.c", _DIR / "aggregate.c", _DIR / "bn_act.c", _DIR / "kernel_head.c")
HEADERS = (_DIR / "vexp.h", _DIR / "stats.h")
#: Compiler flags: no -ffast-math (a shared library built with it can switch the whole process to flush denormals).
#: -fopenmp: the library links libgomp.so.1, which resolves to the one PyTorch already loaded (same soname), so
#: its parallel loops run on PyTorch's own threads (torch.set_num_threads applies) instead of a competing pool.
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared", "-std=c11")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed: str | None = None

_f32p = ctypes.POINTER(ctypes.c_float)


_thread = threading.local()  # per-thread switch of :func:`switched_off` (a studio serves sessions in threads)


def enabled() -> bool:
    """False when ``EFPN_NATIVE=0`` (or ``false``/``no``/``off``) switches the native kernels off, or inside
    :func:`switched_off` on this thread."""
    if getattr(_thread, "off", False):
        return False
    return os.environ.get("EFPN_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def switched_off() -> Iterator[None]:
    """The PyTorch path for every call of this thread inside the ``with`` (same function): e.g. to count FLOPs, which
    a counter cannot see inside a foreign call."""
    before = getattr(_thread, "off", False)
    _thread.off = True
    try:
        yield
    finally:
        _thread.off = before


def _cache_dir() -> Path:
    return Path(os.environ.get("EFPN_NATIVE_CACHE") or Path.home() / ".cache" / "efpn" / "native")


def _cpu_model() -> str:
    """The CPU's model and instruction-set flags (a library built with -march=native runs only where they match)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        picked = [next((ln for ln in lines if ln.startswith(key)), "") for key in ("model name", "flags")]
        if any(picked):
            return "\n".join(picked)
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(cc: str) -> Path:
    src = b"".join(f.read_bytes() for f in (*SOURCES, *HEADERS))
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[:1]
    key = hashlib.sha256(src + repr((CFLAGS, version, _cpu_model())).encode()).hexdigest()[:16]
    out = _cache_dir() / f"sgdm_dynamic-{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # built aside, then renamed: other processes never
        part = Path(tmp) / out.name                              # load a half-written library
        res = subprocess.run([cc, *CFLAGS, "-o", str(part), *map(str, SOURCES), "-lm"], capture_output=True, text=True,
                             timeout=300)
        if res.returncode != 0:  # e.g. a compiler without OpenMP (Apple clang): built single-threaded instead
            serial = [f for f in CFLAGS if f != "-fopenmp"]
            res = subprocess.run([cc, *serial, "-o", str(part), *map(str, SOURCES), "-lm"], capture_output=True,
                                 text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed: {res.stderr.strip()[:500]}")
        os.replace(part, out)
    return out


def sgdm_library() -> ctypes.CDLL | None:
    """The compiled SGDM kernel, built on first call; None when disabled or when it cannot be built (warned once)."""
    global _lib, _failed
    if not enabled():
        return None
    if _lib is not None or _failed is not None:
        return _lib
    with _lock:
        if _lib is None and _failed is None:
            cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
            try:
                if cc is None:
                    raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
                lib = ctypes.CDLL(str(_build(cc)))
                lib.efpn_sgdm_dynamic.restype = ctypes.c_int
                lib.efpn_sgdm_dynamic.argtypes = [  # x, nhwc, N, C, H, W, wa, wb, ws, bias, bank, eps, G, k, s,
                    _f32p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,  # Ho, Wo, out, D, K
                    _f32p, _f32p, _f32p, _f32p, _f32p, ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                    ctypes.c_int, ctypes.c_int, _f32p, _f32p, _f32p]
                i = ctypes.c_int
                lib.efpn_aggregate.restype = i
                lib.efpn_aggregate.argtypes = [_f32p, _f32p, i, i, i, i, i, i, i, i, i, _f32p]
                lib.efpn_aggregate_backward.restype = i
                lib.efpn_aggregate_backward.argtypes = [_f32p, _f32p, _f32p, i, i, i, i, i, i, i, i, i, _f32p, _f32p]
                lib.efpn_razor_backward.restype = i
                lib.efpn_razor_backward.argtypes = [_f32p, _f32p, _f32p, _f32p, i, i, i, i, _f32p]
                f, lg = ctypes.c_float, ctypes.c_long
                lib.efpn_bn_act_forward.restype = i
                lib.efpn_bn_act_forward.argtypes = [_f32p, _f32p, i, i, lg, _f32p, _f32p, _f32p, _f32p, f, f, i,
                                                    _f32p, _f32p, _f32p, _f32p, _f32p]
                lib.efpn_bn_act_backward.restype = i
                lib.efpn_bn_act_backward.argtypes = [_f32p, _f32p, _f32p, i, i, lg, *[_f32p] * 8, i, *[_f32p] * 6]
                lib.efpn_bn_act_forward_nhwc.restype = i
                lib.efpn_bn_act_forward_nhwc.argtypes = [_f32p, _f32p, lg, i, _f32p, _f32p, _f32p, _f32p, f, f, i,
                                                         _f32p, _f32p, _f32p, _f32p, _f32p]
                lib.efpn_bn_act_backward_nhwc.restype = i
                lib.efpn_bn_act_backward_nhwc.argtypes = [_f32p, _f32p, _f32p, lg, i, *[_f32p] * 8, i,
                                                          *[_f32p] * 6]
                lib.efpn_razor_forward.restype = i
                lib.efpn_razor_forward.argtypes = [_f32p, i, i, lg, _f32p, _f32p]
                lib.efpn_kernel_head_forward.restype = i
                lib.efpn_kernel_head_forward.argtypes = [_f32p, i, i, i, lg, _f32p, _f32p, f, _f32p, _f32p, f,
                                                         *[_f32p] * 4]
                lib.efpn_kernel_head_backward.restype = i
                lib.efpn_kernel_head_backward.argtypes = [_f32p, _f32p, _f32p, i, i, i, lg, *[_f32p] * 4, f,
                                                          *[_f32p] * 5]
                _lib = lib
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _failed = str(e)
                warnings.warn(f"efpn: the native SGDM kernel is unavailable ({_failed}); SGDM runs its PyTorch "
                              "path (same results, slower on CPU). Install a C compiler to use it, or set "
                              "EFPN_NATIVE=0 to silence this.", RuntimeWarning, stacklevel=2)
    return _lib


def _ptr(t: Tensor | None) -> ctypes._Pointer | None:
    return None if t is None else ctypes.cast(t.data_ptr(), _f32p)


def sgdm_dynamic(
    x: Tensor,
    razor_mean: Tensor,
    razor_max_extra: Tensor | None,
    spatial_weight: Tensor,
    bias: Tensor,
    bank: Tensor | None,
    eps: float,
    groups: int,
    kernel_size: int,
    stride: int,
    keep_kernels: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor] | None:
    """SGDM's dynamic branch ``dyn`` (N, C, H', W') from x (N, C, H, W), float32 on CPU, no autograd; ``dyn`` has
    x's memory layout when that is channels-last (:func:`channels_last`), else it is contiguous.

    Args:
        razor_mean: (C,) weights of the first razor channel (``1/C``, plus a learned 1x1's first row).
        razor_max_extra: (C,) the learned 1x1's second row added to the channel max, or None.
        spatial_weight: (G*k*k, 2, k, k) the razor conv with its BatchNorm folded in.
        bias: (N, G*k*k) per image: the folded BatchNorm's shift plus the channel branch's logits.
        bank: (G, k*k) the shared static bank, or None (unguided: K = D).
        keep_kernels: also return D and the applied kernel K, each (N, G, k*k, H', W') (K is D when unguided),
            for inspection: ``(dyn, D, K)``.
    Returns None when the library is unavailable (the caller runs its PyTorch path).
    """
    lib = sgdm_library()
    if lib is None:
        return None
    n, c, h, w = x.shape
    k, s, p = kernel_size, stride, kernel_size // 2
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    # a channels-last x is read as it lies and gives a channels-last dyn (the convs around SGDM keep that layout);
    # any other layout, or kernels over 7x7 (the channels-last loop's bound), runs contiguous
    nhwc = channels_last(x) and k <= 7
    layout = torch.channels_last if nhwc else torch.contiguous_format
    x = x.contiguous(memory_format=layout)
    wa, ws, b = (t.detach().float().contiguous() for t in (razor_mean, spatial_weight, bias))
    wb = None if razor_max_extra is None else razor_max_extra.detach().float().contiguous()
    sb = None if bank is None else bank.detach().float().contiguous()
    out = torch.empty((n, c, ho, wo), dtype=torch.float32, memory_format=layout)
    d = torch.empty((n, groups, k * k, ho, wo), dtype=torch.float32) if keep_kernels else None
    kern = torch.empty_like(d) if d is not None and sb is not None else d  # unguided: K is D
    code = lib.efpn_sgdm_dynamic(_ptr(x), int(nhwc), n, c, h, w, _ptr(wa), _ptr(wb), _ptr(ws), _ptr(b), _ptr(sb), eps,
                                 groups, k, s, ho, wo, _ptr(out), _ptr(d), _ptr(kern) if kern is not d else None)
    if code == 2:
        raise MemoryError("efpn native SGDM kernel: could not allocate its scratch rows")
    if code:
        raise RuntimeError(f"efpn native SGDM kernel rejected its arguments (C={c}, G={groups}, {ho}x{wo} output)")
    if d is not None and kern is not None:
        return out, d, kern
    return out


def channels_last(x: Tensor) -> bool:
    """Whether the 4-D ``x`` lies channels-last in memory (N, H, W, C) and not also contiguous: a tensor that is both
    (one channel, or 1x1 pixels) reads the same either way and counts as contiguous."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _cpu_f32(*tensors: Tensor | None) -> bool:
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)


def eligible(*tensors: Tensor) -> bool:
    """Whether these kernels may compute a call on ``tensors``: all float32 on CPU, and not inside a trace, an ONNX
    export or ``torch.compile`` (a foreign call is invisible to them: its output would be frozen)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return False
    return _cpu_f32(*tensors)


def _check(code: int, what: str, shape: tuple[int, ...]) -> None:
    if code == 2:
        raise MemoryError(f"efpn native {what}: could not allocate its scratch rows")
    if code:
        raise RuntimeError(f"efpn native {what} rejected its arguments (input {shape})")


def aggregate(x: Tensor, kernels: Tensor, kernel_size: int, stride: int) -> Tensor | None:
    """``apply_dynamic_kernels(x, kernels, k, s)`` (shared kernels, no channel weights), float32 on CPU, no autograd:
    x (N, C, H, W), kernels (N, G, k*k, H', W') -> (N, C, H', W'). None when the library is unavailable or the
    tensors are not float32 CPU tensors (the caller runs its PyTorch path)."""
    lib = sgdm_library()
    if lib is None or not _cpu_f32(x, kernels):
        return None
    n, c, h, w = x.shape
    g, _, ho, wo = kernels.shape[1:]
    x, kernels = x.detach().contiguous(), kernels.detach().contiguous()
    out = torch.empty((n, c, ho, wo), dtype=torch.float32)
    _check(lib.efpn_aggregate(_ptr(x), _ptr(kernels), n, c, h, w, g, kernel_size, stride, ho, wo, _ptr(out)),
           "aggregation", tuple(x.shape))
    return out


def aggregate_backward(x: Tensor, kernels: Tensor, grad_out: Tensor, kernel_size: int, stride: int, need_x: bool,
                       need_kernels: bool) -> tuple[Tensor | None, Tensor | None] | None:
    """The gradients of :func:`aggregate` with respect to x (N, C, H, W) and kernels (N, G, k*k, H', W') for
    ``grad_out`` (N, C, H', W'); each only when asked (else None). None when the library is unavailable."""
    lib = sgdm_library()
    if lib is None or not _cpu_f32(x, kernels, grad_out):
        return None
    n, c, h, w = x.shape
    g, _, ho, wo = kernels.shape[1:]
    x, kernels, grad_out = (t.detach().contiguous() for t in (x, kernels, grad_out))
    grad_x = torch.empty((n, c, h, w), dtype=torch.float32) if need_x else None  # written whole by the kernel
    grad_k = torch.empty_like(kernels) if need_kernels else None
    _check(lib.efpn_aggregate_backward(_ptr(x), _ptr(kernels), _ptr(grad_out), n, c, h, w, g, kernel_size, stride,
                                       ho, wo, _ptr(grad_x), _ptr(grad_k)), "aggregation backward", tuple(x.shape))
    return grad_x, grad_k


def razor_backward(x: Tensor, peak: Tensor, grad_razor: Tensor | None, grad_gap: Tensor | None) -> Tensor | None:
    """The gradient of x (N, C, H, W) for ``([mean_c x, max_c x], mean_hw x)`` given the gradients of the razor map
    ``grad_razor`` (N, 2, H, W) and of the average ``grad_gap`` (N, C, 1, 1) (either None: no term; not both); peak
    = ``amax_c x`` (N, 1, H, W). Ties share the max's gradient equally. None when the library is unavailable."""
    lib = sgdm_library()
    if lib is None or not _cpu_f32(x, peak, grad_razor, grad_gap):
        return None
    n, c, h, w = x.shape
    x, peak = x.detach().contiguous(), peak.detach().contiguous()
    gr = None if grad_razor is None else grad_razor.contiguous()
    gg = None if grad_gap is None else grad_gap.contiguous()
    grad_x = torch.empty((n, c, h, w), dtype=torch.float32)
    _check(lib.efpn_razor_backward(_ptr(x), _ptr(peak), _ptr(gr), _ptr(gg), n, c, h, w, _ptr(grad_x)),
           "razor backward", tuple(x.shape))
    return grad_x


#: Activations :func:`bn_act_forward` applies after the BatchNorm(s), by name (the C side's enum).
BN_ACTS = {"none": 0, "silu": 1}


def bn_act_forward(x1: Tensor, gamma1: Tensor, beta1: Tensor, eps1: float, act: str,
                   x2: Tensor | None = None, gamma2: Tensor | None = None, beta2: Tensor | None = None,
                   eps2: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None] | None:
    """``act(BN1(x1) [+ BN2(x2)])`` on the batch's statistics, x (N, C, H, W) float32 on CPU, contiguous or
    channels-last (x2 in x1's layout; y in it too), gamma and beta (C,), ``act`` a key of :data:`BN_ACTS`; no
    autograd, no running statistics. Returns ``(y, mean1, var1, mean2, var2)`` (biased variances; the second pair
    None without x2). None when the library is unavailable."""
    lib = sgdm_library()
    if lib is None:
        return None
    n, c, h, w = x1.shape
    y = torch.empty_like(x1)  # x1's layout
    mean1, var1 = torch.empty(c), torch.empty(c)
    mean2, var2 = (torch.empty(c), torch.empty(c)) if x2 is not None else (None, None)
    common = (_ptr(gamma1), _ptr(beta1), _ptr(gamma2), _ptr(beta2), eps1, eps2, BN_ACTS[act], _ptr(y), _ptr(mean1),
              _ptr(var1), _ptr(mean2), _ptr(var2))
    if channels_last(x1):  # (N*H*W, C) rows
        code = lib.efpn_bn_act_forward_nhwc(_ptr(x1), _ptr(x2), n * h * w, c, *common)
    else:
        code = lib.efpn_bn_act_forward(_ptr(x1), _ptr(x2), n, c, h * w, *common)
    _check(code, "BatchNorm + activation", tuple(x1.shape))
    return y, mean1, var1, mean2, var2


def bn_act_backward(grad_y: Tensor, x1: Tensor, gamma1: Tensor, beta1: Tensor, mean1: Tensor, invstd1: Tensor,
                    act: str, x2: Tensor | None = None, gamma2: Tensor | None = None, beta2: Tensor | None = None,
                    mean2: Tensor | None = None, invstd2: Tensor | None = None
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None] | None:
    """The gradients of :func:`bn_act_forward` for ``grad_y`` (in x1's layout, as y was): ``(grad_x1, grad_gamma1,
    grad_beta1, grad_x2, grad_gamma2, grad_beta2)`` (the last three None without x2; the input gradients in x1's
    layout); ``invstd`` = ``1 / sqrt(var + eps)``. None when the library is unavailable."""
    lib = sgdm_library()
    if lib is None:
        return None
    n, c, h, w = x1.shape
    gx1, gg1, gb1 = torch.empty_like(x1), torch.empty(c), torch.empty(c)
    gx2, gg2, gb2 = (torch.empty_like(x1), torch.empty(c), torch.empty(c)) if x2 is not None else (None, None, None)
    common = (_ptr(gamma1), _ptr(beta1), _ptr(mean1), _ptr(invstd1), _ptr(gamma2), _ptr(beta2), _ptr(mean2),
              _ptr(invstd2), BN_ACTS[act], _ptr(gx1), _ptr(gx2), _ptr(gg1), _ptr(gb1), _ptr(gg2), _ptr(gb2))
    if channels_last(x1):
        code = lib.efpn_bn_act_backward_nhwc(_ptr(grad_y), _ptr(x1), _ptr(x2), n * h * w, c, *common)
    else:
        code = lib.efpn_bn_act_backward(_ptr(grad_y), _ptr(x1), _ptr(x2), n, c, h * w, *common)
    _check(code, "BatchNorm + activation backward", tuple(x1.shape))
    return gx1, gg1, gb1, gx2, gg2, gb2


def razor_forward(x: Tensor) -> tuple[Tensor, Tensor] | None:
    """``([mean_c x, max_c x], mean_hw x)`` in one read of x: (N, C, H, W) -> (N, 2, H, W), (N, C, 1, 1), float32 on
    CPU, no autograd. None when the library is unavailable (the caller runs its PyTorch path)."""
    lib = sgdm_library()
    if lib is None or not _cpu_f32(x):
        return None
    n, c, h, w = x.shape
    x = x.detach().contiguous()
    r = torch.empty((n, 2, h, w), dtype=torch.float32)
    gap = torch.empty((n, c, 1, 1), dtype=torch.float32)
    _check(lib.efpn_razor_forward(_ptr(x), n, c, h * w, _ptr(r), _ptr(gap)), "razor", tuple(x.shape))
    return r, gap


def kernel_head_forward(s: Tensor, c: Tensor, gamma: Tensor, beta: Tensor, bn_eps: float, bank: Tensor | None,
                        eps: float, groups: int) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """SGDM's kernels from the razor conv's output in training: ``K = guide(softmax(BN_batch(s) + c), bank)``.

    s (N, G*kk, H', W'), c (N, G*kk) per-image logits, gamma/beta (G*kk), bank (G, kk) or None (K = D). Returns
    ``(D, K, mean, var)``: D and K (N, G, kk, H', W') (K is D without a bank), the batch mean and biased variance
    (G*kk). None when the library is unavailable."""
    lib = sgdm_library()
    if lib is None or not _cpu_f32(s, c, gamma, beta, bank):
        return None
    n, ch, h, w = s.shape
    kk = ch // groups
    s, c, gamma, beta = (t.detach().contiguous() for t in (s, c, gamma, beta))
    sb = None if bank is None else bank.detach().contiguous()
    d = torch.empty((n, groups, kk, h, w), dtype=torch.float32)
    k = torch.empty_like(d) if sb is not None else d
    mean, var = torch.empty(ch), torch.empty(ch)
    _check(lib.efpn_kernel_head_forward(_ptr(s), n, groups, kk, h * w, _ptr(gamma), _ptr(beta), bn_eps, _ptr(c),
                                        _ptr(sb), eps, _ptr(mean), _ptr(var), _ptr(d), _ptr(k) if sb is not None
                                        else None), "kernel head", tuple(s.shape))
    return d, k, mean, var


def kernel_head_backward(
    grad_k: Tensor, s: Tensor, d: Tensor, gamma: Tensor, mean: Tensor, invstd: Tensor, bank: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None] | None:
    """The gradients of :func:`kernel_head_forward`'s K for ``grad_k`` (N, G, kk, H', W'): ``(grad_s, grad_c,
    grad_gamma, grad_beta, grad_bank)`` (grad_bank None without a bank). None when the library is unavailable."""
    lib = sgdm_library()
    if lib is None or not _cpu_f32(grad_k, s, d):
        return None
    n, g, kk, h, w = d.shape
    grad_k, s, d = (t.detach().contiguous() for t in (grad_k, s, d))
    gamma, mean, invstd = (t.detach().contiguous() for t in (gamma, mean, invstd))
    sb = None if bank is None else bank.detach().contiguous()
    grad_s = torch.empty((n, g * kk, h, w), dtype=torch.float32)
    grad_c = torch.empty((n, g * kk), dtype=torch.float32)
    grad_gamma, grad_beta = torch.empty(g * kk), torch.empty(g * kk)
    grad_bank = torch.empty((g, kk)) if sb is not None else None
    _check(lib.efpn_kernel_head_backward(_ptr(grad_k), _ptr(s), _ptr(d), n, g, kk, h * w, _ptr(gamma), _ptr(mean),
                                         _ptr(invstd), _ptr(sb), eps, _ptr(grad_s), _ptr(grad_gamma),
                                         _ptr(grad_beta), _ptr(grad_c), _ptr(grad_bank)),
           "kernel head backward", tuple(s.shape))
    return grad_s, grad_c, grad_gamma, grad_beta, grad_bank
