"""Checkpoint contracts: safetensors + card round trips, mismatches named, pickles refused, resume state."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.testing import assert_close

from efpn.checkpoint import CheckpointError, list_checkpoints, load_model, read_card, save_checkpoint
from efpn.config import ModelConfig, NeckConfig
from efpn.engine.state import (
    capture_rng_states,
    load_training_state,
    restore_rng_states,
    restore_training_state,
    save_training_state,
)

CONFIG = ModelConfig(name="standin", num_classes=3, neck=NeckConfig(channels=8), class_names=("a", "b", "c"))


class StandIn(nn.Module):
    """A tiny conv + BN + linear model built from a ModelConfig: efpn.zoo.build's stand-in in fast tests."""

    def __init__(self, config: ModelConfig, extra_layer: bool = False):
        super().__init__()
        c = config.neck.channels
        self.config = config
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, config.num_classes)
        if extra_layer:
            self.extra = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.stem(x)).relu().mean((2, 3)))


def build_standin(config: ModelConfig) -> nn.Module:
    return StandIn(config)


def trained_standin() -> StandIn:
    """A stand-in whose weights and BN running statistics differ from a fresh build."""
    model = StandIn(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for _ in range(3):
            model(torch.rand(4, 3, 8, 8) * 3)
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[StandIn, Path]:
    model = trained_standin()
    card = {"metrics": {"AP": 0.25}, "epochs": 3}
    path = save_checkpoint(model, tmp_path / "run" / "model.safetensors", card=card)
    return model, path


# ---------------------------------------------------------------------------------------------- round trips


def test_round_trip_reproduces_outputs(saved: tuple[StandIn, Path]) -> None:
    model, path = saved
    x = torch.rand(2, 3, 8, 8)
    expected = model(x)
    for name in (path, path.with_suffix(".json"), path.parent, str(path)):
        loaded = load_model(name, builder=build_standin)
        assert not loaded.training
        assert_close(loaded(x), expected, rtol=0, atol=0)
    card = loaded.card
    assert ModelConfig.from_dict(card["config"]) == CONFIG
    assert card["format"] == "efpn" and card["preset"] == "standin" and card["weights"] == "model.safetensors"
    assert card["metrics"] == {"AP": 0.25} and card["epochs"] == 3 and card["classes"] == ["a", "b", "c"]
    assert card["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert read_card(path) == card
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "efpn" and f.metadata()["preset"] == "standin"
        assert f.get_tensor("stem.weight").dtype == torch.float32


def test_half_stores_fp16_and_loads_fp32(tmp_path: Path) -> None:
    model = trained_standin()
    with torch.no_grad():
        model.bn.running_var[0] = 1e6  # beyond fp16's range: this tensor must stay fp32
    path = save_checkpoint(model, tmp_path / "half.safetensors", card={}, half=True)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("stem.weight").dtype == torch.float16
        assert f.get_tensor("bn.running_mean").dtype == torch.float16
        assert f.get_tensor("bn.running_var").dtype == torch.float32
        assert f.get_tensor("bn.num_batches_tracked").dtype == torch.int64
    loaded = load_model(path, builder=build_standin)
    assert all(p.dtype == torch.float32 for p in loaded.state_dict().values() if p.is_floating_point())
    assert read_card(path)["weights_dtype"] == "float16"
    x = torch.rand(2, 3, 8, 8)
    assert_close(loaded(x), model(x), rtol=1e-2, atol=1e-2)
    assert_close(loaded.bn.running_var, model.bn.running_var, rtol=0, atol=0)



def test_int8_storage_quantizes_conv_weights_per_channel(tmp_path: Path) -> None:
    """int8: big weights as int8 + per-channel scales (error <= half a step), the rest fp16; a real preset
    gives the same detections and its file is about a quarter of fp32."""
    import efpn
    from efpn.storage import INT8_SCALE_PREFIX, dequantize_int8, quantize_int8

    w = torch.randn(8, 4, 3, 3) * torch.linspace(0.01, 3.0, 8)[:, None, None, None]
    w[3] = 0.0
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (8,) and float(scale[3]) == 1.0
    err = (dequantize_int8(q, scale) - w).abs().reshape(8, -1).amax(1)
    assert bool((err <= scale / 2 + 1e-7).all()), (err, scale)

    torch.manual_seed(0)
    model = efpn.build_model("tiny_efpn_n", num_classes=3).eval()
    p32 = save_checkpoint(model, tmp_path / "m32.safetensors")
    p8 = save_checkpoint(model, tmp_path / "m8.safetensors", storage="int8")
    assert read_card(p8)["weights_dtype"] == "int8-weights"
    with safe_open(str(p8), framework="pt") as f:
        keys = set(f.keys())
        big = [k for k, v in model.state_dict().items() if v.is_floating_point() and v.dim() >= 2 and v.numel() >= 1024]
        assert big and all(f.get_tensor(k).dtype == torch.int8 and INT8_SCALE_PREFIX + k in keys for k in big)
    assert p8.stat().st_size < 0.4 * p32.stat().st_size
    loaded = load_model(p8)
    assert all(v.dtype == model.state_dict()[k].dtype for k, v in loaded.state_dict().items())
    x = torch.rand(1, 3, 128, 128)
    a, b = model.predict(x, score_thresh=0.0)[0], loaded.predict(x, score_thresh=0.0)[0]
    assert_close(b["scores"][:20], a["scores"][:20], rtol=0, atol=5e-3)


def test_damaged_int8_file_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    import efpn
    from efpn.checkpoint import INT8_SCALE_PREFIX

    model = efpn.build_model("tiny_efpn_n", num_classes=3)
    path = save_checkpoint(model, tmp_path / "m.safetensors", storage="int8")
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.startswith(INT8_SCALE_PREFIX))
    tensors[key] = tensors[key][:1].clone()
    save_file(tensors, str(path), metadata={"format": "efpn"})
    with pytest.raises(CheckpointError, match="damaged"):
        load_model(path)
    with pytest.raises(CheckpointError, match="storage must be one of"):
        save_checkpoint(trained_standin(), tmp_path / "x.safetensors", card={}, storage="int4")

def test_tied_weights_are_saved(tmp_path: Path) -> None:
    def build_tied(config: ModelConfig) -> nn.Module:
        m = StandIn(config)
        m.head2 = nn.Linear(config.neck.channels, config.num_classes)
        m.head2.weight = m.head.weight  # shared storage: safetensors refuses it unless copies are written
        return m

    model = build_tied(CONFIG)
    path = save_checkpoint(model, tmp_path / "tied.safetensors", card={})
    loaded = load_model(path, builder=build_tied)
    assert_close(loaded.head2.weight, model.head.weight, rtol=0, atol=0)
    assert loaded.head2.weight is loaded.head.weight


def test_zoo_detector_round_trip(tmp_path: Path) -> None:
    zoo = pytest.importorskip("efpn.zoo")
    model = zoo.build(zoo.get_config("tiny_yolov8_sgdm", 2)).eval()
    path = save_checkpoint(model, tmp_path / "det.safetensors", card={"image_size": 64})
    loaded = load_model(path)  # default builder: efpn.zoo.build
    assert type(loaded) is type(model) and loaded.card["preset"] == "tiny_yolov8_sgdm"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded(x), model(x)):
            assert a.keys() == b.keys()
            for key in a:
                assert_close(a[key], b[key], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- refusals


def test_card_classes_must_agree_with_the_config(tmp_path: Path) -> None:
    """A card whose 'classes' disagree with config.class_names is refused on save and on load, naming both."""
    import json

    zoo = pytest.importorskip("efpn.zoo")
    model = zoo.build(zoo.get_config("tiny_yolov8_sgdm", 2, class_names=("car", "bus"))).eval()
    with pytest.raises(CheckpointError, match=r"lists the classes \[bus, car\] but its config names \[car, bus\]"):
        save_checkpoint(model, tmp_path / "a.safetensors", card={"classes": ["bus", "car"]})
    path = save_checkpoint(model, tmp_path / "b.safetensors")
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["classes"] == ["car", "bus"]
    card["classes"] = ["van", "bus"]
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"model card .*b.json lists the classes \[van, bus\]"):
        load_model(path)


def test_mismatched_config_names_the_keys(saved: tuple[StandIn, Path]) -> None:
    _, path = saved
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["config"]["num_classes"] = 5
    card["config"]["class_names"] = []
    card_path.write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="does not match") as err:
        load_model(path, builder=build_standin)
    msg = str(err.value)
    assert "head.weight weights (3, 8) vs model (5, 8)" in msg and "head.bias" in msg
    with pytest.raises(CheckpointError, match="head.weight"):
        load_model(path, builder=build_standin, strict=False)  # shapes are never skipped


def test_missing_and_unexpected_keys(saved: tuple[StandIn, Path]) -> None:
    model, path = saved
    with pytest.raises(CheckpointError, match=r"missing from the weights \(2\): extra.bias, extra.weight"):
        load_model(path, builder=lambda c: StandIn(c, extra_layer=True))
    loaded = load_model(path, builder=lambda c: StandIn(c, extra_layer=True), strict=False)
    assert_close(loaded.head.weight, model.head.weight)

    bigger = StandIn(CONFIG, extra_layer=True)
    path2 = save_checkpoint(bigger, path.with_name("bigger.safetensors"), card={})
    with pytest.raises(CheckpointError, match=r"unexpected in the weights \(2\): extra.bias, extra.weight"):
        load_model(path2, builder=build_standin)


def test_pickle_is_refused_without_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained_standin()
    save_checkpoint(model, tmp_path / "model.safetensors", card={})
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(model.state_dict(), tmp_path / "disguised.safetensors")
    (tmp_path / "disguised.json").write_text((tmp_path / "model.json").read_text())

    def no_unpickling(*args, **kwargs):
        raise AssertionError("load_model must never call torch.load")

    monkeypatch.setattr(torch, "load", no_unpickling)
    for name in ("model.pt", "disguised.safetensors"):
        with pytest.raises(CheckpointError, match="refusing to unpickle .*convert it once"):
            load_model(tmp_path / name, builder=build_standin)
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # a raw pickle
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_model(tmp_path / "legacy.pt", builder=build_standin)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model(tmp_path / "junk.safetensors", builder=build_standin)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.safetensors", builder=build_standin)
    torch.save({"step": 3}, tmp_path / "last_state.pt")  # a run's resume state: it said to load_state_dict it
    with pytest.raises(CheckpointError, match="resume state, not a checkpoint.*efpn train --resume"):
        load_model(tmp_path / "last_state.pt", builder=build_standin)
    if not torch.cuda.is_available():  # said before anything is built, not torch's driver error after
        with pytest.raises(ValueError, match="CUDA is not available here; use device='cpu'"):
            load_model(tmp_path / "model.safetensors", device="cuda", builder=build_standin)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch" + b"\x00" * 32)  # an ONNX export's start
    with pytest.raises(CheckpointError, match="looks like an ONNX model.*pass the .safetensors"):
        load_model(tmp_path / "model.onnx", builder=build_standin)


def test_truncated_safetensors_is_named_as_such(tmp_path: Path) -> None:
    """A safetensors file cut inside its header (an interrupted download) says so, also when its header length's
    first byte is 0x80, the first byte of a pickle."""
    for n in (0x8C80, 0x0280):  # header lengths whose first byte is 0x80 (the second: then 0x02, as protocol 2)
        path = tmp_path / f"cut_{n}.safetensors"
        path.write_bytes(n.to_bytes(8, "little") + b'{"__metadata__": {"format": "pt"}, "w": {' + b" " * 100)
        (tmp_path / f"cut_{n}.json").write_text("{}")
        with pytest.raises(CheckpointError, match=rf"truncated safetensors file: its header alone needs {n + 8} "):
            load_model(path, builder=build_standin)
    model = trained_standin()
    whole = save_checkpoint(model, tmp_path / "whole.safetensors", card={})
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:40])
    cut.with_suffix(".json").write_text(whole.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match="truncated safetensors file"):
        load_model(cut, builder=build_standin)


def test_missing_or_bad_card(saved: tuple[StandIn, Path]) -> None:
    _, path = saved
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card_path.unlink()
    with pytest.raises(CheckpointError, match="no model card .*model.json"):
        load_model(path, builder=build_standin)
    card_path.write_text(json.dumps({k: v for k, v in card.items() if k != "config"}))
    with pytest.raises(CheckpointError, match="no 'config'"):
        load_model(path, builder=build_standin)
    card_path.write_text(json.dumps({**card, "config": {**card["config"], "bogus": 1}}))
    with pytest.raises(CheckpointError, match="not a valid ModelConfig.*bogus"):
        load_model(path, builder=build_standin)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("classes", 5, r"'classes' is 5, expected a JSON list"),
    ("classes", [1, 2], r"'classes' must list class names as strings"),
    ("data", "sirst", r"'data' is 'sirst', expected a JSON object"),
    ("num_parameters", "1.2M", r"'num_parameters' is '1.2M', expected a whole number"),
    ("image_size", True, r"'image_size' is True, expected a whole number"),
    ("metrics", {"AP": [0.3], "AP50": 0.5}, r"'metrics' holds non-numbers under 'AP'"),
    ("telemetry", [], r"'telemetry' is \[\], expected a JSON object"),
], ids=["classes-int", "classes-ints", "data-str", "params-str", "size-bool", "metric-list", "telemetry-list"])
def test_a_card_field_of_the_wrong_type_is_refused_where_the_card_is_read(
        saved: tuple[StandIn, Path], field: str, value: object, says: str) -> None:
    """A hand-edited field of the wrong type fails at the card, naming the field, not later in whichever tool reads
    it; a folder listing marks that checkpoint and keeps the others."""
    _, path = saved
    card_path = path.with_suffix(".json")
    good = card_path.read_text()
    card_path.write_text(json.dumps({**json.loads(good), field: value}))
    for read in (read_card, lambda p: load_model(p, builder=build_standin)):
        with pytest.raises(CheckpointError, match=f"is damaged: .*{says}"):
            read(path)
    save_checkpoint(trained_standin(), path.parent / "other.safetensors")
    listed = {Path(e["path"]).name: e for e in list_checkpoints(path.parent)}
    assert "damaged" in listed["model.safetensors"]["error"] and "error" not in listed["other.safetensors"]
    card_path.write_text(good)
    assert read_card(path)["metrics"] == {"AP": 0.25}  # null and unknown fields stay free
    if field != "num_parameters":  # save_checkpoint writes that one itself
        with pytest.raises(CheckpointError, match=f"would not load back: {says}"):
            save_checkpoint(trained_standin(), path.parent / "new.safetensors", card={field: value})
        assert not (path.parent / "new.safetensors").exists()


def test_save_validates_card(tmp_path: Path) -> None:
    plain = nn.Linear(2, 2)  # no .config
    with pytest.raises(CheckpointError, match="needs a 'config'"):
        save_checkpoint(plain, tmp_path / "m.safetensors", card={})
    model = trained_standin()
    with pytest.raises(CheckpointError, match="finite"):
        save_checkpoint(model, tmp_path / "m.safetensors", card={"metrics": {"AP": float("nan")}})
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        save_checkpoint(model, tmp_path / "m.pt", card={})
    # config given as a ModelConfig in the card, numpy values converted
    cfg = dataclasses.replace(CONFIG, name="renamed")
    card = {"config": cfg, "wall_time": np.float64(1.5)}
    path = save_checkpoint(model, tmp_path / "m.safetensors", card=card)
    assert read_card(path)["preset"] == "renamed" and read_card(path)["wall_time"] == 1.5
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave nothing behind


def test_list_checkpoints(tmp_path: Path) -> None:
    model = trained_standin()
    save_checkpoint(model, tmp_path / "b_run" / "model.safetensors", card={"metrics": {"AP": 0.5}})
    save_checkpoint(model, tmp_path / "a.safetensors", card={"name": "alpha"})
    (tmp_path / "orphan").mkdir()
    (tmp_path / "orphan" / "w.safetensors").write_bytes(b"")
    entries = list_checkpoints(tmp_path)
    assert [e["name"] for e in entries] == ["alpha", "b_run", "w"]
    assert entries[1]["metrics"] == {"AP": 0.5} and entries[1]["preset"] == "standin"
    assert entries[1]["path"].endswith("model.safetensors")
    assert "no model card" in entries[2]["error"]
    assert list_checkpoints(tmp_path / "nothing") == []


# ------------------------------------------------------------------------------------ training state


def _train_parts(seed: int):
    torch.manual_seed(seed)
    model = StandIn(CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ema = copy.deepcopy(model)
    return model, opt, sched, scaler, ema


def _step(model: nn.Module, opt: torch.optim.Optimizer, sched, x: torch.Tensor) -> None:
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    sched.step()


def test_training_state_round_trip(tmp_path: Path) -> None:
    model, opt, sched, scaler, ema = _train_parts(0)
    x = torch.rand(2, 3, 8, 8)
    for _ in range(3):
        _step(model, opt, sched, x)
    path = save_training_state(
        tmp_path / "last.pt", model, opt, scaler, sched, ema, epoch=4, step=30, extra={"best_ap": 0.3}
    )
    raw = torch.load(path, weights_only=True)  # the whole file is plain data
    assert raw["epoch"] == 4 and raw["extra"] == {"best_ap": 0.3}

    model2, opt2, sched2, scaler2, ema2 = _train_parts(1)
    state = load_training_state(path)
    restore_training_state(state, model2, opt2, scaler2, sched2, ema2, restore_rng=False)
    assert (state["epoch"], state["step"]) == (4, 30)
    for key, value in opt.state_dict()["state"].items():
        for name, t in value.items():
            assert_close(opt2.state_dict()["state"][key][name], t, rtol=0, atol=0)
    assert sched2.last_epoch == 3 and scaler2.get_scale() == 1024.0
    assert_close(ema2.head.weight, ema.head.weight)
    # training continues identically from the restored state
    _step(model, opt, sched, x)
    _step(model2, opt2, sched2, x)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert_close(a, b, rtol=0, atol=0)


def test_rng_states_round_trip(tmp_path: Path) -> None:
    model, opt, *_ = _train_parts(0)
    random.random()
    np.random.rand()  # noqa: NPY002 - the legacy global RNG is what capture_rng_states saves
    path = save_training_state(tmp_path / "s.pt", model, opt)
    draws = (torch.rand(3), random.random(), np.random.rand(3))  # noqa: NPY002
    restore_rng_states(load_training_state(path)["rng"])
    again = (torch.rand(3), random.random(), np.random.rand(3))  # noqa: NPY002
    assert_close(again[0], draws[0], rtol=0, atol=0)
    assert again[1] == draws[1] and np.array_equal(again[2], draws[2])
    assert set(capture_rng_states()) >= {"torch", "python", "numpy"}


def test_training_state_refuses_non_plain_data(tmp_path: Path) -> None:
    model, opt, *_ = _train_parts(0)
    cases = (({"arr": np.zeros(2)}, "extra"), ({"x": np.float64(1.0)}, "numpy"), ({"f": len}, "builtin"))
    for bad, where in cases:
        with pytest.raises(TypeError, match=f"{where}.*weights_only=True"):
            save_training_state(tmp_path / "bad.pt", model, opt, extra=bad)
    assert not (tmp_path / "bad.pt").exists()
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an efpn training state"):
        load_training_state(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_training_state(tmp_path / "none.pt")


def test_weights_and_card_of_two_saves_are_named_as_such(tmp_path: Path) -> None:
    """A save interrupted between its two files (new weights beside the old card) was reported as a config
    mismatch ('missing from the weights (319)'); the card and the weights now carry one id per save."""
    torch.manual_seed(0)
    save_checkpoint(trained_standin(), tmp_path / "a.safetensors", card={})
    save_checkpoint(trained_standin(), tmp_path / "b.safetensors", card={"note": "another save"})
    load_model(tmp_path / "a.safetensors", builder=build_standin)  # a pair from one save loads
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")  # the new weights landed, the card did not
    with pytest.raises(CheckpointError, match="come from two different saves"):
        load_model(tmp_path / "a.safetensors", builder=build_standin)


def test_a_save_killed_between_its_two_files_keeps_the_replaced_checkpoint(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``ship --overwrite`` killed after the new weights' rename and before the card's lost the shipped model; the
    replaced pair now stays as NAME.previous until the new pair is whole, and the load error says how to restore it."""
    from efpn import files

    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    first = trained_standin()
    save_checkpoint(first, path, card={"note": "the shipped one"})
    real_replace = files.os.replace

    def killed_at_the_card(src: str, dst: str) -> None:
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt  # the process dies between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", killed_at_the_card)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(trained_standin(), path, card={"note": "its replacement"})
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"intact in m\.safetensors\.previous and m\.json\.previous") as err:
        load_model(path, builder=build_standin)
    assert "mv " in str(err.value)
    files.previous_path(path).replace(path)
    files.previous_path(path.with_suffix(".json")).replace(path.with_suffix(".json"))
    restored = load_model(path, builder=build_standin)
    assert read_card(path)["note"] == "the shipped one"
    for name, tensor in first.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name
