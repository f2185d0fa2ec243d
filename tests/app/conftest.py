"""Fixtures of the studio tests: tiny checkpoints in a temporary folder, the app pointed at them, image bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from studio_helpers import APP

import efpn
from efpn import save_checkpoint
from efpn.data import SYNTH_CLASSES, make_synthetic_sample

#: Validation numbers written into the tiny card, so the Compare page has something to chart.
CARD_METRICS = {"AP": 0.12, "AP50": 0.3, "AP75": 0.08, "AP_vt": 0.02, "AP_t": 0.07, "AP_s": 0.15, "AP_m": 0.3,
                "AP_l": None, "AR": 0.2}


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_efpn_n (the default), tiny_yolov8_sgdm (to compare) and a checkpoint whose card does not match."""
    d = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    tiny = efpn.build_model("tiny_efpn_n", num_classes=3, class_names=SYNTH_CLASSES)
    card = {"metrics": CARD_METRICS, "data": {"dataset": "synthetic (test)", "val_split": "val"},
            "telemetry": {"starved_rate": 0.4, "gate_mass": {"p2": 0.2, "p3": 0.1}}}
    save_checkpoint(tiny, d / "tiny_efpn_n.safetensors", card=card)
    save_checkpoint(efpn.build_model("tiny_yolov8_sgdm", num_classes=3, class_names=SYNTH_CLASSES),
                    d / "tiny_yolov8_sgdm.safetensors")
    bad = save_checkpoint(tiny, d / "zz_mismatched.safetensors")
    card = json.loads(bad.with_suffix(".json").read_text())
    card["config"]["num_classes"], card["config"]["class_names"] = 5, []  # the weights hold 3 classes
    bad.with_suffix(".json").write_text(json.dumps(card))
    return d


@pytest.fixture
def app_env(checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the studio at the tiny checkpoints (AppTest runs the script in this process)."""
    monkeypatch.setenv("EFPN_CHECKPOINT_DIR", str(checkpoint_dir))
    monkeypatch.setenv("EFPN_CHECKPOINT", str(checkpoint_dir / "tiny_efpn_n.safetensors"))
    monkeypatch.delenv("EFPN_STUDIO_MAX_PIXELS", raising=False)
    return checkpoint_dir


@pytest.fixture
def app(app_env: Path) -> Iterator[object]:
    """An AppTest of the studio after its first run (the Detect page)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=180)
    at.run()
    yield at


@pytest.fixture(scope="session")
def sample_rgb() -> np.ndarray:
    """A 96 x 128 synthetic image with tiny objects."""
    return make_synthetic_sample(3, 0, (128, 96), 3, 16, (4, 8)).image
