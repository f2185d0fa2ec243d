"""`efpn report`: the claims are regenerated from checkpoints and data, and missing inputs are said, not faked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import efpn
from efpn.checkpoint import save_checkpoint
from efpn.cli.claims import ablation_rows, claims_report, sgdm_rows
from tests.conftest import REPO


def test_claims_report_from_shipped_checkpoints_without_shared_data(tmp_path: Path) -> None:
    readme = claims_report(tmp_path / "claims", shared_data=tmp_path / "absent", checkpoints=REPO / "checkpoints")
    text = readme.read_text()
    assert "Shared data not found" in text
    assert "efpn_n_synth" in text and "p5 grad" in text  # telemetry of the shipped flagship
    # the ablation table is built from the shipped E-FPN-BS checkpoints and their baselines alone
    ablation = text.split("## 3.")[1].split("## 4.")[0]
    shipped = sorted(p.stem for p in (REPO / "checkpoints").glob("efpn_bs_*.safetensors"))
    if shipped:
        assert all(f"checkpoints/{s}.safetensors" in ablation for s in shipped), ablation
    else:
        assert "No FPN baseline (ResNet-18 or MobileNetV2) checkpoints or runs are there yet." in ablation
    claims = json.loads((tmp_path / "claims" / "claims.json").read_text())
    assert claims["checkpoints"]["efpn_n_synth"]["AP"] > 0.3
    assert any(p.suffix in (".png", ".html") for p in (tmp_path / "claims").iterdir())


def _fake_run(runs: Path, name: str, tiny: str, preset: str, metrics: dict, grad: float | None = None,
              epochs: int = 3) -> None:
    """A finished run folder as `efpn train` leaves it: last and best checkpoints with their cards (metrics),
    telemetry.jsonl."""
    model = efpn.build_model(tiny, num_classes=1)
    card = {"preset": preset, "metrics": metrics, "data": {"yaml": "recipes/data/ssdd.yaml"}, "epochs": epochs,
            "image_size": 256, "training": {"batch_size": 8, "epochs": epochs}, "steps": 3}
    for stem in ("last", "best"):
        save_checkpoint(model, runs / name / f"{stem}.safetensors", card)
    if grad is not None:
        (runs / name / "telemetry.jsonl").write_text(json.dumps({"epoch": 1, "grad_norm_high": {"p5": grad}}) + "\n")


def test_ablation_and_sgdm_sections_read_unshipped_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    m = {"AP": 0.20, "AP50": 0.5, "AP_vt": 0.05, "AP_t": 0.2, "AP_s": 0.3, "AP_m": 0.4}
    _fake_run(runs, "ssdd_fpn_r18", "tiny_efpn_n", "fpn_r18", m, grad=0.1)
    _fake_run(runs, "ssdd_fpn_r18_cem", "tiny_efpn_n", "fpn_r18_cem", {**m, "AP": 0.25, "AP_vt": 0.02}, grad=0.3)
    _fake_run(runs, "ssdd_fpn_r18_dcloss", "tiny_efpn_n", "fpn_r18_dcloss", m)
    _fake_run(runs, "ssdd_yolov8n", "yolov8n", "yolov8n", m)
    _fake_run(runs, "ssdd_yolov8n_sgdm", "yolov8n_sgdm", "yolov8n_sgdm", {**m, "AP": 0.18})
    (runs / "broken").mkdir()  # a run that never validated is skipped, not an error

    readme = claims_report(tmp_path / "claims", shared_data=tmp_path / "absent", checkpoints=tmp_path / "none",
                           runs=runs)
    text = readme.read_text()
    assert "+ CEM" in text and "runs/ssdd_fpn_r18_cem/best" in text and "p5 grad (epoch 1)" in text
    claims = json.loads((tmp_path / "claims" / "claims.json").read_text())
    abl = {r[1]: r for r in claims["ablation"]}
    assert abl["+ CEM"][0] == "ssdd" and abl["+ CEM"][-3] == 0.05 and abl["+ CEM"][-2] == -0.03
    sg = {r[1]: r for r in claims["sgdm"]}
    assert sg["yolov8n_sgdm"][-4] > 0 and sg["yolov8n_sgdm"][-3] == -0.02  # params added, AP change
    assert sg["yolov8n"][-4] == 0
    assert ablation_rows({}) == [] and sgdm_rows({}) == []
    assert "+ CEM changes AP by +0.050 (better; ΔAP_vt -0.030" in text
    assert "`yolov8n_sgdm` adds" in text and "changes AP by -0.020 (worse)" in text
    assert "times 3.00x on p5 (0.3 vs 0.1)" in text
    assert "`fpn_r18_dcloss` trained 3 steps, inside DCLoss's" in text  # a DCLoss row that never engaged


def test_differences_are_taken_against_a_baseline_of_the_same_budget(tmp_path: Path) -> None:
    """YOLOv8n trained at two budgets (the longer one shipped): SGDM at the long budget is compared with the long
    YOLOv8n, plain RDConv (short budget only) with the short one, and a variant with no baseline at its budget gets
    no AP difference rather than one that measures the budget."""
    runs = tmp_path / "runs"
    m = {"AP": 0.20, "AP50": 0.5, "AP_vt": 0.05, "AP_t": 0.2, "AP_s": 0.3, "AP_m": 0.4}
    _fake_run(runs, "ssdd_yolov8n", "yolov8n", "yolov8n", m)
    _fake_run(runs, "ssdd_yolov8n_rdconv", "yolov8n", "yolov8n_rdconv", {**m, "AP": 0.21})
    _fake_run(runs, "ssdd_yolov8n_long", "yolov8n", "yolov8n", {**m, "AP": 0.40}, epochs=40)
    _fake_run(runs, "ssdd_yolov8n_sgdm_long", "yolov8n", "yolov8n_sgdm", {**m, "AP": 0.43}, epochs=40)
    _fake_run(runs, "ssdd_fpn_r18_cem", "tiny_efpn_n", "fpn_r18_cem", {**m, "AP": 0.25}, epochs=7)
    from efpn.cli.records import gather_runs, record_card

    cards = {name: record_card(rec) for name, rec in gather_runs(runs, None).items()}
    sg = {r[1]: r for r in sgdm_rows(cards)}
    assert sg["yolov8n_sgdm"][-3] == pytest.approx(0.03) and sg["yolov8n_rdconv"][-3] == pytest.approx(0.01)
    assert sg["yolov8n_sgdm"][-4] is not None  # parameters added are a fact of the structure, whatever the budget
    rows = sgdm_rows(cards)
    assert sorted(r[3] for r in rows if r[1] == "yolov8n") == sorted({r[3] for r in rows})  # both baselines shown
    for i, r in enumerate(rows):  # every difference has its reference above it: same dataset, same budget
        if r[1] != "yolov8n" and r[-3] is not None:
            assert any(b[1] == "yolov8n" and b[3] == r[3] for b in rows[:i]), r
    assert {r[1]: r for r in ablation_rows(cards)}["+ CEM"][-3] is None  # no fpn_r18 at 7 epochs


def test_dcloss_weight_rows_start_after_the_warmup() -> None:
    from efpn.cli.claims import dcloss_weight_rows

    tel = [{"epoch": e, "dcloss": {"w": {"vt": 1.0 if e < 3 else 0.5 + e / 100, "t": 1.0}}} for e in range(1, 13)]
    measured = {"run": {"config": {"loss": {"dcloss": True, "dcloss_warmup": 40}}, "data": {"dataset": "sirst"},
                        "_telemetry": tel},
                "plain": {"config": {"loss": {"dcloss": False}}, "_telemetry": tel}}
    rows = dcloss_weight_rows(measured, every=5)
    assert [r[3] for r in rows] == [3, 8, 12]  # first moved epoch, every 5th moved one, the last
    assert rows[0][:3] == ["run", "sirst", 40] and rows[0][4] == 0.53 and rows[0][5] == 1.0
    # a shipped checkpoint beside the run it came from (same telemetry) is listed once
    measured["run_s0"] = dict(measured["run"])
    assert [r[0] for r in dcloss_weight_rows(measured, every=5)] == ["run", "run", "run"]


def _seed_run(runs: Path, name: str, preset: str, seed: int, ap: float, epochs: int = 3, planned: int = 3,
              zoom_in: float = 1.0) -> None:
    """A run folder's last-epoch card (``last.json`` beside ``last.safetensors``) with its seed and budget."""
    model = efpn.build_model("tiny_efpn_n", num_classes=1)
    card = {"preset": preset, "metrics": {"AP": ap, "AP50": ap + 0.5, "AP_vt": ap - 0.05, "AP_t": ap + 0.1},
            "data": {"dataset": "sirst"}, "epochs": epochs, "image_size": 320, "steps": 30,
            "training": {"batch_size": 8, "seed": seed, "epochs": planned, "zoom_in": zoom_in, "zoom_out": 1.0}}
    save_checkpoint(model, runs / name / "last.safetensors", card)


def test_a_run_with_a_damaged_card_is_left_out_of_the_report_not_the_report(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    from efpn.cli.records import gather_runs

    runs = tmp_path / "runs"
    _seed_run(runs, "good", "fpn_mv2", 0, 0.3)
    _seed_run(runs, "broken", "fpn_mv2", 1, 0.3)
    card = runs / "broken" / "last.json"
    card.write_text(card.read_text()[:40])  # cut short, as by a full disk or a killed copy
    assert list(gather_runs(runs, None)) == ["good"]
    assert "the run broken is left out of the report" in capsys.readouterr().err


def test_seed_comparisons_need_three_seeds_and_non_overlapping_ranges(tmp_path: Path) -> None:
    """E-FPN-BS vs its baseline over seeds: a verdict only from 3 seeds a side; "supported" only when the ranges
    do not overlap; an unfinished run and a run of another budget are not mixed in."""
    from efpn.cli.records import gather_runs
    from efpn.cli.seeds import seed_comparisons, seed_runs, seed_verdict

    runs = tmp_path / "runs"
    for seed, (base, bs, flag) in enumerate([(0.30, 0.33, 0.31), (0.31, 0.34, 0.29), (0.32, 0.35, 0.33)]):
        _seed_run(runs, f"fpn_s{seed}", "fpn_mv2", seed, base)
        _seed_run(runs, f"bs_s{seed}", "efpn_bs_mv2", seed, bs)
        _seed_run(runs, f"flag_s{seed}", "efpn_mv2", seed, flag)
    _seed_run(runs, "bs_s3_partial", "efpn_bs_mv2", 3, 0.10, epochs=2)  # stopped early: left out
    _seed_run(runs, "bs_long_s0", "efpn_bs_mv2", 0, 0.90, planned=60, epochs=60)  # another budget: not compared
    groups = seed_runs(gather_runs(runs, None))
    assert sorted(groups[("sirst", "3 ep x b8 @ 320 px", "efpn_bs_mv2")]) == [0, 1, 2]
    comp = {(c["model"], c["metric"]): c for c in seed_comparisons(groups)}
    bs = comp[("efpn_bs_mv2", "AP")]
    assert bs["verdict"] == "supported" and bs["baseline"] == "fpn_mv2"
    assert abs(bs["model_stats"]["mean"] - 0.34) < 1e-9 and abs(bs["model_stats"]["sd"] - 0.01) < 1e-9
    assert abs(bs["paired_delta"]["mean"] - 0.03) < 1e-9
    assert comp[("efpn_mv2", "AP")]["verdict"].startswith("not supported")  # 0.29-0.33 overlaps 0.30-0.32
    assert seed_verdict([0.1, 0.1, 0.1], [0.5, 0.6, 0.7]) == "reversed"
    assert seed_verdict([0.9, 0.9], [0.1, 0.1, 0.1]).startswith("too few seeds (2 vs 3")

    readme = claims_report(tmp_path / "claims", shared_data=tmp_path / "absent", checkpoints=tmp_path / "none",
                           runs=runs)
    text = readme.read_text()
    assert "## 5. Over seeds" in text
    assert "`efpn_bs_mv2` 0.340 ± 0.010 AP over 3 seeds against `fpn_mv2` 0.310 ± 0.010 over 3: supported." in text
    claims = json.loads((tmp_path / "claims" / "claims.json").read_text())
    assert {c["model"] for c in claims["seeds"]} == {"efpn_bs_mv2", "efpn_mv2"}

    # a recipe variant (zoomed tiles) is its own group, compared with the same preset on the plain budget
    _seed_run(runs, "fpn_zoom_s0", "fpn_mv2", 0, 0.36, zoom_in=1.5)
    groups = seed_runs(gather_runs(runs, None))
    assert sorted(groups[("sirst", "3 ep x b8 @ 320 px", "fpn_mv2")]) == [0, 1, 2]  # not pooled as a 4th seed
    zoom = {c["metric"]: c for c in seed_comparisons(groups) if c["model"] == "fpn_mv2 + zoom in 1.5"}
    assert zoom["AP"]["baseline"] == "fpn_mv2" and zoom["AP"]["budget"] == "3 ep x b8 @ 320 px, zoom in 1.5"
    assert zoom["AP"]["baseline_seeds"] == [0, 1, 2] and zoom["AP"]["model_seeds"] == [0]
    assert abs(zoom["AP"]["paired_delta"]["mean"] - 0.06) < 1e-9  # seed 0: 0.36 against 0.30
    assert zoom["AP"]["verdict"].startswith("too few seeds (1 vs 3")
    assert zoom["AP"]["baseline_budget"] == "3 ep x b8 @ 320 px"
    # a pair trained with the variant is compared on its own budget, and the figure keeps the budgets apart
    _seed_run(runs, "bs_zoom_s0", "efpn_bs_mv2", 0, 0.50, zoom_in=1.5)
    from efpn.cli.seeds import seed_figure, seed_section

    comps = seed_comparisons(seed_runs(gather_runs(runs, None)))
    zoomed_pair = [c for c in comps if c["model"] == "efpn_bs_mv2" and c["budget"].endswith("zoom in 1.5")]
    assert zoomed_pair and zoomed_pair[0]["baseline_values"] == [0.36]  # the zoomed fpn_mv2, not the plain seeds
    dots = {t.x[0]: list(t.y) for t in seed_figure(comps).data if t.name.endswith("(seeds)")}
    assert dots["sirst fpn_mv2"] == [0.30, 0.31, 0.32] and dots["sirst fpn_mv2 (zoom in 1.5)"] == [0.36]
    assert dots["sirst efpn_bs_mv2 (zoom in 1.5)"] == [0.50]
    assert len(dots) == 5  # fpn_mv2, efpn_bs_mv2, efpn_mv2 plain; both zoomed runs once each
    assert any("| 3 ep x b8 @ 320 px, zoom in 1.5 | `efpn_bs_mv2` vs `fpn_mv2` | AP |" in line
               for line in seed_section(comps))
    assert any(p.name.startswith("seeds_ap") for p in (tmp_path / "claims").iterdir())


def test_unfinished_runs_are_left_out_of_the_tables(tmp_path: Path) -> None:
    from efpn.cli.claims import _run_cards
    from efpn.cli.records import gather_runs

    runs = tmp_path / "runs"
    _seed_run(runs, "done", "fpn_mv2", 0, 0.3)
    _seed_run(runs, "training", "efpn_bs_mv2", 0, 0.2, epochs=2)
    model = efpn.build_model("tiny_efpn_n", num_classes=1)  # its best epoch so far, validated
    save_checkpoint(model, runs / "training" / "best.safetensors", {"preset": "efpn_bs_mv2", "metrics": {"AP": 0.2}})
    assert sorted(_run_cards(gather_runs(runs, None))) == ["done"]


def test_run_records_keep_the_claims_after_the_run_folders_are_gone(tmp_path: Path) -> None:
    """A report with --runs records each complete run beside it; a later report without the run folders still
    compares every seed; a run folder present again replaces its record; a broken record is named."""
    import shutil

    from efpn.cli.records import load_records

    runs, out = tmp_path / "runs", tmp_path / "claims"
    for seed, (base, bs) in enumerate([(0.30, 0.33), (0.31, 0.34), (0.32, 0.35)]):
        _seed_run(runs, f"fpn_s{seed}", "fpn_mv2", seed, base)
        _seed_run(runs, f"bs_s{seed}", "efpn_bs_mv2", seed, bs)
    _seed_run(runs, "bs_s3_partial", "efpn_bs_mv2", 3, 0.10, epochs=2)  # still training: not recorded
    (runs / "fpn_s0" / "telemetry.jsonl").write_text('{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "loss": 1.0}\n')
    claims_report(out, shared_data=tmp_path / "absent", checkpoints=tmp_path / "none", runs=runs)
    first = json.loads((out / "claims.json").read_text())["seeds"]
    kept = load_records(out / "run_records")
    assert sorted(kept) == ["bs_s0", "bs_s1", "bs_s2", "fpn_s0", "fpn_s1", "fpn_s2"]
    assert kept["fpn_s0"]["telemetry"] == [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}]
    assert all(p.stat().st_size < 50_000 for p in (out / "run_records").iterdir())  # cards, not weights
    kept_file = out / "run_records" / "fpn_s0.json"
    kept_file.write_text(kept_file.read_text().replace(kept["fpn_s0"]["recorded"], "2000-01-01 00:00:00"))
    text = kept_file.read_text()
    claims_report(out, shared_data=tmp_path / "absent", checkpoints=tmp_path / "none", runs=runs)
    assert kept_file.read_text() == text  # an unchanged run is not written again (its record keeps its time)

    shutil.rmtree(runs)
    claims_report(out, shared_data=tmp_path / "absent", checkpoints=tmp_path / "none")
    assert json.loads((out / "claims.json").read_text())["seeds"] == first
    assert "against `fpn_mv2` 0.310 ± 0.010 over 3: supported." in (out / "README.md").read_text()

    _seed_run(runs, "fpn_s0", "fpn_mv2", 0, 0.50)  # retrained: the folder wins and is recorded again
    claims_report(out, shared_data=tmp_path / "absent", checkpoints=tmp_path / "none", runs=runs)
    assert load_records(out / "run_records")["fpn_s0"]["last"]["metrics"]["AP"] == 0.50
    assert "not supported" in (out / "README.md").read_text()

    (out / "run_records" / "bs_s1.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bs_s1.json is not a run record"):
        claims_report(out, shared_data=tmp_path / "absent", checkpoints=tmp_path / "none")


def test_report_replaces_its_files_together_and_a_failure_keeps_the_old_one(tmp_path: Path, monkeypatch) -> None:
    """The new report is written aside and swapped in whole: a chart of the old report that the new one does not
    draw is removed, a file of the user's stays, and a report that fails half-way leaves the old one untouched."""
    import efpn.cli.claims as claims_mod

    out = tmp_path / "claims"
    out.mkdir()
    (out / "assignment_gone.png").write_bytes(b"old chart")  # a dataset the new report no longer has
    (out / "notes.txt").write_text("mine")
    readme = claims_report(out, shared_data=tmp_path / "absent", checkpoints=tmp_path / "none")
    assert readme == out / "README.md" and readme.is_file()
    assert not (out / "assignment_gone.png").exists() and (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging folder left
    before = readme.read_text()

    def fail(*args, **kwargs):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(claims_mod, "ablation_rows", fail)
    try:
        claims_report(out, shared_data=tmp_path / "absent", checkpoints=REPO / "checkpoints")
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failure was swallowed")
    assert readme.read_text() == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_report_cli_refuses_missing_inputs(tmp_path: Path, capsys) -> None:
    """A mistyped input folder is an error naming the flag, and nothing is written."""
    import pytest

    from efpn.cli.main import main

    out = tmp_path / "claims"
    for flags in (["--checkpoints", str(tmp_path / "checkpiont")],
                  ["--checkpoints", str(REPO / "checkpoints"), "--shared-data", str(tmp_path / "dta")],
                  ["--checkpoints", str(REPO / "checkpoints"), "--shared-data", "", "--runs", str(tmp_path / "rns")],
                  ["--checkpoints", str(REPO / "checkpoints"), "--shared-data", "", "--records", str(tmp_path / "r")]):
        with pytest.raises(SystemExit) as e:
            main(["report", "--out", str(out), *flags])
        assert e.value.code == 2
        assert f"{flags[-2]} {flags[-1]} is not a folder" in capsys.readouterr().err
    assert not out.exists()


def test_report_cli_runs_with_absent_defaults(tmp_path: Path, monkeypatch) -> None:
    """Defaults that are absent on this machine (no checkpoints/ here, no ../shared/data) are not errors: their
    sections say "not found", as a clone without the data expects."""
    from efpn.cli.main import main

    monkeypatch.chdir(tmp_path)
    main(["report", "--out", str(tmp_path / "claims")])
    text = (tmp_path / "claims" / "README.md").read_text()
    assert "Shared data not found at ../shared/data" in text


def test_committed_claims_agree_with_their_run_records() -> None:
    """The report in docs/claims was built from the run records beside it: every last-epoch card in them is of a
    complete run, and every per-seed value of the seed comparisons is its run's last-epoch metric in a record."""
    from efpn.cli.records import load_records, run_complete
    from efpn.cli.seeds import seed_comparisons, seed_runs

    records = load_records(REPO / "docs" / "claims" / "run_records")
    assert records, "docs/claims/run_records holds no run records"
    assert all(run_complete(r["last"]) for r in records.values() if r["last"])
    committed = json.loads((REPO / "docs" / "claims" / "claims.json").read_text()).get("seeds", [])
    rebuilt = seed_comparisons(seed_runs(records))
    strip = ("model_stats", "baseline_stats", "paired_delta")  # floats summed in another order may differ last bit
    assert [{k: v for k, v in c.items() if k not in strip} for c in committed] == \
        [{k: v for k, v in c.items() if k not in strip} for c in rebuilt]


def test_run_records_are_not_ignored_by_git() -> None:
    """The records are the only copy of the runs' numbers once the run folders are gone: the repository must keep
    them (every ``runs/`` folder is ignored; the records folder is named so it is not)."""
    import shutil
    import subprocess

    from efpn.cli.records import RECORDS_DIR

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    probe = f"docs/claims/{RECORDS_DIR}/any_run.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO).returncode == 0
    assert not ignored, f"{probe} is ignored by .gitignore: run records would never be committed"


def test_budget_is_the_planned_epochs_not_the_best_epoch() -> None:
    """A best-epoch card (saved at epoch 110 of 120) is labelled with its run's budget, so the tables do not show
    one budget as two."""
    from efpn.cli.tables import card_budget

    best = {"epochs": 110, "image_size": 320, "training": {"epochs": 120, "batch_size": 8}}
    assert card_budget(best) == "120 ep x b8 @ 320 px"
    assert card_budget({"epochs": 3, "image_size": 256, "training": {"batch_size": 8}}) == "3 ep x b8 @ 256 px"
    tiles = {"image_size": 512, "training": {"epochs": 20, "batch_size": 8, "image_size": 320}}
    assert card_budget(tiles) == "20 ep x b8 @ 320 px tiles, val 512 px"
    # a zoomed run is a budget of its own (never pooled as another seed of the plain one); zoom 1 changes nothing
    zoomed = {"image_size": 320, "training": {"epochs": 30, "batch_size": 8, "zoom_in": 1.5, "zoom_out": 1.0}}
    assert card_budget(zoomed) == "30 ep x b8 @ 320 px, zoom in 1.5"
    both = {"image_size": 320, "training": {"epochs": 30, "batch_size": 8, "zoom_in": 1.5, "zoom_out": 2.0}}
    assert card_budget(both) == "30 ep x b8 @ 320 px, zoom in 1.5, zoom out 2"
    plain = {"image_size": 320, "training": {"epochs": 30, "batch_size": 8, "zoom_in": 1.0, "zoom_out": 1.0}}
    assert card_budget(plain) == "30 ep x b8 @ 320 px"


def test_a_run_of_the_same_name_from_another_runs_folder_keeps_both_records(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """Records were keyed by folder name alone, so another machine's run with the same default name (another seed)
    replaced the earlier seed's record without a word; a finished run without validation was called unfinished."""
    from efpn.cli.records import gather_runs, load_records

    records = tmp_path / "records"
    _seed_run(tmp_path / "m1", "fpn_sirst", "fpn_mv2", 0, 0.30)
    _seed_run(tmp_path / "m2", "fpn_sirst", "fpn_mv2", 1, 0.31)
    gather_runs(tmp_path / "m1", records)
    both = gather_runs(tmp_path / "m2", records)
    assert len(both) == 2 and both["fpn_sirst"]["last"]["training"]["seed"] == 0
    other = next(k for k in both if k != "fpn_sirst")
    assert other.startswith("fpn_sirst@") and both[other]["last"]["training"]["seed"] == 1
    assert f"it is recorded as {other}" in capsys.readouterr().err
    assert sorted(load_records(records)) == sorted(both)
    gather_runs(tmp_path / "m2", records)  # the same run again: recorded once
    assert len(load_records(records)) == 2
    import shutil

    shutil.rmtree(tmp_path / "m1" / "fpn_sirst")  # the first folder trained again with other settings: replaced
    _seed_run(tmp_path / "m1", "fpn_sirst", "fpn_mv2", 5, 0.50)
    again = gather_runs(tmp_path / "m1", records)
    assert again["fpn_sirst"]["last"]["metrics"]["AP"] == 0.50 and len(again) == 2

    _seed_run(tmp_path / "m3", "noval", "fpn_mv2", 0, 0.30)
    card = tmp_path / "m3" / "noval" / "last.json"
    card.write_text(card.read_text().replace('"metrics"', '"no_metrics"'))
    assert "noval" not in gather_runs(tmp_path / "m3", None)
    err = capsys.readouterr().err
    assert "finished without validation metrics" in err and "--resume" not in err
