"""Run tables, analysis tables, figures and the analyze CLI on run records written through
normexp.record (no training)."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from normexp import record
from normexp.analysis.collect import load_runs
from normexp.analysis.pipeline import write_table
from normexp.analysis.tables import (
    accuracy_table,
    compare_sweeps,
    convergence_table,
    error_table,
    thresholds_from,
    unpaired_runs,
)
from normexp.analysis.verdict_text import describe_verdict, verdict_table
from normexp.cli.analyze import main as analyze
from normexp.criteria import load_criteria


def write_run(root: Path, norm: dict, batch: int, seed: int, accs: list[float], status: str = "finished",
              epochs: int | None = None, digest: str = "cifar", precision: str | None = None,
              numerics: int | None = None) -> Path:
    """A run record written through normexp.record, as the conductor writes it, with the given
    per-epoch test accuracies."""
    ident = {"data": {"source": "folder", "batch_size": batch, "devices": 1, "crop_padding": 4, "flip": True},
             "model": {"depth": 8, "base_width": 8, "num_classes": 10, "zero_init_residual": True},
             "norm": norm, "optim": {"lr": 0.1}, "trainer": {"epochs": epochs or len(accs)}, "seed": seed,
             "data_digest": digest}
    if precision is not None:  # null settings are left out of an identity
        ident["trainer"]["precision"] = precision
    if numerics is not None:  # runs recorded before the numerics version existed have none
        ident["numerics"] = numerics
    directory = root / record.run_name(ident)
    record.write_setup(directory, ident, "verdict: null\n")
    (directory / record.LOG).write_text("log\n")
    done = accs if status in ("finished", "diverged") else accs[:-1]
    metrics = [{"epoch": e + 1, "test_acc": a, "test_loss": 1.0, "train_loss": 2.0 - a / 100, "train_acc": a,
                "lr": 0.1, "seconds": 1.0, "train_seconds": 1.0, "eval_seconds": 0.0, "images_per_s": 100.0}
               for e, a in enumerate(done)]
    record.write_progress(directory, metrics, [{"epoch": m["epoch"], "step": 10 * m["epoch"],
                                                "loss": m["train_loss"]} for m in metrics])
    if status == "failed":
        record.write_error(directory, "RuntimeError", "boom", "")
    if status in ("finished", "diverged"):
        diverged_at = {"epoch": len(accs), "step": 7} if status == "diverged" else None
        record.write_summary(directory, record.summary(directory.name, metrics, diverged_at, compute_seconds=60.0))
    return directory


BN, GN = {"name": "bn"}, {"name": "gn", "groups": 8}


def write_sweep(root: Path, bn_acc: dict[int, float], gn_acc: dict[int, float], seeds: int = 3) -> None:
    rng = np.random.default_rng(0)
    for norm, accs in ((BN, bn_acc), (GN, gn_acc)):
        for batch, acc in accs.items():
            for seed in range(seeds):
                final = acc + rng.normal(0, 0.3)
                write_run(root, norm, batch, seed, [final - 10, final])


HOLDS = dict(bn_acc={64: 80.0, 32: 80.2, 16: 79.5, 2: 72.0}, gn_acc={64: 78.0, 32: 78.1, 16: 78.2, 2: 77.9})


def test_tables_keep_unfinished_failed_and_diverged_runs_out_of_statistics(tmp_path):
    finished = write_run(tmp_path, BN, 2, 0, [40.0, 50.0])
    write_run(tmp_path, BN, 2, 1, [40.0, 50.0], status="unfinished")
    write_run(tmp_path, BN, 2, 2, [40.0, 50.0], status="failed")
    write_run(tmp_path, GN, 2, 0, [10.0, 10.0], status="diverged")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("hydra: {}\n")
    tables = load_runs(tmp_path)
    status = dict(zip(tables.runs["seed"].astype(str) + tables.runs["norm"], tables.runs["status"]))
    assert status == {"0bn": "finished", "1bn": "unfinished", "2bn": "failed", "0gn8": "diverged"}
    assert list(tables.finished["run"]) == [finished.name]
    reasons = dict(zip(tables.runs["status"], tables.runs["reason"]))
    assert "boom" in reasons["failed"] and "epoch 2 step 7" in reasons["diverged"] and "resume" in reasons["unfinished"]
    assert len(tables.epochs) == 2 + 1 + 1 + 2
    table = accuracy_table(tables.finished)
    row, = table.to_dict("records")  # one run has no spread: its std is missing, not 0
    assert math.isnan(row.pop("acc_std"))
    assert row == {"norm": "bn", "batch_size": 2, "acc_mean": 50.0, "n": 1, "median5_mean": 45.0}  # median of 40, 50
    write_table(table, tmp_path, "accuracy")
    assert (tmp_path / "accuracy.md").read_text().splitlines()[2].split("|")[4].strip() == "-"
    assert (tmp_path / "accuracy.csv").read_text().splitlines()[1].split(",")[3] == ""


def test_the_runs_table_shows_each_lr_to_its_digits_and_where_a_run_diverged(tmp_path):
    write_sweep(tmp_path, **HOLDS)
    diverged = write_run(tmp_path, GN, 8, 0, [40.0, 10.0], status="diverged")
    for path in tmp_path.glob("*/" + record.SUMMARY):  # the LR rule's value at 2 images per device
        record.write_summary(path.parent, {**record.read_json(path), "lr": 0.00625})
    assert analyze([str(tmp_path)]) == 0
    runs = pd.read_csv(tmp_path / "tables" / "runs.csv").set_index("run")
    assert runs.loc[diverged.name, "diverged_at"] == "epoch 2 step 7" and runs["diverged_at"].isna().sum() == 24
    lines = (tmp_path / "tables" / "runs.md").read_text().splitlines()
    header = [cell.strip() for cell in lines[0].split("|")]
    row = [cell.strip() for cell in next(line for line in lines if diverged.name in line).split("|")]
    assert row[header.index("lr")] == "0.00625" and row[header.index("diverged_at")] == "epoch 2 step 7"
    assert row[header.index("final_test_acc")] == "10.00"  # other numbers: 2 decimals


def test_tables_of_an_empty_folder_are_empty(tmp_path):
    tables = load_runs(tmp_path)
    assert tables.runs.empty and tables.finished.empty


def test_accuracy_error_and_convergence_tables(tmp_path):
    for seed, acc in enumerate([70.0, 72.0, 74.0]):
        write_run(tmp_path, BN, 2, seed, [45.0, acc])
        write_run(tmp_path, GN, 2, seed, [55.0, acc + 4])
        write_run(tmp_path, BN, 64, seed, [60.0, acc + 8])
    tables = load_runs(tmp_path)
    finished = tables.finished
    table = accuracy_table(finished).set_index(["norm", "batch_size"])
    assert table.loc[("bn", 2), "acc_mean"] == pytest.approx(72.0)
    assert table.loc[("bn", 2), "acc_std"] == pytest.approx(2.0)
    assert table.loc[("gn8", 2), "n"] == 3
    criteria, _ = load_criteria()
    error = error_table(finished, criteria)
    assert list(error.columns) == ["batch 64", "batch 2"] and error.index.name == "test error (%)"
    assert error.loc["bn", "batch 2"] == pytest.approx(28.0)
    # BN - GN in accuracy points, the verdict's sign: GN is 4 points ahead at 2
    assert error.loc["bn - gn8 (accuracy points)", "batch 2"] == pytest.approx(-4.0)
    convergence = convergence_table(finished, tables.epochs, [50, 60]).set_index(["norm", "batch_size"])
    assert convergence.loc[("bn", 2), "epochs_to_50"] == 2
    assert convergence.loc[("gn8", 2), "epochs_to_50"] == 1
    assert convergence.loc[("bn", 2), "reached_50"] == 3
    assert convergence.loc[("bn", 2), "reached_60"] == 3 and convergence.loc[("bn", 2), "epochs_to_60"] == 2
    assert "epochs_to_99" not in convergence_table(finished, tables.epochs, [50, 99]).columns  # no run reaches it
    assert thresholds_from(pd.DataFrame({"final_test_acc": [47.7, 61.3]})) == [30.0, 40.0, 50.0, 60.0]


def test_analyze_writes_tables_figures_and_verdict(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_sweep(runs, **HOLDS)
    write_run(runs, {"name": "ln"}, 2, 0, [60.0, 70.0])
    write_run(runs, {"name": "in"}, 2, 0, [60.0, 69.0])
    unfinished = write_run(runs, BN, 8, 0, [60.0, 70.0], status="unfinished")
    assert analyze([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "claim verdict: HOLDS" in out and f"excluded {unfinished.name}: unfinished" in out
    for name in ("accuracy", "error_by_batch", "convergence", "runs", "versus_bn", "versus_gn8", "batch_change"):
        assert (tmp_path / "tables" / f"{name}.csv").stat().st_size > 0
        assert (tmp_path / "tables" / f"{name}.md").read_text().startswith("|")
    for name in ("error_vs_batch", "accuracy_by_epoch", "train_loss", "group_ablation"):
        assert (tmp_path / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "verdict.json").read_text())
    assert saved["holds"] is True and saved["runs"]["finished"] == 26
    assert saved["runs"]["excluded"][0]["status"] == "unfinished"
    assert set(saved["criteria_source"].values()) == {"default"}
    assert (tmp_path / "tables" / "group_shape.csv").exists()  # a group ablation (ln, gn8, in); 1 seed: no rows


def test_analyze_refuses_to_pool_runs_that_differ_or_repeat(tmp_path, capsys):
    write_sweep(tmp_path / "a", **HOLDS)
    write_run(tmp_path / "a", BN, 2, 9, [40.0], epochs=1)
    assert analyze([str(tmp_path / "a")]) == 2
    assert "trainer.epochs" in capsys.readouterr().err
    assert analyze([str(tmp_path / "a"), "--vary", "model.depth"]) == 2  # another field may vary: still refused
    assert "trainer.epochs" in capsys.readouterr().err
    assert analyze([str(tmp_path / "a"), "--vary", "trainer"]) == 2  # a group is not an axis
    assert "--vary trainer names a group of settings" in capsys.readouterr().err
    write_run(tmp_path / "b", BN, 2, 0, [40.0, 50.0], digest="cifar")
    write_run(tmp_path / "b", BN, 2, 1, [40.0, 50.0], digest="other-data")
    assert analyze([str(tmp_path / "b")]) == 2
    assert "data_digest" in capsys.readouterr().err
    write_run(tmp_path / "c" / "sweep1", BN, 2, 0, [40.0, 50.0])
    write_run(tmp_path / "c" / "sweep2", BN, 2, 0, [40.0, 51.0])
    assert analyze([str(tmp_path / "c")]) == 2
    assert "repeat" in capsys.readouterr().err


def test_analyze_pools_several_results_dirs_into_out_and_refuses_a_copied_run(tmp_path, capsys):
    write_sweep(tmp_path / "seeds_0-2", **HOLDS)
    for norm, accs in ((BN, HOLDS["bn_acc"]), (GN, HOLDS["gn_acc"])):
        for batch, acc in accs.items():
            for seed in (3, 4, 5):
                write_run(tmp_path / "seeds_3-5", norm, batch, seed, [acc - 10, acc])
    dirs = [str(tmp_path / "seeds_0-2"), str(tmp_path / "seeds_3-5")]
    assert analyze(dirs) == 2
    assert "need an --out of their own" in capsys.readouterr().err
    assert analyze([*dirs, "--out", dirs[0]]) == 2
    assert not (tmp_path / "seeds_0-2" / "verdict.json").exists()
    for reached_twice, finished in (([dirs[0], dirs[0]], 24), ([str(tmp_path), dirs[0]], 48)):  # same, nested
        assert analyze([*reached_twice, "--out", str(tmp_path / "twice")]) == 0
        assert json.loads((tmp_path / "twice" / "verdict.json").read_text())["runs"]["finished"] == finished
    assert analyze([*dirs, "--out", str(tmp_path / "all")]) == 0
    pooled = pd.read_csv(tmp_path / "all" / "tables" / "accuracy.csv")
    assert set(pooled["n"]) == {6} and len(pooled) == 8
    assert json.loads((tmp_path / "all" / "verdict.json").read_text())["runs"]["finished"] == 48
    assert not (tmp_path / "seeds_0-2" / "verdict.json").exists()
    shutil.copytree(tmp_path / "seeds_0-2", tmp_path / "copy")
    assert analyze([dirs[0], str(tmp_path / "copy"), "--out", str(tmp_path / "all")]) == 2
    assert "repeat" in capsys.readouterr().err


def test_verdicts_of_two_run_sets_side_by_side_show_where_they_disagree(tmp_path):
    write_sweep(tmp_path / "holds", **HOLDS)
    write_sweep(tmp_path / "flat_bn", bn_acc={32: 80.0, 2: 80.1}, gn_acc={32: 78.0, 2: 78.0})
    for name in ("holds", "flat_bn"):
        assert analyze([str(tmp_path / name)]) == 0
    verdicts = {name: json.loads((tmp_path / name / "verdict.json").read_text()) for name in ("holds", "flat_bn")}
    table = verdict_table(verdicts)
    assert list(table.columns) == ["holds", "flat_bn"]
    assert table.loc["verdict", "holds"] == "HOLDS" and table.loc["verdict", "flat_bn"] == "DOES NOT HOLD"
    assert table.loc["BN degrades: drop (lower bound)", "holds"].endswith(" yes")
    assert table.loc["BN degrades: drop (lower bound)", "flat_bn"].endswith(" NO")
    assert (table.loc["finished runs", "holds"] == "24"
            and table.loc["batch sizes (reference)", "flat_bn"] == "2, 32 (32)")
    verdicts["holds"]["checks"]["bn_degrades"]["lower_bound"] = None  # a statistic the verdict could not compute
    verdicts["holds"]["checks"]["gn_beats_bn_at_smallest_batch"]["p_value_one_sided"] = 3e-7
    assert "one-sided p=3.0e-07 < 0.05" in describe_verdict(verdicts["holds"])
    verdicts["undecided"] = {"undecided": True, "reason": "no gn8 runs"}
    table = verdict_table(verdicts)
    assert table.loc["BN degrades: drop (lower bound)", "holds"].startswith("8.") and "(n/a)" in table.loc[
        "BN degrades: drop (lower bound)", "holds"]
    assert table.loc["verdict", "undecided"] == "UNDECIDED: no gn8 runs"
    assert "(3.0e-07) yes" in table.loc["GN beats BN at smallest batch: gap (p)", "holds"]


def test_analyze_overrides_are_reported_and_bad_ones_named(tmp_path, capsys):
    write_sweep(tmp_path, **HOLDS)
    assert analyze([str(tmp_path), "--set", "alpha=0.01"]) == 0
    saved = json.loads((tmp_path / "verdict.json").read_text())
    assert saved["criteria"]["alpha"] == 0.01 and saved["criteria_source"]["alpha"] == "override"
    assert analyze([str(tmp_path), "--set", "alfa=0.01"]) == 2
    assert "alfa" in capsys.readouterr().err


def test_analyze_without_finished_runs_fails_clearly(tmp_path, capsys):
    assert analyze([str(tmp_path)]) == 1
    assert "no finished runs" in capsys.readouterr().err
    assert analyze([str(tmp_path / "missing")]) == 2


def test_one_epoch_curves_are_drawn_with_markers(tmp_path):
    for batch in (2, 64):
        write_run(tmp_path / "runs", BN, batch, 0, [40.0])
        write_run(tmp_path / "runs", GN, batch, 0, [45.0])
    assert analyze([str(tmp_path)]) == 0
    from matplotlib import image

    picture = image.imread(tmp_path / "figures" / "accuracy_by_epoch.png")
    coloured = (abs(picture[..., 0] - picture[..., 1]) > 0.2) | (abs(picture[..., 1] - picture[..., 2]) > 0.2)
    second_panel = coloured[:, coloured.shape[1] // 2 :]  # batch 64's panel: no legend, only the curves
    assert second_panel.sum() > 20


def test_compare_sweeps_pairs_the_same_runs_by_name():
    before = pd.DataFrame({"run": ["bn_s0", "bn_s1", "bn_s2"], "norm": ["bn"] * 3, "batch_size": [2] * 3,
                           "seed": [0, 1, 2], "final_test_acc": [40.0, 42.0, 90.0], "compute_seconds": [600.0] * 3})
    after = before.iloc[:2].assign(final_test_acc=[41.0, 41.5], compute_seconds=[300.0, 300.0])
    after = pd.concat([after, after.iloc[:1].assign(run="bn_other", final_test_acc=10.0)])  # another identity
    [row] = compare_sweeps(before, after).to_dict("records")
    assert row["n"] == 2 and row["before acc %"] == "41.00 ± 1.41" and row["after acc %"] == "41.25 ± 0.35"
    assert row["after - before"] == pytest.approx(0.25) and row["ci low"] < 0.25 < row["ci high"]
    assert row["ci high"] - row["ci low"] == pytest.approx(2 * 12.706 * 0.75,
                                                           rel=1e-3)  # paired t: SE of [1, -0.5] is 0.75, df 1
    [single] = compare_sweeps(before.iloc[:1], after.iloc[:1]).to_dict("records")
    assert single["before acc %"] == "40.00" and "nan" not in single["after acc %"]  # one run: no SD
    assert row["largest per-run difference"] == 1.0
    assert (row["minutes before"], row["minutes after"]) == (20.0, 10.0)
    assert unpaired_runs(before, after) == {"only before": ["bn_s2"], "only after": ["bn_other"]}
    with pytest.raises(ValueError, match="more than once: bn_s0"):
        compare_sweeps(pd.concat([before, before.iloc[:1]]), after)


def test_every_preset_norm_has_its_own_colour():
    from normexp.analysis.plots import COLOURS, colour

    tags = ["bn", "gn8", "ln", "in", "none", "gn2", "gn4", "gn16", "gn-cpg16", "brn", "bn-pbn", "gn8-ws", "frn",
            "evonorm8"]
    assert len({colour(tag) for tag in tags}) == len(tags)
    assert colour("a-new-norm") not in COLOURS.values() and colour("a-new-norm") == colour("a-new-norm")


def test_every_line_has_its_own_style_in_its_norms_colour_family_and_legends_sort_by_number():
    import colorsys

    import matplotlib.colors

    from normexp.analysis.plots import colour, looks, natural

    labels = [f"{norm} epochs={e}" for norm in ("bn", "gn8") for e in (1, 2, 5, 10, 20, 50)]
    shown = looks(labels)
    assert len({(v["color"], v["marker"]) for v in shown.values()}) == len(labels)  # no two lines alike
    hue = lambda c: colorsys.rgb_to_hsv(*matplotlib.colors.to_rgb(c))[0]  # noqa: E731
    for label, look in shown.items():  # BN's lines are shades of BN's colour, GN's of GN's
        assert abs(hue(look["color"]) - hue(colour(label.split()[0]))) < 0.03, label
    assert sorted(labels, key=natural)[:3] == ["bn epochs=1", "bn epochs=2", "bn epochs=5"]
    assert looks(["bn", "gn8"]) == {"bn": {**looks(["bn"])["bn"]},
                                    "gn8": looks(["gn8"])["gn8"]}  # one per norm: its own


def test_points_sharing_a_value_are_dodged_apart_in_order_and_a_lone_point_stays():
    """The accuracy-by-budget figure's lines: where two share a budget their points sit apart, the
    first on the left, around the true value; a budget only one line has keeps its point there."""
    from normexp.analysis.plots import dodged

    for log in (True, False):
        xs = dodged({"gn8, 2 per device": [100.0], "gn8, 32 per device": [5.0, 100.0, 200.0]}, log)
        small, large = xs["gn8, 2 per device"][0], xs["gn8, 32 per device"][1]
        assert small < 100 < large
        middle = (small * large) ** 0.5 if log else (small + large) / 2
        assert middle == pytest.approx(100)
        assert xs["gn8, 32 per device"][0] == 5.0 and xs["gn8, 32 per device"][2] == 200.0
    three = dodged({"a": [0, 1], "b": [1], "c": [1]}, log=False)  # categories 0..k-1, three share 1
    assert three["a"][0] == 0 and three["a"][1] < three["b"][0] == 1 < three["c"][0]


def test_runs_recorded_before_and_after_a_criterion_changed_are_analysed_together(tmp_path):
    """A sweep resumed under today's code holds runs that recorded the retired max_gn_loss and runs
    that recorded gn_loss_margin: with the rest equal they are one set of criteria."""
    from normexp.analysis.pipeline import recorded_criteria

    old = {"bn": "bn", "gn": "gn8", "reference_batch": 32, "max_gn_loss": 2.7, "alpha": 0.05}
    new = {"bn": "bn", "gn": "gn8", "reference_batch": 32, "gn_loss_margin": 3.5, "alpha": 0.05}
    runs = pd.DataFrame({"criteria": [old, new]})
    assert recorded_criteria(runs) == {"bn": "bn", "gn": "gn8", "reference_batch": 32, "gn_loss_margin": 3.5,
                                        "alpha": 0.05, "max_gn_loss": 2.7}
    with pytest.raises(ValueError, match="different verdict criteria"):
        recorded_criteria(pd.DataFrame({"criteria": [old, {**new, "alpha": 0.01}]}))
    differing = pd.DataFrame({"criteria": [old, {**new, "alpha": 0.01}]})  # --set alpha=... fixes that one
    assert recorded_criteria(differing, overridden={"alpha"}) == {"bn": "bn", "gn": "gn8", "reference_batch": 32,
                                                                  "gn_loss_margin": 3.5, "max_gn_loss": 2.7}


def test_two_axes_one_with_mixed_values_are_drawn_each_with_the_other_apart(tmp_path, capsys):
    """Runs recorded before a field existed (unset) pooled with later ones (2): the figure along
    epochs keeps the two apart, the one along the field draws its values as categories."""
    for epochs, numerics in ((2, None), (2, 2), (4, 2)):
        for seed in range(3):
            for norm, batch, acc in ((BN, 2, 50.0), (GN, 2, 60.0), (BN, 32, 72.0), (GN, 32, 70.0)):
                write_run(tmp_path, norm, batch, seed, [acc + seed * 0.2 + epochs] * epochs, numerics=numerics)
    assert analyze([str(tmp_path), "--vary", "trainer.epochs", "--vary", "numerics"]) == 0
    for axis in ("epochs", "numerics"):
        assert (tmp_path / "figures" / f"accuracy_vs_{axis}.png").read_bytes()[:4] == b"\x89PNG"


def test_a_sweep_over_another_setting_is_analysed_along_it(tmp_path, capsys):
    for epochs, gap in ((2, 6.0), (4, 1.0)):  # a budget study: BN's lead at the reference shrinks with epochs
        for seed in range(3):
            for norm, batch, acc in ((BN, 2, 50.0), (GN, 2, 60.0), (BN, 32, 70.0 + gap), (GN, 32, 70.0)):
                write_run(tmp_path, norm, batch, seed, [acc + seed * 0.2 + epochs] * epochs)
    assert analyze([str(tmp_path), "--vary", "trainer.epochs"]) == 0
    out = capsys.readouterr().out
    assert "at trainer.epochs=2:" in out and "at trainer.epochs=4:" in out
    error = pd.read_csv(tmp_path / "tables" / "error_by_batch.csv").set_index(["test error (%)", "trainer.epochs"])
    assert error.loc[("bn - gn8 (accuracy points)", 2), "batch 32"] == pytest.approx(6.0)  # the verdict's sign
    assert error.loc[("bn - gn8 (accuracy points)", 4), "batch 32"] == pytest.approx(1.0)
    assert error.loc[("bn", 2), "batch 32"] == pytest.approx(100 - 78.2)  # the norms' rows: error
    accuracy = pd.read_csv(tmp_path / "tables" / "accuracy.csv")
    assert set(accuracy["trainer.epochs"]) == {2, 4} and set(accuracy["n"]) == {3}
    slices = json.loads((tmp_path / "verdict.json").read_text())["slices"]
    assert [s["at"] for s in slices] == [{"trainer.epochs": 2}, {"trainer.epochs": 4}]
    assert [s["checks"]["parity"]["gap"] for s in slices] == pytest.approx([6.0, 1.0])  # the table's sign
    assert (tmp_path / "figures" / "accuracy_vs_epochs.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "report.html").read_text()
    assert "At trainer.epochs=2" in report and "At trainer.epochs=4" in report and "NO STATISTICS" not in report


def test_a_setting_at_two_values_gets_their_paired_difference_per_cell(tmp_path, capsys):
    for seed, shift in enumerate((0.1, -0.2, 0.05)):  # fp32 seeds 2 points apart; bf16 moves BN by a little
        for norm, batch, fp32 in ((BN, 2, 50.0), (GN, 2, 60.0), (BN, 32, 70.0), (GN, 32, 68.0)):
            write_run(tmp_path, norm, batch, seed, [fp32 + 2 * seed])
            write_run(tmp_path, norm, batch, seed, [fp32 + 2 * seed + (shift if norm is BN else -3 + shift)],
                      precision="bf16")
    assert analyze([str(tmp_path), "--vary", "trainer.precision"]) == 0
    paired = pd.read_csv(tmp_path / "tables" / "paired_precision.csv").set_index(["norm", "batch_size"])
    assert set(paired["pairs"]) == {3}
    assert paired.loc[("bn", 32), "trainer.precision=unset mean"] == pytest.approx(72.0)
    assert paired.loc[("bn", 32), "trainer.precision=unset sd"] == pytest.approx(2.0)
    assert paired.loc[("bn", 32), "difference"] == pytest.approx(-0.05 / 3)
    assert paired.loc[("gn8", 2), "difference"] == pytest.approx(-3 - 0.05 / 3)
    assert paired["within_seed_noise"].to_dict() == {("bn", 2): True, ("bn", 32): True,
                                                     ("gn8", 2): False, ("gn8", 32): False}
    assert paired.loc[("gn8", 2), "ci_high"] < 0 < paired.loc[("bn", 2), "ci_high"]


def test_a_misspelt_vary_field_is_named_with_the_nearest_and_nothing_is_written(tmp_path, capsys):
    for seed in range(2):
        write_run(tmp_path, BN, 2, seed, [50.0, 51.0])
    assert analyze([str(tmp_path), "--vary", "optim.lrr"]) == 2
    assert capsys.readouterr().err.strip().endswith("--vary optim.lrr is not a setting of these runs "
                                                    "(nearest: optim.lr); nothing written")
    assert not (tmp_path / "tables").exists() and not (tmp_path / "report.html").exists()


def test_a_folder_reads_the_runs_its_shared_list_names(tmp_path, capsys):
    stored = write_run(tmp_path / "claim" / "runs", BN, 2, 0, [40.0, 50.0])
    write_run(tmp_path / "norms" / "runs", GN, 2, 0, [45.0, 55.0])
    (tmp_path / "norms" / record.SHARED).write_text(f"  # stored in claim\n../claim/runs/{stored.name}\n")
    assert sorted(load_runs(tmp_path / "norms").runs["norm"]) == ["bn", "gn8"]
    (tmp_path / "norms" / record.SHARED).write_text("../claim/runs/gone\n")
    assert analyze([str(tmp_path / "norms")]) == 2
    assert "lists run folders that do not exist" in capsys.readouterr().err


def test_run_folders_behind_symbolic_links_are_read_and_a_link_loop_ends(tmp_path):
    stored = write_run(tmp_path / "store", BN, 2, 0, [40.0, 50.0])
    (tmp_path / "view" / "runs").mkdir(parents=True)
    (tmp_path / "view" / "runs" / stored.name).symlink_to(stored, target_is_directory=True)
    (tmp_path / "view" / "runs" / "loop").symlink_to(tmp_path / "view", target_is_directory=True)
    runs = load_runs(tmp_path / "view").runs
    assert list(runs["run"]) == [stored.name] and list(runs["norm"]) == ["bn"]


def test_a_swept_norm_setting_the_tag_does_not_show_is_named_in_the_tables(tmp_path):
    for rmax in (2.0, 3.0):
        for seed in range(2):
            write_run(tmp_path, {"name": "brn", "momentum": 0.1, "rmax": rmax}, 2, seed, [40.0 + rmax, 50.0 + rmax])
    assert analyze([str(tmp_path)]) == 0
    accuracy = pd.read_csv(tmp_path / "tables" / "accuracy.csv").set_index("norm")
    assert accuracy.loc["brn rmax=2.0", "acc_mean"] == pytest.approx(52.0)
    assert accuracy.loc["brn rmax=3.0", "n"] == 2


def test_a_further_baseline_gets_its_own_versus_table_and_an_unknown_one_is_named(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, (a, b) in enumerate([(40.0, 44.0), (39.0, 43.5), (41.0, 44.5)]):
        write_run(runs, {"name": "frn", "eps": 1e-6}, 2, seed, [30.0, a])
        write_run(runs, {"name": "frn", "eps": 1e-6, "skip_tlu_before_addition": True}, 2, seed, [30.0, b])
    assert analyze([str(tmp_path), "--versus", "frn"]) == 0
    table = pd.read_csv(tmp_path / "tables" / "versus_frn.csv")
    assert list(table["norm"]) == ["frn-noaddtlu"] and table["difference"][0] == pytest.approx(4.0)
    assert table["ci_low"][0] > 0
    assert analyze([str(tmp_path), "--versus", "frnx"]) == 2
    assert "--versus frnx: no finished runs of that norm here; allowed: frn, frn-noaddtlu" in capsys.readouterr().err


def test_the_fit_table_splits_test_accuracy_into_fitting_and_generalization():
    from normexp.analysis.tables import fit_table

    runs = pd.DataFrame({"norm": ["bn", "bn", "gn8"], "batch_size": [32, 32, 32],
                         "final_train_acc": [80.0, 82.0, 79.0], "final_test_acc": [78.0, 79.0, 74.0]})
    table = fit_table(runs).set_index("norm")
    assert table.loc["bn", ["train_acc", "test_acc", "test_minus_train", "n"]].tolist() == [81.0, 78.5, -2.5, 2]
    assert table.loc["gn8", "test_minus_train"] == -5.0


def test_precise_minus_population_by_epoch_is_paired_by_run():
    from normexp.analysis.bn_decomposition import precise_by_epoch

    epochs = pd.DataFrame({"norm": ["bn"] * 4 + ["gn8"], "batch_size": [2] * 5, "epoch": [1, 1, 2, 2, 1],
                           "test_acc": [40.0, 50.0, 60.0, 61.0, 45.0],
                           "test_acc_precise": [43.0, 53.0, 60.0, 61.0, None]})
    table = precise_by_epoch(epochs, "bn", 0.05).set_index("batch")
    assert table.loc[2, "epoch 1"].startswith("+3.00")
    assert table.loc[2, "epoch 2"].startswith("+0.00") and list(table.columns) == ["epoch 1", "epoch 2"]
    assert precise_by_epoch(epochs.assign(test_acc_precise=None), "bn", 0.05).empty  # none carries it: no table


@pytest.fixture
def drawn(monkeypatch):
    """The figures an analysis draws, by file name (still written, so the report finds them)."""
    from normexp.analysis import plots

    figures, save = {}, plots.save
    monkeypatch.setattr(plots, "save", lambda fig, path: (figures.__setitem__(path.name, fig), save(fig, path))[1])
    return figures


def _texts(fig) -> list[str]:
    """Every title, axis label, tick label and legend entry of a figure."""
    texts = [fig.get_suptitle()] + [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *(t.get_text() for t in ax.get_xticklabels())]
        texts += [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
    return texts


def test_every_figure_says_its_error_bars_are_one_sd_over_seeds(tmp_path, drawn):
    write_sweep(tmp_path / "sweep", **HOLDS)
    write_run(tmp_path / "sweep", {"name": "ln"}, 2, 0, [60.0, 70.0])
    write_run(tmp_path / "sweep", {"name": "in"}, 2, 0, [60.0, 69.0])
    assert analyze([str(tmp_path / "sweep")]) == 0
    for epochs in (2, 4):
        for seed in range(2):
            for norm, batch in ((BN, 2), (GN, 2), (BN, 32), (GN, 32)):
                write_run(tmp_path / "budget", norm, batch, seed, [50.0 + seed + epochs] * epochs)
    assert analyze([str(tmp_path / "budget"), "--vary", "trainer.epochs"]) == 0
    assert sorted(drawn) == ["accuracy_by_epoch.png", "accuracy_vs_epochs.png", "error_vs_batch.png",
                             "group_ablation.png", "train_loss.png"]  # the last analysis's, and the ablation
    for name, fig in drawn.items():
        assert "± 1 SD over seeds" in " ".join(_texts(fig)), name


def test_one_epoch_figures_run_from_the_start_of_training_to_its_end(tmp_path, drawn):
    """A first look (1 epoch): the epoch axis from 0 to 1 with whole epochs as ticks, the loss's to
    where its data stop, not a 0.5-1.5 window around them."""
    for seed in range(2):
        for norm, batch in ((BN, 2), (GN, 2), (BN, 32), (GN, 32)):
            write_run(tmp_path, norm, batch, seed, [30.0 + seed])
    assert analyze([str(tmp_path)]) == 0
    for ax in drawn["accuracy_by_epoch.png"].axes:
        assert ax.get_xlim() == pytest.approx((0, 1.04)) and [t for t in ax.get_xticks() if t <= 1.04] == [0, 1]
    for ax in drawn["train_loss.png"].axes:
        assert ax.get_xlim() == pytest.approx((0, 1.04))


def test_a_budget_study_is_drawn_with_reader_labels_and_points_apart(tmp_path, drawn):
    """The budget runs (1-50 epochs, numerics v1) beside the converged ones (100, v2): legends name
    values as a reader does (no `numerics=unset`, no `n=`), every budget has a look of its own, and
    the budgets run only at 32 sit side by side there, not in one column."""
    for epochs, numerics, batches in ((1, None, (2, 32)), (10, None, (32,)), (20, None, (32,)), (100, 2, (2, 32))):
        for seed in range(2):
            for norm in (BN, GN):
                for batch in batches:
                    write_run(tmp_path, norm, batch, seed, [40.0 + epochs / 10 + seed] * epochs, numerics=numerics)
    assert analyze([str(tmp_path), "--vary", "trainer.epochs", "--vary", "numerics"]) == 0
    for name in ("error_vs_batch.png", "accuracy_vs_epochs.png"):
        texts = _texts(drawn[name])
        assert not [t for t in texts if "=" in t or "unset" in t], name
        [legend] = drawn[name].legends
        looks = [(h.get_color(), h.get_marker(), h.get_linestyle(), h.get_fillstyle()) for h in legend.legend_handles]
        assert len(set(looks)) == len(looks) == len(legend.get_texts()), name
    legend = [t.get_text() for t in drawn["error_vs_batch.png"].legends[0].get_texts()]
    assert legend == ["1 epoch", "10 epochs", "20 epochs", "100 epochs", "numerics v1", "numerics v2"]
    for ax in drawn["error_vs_batch.png"].axes:
        at_32 = [x for bars in ax.containers for x in bars.lines[0].get_xdata() if 16 < x < 64]
        assert len(at_32) == len(set(at_32)) == 4  # a point per budget at 32, each at its own position
