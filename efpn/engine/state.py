"""Resumable training state: optimizer, scaler, scheduler, EMA and RNG in one ``torch.save`` file.

The file holds only tensors, numbers, strings and containers, so it loads with ``torch.load(weights_only=True)``
and never runs code. The model weights themselves are a checkpoint (:mod:`efpn.checkpoint`), written beside it.
"""

from __future__ import annotations

import dataclasses
import os
import random
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from efpn.checkpoint import FORMAT_VERSION, CheckpointError, unwrap_model
from efpn.config import RESUME_FREE, TrainConfig
from efpn.files import atomic_write

#: ``format`` of a training-state file.
TRAIN_FORMAT = "efpn-train"
#: The resumable state's file name inside a run directory.
STATE_FILE = "last_state.pt"


def capture_rng_states() -> dict[str, Any]:
    """torch (CPU and every CUDA device), Python ``random`` and NumPy global RNG states, as tensors and
    numbers (loadable with ``weights_only=True``); restore with :func:`restore_rng_states`."""
    py_version, py_state, py_gauss = random.getstate()
    # the legacy global NumPy RNG is what third-party augmentation code draws from, so it is the one to save
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states` (CUDA states only when CUDA is available here)."""
    torch.set_rng_state(states["torch"].cpu())
    py = states["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npy = states["numpy"]
    keys = npy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))  # noqa: NPY002
    if "cuda" in states and torch.cuda.is_available():
        cuda = list(states["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


#: Exactly the types ``torch.load(weights_only=True)`` accepts, checked by type, not isinstance: a numpy
#: float64 *is* a float but pickles as a numpy object that weights_only refuses.
_PLAIN_LEAVES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    torch.Tensor,
    nn.Parameter,
    torch.Size,
    torch.dtype,
    torch.device,
)
_PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple, set)


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value ``torch.load(weights_only=True)`` would refuse."""
    tp = type(obj)
    if tp in _PLAIN_LEAVES:
        return
    if tp in (dict, OrderedDict):
        for k, v in obj.items():
            _check_plain(k, f"{where} key {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if tp in _PLAIN_CONTAINERS:
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    hint = " (convert numpy with torch.from_numpy(...) or .item())" if tp.__module__.startswith("numpy") else ""
    raise TypeError(
        f"training state entry {where} is a {tp.__module__}.{tp.__qualname__}; only tensors, numbers, "
        f"strings and dict/list/tuple containers are saved, so the file loads with "
        f"torch.load(weights_only=True){hint}"
    )


def _state_of(obj: Any, what: str) -> Any:
    if obj is None:
        return None
    if not hasattr(obj, "state_dict"):
        raise TypeError(f"{what} must have a state_dict() method, got {type(obj).__name__}")
    return obj.state_dict()


def save_training_state(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any | None = None,
    scheduler: Any | None = None,
    ema: Any | None = None,
    epoch: int = 0,
    step: int = 0,
    rng_states: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save everything needed to resume training to ``path`` with ``torch.save`` (atomically); returns it.

    ``scaler``/``scheduler``/``ema`` are anything with ``state_dict()`` (GradScaler, an LR scheduler, an EMA
    module). ``rng_states`` defaults to :func:`capture_rng_states`. ``extra`` is the caller's own plain data
    (the model card, best metric, ...). Everything is checked to be plain data first (TypeError naming the
    entry), so :func:`load_training_state` can use ``weights_only=True``.
    """
    state = {
        "format": TRAIN_FORMAT,
        "format_version": FORMAT_VERSION,
        "model": unwrap_model(model).state_dict(),
        "optimizer": _state_of(optimizer, "optimizer"),
        "scaler": _state_of(scaler, "scaler"),
        "scheduler": _state_of(scheduler, "scheduler"),
        "ema": _state_of(unwrap_model(ema) if isinstance(ema, nn.Module) else ema, "ema"),
        "epoch": int(epoch),
        "step": int(step),
        "rng": dict(rng_states) if rng_states is not None else capture_rng_states(),
        "extra": dict(extra or {}),
    }
    _check_plain(state, "state")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: torch.save(state, tmp))
    return out


def load_training_state(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a :func:`save_training_state` file with ``torch.load(weights_only=True)``.

    Returns ``{"model", "optimizer", "scaler", "scheduler", "ema", "epoch", "step", "rng", "extra", ...}``
    (absent parts are None); apply it with :func:`restore_training_state`.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"training state {p} not found")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for foreign objects, RuntimeError for a corrupt zip
        # (torch's own message is left out: it suggests loading with weights_only=False, which can run code)
        raise CheckpointError(
            f"cannot load training state {p}: not an efpn training state, or a corrupt one ({type(e).__name__}). "
            f"Resume from a run folder holding {STATE_FILE} (or that file), or start a new run without --resume"
        ) from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{p} is not an efpn training state (expected format {TRAIN_FORMAT!r})")
    return state


def restore_training_state(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any | None = None,
    scheduler: Any | None = None,
    ema: Any | None = None,
    restore_rng: bool = True,
) -> None:
    """Load a :func:`load_training_state` dict into the given objects (each one passed must have been saved).

    Resume at ``state["epoch"]``/``state["step"]`` (the values saved; whether they count done or next is the
    training loop's convention).
    """
    unwrap_model(model).load_state_dict(state["model"])
    targets = {
        "optimizer": optimizer,
        "scaler": scaler,
        "scheduler": scheduler,
        "ema": unwrap_model(ema) if isinstance(ema, nn.Module) else ema,
    }
    for key, obj in targets.items():
        if obj is None:
            continue
        if state.get(key) is None:
            raise CheckpointError(f"the training state has no {key} state to restore")
        obj.load_state_dict(state[key])
    if restore_rng and state.get("rng"):
        restore_rng_states(state["rng"])


# ------------------------------------------------------------------------------------------ run directories


def default_run_name(cfg: TrainConfig) -> str:
    """``{model}_{dataset}``, the dataset named by the data YAML (or its folder for a ``data.yaml``)."""
    p = Path(cfg.data)
    dataset = p.parent.name if p.stem == "data" and p.parent.name else p.stem
    return f"{cfg.model}_{dataset}"


def run_dir_and_state(cfg: TrainConfig) -> tuple[Path, Path | None]:
    """``(run_dir, state file to resume or None)`` following ``name``/``resume`` (decided on rank 0)."""
    if cfg.resume not in (None, "auto"):
        p = Path(cfg.resume)
        state = p / STATE_FILE if p.is_dir() else p
        if not state.is_file():
            raise FileNotFoundError(f"resume={cfg.resume!r}: no training state at {state} (expected a run dir "
                                    f"holding {STATE_FILE}, or the file itself)")
        return state.parent, state
    base = Path(cfg.out) / (cfg.name or default_run_name(cfg))
    if cfg.resume == "auto" and (base / STATE_FILE).is_file():
        return base, base / STATE_FILE
    run_dir, k = base, 1
    while not _claim(run_dir):  # never overwrite another run, also one started at the same moment
        k += 1
        run_dir = base.with_name(f"{base.name}-{k}")
    if run_dir != base and (base / STATE_FILE).is_file():  # an interrupted run the user probably meant to continue
        warnings.warn(f"{base} holds an unfinished run's state ({STATE_FILE}); this starts a new run in "
                      f"{run_dir.name}. To continue that one instead, pass --resume auto (or resume: auto).",
                      stacklevel=2)
    return run_dir, None


#: Marks a new run's folder as taken until its record (config.yaml) is written; see :func:`release_claim`.
CLAIM_FILE = ".claimed"


def _claim(run_dir: Path) -> bool:
    """Take ``run_dir`` for a new run when it is absent or empty: creating the claim file is atomic, so of two runs
    started together with the same name only one gets the folder."""
    if run_dir.exists() and any(run_dir.iterdir()):
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        (run_dir / CLAIM_FILE).open("x").close()
    except FileExistsError:
        return False
    return True


#: Held (``flock``) by the process training a run, so a second one started on the same folder is refused.
LOCK_FILE = ".training.lock"


def hold_run(run_dir: Path) -> IO[str] | None:
    """Lock ``run_dir`` for this process until :func:`release_run` (or its end: the kernel drops the lock of a killed
    process, so none goes stale); ValueError when another process holds it. Two resumes of one run at once would
    write each other's checkpoints and log every epoch twice. None where ``flock`` does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = (run_dir / LOCK_FILE).open("a")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ValueError(f"{run_dir} is being trained by another process right now (its {LOCK_FILE} is held); wait "
                         "for that run to end or stop it, then resume") from None
    return handle


def release_run(run_dir: Path, handle: IO[str] | None) -> None:
    """Drop the lock of :func:`hold_run` and its file."""
    if handle is not None:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
        handle.close()


def release_claim(run_dir: Path, started: bool) -> None:
    """Drop the claim of :func:`run_dir_and_state`: the file once the run has started (its record is written), or
    the whole folder when the run was refused before that and the folder holds nothing else."""
    claim = run_dir / CLAIM_FILE
    if not claim.exists():
        return
    claim.unlink(missing_ok=True)
    if not started and not any(run_dir.iterdir()):
        run_dir.rmdir()


def check_resume_classes(run_dir: str | os.PathLike[str], class_names: list[str],
                         saved: list[str] | None = None) -> None:
    """Raise ValueError, before anything in ``run_dir`` is rewritten, when the run was trained on other classes than
    the data now gives (its weights could not load, or would read the new classes as the old ones). ``saved``: the
    classes its training state recorded (states of older runs have none); else its cards say."""
    from efpn.checkpoint import CheckpointError, read_card

    before: list[str] | None = list(saved) if saved is not None else None
    for name in ("last.json", "best.json") if before is None else ():
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        try:
            card = read_card(path)
        except CheckpointError as e:  # e.g. cut short by a full disk: the state does not need it
            raise ValueError(f"{e}. The run's {STATE_FILE} does not depend on it: restore {path.name} or delete it "
                             "(the next epoch writes it again), then resume") from None
        before = card.get("classes") or (card.get("config") or {}).get("class_names")
        break
    if before and list(before) != list(class_names):
        raise ValueError(f"run {run_dir} was trained on the classes [{', '.join(map(str, before))}] and the data "
                         f"now gives [{', '.join(class_names)}]: resume it with its own data, or start a new run "
                         "(another --name)")


def check_resume_model(saved: Mapping[str, Any] | None, cfg: TrainConfig, run_dir: str | os.PathLike[str]) -> None:
    """Raise ValueError, before anything is written, when a run would resume as another model than it trained."""
    if saved and saved.get("model") not in (None, cfg.model):
        raise ValueError(f"run {run_dir} was trained as {saved['model']!r}, not {cfg.model!r}: pass --model "
                         f"{saved['model']} to resume it, or start a new run without --resume")


def check_resume_config(saved: Mapping[str, Any] | None, cfg: TrainConfig) -> None:
    """Warn when a run resumes with settings that change what it computes (``RESUME_FREE`` ones may change); refuse
    another optimizer (its state cannot continue as another's)."""
    if not saved:
        return
    if saved.get("optimizer", cfg.optimizer) != cfg.optimizer:  # its saved state is another optimizer's
        raise ValueError(f"the run was trained with --optimizer {saved['optimizer']} and its state is that "
                         f"optimizer's; resume with --optimizer {saved['optimizer']} (or start a new run with "
                         f"{cfg.optimizer})")
    now = cfg.to_dict()
    # a field the saved run predates had its default then (a new field never changes what an old run computed)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    was = {k: saved.get(k, defaults.get(k)) for k in now}
    diff = [f"{k}: {was[k]!r} -> {now[k]!r}" for k in now if k not in RESUME_FREE and was[k] != now[k]]
    if diff:
        warnings.warn("resuming with a different configuration than the run was started with (the result will "
                      "differ from an uninterrupted run): " + "; ".join(diff), stacklevel=3)
