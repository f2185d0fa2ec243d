"""efpn studio: see why a detector finds or misses a tiny object. Router only (``st.navigation``).

Run ``make app`` (``python -m app``: the same server, its imported objects frozen first, see ``app/__main__.py``; or
``streamlit run app/streamlit_app.py``). Environment: ``EFPN_CHECKPOINT`` (the checkpoint to
open), ``EFPN_CHECKPOINT_DIR`` (the folder listed in the sidebar, default ``checkpoints/``),
``EFPN_STUDIO_MAX_PIXELS`` (larger images are downscaled), ``OMP_WAIT_POLICY`` (default ``PASSIVE`` here, see
below). The pages in ``app_pages/`` are UI only; model logic
is in ``efpn``; cached loading in ``app/loaders.py``, cached library calls in ``app/analyses.py``; figures in
``app/figures.py`` (images), ``app/charts.py`` and ``app/heatmaps.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before torch loads its OpenMP runtime: worker threads that run out of work sleep instead of spinning (libgomp spins
# by default). The server shares its cores with the browser drawing the page and often with a training run, and the
# spinning threads of two processes on the same cores wait on each other: beside a training run on 2 cores the
# gradient reach took 3.7-11.7 s spinning and 1.0-1.6 s passive (about 1 s on the quiet machine). A value set by
# the user is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas  # noqa: F401  (imported once here: concurrent first imports inside page code race each other)
import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/streamlit_app.py` puts only app/ on the path
    sys.path.insert(0, str(ROOT))

from app import state  # noqa: E402
from efpn import keep_freed_memory  # noqa: E402

keep_freed_memory()  # reuse heap blocks for large activations (efpn.runtime); once per server process
# (`python -m app`, which `make app` runs, also freezes the imported objects before the first session: app/__main__.py)

PAGES_DIR = Path(__file__).resolve().parent / "app_pages"
STYLE = Path(__file__).resolve().parent / "studio.css"

# "auto": expanded from 768 px up, collapsed below (Streamlit's rule). studio.css keeps its collapse button visible
# at every width, so a narrow window (or a touch screen, or the keyboard) can close it and give the page the room.
st.set_page_config(page_title="efpn studio", page_icon=":material/search:", layout="wide",
                   initial_sidebar_state="auto")
st.html(STYLE)  # style rules only: sent without taking space on the page

pages = [
    st.Page(PAGES_DIR / "detect.py", title="Detect", icon=":material/center_focus_strong:", default=True),
    st.Page(PAGES_DIR / "dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page(PAGES_DIR / "pyramid.py", title="Pyramid", icon=":material/stacks:"),
    st.Page(PAGES_DIR / "gates.py", title="Gates", icon=":material/filter_alt:"),
    st.Page(PAGES_DIR / "kernels.py", title="Kernels", icon=":material/grid_on:"),
    st.Page(PAGES_DIR / "assignment.py", title="Assignment", icon=":material/assignment:"),
    st.Page(PAGES_DIR / "attribution.py", title="Attribution", icon=":material/biotech:"),
    st.Page(PAGES_DIR / "compare.py", title="Compare", icon=":material/compare:"),
    st.Page(PAGES_DIR / "learn.py", title="Learn", icon=":material/school:"),
]
page = st.navigation(pages)
state.render_sidebar()
page.run()
