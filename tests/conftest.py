"""Shared test fixtures: one CPU thread (the CI machine has two cores), deterministic seeds, data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
#: Real annotated data beside the project (not part of the product); tests skip when it is absent.
SHARED_DATA = Path(os.environ.get("EFPN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test with a reason when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not present (set EFPN_SHARED_DATA to run these tests)")
    return SHARED_DATA
