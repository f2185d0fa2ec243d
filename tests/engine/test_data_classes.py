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


def test_the_val_splits_loader_report_is_printed_and_kept_with_the_run(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A val source of its own drops an image (an annotation that cannot be read): validation, which picks the
    best weights, runs on fewer images, so what its loader dropped is printed beside train's and kept in the
    run's data_split.json."""
    import json as _json

    from efpn.engine.data import load_train_data

    write_synthetic_dataset(tmp_path, 4, image_size=64, seed=0, val_fraction=0.0)
    doc = _json.loads((tmp_path / "annotations.json").read_text())
    doc["annotations"].append({"id": 999, "image_id": doc["images"][0]["id"], "category_id": 1, "bbox": [1, 2]})
    (tmp_path / "val.json").write_text(_json.dumps(doc))
    (tmp_path / "two.yaml").write_text("format: coco\nroot: .\ntrain:\n  annotations: annotations.json\n  images: "
                                       "images\nval:\n  annotations: val.json\n  images: images\n")
    data = load_train_data(TrainConfig(model="tiny_efpn_n", data=str(tmp_path / "two.yaml"), val_split="val"), True)
    out = capsys.readouterr().out
    assert "val: 3 images" in out and "dropped whole" in out
    assert len(data.val) == 3 and data.split["val_loader"]["counts"] == {"malformed": 1, "malformed_image": 1}
    assert data.split["train_loader"]["images"] == 4 and data.split["train_loader"]["counts"] == {}
    _json.dumps(data.split)  # written as the run's data_split.json


def test_close_mosaic_reads_plain_crops_in_the_last_epochs(tmp_path: Path) -> None:
    """close_mosaic = 1 of 3 epochs: epochs 0-1 are the mosaic pipeline's samples, epoch 2 the plain pipeline's
    (same seed, same sample); without mosaic, or with 0, there is one pipeline; a negative count is refused."""
    import torch

    from efpn.data.dataset import DetectionDataset
    from efpn.data.splits import load_split
    from efpn.engine.data import SeededSamples, train_samples, train_transforms

    write_synthetic_dataset(tmp_path, 8, image_size=96, seed=1, val_fraction=0.0)
    data = str(tmp_path / "data.yaml")
    cfg = TrainConfig(model="tiny_efpn_n", data=data, image_size=64, epochs=3, mosaic=True, close_mosaic=1, seed=3)
    records, _, _ = load_split(data)
    samples = train_samples(cfg, records)
    assert samples.late_from == 2
    mosaic = SeededSamples(DetectionDataset(records, train_transforms(cfg)), seed=3)
    plain = SeededSamples(DetectionDataset(records, train_transforms(cfg, mosaic=False)), seed=3)

    def same(a: tuple, b: tuple) -> bool:
        return torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])

    early = [(samples[(e, i)], mosaic[(e, i)], plain[(e, i)]) for e in (0, 1) for i in range(8)]
    assert all(same(s, m) for s, m, _ in early)
    assert any(not same(m, p) for _, m, p in early)  # mosaic did tile some samples, so the check below bites
    assert all(same(samples[(2, i)], plain[(2, i)]) for i in range(8))
    for kw in (dict(close_mosaic=0), dict(mosaic=False)):
        assert train_samples(TrainConfig(**{**cfg.to_dict(), **kw}), records).late is None
    with pytest.raises(ValueError, match="close_mosaic must be >= 0"):
        TrainConfig(model="tiny_efpn_n", data=data, close_mosaic=-1)


def test_zoom_fields_reach_the_train_tiles(tmp_path: Path) -> None:
    """zoom_in in the run's config enlarges the training tiles (letterbox scale above 1 for some samples, never
    below 1 without zoom_out); out-of-range zoom, or zoom without tiles, is refused with the field named."""
    from efpn.data.splits import load_split
    from efpn.engine.data import train_samples

    write_synthetic_dataset(tmp_path, 6, image_size=96, seed=1, val_fraction=0.0)
    data = str(tmp_path / "data.yaml")
    records, _, _ = load_split(data)
    cfg = TrainConfig(model="tiny_efpn_n", data=data, image_size=64, epochs=1, zoom_in=2.0, seed=2)
    scales = [train_samples(cfg, records)[(0, i)][1]["scale"] for i in range(6)]
    assert min(scales) >= 1.0 and max(scales) > 1.05
    plain = [train_samples(TrainConfig(**{**cfg.to_dict(), "zoom_in": 1.0}), records)[(0, i)][1]["scale"]
             for i in range(6)]
    assert all(s == 1.0 for s in plain)
    with pytest.raises(ValueError, match="zoom_out must be in"):
        TrainConfig(model="tiny_efpn_n", data=data, zoom_out=0.5)
    with pytest.raises(ValueError, match="tile=False"):
        TrainConfig(model="tiny_efpn_n", data=data, tile=False, zoom_in=1.5)


def test_a_val_split_the_yaml_gives_that_holds_no_image_is_refused(tmp_path: Path) -> None:
    """It trained with no validation and no best weights, said only as "no validation" in the last line."""
    import json as _json

    from efpn.engine.data import load_train_data

    write_synthetic_dataset(tmp_path, 4, image_size=64, seed=0, val_fraction=0.0)
    doc = _json.loads((tmp_path / "annotations.json").read_text())
    (tmp_path / "val.json").write_text(_json.dumps({**doc, "images": [], "annotations": []}))
    (tmp_path / "two.yaml").write_text("format: coco\nroot: .\ntrain:\n  annotations: annotations.json\n  images: "
                                       "images\nval:\n  annotations: val.json\n  images: images\n")
    with pytest.raises(ValueError, match=r"split 'val' has no images to validate on"):
        load_train_data(TrainConfig(model="tiny_efpn_n", data=str(tmp_path / "two.yaml"), val_split="val"), False)
