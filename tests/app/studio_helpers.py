"""Shared constants and helpers of the studio tests (imported by name: tests/app is on sys.path under pytest)."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the studio is the `app` package at the repository root
    sys.path.insert(0, str(REPO))

APP = REPO / "app" / "streamlit_app.py"
PAGES = ("detect", "dataset", "pyramid", "gates", "kernels", "assignment", "attribution", "compare", "learn")
SHARED_BROKEN = REPO.parent / "shared" / "data" / "broken" / "truncated.jpg"


def png_bytes(image: np.ndarray, fmt: str = "PNG", **kw: object) -> bytes:
    """Encode an array with Pillow (PNG by default)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kw)
    return buf.getvalue()


def ok(at) -> None:
    """The AppTest run raised nothing."""
    assert not at.exception, [e.value for e in at.exception]


def errors(at) -> list[str]:
    """The texts of the ``st.error`` boxes on the page."""
    return [e.value for e in at.error]


def metric(at, label: str) -> str:
    """The value of the ``st.metric`` labelled ``label`` (fails listing the labels there are)."""
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return found[0]


def goto(at, page: str):
    """Switch the AppTest to ``app/app_pages/<page>.py`` and run it."""
    return at.switch_page(f"app_pages/{page}.py").run()


def html_bars(svg: str) -> dict[str, dict[str, float]]:
    """The values an ``app.charts.bars_html`` chart draws: ``{series: {category: value}}``, read from its rects."""
    import html
    import re

    out: dict[str, dict[str, float]] = {}
    for s, c, v in re.findall(r'data-series="([^"]*)" data-category="([^"]*)" data-value="([^"]*)"', svg):
        out.setdefault(html.unescape(s), {})[html.unescape(c)] = float(v)
    return out


def studio_on(folder: Path, app_env: Path, monkeypatch: Any) -> Any:
    """A fresh studio session (AppTest, first run done) on the checkpoints of ``folder``, with the tests' tiny_efpn_n
    copied there from ``app_env`` as the default, beside whatever the test put in it."""
    from streamlit.testing.v1 import AppTest

    for name in ("tiny_efpn_n.safetensors", "tiny_efpn_n.json"):
        shutil.copy(app_env / name, folder / name)
    monkeypatch.setenv("EFPN_CHECKPOINT_DIR", str(folder))
    monkeypatch.setenv("EFPN_CHECKPOINT", str(folder / "tiny_efpn_n.safetensors"))
    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    return at
