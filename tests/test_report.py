"""`efpn report`: the claims are regenerated from checkpoints and data, and missing inputs are said, not faked."""

from __future__ import annotations

import json
from pathlib import Path

from efpn.report import claims_report
from tests.conftest import REPO


def test_claims_report_from_shipped_checkpoints_without_shared_data(tmp_path: Path) -> None:
    readme = claims_report(tmp_path / "claims", shared_data=tmp_path / "absent", checkpoints=REPO / "checkpoints")
    text = readme.read_text()
    assert "Shared data not found" in text
    assert "efpn_n_synth" in text and "p5 grad" in text  # telemetry of the shipped flagship
    assert "No ResNet-18 FPN checkpoints are shipped yet." in text or "fpn_r18" in text
    claims = json.loads((tmp_path / "claims" / "claims.json").read_text())
    assert claims["checkpoints"]["efpn_n_synth"]["AP"] > 0.3
    assert any(p.suffix in (".png", ".html") for p in (tmp_path / "claims").iterdir())
