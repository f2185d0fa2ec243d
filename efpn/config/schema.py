"""The one validation mechanism for configuration: typed dataclasses, filled from YAML/JSON mappings by one walker.

:func:`from_mapping` checks a parsed mapping against a dataclass's annotations — nested dataclasses, ``X | None``,
``Literal[...]``, ``bool``, ``int``, ``float`` (finite), ``str``, ``tuple[X, ...]`` and ``dict`` — and raises
:class:`ConfigError` naming the file, the key (dotted path) and what is accepted. :func:`read_yaml` reads a file
with the safe loader under a size cap. Error messages show values through :func:`short`, a repr bounded in
length and work, so a hostile value (an alias-expanded "billion laughs" structure) cannot make the message itself
exhaust memory.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")

#: Largest configuration file read (recipes and data YAMLs are a few KB; model cards under 100 KB).
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names the file, the key and what to do."""


def short(value: Any, limit: int = 80) -> str:
    """A repr of ``value`` of at most ``limit`` characters, built without visiting more than a few dozen items
    (containers are summarised by type and length beyond that)."""
    budget = [40]

    def walk(v: Any, depth: int) -> str:
        budget[0] -= 1
        if budget[0] < 0 or depth > 3:
            return "..."
        if isinstance(v, dict):
            items = [f"{walk(k, depth + 1)}: {walk(x, depth + 1)}" for k, x in list(v.items())[:4]]
            return "{" + ", ".join(items) + (", ..." if len(v) > 4 else "") + "}"
        if isinstance(v, list | tuple):
            items = [walk(x, depth + 1) for x in v[:6]]
            more = f", ... ({len(v)} items)" if len(v) > 6 else ""
            left, right = ("[", "]") if isinstance(v, list) else ("(", ")")
            return left + ", ".join(items) + more + right
        if isinstance(v, str):
            return repr(v[:limit] + ("..." if len(v) > limit else ""))
        text = repr(v) if isinstance(v, int | float | bool | type(None)) else f"<{type(v).__name__}>"
        return text[:limit]

    out = walk(value, 0)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file with the safe loader (no tags run code). ``what`` names the file in messages
    ("training recipe", "data YAML"). Raises FileNotFoundError for a missing file, ConfigError for a file over
    :data:`MAX_CONFIG_BYTES`, undecodable text or invalid YAML."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    size = p.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {p} is {size:,} bytes; a configuration file is at most {MAX_CONFIG_BYTES:,}")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {p} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except RecursionError as e:  # lists nested thousands deep: no configuration looks like that
        raise ConfigError(f"{what} {p} nests its YAML too deeply to read; is it really a {what}?") from e
    except yaml.YAMLError as e:
        # the parser's own words and the position (1-based, as editors count), not its multi-line repr
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} {p} is not valid YAML{where}: {problem[:200]}") from e


def _accepted(hint: Any) -> str:
    """A reader's description of what a type annotation accepts."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_accepted(a) for a in args if a is not type(None)] + (["null"] if type(None) in args else [])
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]  # a, b or c
    if origin is tuple:
        if not args:
            return "a list"
        item = _accepted(args[0])
        plural = {"a string": "strings", "an integer": "integers", "a finite number": "finite numbers"}
        return f"a list of {plural.get(item, item)}"
    if dataclasses.is_dataclass(hint):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(hint))}"
    if hint is dict or origin is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """``value`` checked against the annotation ``hint`` (numbers widened int -> float, lists -> tuples, nested
    mappings -> dataclasses). Raises :class:`ConfigError` ``"{where}: '{key}' must be ..., got ..."``."""

    def fail() -> typing.NoReturn:
        raise ConfigError(f"{where}: '{key}' must be {_accepted(hint)}, got {short(value)}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):  # True is not 1 here
            return value
        fail()
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            fail()
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where, key)
            except ConfigError:
                continue
        fail()
    if value is None:
        fail()
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            fail()
        return from_mapping(hint, value, where, prefix=f"{key}.")  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            fail()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], where, f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: '{key}' must be a list of {len(args)} items, got {short(value)}")
        return tuple(coerce(v, a, where, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args or ())))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            fail()
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                fail()
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            fail()
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            fail()
        return str(value)
    return value


def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's init fields, by name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def from_mapping(cls: type[T], data: Any, where: str, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` (a parsed YAML/JSON mapping), checking every key and value.

    Unknown keys are an error listing the valid ones; missing keys take the dataclass defaults. ``where`` names
    the source ("training recipe recipes/x.yaml"); ``prefix`` the dotted path of a nested mapping. The
    dataclass's own ``__post_init__`` checks (ranges, relations) run as usual; their ValueError is re-raised as a
    :class:`ConfigError` with ``where`` in front.
    """
    hints = field_hints(cls)
    if not isinstance(data, Mapping):
        what = "expected a mapping" if not prefix else f"'{prefix[:-1]}' must be a mapping"
        raise ConfigError(f"{where}: {what} with keys {', '.join(hints)}; got {short(data)}")
    unknown = sorted(str(k) for k in data if k not in hints)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {short([prefix + k for k in unknown], 200)}; valid keys: "
                          f"{', '.join(prefix + k for k in hints)}")
    values = {k: coerce(v, hints[k], where, prefix + k) for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e
