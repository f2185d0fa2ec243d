"""Data-parallel training on CPU (gloo): two processes must compute exactly what one process computes with
gradient accumulation, and the distributed helpers must behave outside a process group."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from efpn.config import TrainConfig
from efpn.data.synthetic import write_synthetic_dataset
from efpn.engine import distributed as D
from efpn.engine.state import load_training_state
from efpn.engine.train import train
from efpn.zoo import build_model


@pytest.fixture(scope="module")
def four_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 64 px synthetic images, all of them training images (no val split): one global batch."""
    root = tmp_path_factory.mktemp("synth4")
    write_synthetic_dataset(root, 4, image_size=64, seed=3, min_size=4, max_size=16, objects_per_image=(2, 5),
                            val_fraction=0.0)
    return root / "data.yaml"


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        model="tiny_efpn_n", data=str(data), image_size=64, epochs=3, batch_size=4, optimizer="adamw", lr=2e-3,
        weight_decay=0.01, warmup_iters=0, workers=0, device="cpu", val_split=None, progress=False,
        out=str(out), name="run", log_every=1, seed=7,
        # DCLoss keeps running statistics per process (as BatchNorm without SyncBN does): once it re-weights, two
        # processes equal one process with accumulate=2 only in expectation. Its preset warm-up (500 steps)
        # outlasts these runs, so the bit-for-bit comparison holds for everything else.
        dcloss_warmup_fraction=None,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_ddp_matches_single_process_accumulation(four_images: Path, tmp_path: Path) -> None:
    """2 gloo processes x micro-batch 2 == 1 process x 2 accumulated micro-batches of 2, for 3 steps.

    Both see the same 4 images per step in the same micro-batch grouping (StepBatchSampler), and BatchNorm
    normalises per micro-batch in both, so parameters, EMA parameters and AdamW moments must agree to float
    round-off. BatchNorm *running* statistics legitimately differ: DDP keeps rank 0's (broadcast each forward),
    the single process folds in both micro-batches, so they are excluded. A plain batch-4 run (one micro-batch,
    different BatchNorm statistics) must NOT agree: the comparison can fail.
    """
    ddp_cfg = _config(four_images, tmp_path / "ddp")
    D.spawn_local(train, 2, (ddp_cfg,), threads=1)
    single = train(_config(four_images, tmp_path / "single", accumulate=2))
    plain = train(_config(four_images, tmp_path / "plain", accumulate=1))
    assert single.steps == 3 and single.skipped_steps == 0

    a = load_training_state(tmp_path / "ddp" / "run" / "last_state.pt")
    b = load_training_state(single.state)
    c = load_training_state(plain.state)
    assert a["step"] == b["step"] == 3
    names = [n for n, _ in build_model("tiny_efpn_n", 3).named_parameters()]
    assert names and set(names) <= set(a["model"])
    for n in names:
        assert_close(a["model"][n], b["model"][n], rtol=1e-5, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")
        assert_close(a["ema"]["module"][n], b["ema"]["module"][n], rtol=1e-5, atol=1e-5)
    for i, st in a["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(st[key], b["optimizer"]["state"][i][key], rtol=1e-5, atol=1e-6)
    differs = max(float((b["model"][n] - c["model"][n]).abs().max()) for n in names)
    assert differs > 1e-4, "a different micro-batch grouping should change the result"


def test_helpers_outside_a_process_group() -> None:
    assert not D.is_dist() and D.is_main() and D.get_rank() == 0 and D.get_world_size() == 1
    assert D.all_reduce_mean({"a": 1.5, "b": -2.0}) == {"a": 1.5, "b": -2.0}
    assert D.gather_sum({"x": 2.0}) == {"x": 2.0}
    assert D.broadcast_object([1, 2]) == [1, 2]
    D.barrier()
    info = D.setup_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert info.device == torch.device("cpu")


def test_resolve_device_errors() -> None:
    with pytest.raises(ValueError, match="device must be"):
        D.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            D.resolve_device("cuda")
        assert D.resolve_device("auto") == torch.device("cpu")


def test_setup_needs_master_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        D.setup_distributed("cpu")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="outside"):
        D.setup_distributed("cpu")


def test_seed_everything_and_worker_init() -> None:
    D.seed_everything(123)
    a = (random.random(), np.random.rand(), torch.rand(()).item())  # noqa: NPY002
    D.seed_everything(123)
    assert a == (random.random(), np.random.rand(), torch.rand(()).item())  # noqa: NPY002
    torch.manual_seed(5)
    threads = torch.get_num_threads()
    D.worker_init_fn(0)  # seeds numpy/random from torch's seed
    x = np.random.rand()  # noqa: NPY002
    D.worker_init_fn(0)
    assert x == np.random.rand()  # noqa: NPY002
    torch.set_num_threads(threads)
    assert os.environ.get("WORLD_SIZE") in (None, "1")
