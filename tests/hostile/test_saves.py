"""Saves clean up after themselves and give every file of a checkpoint the same mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import efpn


def test_leftover_temporary_files_of_a_killed_save_are_removed(tmp_path: Path) -> None:
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=1).eval()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended: its half-written files are orphans
    left = [tmp_path / f".m.safetensors.tmp-{pid}", tmp_path / f".m.json.tmp-{pid}"]
    for f in left:
        f.write_bytes(b"half a file")
    mine = tmp_path / f".m.safetensors.tmp-{os.getpid() + 10**7}"  # a pid that does not exist either
    mine.write_bytes(b"x")
    path = efpn.save_checkpoint(model, tmp_path / "m.safetensors")
    assert not any(f.exists() for f in [*left, mine])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (path, path.with_suffix(".json"))}
    assert len(modes) == 1, modes
    assert efpn.load_model(path) is not None
