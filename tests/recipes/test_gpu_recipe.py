"""The GPU recipe runs end to end on the CPU (DRY_RUN=1: two steps per job) and leaves what a device call brings
back: at most 8 files in $OUT, a summary with every run's metrics, a throughput line (and SGDM's step against the
static YOLOv8n), and checkpoint parts that unpack into loadable int8 checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import efpn
from efpn.data.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_recipe_dry_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synthetic_dataset(data / "sirst", num_images=6, image_size=64, seed=0, val_fraction=0.34)
    (data / "sirst.yaml").write_text((data / "sirst" / "data.yaml").read_text().replace("root: .", "root: sirst"))
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "WORK": str(work), "EFPN_DATA": str(data),
           "JOBS": "efpn_bs_mv2,yolov8n_sgdm", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "recipes" / "gpu_full_budget.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"summary.json", "throughput.txt", "log.txt"} <= set(files), files
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"sirst_efpn_bs_mv2_s0", "sirst_yolov8n_sgdm_s0"}
    for run in summary.values():
        assert "AP" in run["metrics"] and "AP_vt" in run["sliced_256"]
    throughput = (out / "throughput.txt").read_text()
    assert "img/s" in throughput
    # both SGDM forms' steps against the static YOLOv8n were timed (eager only on the CPU), bench files removed
    for preset in ("yolov8n_sgdm", "yolov8n_sgdm_full"):
        assert f"{preset} train step (eager): | train step time" in throughput, throughput
        assert f"| {preset}: " in throughput and "| yolov8n: " in throughput, throughput
    assert not list((REPO / "bench" / "results").glob("_gpu_recipe_sgdm_*"))
    parts = sorted(out.glob("ckpt_*.tar"))
    blob = tmp_path / "all.tar"
    blob.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(blob) as tar:
        tar.extractall(tmp_path / "ckpt", filter="data")
    model = efpn.load_model(str(tmp_path / "ckpt" / "sirst_efpn_bs_mv2_s0.safetensors"))
    assert model.config.name == "efpn_bs_mv2"
    # each complete run's record comes back too, for efpn report's seed comparisons
    from efpn.cli.records import load_records

    kept = load_records(tmp_path / "ckpt" / "records")
    assert sorted(kept) == ["sirst_efpn_bs_mv2_s0", "sirst_yolov8n_sgdm_s0"]
    assert kept["sirst_yolov8n_sgdm_s0"]["last"]["training"]["seed"] == 0
