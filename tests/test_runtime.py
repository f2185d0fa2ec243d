"""efpn.runtime: the allocator setting the CLI, studio and benchmarks opt into."""

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
