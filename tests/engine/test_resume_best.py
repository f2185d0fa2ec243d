"""A run stopped mid-epoch (``max_steps``) and resumed keeps the same best checkpoint as a run never stopped."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from torch.testing import assert_close

from efpn.data.synthetic import write_synthetic_dataset
from efpn.engine.train import train
from tests.engine.test_train import _small


def test_a_mid_epoch_stop_is_validated_but_never_kept_as_best(tmp_path: Path) -> None:
    """The stop's validation is recorded in last.json, but an uninterrupted run never validates there: kept as best,
    it made a resumed run's best.safetensors differ from the straight run's (up to 23.9 in one weight)."""
    root = tmp_path / "synth"
    write_synthetic_dataset(root, 12, image_size=96, seed=2, min_size=4, max_size=20, objects_per_image=(2, 6),
                            val_fraction=0.25)
    kw = dict(epochs=2, val_split="val", val_every=1)
    straight = train(_small(root / "data.yaml", tmp_path / "a", **kw))
    stopped = train(_small(root / "data.yaml", tmp_path / "b", max_steps=3, **kw))
    assert stopped.best is None and json.loads((stopped.run_dir / "last.json").read_text())["metrics"]
    resumed = train(_small(root / "data.yaml", tmp_path / "b", resume="auto", **kw))
    assert straight.best is not None and resumed.best is not None and resumed.best_ap == straight.best_ap
    assert_close(load_file(resumed.best), load_file(straight.best), rtol=0, atol=0)
