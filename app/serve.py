"""Run the studio as a local subprocess: ``python -m app`` (``streamlit run app/streamlit_app.py``, its imports frozen
first) on a free 127.0.0.1 port.

Used by the browser tests and the studio benchmark (both drive Chromium against a real server), and handy in a
notebook. The server is stopped when the ``with`` block ends, whatever happened inside it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Flags of a headless Chromium that needs no sandbox, GPU or network (CI containers).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Poll ``url/_stcore/health`` until it answers 200; raise with the server log's tail if the process exits
    or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"streamlit not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@contextlib.contextmanager
def studio_server(env: Mapping[str, str], log: Path, timeout: float = 180.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """Serve the studio with ``env`` added to this process's environment (e.g. ``EFPN_CHECKPOINT``), its output
    in ``log``; yields ``(url, process)`` once healthy and terminates the server afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "app", "--server.headless", "true", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, timeout)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
