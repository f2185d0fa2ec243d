"""app/loaders.py: checkpoints, decoded uploads and the bundled samples, without a Streamlit session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from studio_helpers import REPO, png_bytes

from app import loaders


def test_default_checkpoint_and_its_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EFPN_CHECKPOINT", raising=False)
    entries = [{"path": "/x/a.safetensors", "error": "bad card"}, {"path": "/x/b.safetensors"},
               {"path": f"/x/{loaders.DEFAULT_CHECKPOINT_NAME}"}]
    assert loaders.default_checkpoint(entries) == f"/x/{loaders.DEFAULT_CHECKPOINT_NAME}"
    assert loaders.default_checkpoint(entries[:2]) == "/x/b.safetensors"  # the first readable one
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"w")
    monkeypatch.setenv("EFPN_CHECKPOINT", str(ckpt))
    assert loaders.default_checkpoint(entries) == str(ckpt)
    before = loaders.checkpoint_key(str(ckpt))
    os.utime(ckpt, ns=(1, 10**18))
    assert loaders.checkpoint_key(str(ckpt)) != before  # a retrained file is a new model


def test_uploaded_checkpoint_is_stored_by_content(tmp_path: Path) -> None:
    path = loaders.save_uploaded_checkpoint("../../mine.safetensors", b"weights", b"{}")
    assert path.name == "mine.safetensors" and path.read_bytes() == b"weights"
    assert path.with_suffix(".json").read_bytes() == b"{}"
    assert loaders.save_uploaded_checkpoint("mine.safetensors", b"weights", b"{}") == path


def test_large_images_are_downscaled_with_a_notice() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    decoded = loaders.decode_image(loaders.digest_of(data), data, 80 * 80)
    assert decoded.original_hw == (120, 160) and decoded.rgb.shape[0] * decoded.rgb.shape[1] <= 80 * 80
    assert "downscaled" in (decoded.notice or "")
    small = loaders.decode_image(loaders.digest_of(data), data, loaders.max_pixels())
    assert small.notice is None and small.rgb.shape == (120, 160, 3)


def test_bundled_samples_have_ground_truth() -> None:
    samples, names = loaders.load_samples()
    assert names == ["disc", "square", "cross"] and len(samples) == 4
    assert all(s.path.parent == REPO / "app" / "samples" / "images" and len(s.boxes) == len(s.labels) > 0
               for s in samples)
