"""Native CPU kernels, compiled on first use with the system's C compiler and loaded with ctypes.

Kernels of ``native/sgdm_dynamic.c``:

- SGDM's dynamic branch at inference (:func:`sgdm_dynamic`): the razor map, the per-pixel kernel logits, their
  softmax, the static guidance and the strided aggregation in one pass over bands of output rows, where the PyTorch
  path makes a dozen passes over (N, G, k*k, H', W') and (N, C, H', W') tensors. It computes the same function as
  ``RazorKernelGenerator`` + ``guide_kernels`` + ``apply_dynamic_kernels`` in eval mode, without autograd
  (tests/layers/test_sgdm_native.py holds them equal); ``SGDM`` calls it only when no gradient is recorded.
- For training (:func:`aggregate`, :func:`aggregate_backward`, :func:`razor_backward`): the shift aggregation on
  given kernels and its backward in one pass each (no polyphase copies of x, no per-tap temporaries), and the razor
  statistics' backward in one pass (PyTorch needs five over (N, C, H, W)); rdconv's autograd Functions call them for
  float32 CPU tensors (tests/layers/test_native_train.py holds them equal to the PyTorch arithmetic).

The library is built once per source, compiler and CPU into ``$EFPN_NATIVE_CACHE`` (default
``~/.cache/efpn/native``) with ``-O3 -march=native`` (about a second). Without a C compiler, or with
``EFPN_NATIVE=0``, :func:`sgdm_library` returns None and SGDM stays on its PyTorch path (a warning says why, once).
Chunks of rows run in parallel on PyTorch's OpenMP threads (see :data:`CFLAGS`); ctypes releases the GIL meanwhile.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).resolve().parent / "native" / "sgdm_dynamic.c"
#: Compiler flags: no -ffast-math (a shared library built with it can switch the whole process to flush denormals).
#: -fopenmp: the library links libgomp.so.1, which resolves to the one PyTorch already loaded (same soname), so
#: its parallel loops run on PyTorch's own threads (torch.set_num_threads applies) instead of a competing pool.
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared", "-std=c11")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed: str | None = None

_f32p = ctypes.POINTER(ctypes.c_float)


def enabled() -> bool:
    """False when ``EFPN_NATIVE=0`` (or ``false``/``no``/``off``) switches the native kernels off."""
    return os.environ.get("EFPN_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


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
    src = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[:1]
    key = hashlib.sha256(src + repr((CFLAGS, version, _cpu_model())).encode()).hexdigest()[:16]
    out = _cache_dir() / f"sgdm_dynamic-{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # built aside, then renamed: other processes never
        part = Path(tmp) / out.name                              # load a half-written library
        res = subprocess.run([cc, *CFLAGS, "-o", str(part), str(SOURCE), "-lm"], capture_output=True, text=True,
                             timeout=300)
        if res.returncode != 0:  # e.g. a compiler without OpenMP (Apple clang): built single-threaded instead
            serial = [f for f in CFLAGS if f != "-fopenmp"]
            res = subprocess.run([cc, *serial, "-o", str(part), str(SOURCE), "-lm"], capture_output=True, text=True,
                                 timeout=300)
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
                lib.efpn_sgdm_dynamic.argtypes = [
                    _f32p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, _f32p, _f32p, _f32p, _f32p,
                    _f32p, ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                    _f32p, _f32p, _f32p]
                i = ctypes.c_int
                lib.efpn_aggregate.restype = i
                lib.efpn_aggregate.argtypes = [_f32p, _f32p, i, i, i, i, i, i, i, i, i, _f32p]
                lib.efpn_aggregate_backward.restype = i
                lib.efpn_aggregate_backward.argtypes = [_f32p, _f32p, _f32p, i, i, i, i, i, i, i, i, i, _f32p, _f32p]
                lib.efpn_razor_backward.restype = i
                lib.efpn_razor_backward.argtypes = [_f32p, _f32p, _f32p, _f32p, i, i, i, i, _f32p]
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
    """SGDM's dynamic branch ``dyn`` (N, C, H', W') from x (N, C, H, W), float32 on CPU, no autograd.

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
    x = x.contiguous()
    wa, ws, b = (t.detach().float().contiguous() for t in (razor_mean, spatial_weight, bias))
    wb = None if razor_max_extra is None else razor_max_extra.detach().float().contiguous()
    sb = None if bank is None else bank.detach().float().contiguous()
    out = torch.empty((n, c, ho, wo), dtype=torch.float32)
    d = torch.empty((n, groups, k * k, ho, wo), dtype=torch.float32) if keep_kernels else None
    kern = torch.empty_like(d) if d is not None and sb is not None else d  # unguided: K is D
    code = lib.efpn_sgdm_dynamic(_ptr(x), n, c, h, w, _ptr(wa), _ptr(wb), _ptr(ws), _ptr(b), _ptr(sb), eps, groups,
                                 k, s, ho, wo, _ptr(out), _ptr(d), _ptr(kern) if kern is not d else None)
    if code == 2:
        raise MemoryError("efpn native SGDM kernel: could not allocate its scratch rows")
    if code:
        raise RuntimeError(f"efpn native SGDM kernel rejected its arguments (C={c}, G={groups}, {ho}x{wo} output)")
    if d is not None and kern is not None:
        return out, d, kern
    return out


def _cpu_f32(*tensors: Tensor | None) -> bool:
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)


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
    grad_x = torch.empty((n, c, h, w), dtype=torch.float32) if need_x else None  # zeroed by the kernel
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
