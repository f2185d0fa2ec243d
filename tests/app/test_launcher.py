"""``python -m app`` (``make app``): Streamlit's own ``run`` command on the studio's script, after freezing the
imported objects; the browser tests serve the studio through it (app/serve.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_launcher_hands_its_options_to_streamlit_run() -> None:
    out = subprocess.run([sys.executable, "-m", "app", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Usage: streamlit run [OPTIONS] [TARGET]" in out.stdout


def test_the_launcher_freezes_before_streamlit_runs(monkeypatch) -> None:
    import gc

    import streamlit.web.cli as streamlit_cli

    import app.__main__ as launcher
    from efpn import runtime

    seen: dict[str, object] = {}

    def fake_main(**_: object) -> None:  # what Streamlit's CLI would get, and what was frozen by then
        seen["argv"], seen["frozen"] = list(sys.argv), gc.get_freeze_count()

    monkeypatch.setattr(streamlit_cli, "main", fake_main)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    runtime.freeze_long_lived_objects.cache_clear()
    try:
        launcher.main(["--server.port", "9999"])
    finally:
        gc.unfreeze()  # the test process goes on collecting as before
        runtime.freeze_long_lived_objects.cache_clear()
    assert seen["argv"] == ["streamlit", "run", str(launcher.SCRIPT), "--server.port", "9999"]
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 10_000
