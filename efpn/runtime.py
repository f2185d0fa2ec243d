"""Process-level CPU runtime settings that inference and training programs (the CLI, the studio, the benchmarks)
opt into; importing :mod:`efpn` never changes the process.

Large tensors and glibc's allocator. glibc serves every allocation above its mmap threshold (at most 32 MiB after
its dynamic adjustment) with a fresh ``mmap`` and returns it to the kernel on free, so each such tensor is
page-faulted and zeroed again on every forward. At 640 px the first inverted residual of MobileNetV2 expands to a
(1, 96, 320, 320) float tensor (39 MB): one eval BatchNorm over it took 26-33 ms that way and 9 ms from a reused
heap block, on this project's 2-core reference machine (the whole backbone: 362 -> 210 ms). PyTorch's CPU
performance guide recommends a caching allocator (jemalloc / tcmalloc) for the same reason; raising glibc's mmap
and trim thresholds gets that reuse with the allocator already loaded. The cost is that the process keeps its
peak heap instead of returning it to the system between calls.

Long-running servers and Python's garbage collector. A full collection walks every container object the process
holds; with torch, plotly and pandas imported that is ~430,000 objects and 0.26-0.33 s on the reference machine,
paid while holding the interpreter lock. Streamlit runs one after every script run (``runner.postScriptGC``), i.e.
on every click in the studio, while its server still has the run's last messages to send. The imported modules live
as long as the process, so moving them out of the collector's sight once (``gc.freeze``), before the first
session, makes later collections walk only the newer objects: ~0.3-0.6 ms (``python -m app`` does, see
``app/__main__.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import sys

__all__ = ["freeze_long_lived_objects", "keep_freed_memory", "usable_cpus"]

#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Let glibc ``malloc`` serve blocks up to ``threshold_bytes`` from its heap and keep freed memory for reuse.

    Returns True when applied, False where it does not apply (not Linux/glibc) or is switched off with
    ``EFPN_MALLOC_TUNING=0``. Idempotent; call it once at program start, before the first large tensor.
    """
    if os.environ.get("EFPN_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(int(threshold_bytes), 2**31 - 1)
    # mallopt returns 1 on success; both are needed: without the trim threshold freed blocks go back anyway
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))


@functools.cache
def freeze_long_lived_objects() -> bool:
    """Collect garbage once, then move every object alive now to the collector's permanent generation (``gc.freeze``):
    later collections, full ones included, skip them.

    For a long-running process (the studio's server), called once after the imports its work needs. Reference
    counting still frees frozen objects; only a reference cycle among them would be kept, so call it before
    per-request objects exist. Returns True when applied, False when switched off with ``EFPN_GC_FREEZE=0``.
    Idempotent, and cheap to call again (``gc.get_freeze_count`` would walk the whole frozen list: ~50 ms).
    """
    if os.environ.get("EFPN_GC_FREEZE", "1") == "0":
        return False
    gc.collect()  # what is garbage now is freed, not frozen
    gc.freeze()
    return True


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which ``taskset`` and a container's ``--cpuset-cpus`` narrow;
    a CPU quota such as ``--cpus`` does not), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity call on this OS
        return max(1, os.cpu_count() or 1)
