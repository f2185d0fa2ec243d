"""efpn.runtime: the allocator and garbage-collector settings the CLI, studio and benchmarks opt into."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run(code: str, env_extra: dict[str, str]) -> str:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_applies_once_and_can_be_switched_off() -> None:
    code = "from efpn.runtime import keep_freed_memory as k; print(k(), k())"
    assert _run(code, {"EFPN_MALLOC_TUNING": "1"}) == "True True"
    assert _run(code, {"EFPN_MALLOC_TUNING": "0"}) == "False False"


def test_importing_efpn_leaves_the_allocator_alone() -> None:
    code = "import efpn, efpn.runtime as r; print(r.keep_freed_memory.cache_info().currsize)"
    assert _run(code, {}) == "0"


_FREEZE = """
import gc
from efpn.runtime import freeze_long_lived_objects as f
before = gc.get_freeze_count()
first, again = f(), f()
frozen = gc.get_freeze_count()
a = []; a.append(a); del a  # a cycle made after the freeze: still collected
print(before, first, again, frozen > 1000, gc.collect() >= 1)
"""


def test_freeze_long_lived_objects_freezes_once_and_later_cycles_are_still_collected() -> None:
    assert _run(_FREEZE, {"EFPN_GC_FREEZE": "1"}) == "0 True True True True"


def test_freeze_long_lived_objects_can_be_switched_off() -> None:
    assert _run(_FREEZE, {"EFPN_GC_FREEZE": "0"}) == "0 False False False True"


def test_importing_efpn_freezes_nothing() -> None:
    assert _run("import gc, efpn; print(gc.get_freeze_count())", {}) == "0"
