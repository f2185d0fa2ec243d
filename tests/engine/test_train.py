"""Training contracts: a tiny detector learns the synthetic set, resuming is exact, non-finite losses are
skipped, bad configs fail clearly, and the loop's pieces (schedule, sampler, EMA, telemetry, validation) hold
their stated contracts."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DistributedSampler

from efpn.checkpoint import load_model, read_card
from efpn.config import TrainConfig, load_train_config
from efpn.data.records import ImageRecord
from efpn.data.synthetic import make_synthetic_sample, write_synthetic_dataset
from efpn.engine.data import SeededSamples, StepBatchSampler, train_transforms
from efpn.engine.ema import ModelEMA
from efpn.engine.optim import WarmupCosine, param_groups
from efpn.engine.state import load_training_state
from efpn.engine.telemetry import EpochTelemetry, RunLogger
from efpn.engine.train import train
from efpn.evaluation.validate import predict_records, validate
from efpn.infer.predict import predict_image
from efpn.models.criterion import CriterionStats
from efpn.models.detector import Detector

REPO = Path(__file__).resolve().parents[2]

# The tiny-training recipe measured for test_tiny_detector_learns_synthetic (see its docstring).
TINY_RECIPE = dict(
    model="tiny_yolov8_sgdm", image_size=128, epochs=20, batch_size=8, optimizer="adamw", lr=3e-3,
    weight_decay=0.01, momentum=0.9, warmup_iters=20, val_every=100, workers=0, device="cpu", progress=False,
    log_every=5,
)


@pytest.fixture(scope="module")
def synth128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 synthetic 128 px images with 3-10 objects of 4-24 px; the data YAML holds out 20 % (19) as val."""
    root = tmp_path_factory.mktemp("synth128")
    write_synthetic_dataset(root, 96, image_size=128, seed=0, min_size=4, max_size=24, objects_per_image=(3, 10),
                            val_fraction=0.2)
    return root / "data.yaml"


@pytest.fixture(scope="module")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic 96 px images (larger than the 64 px network input, so the tile crop is active), no val."""
    root = tmp_path_factory.mktemp("synth8")
    write_synthetic_dataset(root, 8, image_size=96, seed=1, min_size=4, max_size=20, objects_per_image=(2, 6),
                            val_fraction=0.0)
    return root / "data.yaml"


@pytest.fixture(scope="module")
def trained(synth128: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, float]:
    out = tmp_path_factory.mktemp("runs")
    t0 = time.perf_counter()
    result = train(TrainConfig(data=str(synth128), out=str(out), **TINY_RECIPE))
    return result, time.perf_counter() - t0


def _small(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="tiny_efpn_n", data=str(data), image_size=64, epochs=3, batch_size=2, optimizer="adamw",
                lr=2e-3, weight_decay=0.01, warmup_iters=2, workers=0, device="cpu", val_split=None,
                progress=False, out=str(out), name="run", log_every=1, seed=11)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------ learning


@pytest.mark.slow
def test_tiny_detector_learns_synthetic(trained: tuple[object, float]) -> None:
    """tiny_yolov8_sgdm, AdamW 3e-3, 20 epochs x 9 steps of batch 8 at 128 px, one CPU thread.

    Measured on the dev machine: val AP50 0.754 (AP 0.507) in ~31 s of CPU time (35-60 s wall on the shared
    2-core box); seeds 1 and 2 gave AP50 0.715 and 0.817. Asserted: AP50 >= 0.4 on the 19 held-out images,
    and the run's files, card, telemetry and CSV are complete.
    """
    result, seconds = trained
    assert result.metrics["AP50"] >= 0.4, result.metrics
    assert seconds < 180
    assert result.epochs == 20 and result.steps == 180 and result.skipped_steps == 0
    run = result.run_dir
    for name in ("config.yaml", "data_split.json", "metrics.csv", "telemetry.jsonl", "last.safetensors",
                 "last.json", "best.safetensors", "best.json", "last_state.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    split = json.loads((run / "data_split.json").read_text())
    assert split["num_val"] == len(split["val_ids"]) == 19 and split["num_train"] == 77
    assert not set(split["val_ids"]) & set(split["train_ids"])

    card = read_card(result.best)
    assert card["preset"] == "tiny_yolov8_sgdm" and card["classes"] == ["disc", "square", "cross"]
    assert card["image_size"] == 128 and card["steps"] == 180 and card["epochs"] == 20 and card["ema"] is True
    assert card["metrics"]["AP50"] == pytest.approx(result.best_ap and card["metrics"]["AP50"])
    assert {"AP_vt", "AP_t", "AP_s"} <= set(card["metrics"])
    assert card["hardware"]["world_size"] == 1 and card["data"]["val_split"] == "val"
    assert card["telemetry"]["positives_per_level"].keys() == {"p3", "p4", "p5"}
    model = load_model(result.best)
    assert model.config.class_names == ("disc", "square", "cross")

    lines = [json.loads(ln) for ln in (run / "telemetry.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == list(range(1, 21))
    last = lines[-1]
    assert 0 <= last["starved_rate"] <= 1 and last["fallback_share"] == 0.0  # TAL has no fallback matches
    assert last["num_gt"] > 0 and sum(last["positives_per_level"].values()) > last["num_gt"]
    assert last["val"]["AP50"] == result.metrics["AP50"] and last["lr"] == pytest.approx(3e-5, rel=1e-6)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert {r["kind"] for r in rows} == {"step", "epoch"}
    logged = [s for s in range(1, 181) if s % 5 == 0 or s % 9 == 0]  # every log_every steps + each epoch's end
    assert [int(r["step"]) for r in rows if r["kind"] == "step"] == logged
    assert float(rows[-1]["val_AP50"]) == pytest.approx(result.metrics["AP50"], abs=1e-5)


@pytest.mark.slow
def test_batched_validation_matches_single_image_inference(trained: tuple[object, float], tmp_path: Path) -> None:
    """predict_records batches images of one padded size and pads with pixel_mean: the same detections as
    efpn.infer.predict.predict_image on each image alone (images of different aspect ratios in one batch)."""
    result, _ = trained
    model = load_model(result.best)
    records = []
    for i, (w, h) in enumerate([(128, 100), (128, 110), (100, 128), (160, 120), (128, 128)]):
        sample = make_synthetic_sample(5, i, image_size=(w, h), min_size=6, max_size=20, objects_per_image=(4, 8))
        path = tmp_path / f"{i}.png"
        Image.fromarray(sample.image).save(path)
        records.append(ImageRecord(i, path, w, h, sample.boxes, sample.labels))
    batched = predict_records(model, records, image_size=128, batch_size=4, score_thresh=0.3)
    assert sorted(batched) == list(range(5))
    for rec in records:
        single = predict_image(model, rec.path, score_thresh=0.3, image_size=128)
        got = batched[rec.image_id]
        assert len(got["scores"]) == len(single["scores"]) > 0
        assert_close(torch.from_numpy(got["boxes"]), single["boxes"], atol=1e-3, rtol=1e-4)
        assert_close(torch.from_numpy(got["scores"]), single["scores"], atol=1e-5, rtol=1e-4)
        assert got["labels"].tolist() == single["labels"].tolist()
    ev = validate(model, records, ["disc", "square", "cross"], image_size=128, batch_size=3)
    assert ev.num_images == 5 and ev.metrics["AP50"] is not None and ev.metrics["AP50"] > 0.3


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.slow
def test_resume_is_exact(synth_small: Path, tmp_path: Path) -> None:
    """6 steps straight == 3 steps, stop, resume, 3 more (stopping mid-epoch: 4 steps per epoch), bit for bit:
    weights, BatchNorm and DCLoss buffers, EMA, AdamW moments, schedule. Augmentation (tile crop, mosaic,
    flips, jitter) is seeded per sample, so the resumed half may even use DataLoader workers."""
    kw = dict(mosaic=True, epochs=3)
    straight = train(_small(synth_small, tmp_path / "a", max_steps=6, **kw))
    first = train(_small(synth_small, tmp_path / "b", max_steps=3, **kw))
    assert first.steps == 3 and first.epochs == 0
    halfway = load_training_state(first.state)
    resumed = train(_small(synth_small, tmp_path / "b", max_steps=6, resume="auto", workers=2, **kw))
    assert resumed.run_dir == first.run_dir and resumed.steps == straight.steps == 6

    a, b = load_training_state(straight.state), load_training_state(resumed.state)
    assert (a["epoch"], a["step"], a["extra"]["epoch_step"]) == (b["epoch"], b["step"], b["extra"]["epoch_step"]) \
        == (1, 6, 2)
    assert_close(a["model"], b["model"], rtol=0, atol=0)
    assert_close(a["ema"], b["ema"], rtol=0, atol=0)
    assert_close(a["optimizer"], b["optimizer"], rtol=0, atol=0)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    assert int(a["model"]["criterion.dcloss.steps"]) == 6  # DCLoss statistics travel with the weights
    # steps 4-6 did change the weights, so the equality above is not vacuous
    assert max(float((a["model"][k].float() - halfway["model"][k].float()).abs().max()) for k in a["model"]) > 1e-4
    # logs read as one run: steps 1..6 once each; telemetry of the interrupted epoch continues
    rows = [r for r in csv.DictReader((resumed.run_dir / "metrics.csv").open()) if r["kind"] == "step"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert resumed.telemetry["images"] == straight.telemetry["images"] == 4  # epoch 2's steps 5-6, batch 2
    lines = {}
    for name, res in (("straight", straight), ("resumed", resumed)):
        lines[name] = [json.loads(ln) for ln in (res.run_dir / "telemetry.jsonl").read_text().splitlines()]
        assert [(ln["epoch"], ln["step"], ln["partial"]) for ln in lines[name]] == [(1, 4, False), (2, 6, True)]
    for key in ("loss", "positives_per_level", "num_gt", "starved", "gate_mass", "grad_norm_high"):
        assert lines["straight"][0][key] == lines["resumed"][0][key], key  # the interrupted epoch, summed whole


def test_a_new_run_beside_an_unfinished_one_says_how_to_resume(tmp_path: Path) -> None:
    from efpn.engine.state import STATE_FILE, run_dir_and_state

    cfg = TrainConfig(model="tiny_fpn", data="d.yaml", out=str(tmp_path), name="r")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / STATE_FILE).write_bytes(b"x")
    with pytest.warns(UserWarning, match="pass --resume auto"):
        run_dir, state = run_dir_and_state(cfg)
    assert run_dir.name == "r-2" and state is None
    # with resume auto it continues the unfinished run instead
    assert run_dir_and_state(TrainConfig(model="tiny_fpn", data="d.yaml", out=str(tmp_path), name="r",
                                         resume="auto")) == (tmp_path / "r", tmp_path / "r" / STATE_FILE)


def test_resume_path_must_exist(synth_small: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no training state"):
        train(_small(synth_small, tmp_path, resume=str(tmp_path / "nowhere")))


# ------------------------------------------------------------------------------------------ non-finite guard


def _nan_on_calls(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int] | None) -> None:
    """Make Detector.compute_losses return NaN losses on the given (1-based) calls, or on every call."""
    original = Detector.compute_losses
    count = {"n": 0}

    def patched(self, images, targets):
        losses, stats = original(self, images, targets)
        count["n"] += 1
        if bad_calls is None or count["n"] in bad_calls:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses, stats

    monkeypatch.setattr(Detector, "compute_losses", patched)


def test_nonfinite_loss_skips_the_step(synth_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nan_on_calls(monkeypatch, {2})
    with pytest.warns(RuntimeWarning, match="step 2: non-finite loss"):
        result = train(_small(synth_small, tmp_path, max_steps=4, epochs=1, batch_size=2))
    assert result.steps == 4 and result.skipped_steps == 1
    state = load_training_state(result.state)
    assert all(float(s["step"]) == 3 for s in state["optimizer"]["state"].values())  # 3 real updates
    assert state["ema"]["updates"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    assert [r["skipped"] for r in rows if r["kind"] == "step"] == ["0", "1", "1", "1"]
    assert result.telemetry["skipped"] == 1


def test_too_many_nonfinite_losses_stop_with_a_clear_error(
    synth_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nan_on_calls(monkeypatch, None)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="3 consecutive steps had a non-finite"):
        train(_small(synth_small, tmp_path, nonfinite_limit=3, epochs=2))


# ------------------------------------------------------------------------------------------ configs


def test_bad_configs_fail_clearly(tmp_path: Path, synth_small: Path) -> None:
    with pytest.raises(ValueError, match="unknown model preset 'yolov99'.*tiny_efpn_n"):
        train(TrainConfig(model="yolov99", data="x.yaml"))
    with pytest.raises(FileNotFoundError, match="data YAML .*missing.yaml does not exist"):
        train(TrainConfig(model="tiny_efpn_n", data=str(tmp_path / "missing.yaml")))
    with pytest.raises(ValueError, match="data is required"):
        train(TrainConfig(model="tiny_efpn_n"))
    with pytest.raises(ValueError, match="image_size must be a multiple of 32 from 32 to 4096"):
        TrainConfig(image_size=100)
    with pytest.raises(ValueError, match="val_image_size must be a multiple of 32 from 32 to 4096"):
        TrainConfig(val_image_size=8192)  # named itself, not the model's image_size
    for name in ("weight_decay", "ema_tau", "clip_grad"):  # a flag's inf trained an epoch, then failed the card
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            TrainConfig(**{name: float("inf")})
    for seed in (-1, 2**64):  # numpy's "expected non-negative integer" at the first sample, or an overflow
        with pytest.raises(ValueError, match=r"seed must be a whole number in \[0, 2\*\*32\)"):
            TrainConfig(seed=seed)
    with pytest.raises(ValueError, match="amp must be"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="divisible by world_size x accumulate"):
        train(_small(synth_small, tmp_path, batch_size=3, accumulate=2))
    with pytest.raises(ValueError, match="fp16' needs CUDA"):
        train(_small(synth_small, tmp_path, amp="fp16"))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(_small(synth_small, tmp_path, batch_size=16))

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: tiny_efpn_n\ndata: d.yaml\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\]; valid keys: model, data"):
        load_train_config(recipe)
    recipe.write_text("model: tiny_efpn_n\nlr: fast\n")
    with pytest.raises(ValueError, match="'lr' must be a finite number"):
        load_train_config(recipe)
    recipe.write_text("model: tiny_efpn_n\nepochs: 2.5\n")
    with pytest.raises(ValueError, match="'epochs' must be an integer"):
        load_train_config(recipe)
    with pytest.raises(ValueError, match=r"override: unknown key\(s\) \['nope'\]"):
        load_train_config(recipe, nope=1)
    with pytest.raises(FileNotFoundError, match="training recipe"):
        load_train_config(tmp_path / "absent.yaml")


def test_load_train_config_resolves_data_and_applies_overrides(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    recipe = tmp_path / "sub" / "r.yaml"
    recipe.write_text("model: tiny_fpn\ndata: ../data/x.yaml\nlr: 1e-3\nepochs: 4\nclip_grad: null\n")
    cfg = load_train_config(recipe, epochs=7, amp=None)  # None = flag not given
    assert cfg.data == str((tmp_path / "data" / "x.yaml").resolve())
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float) and cfg.epochs == 7 and cfg.clip_grad is None
    assert load_train_config(recipe, data="y.yaml").data == "y.yaml"  # an override is taken as given


def test_shipped_recipes_are_valid() -> None:
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert recipes, "recipes/*.yaml missing"
    for path in recipes:
        cfg = load_train_config(path)
        assert Path(cfg.data).name.endswith(".yaml"), path
        assert (REPO / "recipes" / "data" / Path(cfg.data).name).is_file(), f"{path}: data YAML not shipped"
    for name in ("synth.yaml", "ssdd.yaml"):
        data = yaml.safe_load((REPO / "recipes" / "data" / name).read_text())
        assert data["format"] == "coco"
    ssdd = yaml.safe_load((REPO / "recipes" / "data" / "ssdd.yaml").read_text())
    assert ssdd["val_fraction"] == 0.15 and "val" not in ssdd


# ------------------------------------------------------------------------------------------ pieces


def test_warmup_cosine_schedule() -> None:
    f = WarmupCosine(total_steps=101, warmup=10, final_ratio=0.05)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.05) and f(55) == pytest.approx(0.525)  # half-way down the cosine
    values = [f(t) for t in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert WarmupCosine(total_steps=9, warmup=500, final_ratio=0.1).warmup == 3  # at most a third of the run


def test_step_batch_sampler_groups_like_ddp() -> None:
    """Sample k of a step goes to virtual replica k mod (W*A) whatever the split into ranks and micro-batches."""
    n, global_batch = 16, 8

    def groups(world: int, accumulate: int) -> list[list[int]]:
        per_rank = []
        for rank in range(world):
            s = StepBatchSampler(DistributedSampler(range(n), world, rank, shuffle=True, seed=3, drop_last=True),
                                 global_batch // world, accumulate)
            s.set_epoch(2)
            per_rank.append([[i for e, i in b] for b in s])
            assert all(e == 2 for b in s for e, _ in b) and len(s) == 2 * accumulate
        # interleave to (step, virtual replica r + W*a) order
        out = []
        for step in range(2):
            for a in range(accumulate):
                for rank in range(world):
                    out.append(per_rank[rank][step * accumulate + a])
        return out

    two_ranks = groups(2, 1)
    assert [sorted(g) for g in two_ranks] == [sorted(g) for g in groups(1, 2)]
    assert sorted(sum(two_ranks, [])) == list(range(16))
    assert [sorted(g) for g in groups(2, 2)] == [sorted(g) for g in groups(4, 1)]
    s = StepBatchSampler(DistributedSampler(range(n), 1, 0, seed=3, drop_last=True), 8, 2)
    s.set_epoch(2, start_step=1)
    assert [sorted(i for _, i in b) for b in s] == [sorted(g) for g in groups(1, 2)[2:]]  # resume skips done steps


def test_seeded_samples_are_reproducible(synth_small: Path) -> None:
    from efpn.data.dataset import DetectionDataset
    from efpn.data.splits import load_split
    records, _, _ = load_split(synth_small)
    cfg = _small(synth_small, Path("."), mosaic=True)
    ds = SeededSamples(DetectionDataset(records, train_transforms(cfg)), seed=5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    img1, t1 = ds[(0, 3)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    img2, t2 = ds[(0, 3)]
    img3, _ = ds[(1, 3)]
    assert torch.equal(img1, img2) and torch.equal(t1["boxes"], t2["boxes"]) and not torch.equal(img1, img3)
    assert img1.shape == (3, 64, 64) and t1["scale"] == 1.0  # 96 px images: 64 px native crops or mosaic
    cfg = _small(synth_small, Path("."), tile=False)
    _, t = SeededSamples(DetectionDataset(records, train_transforms(cfg)), seed=5)[(0, 0)]
    assert t["scale"] == pytest.approx(64 / 96)  # whole image letterboxed


def test_param_groups_skip_decay_on_biases_and_norms() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2, 4} and {p.ndim for p in no_decay["params"]} == {1}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_model_ema_ramp_buffers_and_state() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    w0 = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    d = 0.9 * (1 - math.exp(-1 / 2.0))
    assert ema.current_decay() == pytest.approx(d)
    ema.update(model)
    assert_close(ema.module[0].weight, d * w0 + (1 - d) * model[0].weight)
    assert_close(ema.module[1].running_mean, torch.full((2,), 3.0))  # buffers are copied
    other = ModelEMA(model, decay=0.5, tau=9.0)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and other.decay == 0.9 and other.tau == 2.0
    assert_close(other.module[0].weight, ema.module[0].weight)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)


def test_epoch_telemetry_and_run_logger(tmp_path: Path) -> None:
    from efpn.det.accounting import LevelAccounting

    acc = LevelAccounting.empty(["p3", "p4"])
    acc.positives_per_level.update(p3=6, p4=2)
    acc.fallback_per_level.update(p3=2)
    acc.num_gt, acc.starved, acc.num_images = 4, [1], 2
    stats = CriterionStats(accounting=acc, num_pos=8, gate_mass={"p3": 0.5}, dcloss={"w": {"vt": 2.0}})
    tel = EpochTelemetry()
    tel.add_batch({"loss_cls": 1.0, "loss_box": 3.0}, stats, 2)
    tel.add_batch({"loss_cls": 2.0, "loss_box": 1.0}, stats, 2)
    tel.add_step({"p5": 0.25}, 2.0)
    tel.add_step({"p5": 0.75}, float("nan"))
    tel.add_skipped()
    s = tel.summary()
    assert s["loss"] == {"loss_cls": 1.5, "loss_box": 2.0} and s["loss_total"] == 3.5 and s["images"] == 4
    assert s["positives_per_level"] == {"p3": 12, "p4": 4} and s["positives_per_image"] == {"p3": 3.0, "p4": 1.0}
    assert s["fallback_share"] == 0.25 and s["starved_rate"] == 0.25 and s["gate_mass"] == {"p3": 0.5}
    assert s["grad_norm_high"] == {"p5": 0.5} and s["grad_norm"] == 1.0 and s["skipped"] == 1
    assert s["dcloss"] == {"w": {"vt": 2.0}}
    again = EpochTelemetry()
    again.load_state_dict(tel.state_dict())
    assert again.summary() == s

    log = RunLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        log.log_step(1, step, {"lr": 0.1, "loss": float(step), "loss_cls": 1.0})
    log.log_epoch(1, 3, {**s, "lr": 0.1, "val": {"AP": 0.5, "AP50": float("nan")}})
    log.close()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["kind"] for r in rows] == ["step"] * 3 + ["epoch"] and rows[-1]["val_AP"] == "0.5"
    line = json.loads((tmp_path / "telemetry.jsonl").read_text())
    assert line["val"]["AP50"] is None and line["epoch"] == 1  # JSON-safe: NaN -> null
    RunLogger(tmp_path, resume_step=2, tensorboard=False).close()  # a resumed run drops later rows
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2"] and not (tmp_path / "telemetry.jsonl").read_text()
    assert RunLogger(tmp_path / "off", enabled=False).csv_path.parent.exists() is False


def test_bf16_autocast_trains_on_cpu(synth_small: Path, tmp_path: Path) -> None:
    result = train(_small(synth_small, tmp_path, amp="bf16", max_steps=2, ema=False, model="tiny_yolov8_sgdm"))
    assert result.steps == 2 and result.skipped_steps == 0
    state = load_training_state(result.state)
    assert state["ema"] is None and all(np.isfinite(v.float().numpy()).all() for v in state["model"].values())


def test_dcloss_warmup_is_a_share_of_the_run_and_weights_leave_one(synth_small: Path, tmp_path: Path) -> None:
    # 3 epochs of a few steps: a fixed 500-step warm-up would never end; 20 % of the run does
    result = train(_small(synth_small, tmp_path, dcloss_warmup_fraction=0.2, epochs=4))
    card = json.loads((result.run_dir / "last.json").read_text())
    warm = card["config"]["loss"]["dcloss_warmup"]
    assert 0 < warm < result.steps
    rows = [json.loads(line) for line in (result.run_dir / "telemetry.jsonl").read_text().splitlines()]
    weights = [w for r in rows for w in ((r.get("dcloss") or {}).get("w") or {}).values()]
    assert weights and any(abs(w - 1.0) > 1e-3 for w in weights), weights


def test_val_image_size_validates_and_ships_at_its_own_side(
        synth_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # train on 64 px native tiles, validate whole 96 px images at 96: validation, the card and the model agree
    import efpn.engine.train as engine

    sides: list[int] = []  # the side every validation ran at
    monkeypatch.setattr(engine, "validate", lambda *a, **kw: sides.append(kw["image_size"]) or validate(*a, **kw))
    result = train(_small(synth_small, tmp_path, val_split="val", val_image_size=96, max_steps=2, epochs=1))
    assert sides == [96]
    card = read_card(result.run_dir / "last.json")
    assert card["image_size"] == 96 and card["training"]["image_size"] == 64
    assert load_model(result.run_dir / "last.json").config.image_size == 96
    assert TrainConfig(image_size=64).eval_size == 64
    with pytest.raises(ValueError, match="val_image_size"):
        TrainConfig(val_image_size=100)
