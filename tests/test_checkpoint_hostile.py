"""Checkpoints a person edited or a folder that went stale: a card whose config asks for a huge model is refused
before that model is built, a broken link does not stop a listing, and messages stay short however long the
card's lists and strings are."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import efpn
from efpn import checkpoint, zoo
from efpn.checkpoint import CheckpointError, list_checkpoints, load_model, read_card, save_checkpoint
from efpn.config import ModelConfig
from efpn.models.state_shapes import meta_state_dict

HUGE = 200_000  # neck channels: several TB of parameters if built for real


def _edit_card(weights: Path, edit: Any) -> None:
    card_path = weights.with_suffix(".json")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    edit(card)
    card_path.write_text(json.dumps(card), encoding="utf-8")


def _saved(tmp_path: Path, preset: str = "tiny_fpn", **save: Any) -> Path:
    torch.manual_seed(0)
    model = efpn.build_model(preset, num_classes=3, class_names=("a", "b", "c")).eval()
    return save_checkpoint(model, tmp_path / f"{preset}.safetensors", **save)


def _builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the default device of every model build ``load_model`` makes; a build off the meta device with a
    config asking for :data:`HUGE` channels fails the test before anything is allocated."""
    devices: list[str] = []

    def guarded(config: ModelConfig) -> nn.Module:
        devices.append(torch.get_default_device().type)
        assert devices[-1] == "meta" or config.neck.channels != HUGE, "the huge model was built for real"
        return zoo.build(config, pretrained=False)

    monkeypatch.setattr(checkpoint, "_default_builder", guarded)
    return devices


# ---------------------------------------------------------------------------------------------- huge cards


def test_a_card_asking_for_a_huge_model_is_refused_before_it_is_built(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A card edited to ``neck.channels: 6000`` took 53 s and 9.4 GB before the shape mismatch was named (20000:
    a raw RuntimeError asking for 14.4 GB); the config is now compared with the header's shapes on the meta device."""
    path = _saved(tmp_path)
    _edit_card(path, lambda card: card["config"]["neck"].update(channels=HUGE))
    config = checkpoint.config_from_card(read_card(path))
    outline = meta_state_dict(zoo.build, config)
    assert outline is not None and sum(t.numel() for t in outline.values()) * 4 > 100 * 2**30  # > 100 GiB for real
    devices = _builds(monkeypatch)
    with pytest.raises(CheckpointError, match=r"the card's config does not match the weights in tiny_fpn\.safetensors"):
        load_model(path)
    assert devices == ["meta"]
    with pytest.raises(CheckpointError, match="shape/dtype mismatch"):  # strict=False never tolerates shapes
        load_model(path, strict=False)
    assert devices == ["meta", "meta"]


def test_a_custom_builder_is_also_checked_on_the_meta_device(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    _edit_card(path, lambda card: card["config"]["neck"].update(channels=HUGE))
    devices: list[str] = []

    def builder(config: ModelConfig) -> nn.Module:
        devices.append(torch.get_default_device().type)
        assert devices[-1] == "meta", "the huge model was built for real"
        return zoo.build(config, pretrained=False)

    with pytest.raises(CheckpointError, match="does not match the weights"):
        load_model(path, builder=builder)
    assert devices == ["meta"]


@pytest.mark.parametrize("storage", ["fp32", "fp16", "int8"])
def test_matching_checkpoints_still_load_in_every_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          storage: str) -> None:
    """The header check compares the state_dict's shapes: int8 weights keep their float shape, their scale entries
    are not state_dict keys."""
    torch.manual_seed(0)
    model = efpn.build_model("tiny_yolov8_sgdm", num_classes=3).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", storage=storage)  # type: ignore[arg-type]
    devices = _builds(monkeypatch)
    loaded = load_model(path)
    assert devices == ["meta", "cpu"]  # checked without memory, then built once for real
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        got, want = loaded(x), model(x)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want), strict=True):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            torch.testing.assert_close(a, b, atol=0.5 if storage == "int8" else 0.05, rtol=0.1)


def test_a_builder_that_cannot_build_on_meta_is_built_for_real(tmp_path: Path) -> None:
    path = _saved(tmp_path, "tiny_yolov8_sgdm")

    def data_dependent(config: ModelConfig) -> nn.Module:
        torch.zeros(1).item()  # fails on the meta device: no data there
        return zoo.build(config, pretrained=False)

    assert load_model(path, builder=data_dependent).card["preset"] == "tiny_yolov8_sgdm"


def test_two_saves_are_still_named_before_the_shapes(tmp_path: Path) -> None:
    a = _saved(tmp_path)
    b = _saved(tmp_path, "tiny_yolov8_sgdm")
    b.replace(a)  # other weights beside a's card: named as a save of two files, not as a config mismatch
    with pytest.raises(CheckpointError, match="come from two different saves"):
        load_model(a)


# ---------------------------------------------------------------------------------------------- listings


def test_a_dangling_symlink_is_listed_as_unreadable(tmp_path: Path) -> None:
    """One broken ``*.safetensors`` link raised FileNotFoundError from list_checkpoints, on every studio page."""
    _saved(tmp_path)
    os.symlink(tmp_path / "gone" / "x.safetensors", tmp_path / "dangling.safetensors")
    os.symlink(tmp_path / "loop_b.safetensors", tmp_path / "loop_a.safetensors")
    os.symlink(tmp_path / "loop_a.safetensors", tmp_path / "loop_b.safetensors")
    entries = {Path(e["path"]).name: e for e in list_checkpoints(tmp_path)}
    assert "error" not in entries["tiny_fpn.safetensors"] and entries["tiny_fpn.safetensors"]["size_mb"] > 0
    dangling = entries["dangling.safetensors"]
    assert dangling["size_mb"] is None and "cannot be read" in dangling["error"]
    assert all("error" in e for name, e in entries.items() if name.startswith("loop"))


# ---------------------------------------------------------------------------------------------- bounded messages


def test_a_million_disagreeing_class_names_give_a_short_message(tmp_path: Path) -> None:
    """1 million names in 'classes' put 8.9 MB on stderr; the message now gives counts and the first few."""
    path = _saved(tmp_path)
    _edit_card(path, lambda card: card.update(classes=[f"c{i}" for i in range(1_000_000)]))
    with pytest.raises(CheckpointError, match=r"lists the classes \[c0, c1, c2, c3, c4, …\] \(1000000 in all\)") as e:
        load_model(path)
    assert len(str(e.value)) < 1000
    long_name = "x" * 100_000
    _edit_card(path, lambda card: card.update(classes=[long_name, "b", "c"]))
    with pytest.raises(CheckpointError, match="lists the classes") as e:
        load_model(path)
    assert len(str(e.value)) < 1000
    model = efpn.build_model("tiny_fpn", num_classes=3, class_names=("a", "b", "c"))
    with pytest.raises(CheckpointError, match=r"\(200000 in all\)") as e:
        save_checkpoint(model, tmp_path / "s.safetensors", card={"classes": ["a"] * 200_000})
    assert len(str(e.value)) < 1000


@pytest.mark.parametrize(("field", "value"), [("format", "x" * 1_000_000), ("format_version", [1] * 100_000),
                                              ("format_version", "9" * 100_000)])
def test_card_strings_and_lists_are_quoted_short(tmp_path: Path, field: str, value: Any) -> None:
    path = _saved(tmp_path)
    _edit_card(path, lambda card: card.update({field: value}))
    with pytest.raises(CheckpointError, match=field) as e:
        read_card(path)
    assert len(str(e.value)) < 1000


def test_a_long_config_name_is_quoted_short_in_a_mismatch(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    _edit_card(path, lambda card: card["config"].update(name="n" * 100_000, neck={**card["config"]["neck"],
                                                                                 "channels": 16}))
    with pytest.raises(CheckpointError, match="does not match the weights") as e:
        load_model(path)
    assert len(str(e.value)) < 3000
