"""Class-name lists: given inline, or read from a YOLO-style YAML or a one-name-per-line text file."""

from __future__ import annotations

import codecs
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ClassNames", "parse_names", "read_names"]

#: Class names as a user gives them: a list, or a path to a ``names.yaml`` / ``classes.txt``.
ClassNames = Sequence[str] | str | Path


def parse_names(value: Any, source: str = "names") -> list[str]:
    """Normalise a ``names`` value: a list, or a YOLO ``{0: person, 1: bicycle}`` dict (keys 0..K-1)."""
    if isinstance(value, dict):
        try:
            keyed = {int(k): v for k, v in value.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: class-name keys must be integers 0..K-1, got {list(value)[:5]}") from e
        if sorted(keyed) != list(range(len(keyed))):
            raise ValueError(f"{source}: class-name keys must be exactly 0..{len(keyed) - 1}, got {sorted(keyed)}")
        items = [keyed[i] for i in range(len(keyed))]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f"{source}: expected a list of class names or a {{index: name}} mapping, got {value!r:.80}")
    odd = [i for i, v in enumerate(items) if not isinstance(v, str | int) or isinstance(v, bool)]
    if odd:  # a list or a null would become the class "['x']" or "None"
        raise ValueError(f"{source}: class {odd[0]} is named {items[odd[0]]!r}; every class name is a string")
    names = [str(v) for v in items]
    # an empty name cannot be told from a missing one in a chart, a card or a CSV; a line break splits a class in
    # two wherever names are written one per line (classes.txt, the CLI's tables)
    bad = [i for i, n in enumerate(names) if not n.strip() or any(unicodedata.category(c) == "Cc" for c in n)]
    if bad:
        raise ValueError(f"{source}: class {bad[0]} is named {names[bad[0]]!r:.80}; a class name needs a visible "
                         "character and no line break or other control character")
    return names


def read_names(src: ClassNames) -> list[str]:
    """Class names from a list, or from a file: ``.yaml``/``.yml`` with a ``names`` key (list or index->name
    mapping, as in YOLO data files), otherwise a text file with one name per line (blank lines skipped)."""
    if not isinstance(src, str | Path):
        return parse_names(list(src))
    p = Path(src)
    if not p.is_file():
        raise FileNotFoundError(f"class-name file {p} does not exist")
    text = _names_text(p)
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as e:  # invalid, or nested too deeply to read
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise ValueError(f"class-name file {p} is not readable YAML ({first[:200]}); expected e.g. "
                             "'names: [cat, dog]'") from e
        if not isinstance(data, dict) or "names" not in data:
            raise ValueError(f"{p} has no 'names' key; expected e.g. 'names: [cat, dog]' or 'names: {{0: cat}}'")
        return parse_names(data["names"], source=str(p))
    return [line.strip() for line in text.splitlines() if line.strip()]


def _names_text(path: Path) -> str:
    """A class-name file's text: UTF-8 (with or without a byte-order mark), or UTF-16 with one (as Windows Notepad
    and LabelImg write it); another encoding is a ValueError naming the file."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"class-name file {path} is not UTF-8 text (byte {e.start} is {data[e.start:e.start + 1]!r}: "
                         "Latin-1 or another code page?); save it as UTF-8") from e
