"""A resume that cannot work is refused before the run it points at is touched, with one line saying what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from efpn.checkpoint import CheckpointError
from efpn.engine.train import train
from tests.engine import test_train
from tests.engine.test_train import _small

synth_small = test_train.synth_small  # the small synthetic dataset fixture, shared


def test_resume_as_another_model_is_refused_before_touching_the_run(synth_small: Path, tmp_path: Path) -> None:
    first = train(_small(synth_small, tmp_path / "r", max_steps=1))
    record = {name: (first.run_dir / name).read_bytes() for name in ("config.yaml", "data_split.json")}
    with pytest.raises(ValueError, match=r"was trained as 'tiny_efpn_n', not 'tiny_yolov5_sgdm': pass --model "
                                         r"tiny_efpn_n to resume it"):
        train(_small(synth_small, tmp_path / "r", model="tiny_yolov5_sgdm", max_steps=2, resume=str(first.run_dir)))
    assert {name: (first.run_dir / name).read_bytes() for name in record} == record


def test_a_corrupt_state_file_is_refused_without_unsafe_advice_and_writes_nothing(synth_small: Path,
                                                                                    tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    bad = folder / "garbage_state.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not an efpn training state, or a corrupt one") as e:
        train(_small(synth_small, tmp_path / "out", resume=str(bad)))
    assert "weights_only" not in str(e.value)
    assert sorted(p.name for p in folder.iterdir()) == ["garbage_state.pt"]  # no config.yaml beside it


def test_a_refused_start_leaves_no_run_folder(synth_small: Path, tmp_path: Path) -> None:
    """A batch larger than the train split is refused before the run folder exists (no half-made run to skip)."""
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(_small(synth_small, tmp_path / "r", batch_size=4096))
    assert not (tmp_path / "r" / "run").exists()


def test_two_runs_with_one_name_claim_two_folders(tmp_path: Path) -> None:
    """The folder of a new run is claimed atomically when it is chosen: a second run asking for the same name at the
    same moment (before the first wrote anything) gets name-2; a released claim of a refused start removes the
    folder."""
    from efpn.config import TrainConfig
    from efpn.engine.state import release_claim, run_dir_and_state

    cfg = TrainConfig(model="tiny_fpn", data="d.yaml", out=str(tmp_path), name="r")
    first, _ = run_dir_and_state(cfg)
    second, _ = run_dir_and_state(cfg)
    assert (first.name, second.name) == ("r", "r-2")
    release_claim(second, started=False)
    assert not second.exists() and first.exists()


def test_resuming_a_run_saved_before_a_field_existed_warns_of_nothing() -> None:
    """A run saved before a field existed (no ``zoom_in`` key) computed that field's default: resuming it with the
    default is no change; a real change (the learning rate, or zoom itself) is named in the warning."""
    import warnings

    from efpn.config import TrainConfig
    from efpn.engine.state import check_resume_config

    cfg = TrainConfig(model="tiny_efpn_n", data="d.yaml")
    saved = {k: v for k, v in cfg.to_dict().items() if k not in ("zoom_in", "zoom_out")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_resume_config(saved, cfg)  # nothing to say
    with pytest.warns(UserWarning, match=r"lr: 0.01 -> 0.002"):
        check_resume_config({**saved, "lr": 0.01}, cfg)
    with pytest.warns(UserWarning, match=r"zoom_in: 1.0 -> 1.5"):
        check_resume_config(saved, TrainConfig(model="tiny_efpn_n", data="d.yaml", zoom_in=1.5))


def test_resume_with_a_damaged_card_says_how_to_recover(synth_small: Path, tmp_path: Path) -> None:
    first = train(_small(synth_small, tmp_path / "r", max_steps=1))
    (first.run_dir / "last.json").write_text('{"format": "efpn", "con')
    state = torch.load(first.run_dir / "last_state.pt", weights_only=False)
    state["extra"].pop("class_names")  # a state saved before the classes were recorded in it
    torch.save(state, first.run_dir / "last_state.pt")
    with pytest.raises(ValueError, match=r"last\.json is not readable JSON.*restore last\.json or delete it"):
        train(_small(synth_small, tmp_path / "r", max_steps=2, resume="auto"))
    (first.run_dir / "last.json").unlink()
    assert train(_small(synth_small, tmp_path / "r", max_steps=2, resume="auto")).steps == 2


def test_resuming_with_fewer_epochs_than_trained_is_refused(synth_small: Path, tmp_path: Path) -> None:
    first = train(_small(synth_small, tmp_path / "r", epochs=2))
    config = (first.run_dir / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match=r"has trained 2 epochs, more than the 1 asked for: nothing to resume"):
        train(_small(synth_small, tmp_path / "r", epochs=1, resume="auto"))
    assert (first.run_dir / "config.yaml").read_bytes() == config  # still says 2 epochs


def test_resuming_mid_epoch_with_another_batch_size_finishes_that_epoch(synth_small: Path, tmp_path: Path) -> None:
    """Interrupted after 3 of 4 steps of batch 2 (6 of 8 images), resumed with batch 4: the epoch's remaining images
    make 1 step of 4 (the old step count, 3, was past the new epoch's 2 steps, so the rest of it never ran)."""
    train(_small(synth_small, tmp_path / "r", max_steps=3))
    with pytest.warns(UserWarning, match="batch_size: 2 -> 4"):
        resumed = train(_small(synth_small, tmp_path / "r", batch_size=4, resume="auto"))
    assert resumed.steps == 3 + 1 + 2 + 2  # the rest of epoch 1, then epochs 2 and 3 at 2 steps each


def test_resume_on_data_of_other_classes_is_refused_before_touching_the_run(synth_small: Path, tmp_path: Path) -> None:
    """The same run resumed on data whose classes differ: a clear error naming both lists, raised before the run's
    config.yaml and data_split.json are rewritten (nothing of the run is lost)."""
    import json as _json

    first = train(_small(synth_small, tmp_path / "r", max_steps=1))
    other = tmp_path / "other"
    other.mkdir()
    for f in synth_small.parent.iterdir():  # the same images, categories renamed
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    (other / "images").symlink_to(synth_small.parent / "images")
    doc = _json.loads((other / "annotations.json").read_text())
    for c in doc["categories"]:
        c["name"] = "ship" + str(c["id"])
    (other / "annotations.json").write_text(_json.dumps(doc))
    text = (other / "data.yaml").read_text()
    (other / "data.yaml").write_text("\n".join(ln for ln in text.splitlines()
                                               if not ln.startswith(("names", "- "))) + "\n")  # names from the JSON
    config_before = (first.run_dir / "config.yaml").read_bytes()
    split_before = (first.run_dir / "data_split.json").read_bytes()
    with pytest.raises(ValueError, match=r"trained on the classes \[disc, square, cross\] and the data now gives "
                                         r"\[ship1, ship2, ship3\]"):
        train(_small(other / "data.yaml", tmp_path / "r", max_steps=2, resume="auto"))
    assert (first.run_dir / "config.yaml").read_bytes() == config_before
    assert (first.run_dir / "data_split.json").read_bytes() == split_before
    # the cards gone, the training state still knows the classes
    for card in first.run_dir.glob("*.json"):
        if card.name != "data_split.json":
            card.unlink()
    with pytest.raises(ValueError, match=r"trained on the classes \[disc, square, cross\]"):
        train(_small(other / "data.yaml", tmp_path / "r", max_steps=2, resume="auto"))


def test_a_resume_applies_its_settings_and_a_larger_epochs_stretches_the_schedule(synth_small: Path,
                                                                               tmp_path: Path) -> None:
    """The restored optimizer, scheduler and EMA states carried the settings the run started with, so a resume with
    another lr, weight decay or momentum ran on the old ones while config.yaml and the cards recorded the new; and
    the epochs added by a larger --epochs all ran at the final lr. Both now follow this run's settings."""
    import math

    from efpn.engine.state import load_training_state

    first = train(_small(synth_small, tmp_path / "r", epochs=2, warmup_iters=0, final_lr_ratio=0.01))
    assert first.steps == 8  # 4 steps per epoch
    with pytest.warns(UserWarning, match="weight_decay: 0.01 -> 0.2; momentum: 0.9 -> 0.5"):
        longer = train(_small(synth_small, tmp_path / "r", epochs=4, warmup_iters=0, final_lr_ratio=0.01,
                              weight_decay=0.2, momentum=0.5, resume=str(first.run_dir)))
    state = load_training_state(longer.state)
    groups = state["optimizer"]["param_groups"]
    assert {g["weight_decay"] for g in groups} == {0.0, 0.2} and {g["betas"][0] for g in groups} == {0.5}
    assert state["scheduler"]["lr_lambdas"][0]["total_steps"] == 16
    lrs = [float(ln.split(",")[3]) for ln in (longer.run_dir / "metrics.csv").read_text().splitlines()
           if ln.startswith("step,")]
    # the cosine over 16 steps: steps 9..16 continue from its middle (2e-3 x ~0.5) down to the floor, where the
    # old 8-step schedule had them all at 2e-3 x 0.01
    expected = [2e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t / 15)))) for t in range(9, 17)]
    assert lrs[-8:] == pytest.approx(expected, rel=1e-6)


def test_efpn_train_resume_without_retyping_flags_uses_the_runs_own_settings(synth_small: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`efpn train --resume RUN` built its settings from the defaults, so a 2-epoch 64 px run resumed as 100 epochs at
    640 px (a warning, and ten minutes of training); the run's config.yaml is now the base, flags given replace it."""
    import yaml

    from efpn.cli.main import main

    args = ["--model", "tiny_efpn_n", "--data", str(synth_small), "--image-size", "64", "--epochs", "2",
            "--batch-size", "2", "--workers", "0", "--val-split", "none", "--out", str(tmp_path), "--name", "r",
            "--no-progress", "--seed", "3"]
    main(["train", *args, "--max-steps", "2"])
    main(["train", "--resume", str(tmp_path / "r"), "--max-steps", "3"])
    assert "resuming with the settings in" in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (saved["image_size"], saved["epochs"], saved["batch_size"], saved["seed"]) == (64, 2, 2, 3)
    assert saved["max_steps"] == 3  # the flag given replaced the run's own
    main(["train", "--resume", str(tmp_path / "r")])  # a --max-steps stop is not inherited: it trains to the end
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["max_steps"] is None and "2 epochs, 8 steps" in capsys.readouterr().out


def test_a_longer_resume_keeps_the_warm_up_it_had_and_another_optimizer_is_refused(synth_small: Path,
                                                                                  tmp_path: Path) -> None:
    """The warm-up is capped at a third of the run: recomputed for a longer run it grew, and a run past its warm-up
    fell back into a longer one (the lr halved, then ramped up again). An optimizer state cannot continue as
    another optimizer's (AdamW's groups have no 'momentum': a KeyError at the first SGD step)."""
    from efpn.engine.state import load_training_state

    first = train(_small(synth_small, tmp_path / "r", epochs=3, warmup_iters=500, max_steps=6))  # warm-up 12 // 3
    longer = train(_small(synth_small, tmp_path / "r", epochs=12, warmup_iters=500, max_steps=7,
                          resume=str(first.run_dir)))
    schedule = load_training_state(longer.state)["scheduler"]["lr_lambdas"][0]
    assert (schedule["warmup"], schedule["total_steps"]) == (4, 48)  # not 48 // 3 = 16
    with pytest.raises(ValueError, match="trained with --optimizer adamw .* resume with --optimizer adamw"):
        train(_small(synth_small, tmp_path / "r", epochs=12, optimizer="sgd", resume=str(first.run_dir)))


def test_ctrl_c_says_what_was_kept_and_how_to_resume(synth_small: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C ended in a KeyboardInterrupt traceback through torch's optimizer, saying nothing of the saved state."""
    from efpn.cli.main import main

    real_step, calls = torch.optim.AdamW.step, []

    def step(self, *a, **kw):  # the user presses Ctrl-C during the second epoch
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "tiny_efpn_n", "--data", str(synth_small), "--image-size", "64", "--epochs", "2",
              "--batch-size", "2", "--workers", "0", "--val-split", "none", "--out", str(tmp_path), "--name", "r",
              "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 130 and "Traceback" not in err
    assert f"continue exactly from there with  efpn train --resume {tmp_path / 'r'}" in err


def test_a_run_whose_settings_file_is_unreadable_is_not_resumed_on_defaults(tmp_path: Path) -> None:
    """A corrupt config.yaml was passed over: the run resumed on default settings and the file was overwritten."""
    from efpn.cli.main import _run_settings

    run = tmp_path / "run"
    run.mkdir()
    assert _run_settings(str(run)) == {}  # no config.yaml: the resume itself says what the folder lacks
    (run / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match=r"config\.yaml cannot be read .*Restore the file, or give the run's settings"):
        _run_settings(str(run))
    (run / "config.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="not a mapping"):
        _run_settings(str(run / "last_state.pt"))
