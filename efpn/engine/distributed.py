"""Process-group set-up for data-parallel training, and the seeding that makes runs reproducible.

One process per device. Under ``torchrun`` the environment names this process (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); a plain ``python`` run is world size 1 and never creates a
process group, so the same training code serves both. NCCL is used on CUDA, gloo on CPU.

:func:`spawn_local` starts N local workers without ``torchrun`` (tests, CPU-only machines).
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Who this process is: ``rank`` of ``world_size`` processes, ``local_rank`` on this machine, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """True when a process group spans more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0


def env_int(name: str, default: int) -> int:
    """The integer a torchrun environment variable holds (``default`` when unset or empty); ValueError naming the
    variable when it is not one."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer (set by torchrun)") from e


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:{local_rank}`` when CUDA is available, else ``cpu``; ``"cuda"`` -> ``cuda:{local_rank}``.

    Raises ValueError for an unknown name, and when ``"cuda"`` is asked for on a machine without CUDA.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available here; use device='cpu' or 'auto'")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def setup_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Read the torchrun environment, pick this process's device and (for world size > 1) join the group.

    Backend: NCCL when the device is CUDA, else gloo. Idempotent: a process group that already exists is reused.
    With world size 1 no group is created and the returned :class:`DistInfo` says so.
    """
    import datetime

    world_size = env_int("WORLD_SIZE", 1)
    rank = env_int("RANK", 0)
    local_rank = env_int("LOCAL_RANK", rank if world_size > 1 else 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        # before init_process_group: NCCL binds each process to the current device
        torch.cuda.set_device(dev)
    if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise ValueError(
                    f"WORLD_SIZE={world_size} but {key} is not set; launch with torchrun (which sets it) or set "
                    "MASTER_ADDR/MASTER_PORT yourself"
                )
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on rank 0 (and always outside a process group): the process that logs and saves."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if is_dist():
        dist.barrier()


def _reduce_device() -> torch.device:
    # NCCL only reduces CUDA tensors; gloo reduces CPU tensors
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of a tensor over ranks (a new float64 CPU tensor; unchanged copy outside a group)."""
    t = values.detach().to(device=_reduce_device(), dtype=torch.float64).clone()
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise max of a tensor over ranks (a new float64 CPU tensor)."""
    t = values.detach().to(device=_reduce_device(), dtype=torch.float64).clone()
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu()


def all_reduce_mean(values: Mapping[str, float]) -> dict[str, float]:
    """Mean of named scalars over ranks, for logging (one collective for all of them).

    Every rank must pass the same keys (sorted internally, so order does not matter).
    """
    keys = sorted(values)
    if not keys:
        return {}
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    t = all_reduce_sum(t) / get_world_size()
    return dict(zip(keys, t.tolist()))


def gather_sum(sums: Mapping[str, float]) -> dict[str, float]:
    """Key-wise sum of ``str -> float`` dicts over ranks (a key missing on a rank counts as 0).

    One ``all_gather_object`` (pickled Python objects): meant for per-epoch statistics, not per-step use.
    """
    if not is_dist():
        return {k: float(v) for k, v in sums.items()}
    gathered: list[dict[str, float] | None] = [None] * get_world_size()
    dist.all_gather_object(gathered, {k: float(v) for k, v in sums.items()})
    out: dict[str, float] = {}
    for part in gathered:  # rank order: the same float summation order on every rank
        for k, v in (part or {}).items():
            out[k] = out.get(k, 0.0) + v
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a picklable Python object; returned unchanged outside a group)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python ``random``, NumPy's global RNG and torch (CPU and every CUDA device) with ``seed``.

    ``deterministic=True`` also asks torch for deterministic kernels (``warn_only``: ops without one warn
    instead of failing) and turns off cuDNN autotuning; it costs speed on GPU.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party augmentation draws from the legacy global RNG
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls; only effective before CUDA starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker initialiser: seed Python ``random`` and NumPy from the worker's torch seed.

    torch already gives every worker a distinct seed (``base_seed + worker_id``, with ``base_seed`` drawn from
    the loader's generator); without this, every worker would start from the parent's NumPy/Python state and
    produce the same "random" augmentations. One thread per worker: workers are processes already.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    torch.set_num_threads(1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for MASTER_PORT of local runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(local_rank: int, world_size: int, port: int, threads: int, fn: Callable[..., Any],
             args: tuple[Any, ...]) -> None:
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        fn(*args)
    finally:
        cleanup_distributed()


def spawn_local(fn: Callable[..., Any], world_size: int, args: tuple[Any, ...] = (), threads: int = 1) -> None:
    """Run ``fn(*args)`` in ``world_size`` fresh local processes with the torchrun environment set.

    For tests and single machines without torchrun: each process sees ``RANK = LOCAL_RANK = i``,
    ``WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT``, and runs with ``threads`` torch
    threads. ``fn`` and ``args`` must be picklable (a module-level function). Raises when any process fails.
    """
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    mp.start_processes(
        _spawned,
        args=(world_size, free_port(), threads, fn, args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
