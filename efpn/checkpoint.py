"""The model file format: safetensors weights plus a JSON model card that rebuilds the model.

A checkpoint is two files with the same stem::

    runs/efpn_n_sar/model.safetensors   state_dict tensors (safetensors: no pickle, no code on load)
    runs/efpn_n_sar/model.json          model card: {"format": "efpn", "config": ModelConfig.to_dict(), ...}

The card carries the :class:`~efpn.config.ModelConfig`, so :func:`load_model` rebuilds the model with
:func:`efpn.zoo.build` and no code edits (STYLE principle 2), then checks every key and shape before loading.
Weights are never unpickled: a ``.pt``/``.pth`` file is refused with instructions to convert it.

Loading a model needs nothing from training; the resume state of a run lives with the engine
(:mod:`efpn.engine.state`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from efpn import zoo
from efpn.config import ModelConfig, short
from efpn.config.card import card_field_problems
from efpn.files import atomic_write_group, previous_path
from efpn.models.state_shapes import check_state_dict, meta_state_dict, read_header, stand_ins
from efpn.storage import INT8_MIN_NUMEL, INT8_SCALE_PREFIX, dequantize_int8, fits_half, quantize_int8

#: ``format`` of a model card and of the safetensors metadata (``FORMAT_VERSION`` changes with the layout).
FORMAT = "efpn"
FORMAT_VERSION = 1

Builder = Callable[[ModelConfig], nn.Module]


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or loaded as asked; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------- paths & cards


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(weights, card)`` for a checkpoint named by either file (or a folder holding exactly one checkpoint).

    ``model.safetensors`` or ``model.json`` -> ``(model.safetensors, model.json)``; any other suffix is taken
    as the weights file (so a ``.pt`` reaches the pickle check and is refused with a clear message).
    """
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.safetensors"))
        if len(found) != 1:
            names = ", ".join(short(f.name, 60) for f in found[:5]) + (", ..." if len(found) > 5 else "") or "none"
            raise CheckpointError(
                f"{p} must hold exactly one .safetensors checkpoint to be named by its folder "
                f"(found: {names}); pass the file instead"
            )
        p = found[0]
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    return p, p.with_suffix(".json")


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card of a checkpoint named by its ``.safetensors`` or ``.json`` file, as a dict."""
    weights, card_path = checkpoint_paths(path)
    if not card_path.is_file():
        raise CheckpointError(
            f"no model card {card_path} beside {weights.name}: an efpn checkpoint is model.safetensors + "
            "model.json (both written by efpn.checkpoint.save_checkpoint); the card holds the config "
            "that rebuilds the model. Copy the .json that came with these weights next to them."
        )
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"model card {card_path} is not readable JSON: {e}") from e
    except RecursionError as e:  # JSON nested thousands deep: not a card efpn wrote
        raise CheckpointError(f"model card {card_path} nests its JSON too deeply to be an efpn model card") from e
    if not isinstance(card, dict):
        raise CheckpointError(f"model card {card_path} must be a JSON object, got {type(card).__name__}")
    if card.get("format") != FORMAT:
        raise CheckpointError(
            f"{card_path} is not an efpn model card (format={short(card.get('format'))}, expected {FORMAT!r})"
        )
    version = card.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointError(
            f"{card_path} has format_version {short(version)}; this efpn reads versions 1..{FORMAT_VERSION}"
            + (": it was written by a newer efpn, upgrade efpn to load it" if newer else ": the card is damaged"))
    problems = card_field_problems(card)  # a hand-edited field would otherwise fail later, in whichever tool reads it
    if problems:
        raise CheckpointError(f"model card {card_path} is damaged: {'; '.join(problems)}. Restore the card that came "
                              "with these weights, or correct those fields")
    return card


def config_from_card(card: Mapping[str, Any], where: str = "the model card") -> ModelConfig:
    """Rebuild the card's :class:`ModelConfig`; CheckpointError (naming ``where``, e.g. the card's file) if it is
    missing or invalid."""
    if "config" not in card:
        raise CheckpointError(
            f"{where} has no 'config' entry, so the model cannot be rebuilt; re-save the "
            "checkpoint with save_checkpoint(model, path, card)"
        )
    try:
        return ModelConfig.from_dict(card["config"], where=f"{where}: 'config'")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: 'config' is not a valid ModelConfig for this efpn version: {e}") from e


# ------------------------------------------------------------------------------------------------ save


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module with plain state_dict keys (strips DDP's ``.module``, torch.compile's ``._orig_mod``)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


Storage = Literal["fp32", "fp16", "int8"]
_DTYPE_NAME = {"fp32": "float32", "fp16": "float16", "int8": "int8-weights"}


def _weights_to_save(model: nn.Module, storage: Storage) -> dict[str, torch.Tensor]:
    """state_dict as independent contiguous CPU tensors (tied weights become separate copies, which
    safetensors needs: it refuses tensors sharing storage).

    ``fp16``: floats become fp16 where that cannot overflow. ``int8``: conv/linear weights (float, >= 2-D,
    >= :data:`INT8_MIN_NUMEL` elements) become per-output-channel int8 with their float32 scales stored under
    ``INT8_SCALE_PREFIX + key``; every other float is stored as under ``fp16``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                "safetensors can only store tensors"
            )
        t = value.detach().cpu().contiguous().clone()
        if storage == "int8" and t.is_floating_point() and t.dim() >= 2 and t.numel() >= INT8_MIN_NUMEL:
            out[key], out[INT8_SCALE_PREFIX + key] = quantize_int8(t)
            continue
        if storage in ("fp16", "int8") and t.is_floating_point() and t.dtype != torch.float16 and fits_half(t):
            t = t.to(torch.float16)
        out[key] = t
    return out


def _dequantized(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored tensors -> state_dict tensors: int8 weights times their scales; the scale entries removed."""
    scales = {k[len(INT8_SCALE_PREFIX):]: v for k, v in tensors.items() if k.startswith(INT8_SCALE_PREFIX)}
    out = {k: v for k, v in tensors.items() if not k.startswith(INT8_SCALE_PREFIX)}
    for key, scale in scales.items():
        q = out.get(key)
        if q is None or q.dtype != torch.int8 or scale.shape != (q.shape[0],):
            raise CheckpointError(f"int8 scale {INT8_SCALE_PREFIX + key!r} has no matching int8 weight {key!r} "
                                  "of as many output channels; the file is damaged: re-export it")
        out[key] = dequantize_int8(q, scale)
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, ModelConfig):
        return obj.to_dict()
    if isinstance(obj, np.generic | torch.Tensor) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if isinstance(obj, np.ndarray | torch.Tensor):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"model card values must be JSON data (numbers, strings, lists, dicts); got {type(obj).__name__}")


def _default_name(weights: Path) -> str:
    """Display name of a checkpoint: its file stem, or its folder's name for ``model.safetensors``."""
    return weights.parent.name if weights.stem == "model" and weights.parent.name else weights.stem


def _efpn_version() -> str | None:
    try:
        return importlib.metadata.version("efpn")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return None


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    card: Mapping[str, Any] | None = None,
    half: bool = False,
    storage: Storage | None = None,
) -> Path:
    """Write ``path`` (``*.safetensors``) and its model card (same stem, ``.json``); returns the weights path.

    ``card`` is copied into the model card as given (classes, image_size, data, epochs, hardware, wall_time,
    metrics, ...). ``card["config"]`` (a ModelConfig or its ``to_dict()``) defaults to ``model.config``; it
    must round-trip through :meth:`ModelConfig.from_dict`. The card also gets ``format``, ``format_version``,
    ``name`` (default: the file stem, or the folder name for ``model.safetensors``), ``preset`` (default: the
    config's name), ``classes``/``image_size`` (defaults from the config), ``weights`` (file name),
    ``weights_dtype``, ``num_parameters``, ``created`` (UTC ISO time) and library versions.
    ``storage``: ``"fp32"`` (default), ``"fp16"`` (floating tensors, BN statistics included, as fp16 except any
    that would overflow; ``half=True`` is the same) or ``"int8"`` (weight-only: conv/linear weights as
    per-output-channel symmetric int8 with float32 scales, everything else as under fp16; about a quarter of
    fp32). :func:`load_model` restores the model's dtypes. Values must be JSON data; NaN/inf are refused.
    """
    storage = storage or ("fp16" if half else "fp32")
    if storage not in _DTYPE_NAME:
        raise CheckpointError(f"storage must be one of {sorted(_DTYPE_NAME)}, got {short(storage)}")
    weights_path = Path(path)
    if weights_path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint path must end in .safetensors, got {weights_path.name!r}")
    model = unwrap_model(model)
    info = dict(card or {})
    config = info.get("config", getattr(model, "config", None))
    if config is None:
        raise CheckpointError(
            "the card needs a 'config' (ModelConfig.to_dict()) and the model has no .config; "
            "pass card={'config': config.to_dict(), ...}"
        )
    if not isinstance(config, ModelConfig | Mapping):
        raise CheckpointError(f"card config must be a ModelConfig or a dict, got {type(config).__name__}")
    config_dict = config.to_dict() if isinstance(config, ModelConfig) else dict(config)
    cfg = config_from_card({"config": config_dict})  # refuse a card that could not rebuild the model

    tensors = _weights_to_save(model, storage)
    preset = str(info.get("preset") or cfg.name)
    info.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        config=config_dict,
        weights=weights_path.name,
        weights_dtype=_DTYPE_NAME[storage],
        num_parameters=sum(p.numel() for p in model.parameters()),
    )
    info.setdefault("name", _default_name(weights_path))
    info["preset"] = preset
    if cfg.class_names:
        info.setdefault("classes", list(cfg.class_names))
    info.setdefault("image_size", cfg.image_size)
    info.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    info.setdefault("torch_version", torch.__version__)
    info.setdefault("efpn_version", _efpn_version())
    try:
        text = json.dumps(info, indent=2, allow_nan=False, default=_json_default)
        # one id in the card and in the weights' metadata: a save interrupted between its two files (new weights
        # beside the old card) is then named as such on load, instead of as a config mismatch
        info["save_id"] = hashlib.sha256(text.encode()).hexdigest()[:16]
        text = json.dumps(info, indent=2, allow_nan=False, default=_json_default)
    except ValueError as e:
        raise CheckpointError(f"model card values must be finite (use null for a missing metric): {e}") from e
    problems = card_field_problems(json.loads(text))  # as it will be read back: tuples are lists there
    if problems:
        raise CheckpointError(f"save_checkpoint: the card would not load back: {'; '.join(problems)}")
    _check_card_classes(info, cfg, "save_checkpoint: the card")

    from safetensors.torch import save_file

    weights_path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "preset": preset, "dtype": info["weights_dtype"], "save_id": info["save_id"]}
    card_path = weights_path.with_suffix(".json")
    # both files are written whole before either replaces anything; while the two renames run, a checkpoint being
    # replaced stays intact as NAME.previous (a kill between them is named on load with that copy to restore)
    atomic_write_group([(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata)),
                        (card_path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))],
                       keep_previous=_saved_together(weights_path, card_path))
    return weights_path


def _save_id(weights_path: Path) -> str | None:
    """The ``save_id`` in a safetensors file's metadata (None for files saved before it existed or by others)."""
    from safetensors import safe_open

    with safe_open(str(weights_path), framework="pt", device="cpu") as f:
        return (f.metadata() or {}).get("save_id")


def _saved_together(weights_path: Path, card_path: Path) -> bool:
    """Whether the checkpoint at these paths is a readable pair from one save (so worth keeping while it is replaced):
    False when a file is missing or unreadable, or when their save ids differ (an interrupted earlier save)."""
    if not (weights_path.is_file() and card_path.is_file()):
        return False
    try:
        card_id = json.loads(card_path.read_text(encoding="utf-8")).get("save_id")
        weights_id = _save_id(weights_path)
    except Exception:  # any unreadable pair: nothing worth keeping (and never a reason to fail the new save)
        return False
    return not (card_id and weights_id and card_id != weights_id)


# ------------------------------------------------------------------------------------------------ load


_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header


def _refuse_non_safetensors(path: Path) -> None:
    """Raise CheckpointError unless ``path`` starts like safetensors (u64 header length, then ``{``)."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    with path.open("rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if len(head) == 9 and 0 < n <= _SAFETENSORS_MAX_HEADER and head[8:9] == b"{":  # a safetensors header starts
        if n > size - 8:
            raise CheckpointError(
                f"{path} is a truncated safetensors file: its header alone needs {n + 8} bytes and the file has "
                f"{size} (an interrupted download or copy?); copy or download it again")
        return
    # pickle protocol 2-5 (0x80 then the protocol byte), or torch.save's zip container; a safetensors file whose
    # header length happens to start with 0x80 was recognised above by its "{"
    if (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or head[:4] == b"PK\x03\x04":
        if path.name == "last_state.pt":  # efpn's own training state (engine.state.STATE_FILE), not a state_dict
            raise CheckpointError(
                f"{path} is a training run's resume state, not a checkpoint: load the run's best.safetensors or "
                f"last.safetensors beside it, or continue training with efpn train --resume {path.parent}")
        raise CheckpointError(
            f"refusing to unpickle {path}: efpn loads weights only from safetensors, because unpickling a "
            "file can run arbitrary code. If you trust it, convert it once: "
            f"sd = torch.load({str(path)!r}, weights_only=True); "
            "model = efpn.zoo.build(config); model.load_state_dict(sd); "
            "efpn.checkpoint.save_checkpoint(model, 'model.safetensors', card={...})"
        )
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path} looks like an ONNX model: efpn loads weights from .safetensors checkpoints "
                              "(with their .json card), and writes ONNX only as an export (efpn export); pass the "
                              ".safetensors the ONNX file was exported from")
    raise CheckpointError(f"{path} is not a safetensors file (bad header: truncated or corrupt?); efpn checkpoints are "
                          "a .safetensors file with its .json model card, as efpn train and efpn.save_checkpoint "
                          "write them")


def _default_builder(config: ModelConfig) -> nn.Module:
    # the checkpoint's weights replace any pretrained ones: build without them (no weight wheel needed)
    return zoo.build(config, pretrained=False)


def _check_card_classes(card: Mapping[str, Any], config: ModelConfig, where: str) -> None:
    """A card lists its classes twice (``classes`` for people and tools, ``config.class_names`` for the model):
    raise CheckpointError when they disagree, as one of them would name the model's outputs wrongly."""
    listed = card.get("classes")
    if listed and config.class_names and list(listed) != list(config.class_names):
        raise CheckpointError(f"{where} lists the classes {_few(list(listed))} but its config names "
                              f"{_few(list(config.class_names))}; make 'classes' match config.class_names")


def _few(names: list[Any], limit: int = 5) -> str:
    """``[a, b]``, or ``[a, b, c, d, e, …] (N in all)`` past ``limit`` names; each name shortened, so that a message
    quoting a card's list stays one line however long the list and its names are."""
    shown = ", ".join(n if isinstance(n, str) and len(n) <= 40 else short(n, 40) for n in names[:limit])
    return f"[{shown}, …] ({len(names)} in all)" if len(names) > limit else f"[{shown}]"


def _refuse_mismatch(weights_path: Path, card_path: Path, config: ModelConfig, problems: list[str]) -> None:
    """Raise CheckpointError naming ``problems`` (from :func:`check_state_dict`) when there are any."""
    if problems:
        raise CheckpointError(
            f"the card's config does not match the weights in {weights_path.name} "
            f"(config {short(config.name)} from {card_path.name}): "
            + "; ".join(problems)
            + ". The config builds a different model than the one "
            "that saved these weights: restore the card that came with them, or fix its 'config' (e.g. "
            "num_classes, preset options); strict=False skips missing/unexpected keys, not shape mismatches."
        )


def _refuse_two_saves(weights_path: Path, card_path: Path, saved: str | None, carded: Any) -> None:
    """Raise CheckpointError when the weights' and the card's ``save_id`` (both written by efpn) differ."""
    if saved and carded and saved != carded:
        kept = [previous_path(weights_path), previous_path(card_path)]
        restore = (f"; the checkpoint that save replaced is intact in {kept[0].name} and {kept[1].name}: restore it "
                   f"with  mv {shlex.quote(str(kept[0]))} {shlex.quote(str(weights_path))} && mv "
                   f"{shlex.quote(str(kept[1]))} {shlex.quote(str(card_path))}"
                   if all(p.is_file() for p in kept) else "")
        raise CheckpointError(
            f"{weights_path.name} and its card {card_path.name} come from two different saves (a save of this "
            "checkpoint was interrupted between writing its weights and its card, or one file was copied over): "
            f"save it again (efpn ship --overwrite, or the run's last/best), or restore both files together{restore}")


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    strict: bool = True,
    builder: Builder | None = None,
) -> nn.Module:
    """Rebuild a checkpoint's model from its card and load its weights; returns the model in eval mode.

    ``path`` is the ``.safetensors`` file, its ``.json`` card, or a folder holding one checkpoint. ``builder``
    (default :func:`efpn.zoo.build`) turns the card's config into a fresh module. Every key and shape is
    checked first, once before the model takes any memory (built on the meta device, against the file's header:
    a card asking for a huge model costs nothing): CheckpointError names missing, unexpected and mismatched keys
    (``strict=False`` tolerates missing and unexpected keys, never mismatched shapes). fp16 weights are cast to
    the model's dtypes, int8 weights multiplied by their per-channel scales.
    Pickled files and weights holding NaN or infinity are refused. The card is attached as ``model.card`` (a dict;
    treat it as read-only).
    """
    target = torch.device(device)  # an unknown name raises here, before anything is read
    if target.type == "cuda" and not torch.cuda.is_available():  # said before the model is built, not by torch after
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device='cpu'")
    weights_path, card_path = checkpoint_paths(path)
    _refuse_non_safetensors(weights_path)
    card = read_card(card_path)
    config = config_from_card(card, where=f"model card {card_path}")
    _check_card_classes(card, config, f"model card {card_path}")
    build = builder or _default_builder

    from safetensors import SafetensorError, safe_open

    try:
        metadata, shapes = read_header(weights_path)  # names and shapes only: no tensor is read yet
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read safetensors file {weights_path}: {e}") from e
    _refuse_two_saves(weights_path, card_path, metadata.get("save_id"), card.get("save_id"))
    # the config is compared with the stored shapes on a model that holds no memory before it is built for real: a
    # card edited to huge sizes (neck.channels: 20000) would otherwise allocate gigabytes, then fail this same check
    outline = meta_state_dict(build, config)
    if outline is not None:
        _refuse_mismatch(weights_path, card_path, config, check_state_dict(outline, stand_ins(shapes, outline), strict))
    model = build(config)
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # the handle is not iterable itself
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read safetensors file {weights_path}: {e}") from e
    tensors = _dequantized(tensors)
    expected = model.state_dict()
    _refuse_mismatch(weights_path, card_path, config, check_state_dict(expected, tensors, strict))
    state = {k: v.to(expected[k].dtype) if k in expected else v for k, v in tensors.items()}
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:  # a diverged or damaged save: every output would be NaN, shown as "no detections"
        raise CheckpointError(
            f"{weights_path.name} holds non-finite values (NaN or infinity) in {len(broken)} tensor(s), e.g. "
            f"{', '.join(short(k, 120) for k in broken[:3])}: the run that saved it diverged or the file is damaged. "
            "Use an earlier checkpoint of that run (last.safetensors / best.safetensors) or retrain")
    model.load_state_dict(state, strict=strict)
    model.card = card
    return model.to(device).eval()


def list_checkpoints(folder: str | os.PathLike[str], recursive: bool = True) -> list[dict[str, Any]]:
    """Every checkpoint (a ``.safetensors`` with a card beside it) under ``folder``, sorted by name.

    Each entry: ``path`` (weights), ``card_path``, ``name`` (card name, else the file stem, else the folder
    name for ``model.safetensors``), ``preset``, ``classes``, ``image_size``, ``metrics`` (the card's, may be
    empty), ``created``, ``size_mb``; a checkpoint whose card is missing or unreadable, or whose weights cannot be
    read (a dangling symlink: ``size_mb`` is None), is listed with an ``error`` instead. Never raises for an entry.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    pattern = "**/*.safetensors" if recursive else "*.safetensors"
    entries = []
    for weights in sorted(root.glob(pattern)):
        fallback = _default_name(weights)
        entry: dict[str, Any] = {
            "path": str(weights),
            "card_path": str(weights.with_suffix(".json")),
            "name": fallback,
            "size_mb": None,
        }
        try:
            entry["size_mb"] = round(weights.stat().st_size / 2**20, 3)
        except OSError as e:  # a dangling or looping symlink: one unreadable entry, never a failed listing
            entries.append({**entry, "error": f"weights file {weights} cannot be read ({e.strerror or e}); a broken "
                                              "link? Remove it or point it at the checkpoint's .safetensors"})
            continue
        try:
            card = read_card(weights)
        except CheckpointError as e:
            entry["error"] = str(e)
        else:
            entry.update(
                name=str(card.get("name") or fallback),
                preset=card.get("preset"),
                classes=card.get("classes", []),
                image_size=card.get("image_size"),
                metrics=card.get("metrics", {}),
                created=card.get("created"),
            )
        entries.append(entry)
    return sorted(entries, key=lambda e: (e["name"], e["path"]))
