"""``python -m app [options of streamlit run]``: serve the studio, as ``make app`` does.

The same server as ``streamlit run app/streamlit_app.py [options]``, but torch, plotly, pandas and Streamlit are
imported first and the objects they made are frozen (:func:`efpn.runtime.freeze_long_lived_objects`) before the
server accepts a session. Streamlit collects all garbage after every script run, that is on every click, holding the
interpreter lock while the run's last messages wait to be sent: over those ~430,000 objects that took 0.26-0.33 s
on a 2-core server, and with them frozen it takes under a millisecond. Freezing inside the first session's script
run instead would freeze that session's own objects too: its state (its uploads included) would never be
collected once it is part of a reference cycle.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().with_name("streamlit_app.py")


def main(argv: list[str] | None = None) -> None:
    """Import, freeze, then hand over to ``streamlit run SCRIPT *argv`` in this process (it exits the process)."""
    # before torch loads its OpenMP runtime: idle worker threads sleep instead of spinning (see streamlit_app.py)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import pandas  # noqa: F401  (what every page imports, frozen below)
    import plotly.graph_objects  # noqa: F401
    import streamlit.web.cli as streamlit_cli
    import torch  # noqa: F401

    from efpn import freeze_long_lived_objects, keep_freed_memory

    keep_freed_memory()
    freeze_long_lived_objects()
    sys.argv = ["streamlit", "run", str(SCRIPT), *(sys.argv[1:] if argv is None else argv)]
    streamlit_cli.main(prog_name="streamlit")  # click names the program in its messages


if __name__ == "__main__":
    main()
