"""Train and val splits whose files list their classes differently (efpn.engine.data.load_train_data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from efpn.config import TrainConfig
from efpn.data.synthetic import write_synthetic_dataset


def test_val_labels_follow_the_class_names_of_train(tmp_path: Path) -> None:
    """Train and val COCO files listing the same categories in another order: val's labels are mapped by name onto
    train's; a val class train does not have is refused, naming both lists."""
    import json as _json

    from efpn.engine.data import load_train_data

    write_synthetic_dataset(tmp_path, 4, image_size=64, seed=0, val_fraction=0.0)
    doc = _json.loads((tmp_path / "annotations.json").read_text())
    # val: the same images, categories renumbered in reverse (ids 1..3 -> 3..1)
    flip = {1: 3, 2: 2, 3: 1}
    val = {**doc, "categories": [{**c, "id": flip[c["id"]]} for c in doc["categories"]],
           "annotations": [{**a, "category_id": flip[a["category_id"]]} for a in doc["annotations"]]}
    (tmp_path / "val.json").write_text(_json.dumps(val))
    (tmp_path / "two.yaml").write_text("format: coco\nroot: .\ntrain:\n  annotations: annotations.json\n  images: "
                                       "images\nval:\n  annotations: val.json\n  images: images\n")
    data = load_train_data(TrainConfig(model="tiny_efpn_n", data=str(tmp_path / "two.yaml"), val_split="val"), False)
    for t, v in zip(data.train, data.val, strict=True):  # same images: same labels once mapped by name
        assert t.labels.tolist() == v.labels.tolist()
    val["categories"][0]["name"] = "ship"
    (tmp_path / "val.json").write_text(_json.dumps(val))
    with pytest.raises(ValueError, match=r"uses classes \[ship\] that the train split does not have"):
        load_train_data(TrainConfig(model="tiny_efpn_n", data=str(tmp_path / "two.yaml"), val_split="val"), False)
