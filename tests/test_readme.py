"""The README's Python API block runs as printed (on a synthetic image named as it names it), its command lines
parse, and its checkpoint table is the shipped checkpoints' cards and files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_api_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API in ten lines", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, "README: no python block under 'Python API in ten lines'"
    code = block.group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 12  # ten lines, give or take a wrapped one
    rgb = np.full((240, 320, 3), 40, np.uint8)
    rgb[100:110, 150:160] = 230  # a small bright target
    Image.fromarray(rgb).save(tmp_path / "image.png")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md (Python API)", "exec"), scope)  # noqa: S102 - the README's own code
    view = scope["view"]
    assert view.detections is not None and "p3" in view.gates


def test_every_command_line_of_the_readme_parses() -> None:
    import shlex

    from efpn.cli.main import build_parser

    section = README.read_text(encoding="utf-8").split("## Command line", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README: no bash block under 'Command line'"
    parser = build_parser()
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    commands = [line for line in lines if line.startswith("efpn ")]
    assert len(commands) >= 10
    for command in commands:
        argv = [a for a in shlex.split(command)[1:] if not (a.startswith("[") or a.endswith("]"))]  # [optional]
        try:
            parser.parse_args(argv)
        except SystemExit as e:  # argparse's way of refusing a line
            raise AssertionError(f"README command does not parse: {command}") from e


def test_the_checkpoint_table_matches_the_cards_and_files() -> None:
    """Every row of the README's checkpoint table names a shipped checkpoint, and its metrics, storage dtype and
    size are those of the card and the file (so a re-shipped model cannot leave a stale row behind)."""
    import json

    root = README.parent
    section = README.read_text(encoding="utf-8").split("## Trained checkpoints", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| `")]
    assert rows, "README: no rows in the checkpoint table"
    shipped = {p.stem for p in (root / "checkpoints").glob("*.safetensors")}
    named = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        name = re.match(r"`([^`]+)`", cells[0]).group(1)  # type: ignore[union-attr]
        named.add(name)
        card = json.loads((root / "checkpoints" / f"{name}.json").read_text())
        metrics = card["metrics"]
        for cell, key in zip(cells[2:8], ("AP", "AP50", "AP_vt", "AP_t", "AP_s", "AP_m")):
            value = metrics.get(key)
            shown = cell.strip("*")
            assert shown == ("–" if value is None else f"{value:.3f}"), f"README row {name}: {key} {cell} vs {value}"
        dtype, size = cells[8].split()[0], float(cells[8].split()[1])
        assert dtype == card["storage"], f"README row {name}: stored {dtype}, the card says {card['storage']}"
        mb = (root / "checkpoints" / f"{name}.safetensors").stat().st_size / 1e6
        assert abs(size - mb) < 0.051, f"README row {name}: {size} MB, the file is {mb:.2f} MB"
    assert named == shipped, f"README table vs checkpoints/: missing {shipped - named}, stale {named - shipped}"
