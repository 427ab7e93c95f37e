"""The parity screen's analysis and its worker's lists on run records written through normexp.record
(no training)."""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from normexp import record
from normexp.analysis import screen
from normexp.compose import compose
from normexp.config import validate


def write_run(root: Path, norm: dict, acc: float, crop_fill: str | None = None, depth: int = 8,
              seed: int = 0) -> None:
    data = {"source": "folder", "batch_size": 32, "devices": 8, "crop_padding": 4, "flip": True}
    if crop_fill is not None:
        data["crop_fill"] = crop_fill
    ident = {"data": data, "model": {"depth": depth, "base_width": 16}, "norm": norm, "optim": {"lr": 0.1},
             "trainer": {"epochs": 2}, "seed": seed, "data_digest": "cifar", "numerics": 2}
    directory = root / record.run_name(ident)
    record.write_setup(directory, ident, "verdict: null\n")
    metrics = [{"epoch": e + 1, "test_acc": a, "train_acc": a, "train_loss": 1.0, "test_loss": 1.0, "lr": 0.1,
                "seconds": 1.0, "train_seconds": 1.0, "eval_seconds": 0.0, "images_per_s": 100.0}
               for e, a in enumerate((acc - 5, acc))]
    record.write_progress(directory, metrics, [{"epoch": m["epoch"], "step": m["epoch"], "loss": 1.0} for m in metrics])
    record.write_summary(directory, record.summary(directory.name, metrics, None, compute_seconds=7200.0))


BN, GN8, GN4 = {"name": "bn"}, {"name": "gn", "groups": 8}, {"name": "gn", "groups": 4}


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    reference, arms = tmp_path / "converged", tmp_path / "screen"
    write_run(reference, BN, 84.0)
    write_run(reference, GN8, 80.5)
    write_run(arms, BN, 84.5, crop_fill="reflect")  # gap 1.5: closes 2.0
    write_run(arms, GN8, 83.0, crop_fill="reflect")
    write_run(arms, GN4, 80.9)  # GN only, against the reference's BN: gap 3.1, closes 0.4
    write_run(arms, BN, 84.0, depth=20)  # gap 3.0: closes 0.5
    write_run(arms, GN8, 81.0, depth=20)
    return arms, reference


def test_each_arm_is_named_by_what_it_changes_and_read_by_the_committed_thresholds(folders):
    table = screen.screen_table(screen.arm_runs(*folders)).set_index("arm")
    assert list(table.index) == ["reference", "data.crop_fill=reflect", "model.depth=20", "norm.groups=4"]
    assert table.loc["reference", "gap BN - GN"] == 3.5
    assert table.loc["data.crop_fill=reflect", ["gap BN - GN", "closes", "reading"]].tolist() == [
        1.5, 2.0, "carries the gap"]
    assert table.loc["model.depth=20", "reading"] == "carries part"
    assert table.loc["norm.groups=4", "BN"] == "84.00 (ref)"
    assert table.loc["norm.groups=4", "reading"] == "does not carry it"
    assert table.loc["data.crop_fill=reflect", "compute h BN / GN"] == "2.0 / 2.0"


def test_an_arm_whose_gn_run_has_not_finished_has_no_gap_yet(folders):
    arms, reference = folders
    write_run(arms, BN, 84.0, crop_fill="mean")
    row = screen.screen_table(screen.arm_runs(arms, reference)).set_index("arm").loc["data.crop_fill=mean"]
    assert row["GN"] == "-" and pd.isna(row["gap BN - GN"]) and row["reading"] == "its GN run has not finished"


def test_a_gn_only_combination_borrows_the_bn_of_its_other_changes(folders):
    arms, reference = folders
    write_run(arms, GN4, 84.0, crop_fill="reflect")  # against the reflect arm's BN 84.5: gap 0.5
    write_run(arms, GN4, 81.0, crop_fill="mean")  # the mean-fill arm has no BN run yet
    table = screen.screen_table(screen.arm_runs(arms, reference)).set_index("arm")
    combined = table.loc["data.crop_fill=reflect, norm.groups=4"]
    assert combined[["BN", "gap BN - GN", "closes"]].tolist() == ["84.50 (data.crop_fill=reflect)", 0.5, 3.0]
    assert combined["compute h BN / GN"] == "- / 2.0"
    waiting = table.loc["data.crop_fill=mean, norm.groups=4"]
    assert waiting["BN"] == "-" and pd.isna(waiting["gap BN - GN"])
    assert waiting["reading"] == "its BN run has not finished"


def test_a_combination_with_its_own_bn_waits_for_it_and_parity_is_read_at_one_point(folders):
    arms, reference = folders
    write_run(arms, GN8, 83.6, crop_fill="reflect", depth=20)  # its BN has not finished
    waiting = screen.screen_table(screen.arm_runs(arms, reference)).set_index("arm")
    assert waiting.loc["data.crop_fill=reflect, model.depth=20", "reading"] == "its BN run has not finished"
    write_run(arms, BN, 84.6, crop_fill="reflect", depth=20)  # gap exactly 1.00 at 0.01
    row = screen.screen_table(screen.arm_runs(arms, reference)).set_index("arm").loc[
        "data.crop_fill=reflect, model.depth=20"]
    assert row[["BN", "gap BN - GN", "closes", "reading"]].tolist() == ["84.60", 1.0, 2.5, "carries the gap, at parity"]
    write_run(arms, GN8, 84.6, crop_fill="mean")  # GN 1.5 ahead of its BN: not parity
    write_run(arms, BN, 83.1, crop_fill="mean")
    row = screen.screen_table(screen.arm_runs(arms, reference)).set_index("arm").loc["data.crop_fill=mean"]
    assert row[["gap BN - GN", "reading"]].tolist() == [-1.5, "carries the gap"]


def test_a_threshold_met_exactly_is_met(tmp_path):
    reference, arms = tmp_path / "converged", tmp_path / "screen"
    write_run(reference, BN, 83.95)
    write_run(reference, GN8, 80.37)  # gap 3.58
    write_run(arms, GN4, 80.87)  # gap 3.08: closes exactly 0.50
    row = screen.screen_table(screen.arm_runs(arms, reference)).set_index("arm").loc["norm.groups=4"]
    assert row[["closes", "reading"]].tolist() == [0.5, "carries part"]


def test_two_seeds_of_one_arm_are_refused(folders):
    arms, reference = folders
    write_run(reference, BN, 84.1, seed=1)
    write_run(reference, GN8, 80.4, seed=1)
    write_run(arms, GN8, 83.1, crop_fill="reflect", seed=1)
    with pytest.raises(ValueError, match="more than one (BN|GN) run"):
        screen.screen_table(screen.arm_runs(arms, reference))


def test_the_table_and_figure_are_written(folders, tmp_path):
    screen.write(*folders, tmp_path / "out")
    assert (tmp_path / "out" / "tables" / "screen.md").read_text().count("\n") == 6
    assert (tmp_path / "out" / "figures" / "gap_by_arm.png").stat().st_size > 0


def table_of(rows: list[tuple[str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"arm": arm, "gap BN - GN": gap, "reading": screen.AT_PARITY if abs(gap) <= 1.0 else "x"}
                         for arm, gap in rows])


def test_the_recipe_is_the_arm_at_parity_with_the_smaller_gap_then_fewer_arms_then_the_earlier_arm():
    assert screen.recipe(table_of([("reference", 3.58), ("data.crop_fill=reflect", 1.97)])) is None
    assert screen.recipe(table_of([("data.crop_fill=reflect, norm.groups=4", -0.6),
                                   ("data.crop_fill=reflect, data.devices=1, optim.ref_batch_size=32", 0.4)])
                         ) == "data.crop_fill=reflect, data.devices=1, optim.ref_batch_size=32"
    assert screen.recipe(table_of([("data.crop_fill=reflect, optim.lr=0.2", 0.1), ("norm.groups=4", 0.9)])
                         ) == "norm.groups=4"  # a change outside the screen's arms is no recipe
    assert screen.recipe(table_of([("data.crop_fill=reflect, model.depth=20", 0.8), ("norm.groups=2", 0.8)])
                         ) == "norm.groups=2"
    assert screen.recipe(table_of([("data.crop_fill=reflect, model.depth=20", 0.8),
                                   ("data.crop_fill=reflect, norm.groups=2", 0.8)])
                         ) == "data.crop_fill=reflect, norm.groups=2"


def test_a_recipe_becomes_the_figure_runs_overrides():
    assert screen.recipe_overrides("data.crop_fill=reflect, data.devices=1, optim.ref_batch_size=32") == {
        "bn": ["norm=bn", "data.crop_fill=reflect", "data.devices=1", "optim.ref_batch_size=32"],
        "gn": ["norm=gn", "data.crop_fill=reflect", "data.devices=1", "optim.ref_batch_size=32"]}
    assert screen.recipe_overrides("data.crop_fill=reflect, norm.groups=4") == {
        "bn": ["norm=bn", "data.crop_fill=reflect", "verdict.gn=gn4"],
        "gn": ["norm=gn4", "data.crop_fill=reflect", "verdict.gn=gn4"]}
    with pytest.raises(ValueError, match="channels_per_group"):  # no arm of the screen's; not a run's override
        screen.recipe_overrides("norm.channels_per_group=4")


def load_worker():
    path = Path(__file__).resolve().parents[1] / "scripts" / "screen_worker.py"
    spec = importlib.util.spec_from_file_location("screen_worker", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses read their module's namespace
    spec.loader.exec_module(module)
    return module


def test_the_worker_trains_the_figure_once_a_recipe_is_recorded_and_the_first_recipe_stands(folders, tmp_path):
    worker, (arms, reference) = load_worker(), folders
    args = argparse.Namespace(worker=2, runs=arms, reference=reference, train_from=tmp_path / "frozen", first="figure",
                              figure_runs=tmp_path / "figure", figure_from=tmp_path / "frozen_figure")
    jobs = worker.run_list(args)
    assert {job.experiment for job in jobs} == {"parity_screen"} and not (arms / worker.RECIPE).exists()
    write_run(arms, GN4, 83.8, crop_fill="reflect")  # gap 0.7 against reflection's BN 84.5: the recipe
    jobs = worker.run_list(args)
    assert [job.experiment for job in jobs[:12]] == ["parity_figure"] * 12 and jobs[12].experiment == "parity_screen"
    assert jobs[0].overrides == "seed=1 data.batch_size=32 norm=bn data.crop_fill=reflect verdict.gn=gn4"
    assert jobs[11].overrides == "seed=3 data.batch_size=2 norm=gn4 data.crop_fill=reflect verdict.gn=gn4"
    assert jobs[0].runs == tmp_path / "figure" and jobs[0].worktree == tmp_path / "frozen_figure"
    assert json.loads((arms / worker.RECIPE).read_text())["arm"] == "data.crop_fill=reflect, norm.groups=4"
    write_run(arms, GN8, 84.4, crop_fill="reflect", depth=20)  # a later, smaller gap does not replace it
    write_run(arms, BN, 84.5, crop_fill="reflect", depth=20)
    assert worker.run_list(args)[0].overrides.endswith("norm=bn data.crop_fill=reflect verdict.gn=gn4")
    assert worker.run_list(argparse.Namespace(**{**vars(args), "first": "screen"}))[0].experiment == "parity_screen"


COMBINED = [f"{screen.ARMS[0]}, {partner}" for partner in screen.PARTNERS]


@pytest.mark.parametrize("arm", [*screen.ARMS, *COMBINED])
def test_each_possible_recipe_composes_into_the_figure_as_exactly_that_change(arm):
    for kind, overrides in screen.recipe_overrides(arm).items():
        figure = compose(["experiment=parity_figure", "seed=1", "data.batch_size=32", *overrides])
        validate(figure)
        base = compose(["experiment=converged", "seed=1", "data.batch_size=32", f"norm={kind}"])
        changed = screen.change(record.identity(figure, "cifar"), record.identity(base, "cifar"))
        assert changed == (screen.bn_arm(arm) if kind == "bn" else arm)
        assert record.norm_tag(figure.norm) == figure.verdict.gn if kind == "gn" else figure.verdict.bn


def test_the_workers_screen_runs_change_converged_by_exactly_their_arm(tmp_path):
    worker = load_worker()
    assert screen.PARTNERS == ("data.devices=1, optim.ref_batch_size=32", "norm.groups=4", "norm.groups=2",
                               "model.depth=20")  # parity_combo.yaml's, in its order
    table = pd.DataFrame({"arm": list(screen.PARTNERS), "closes": [0.5] * len(screen.PARTNERS)})
    assert worker.combinations(table) == COMBINED
    table["closes"] = [0.49, float("nan"), 0.5, 3.0]  # below 0.5 or unfinished: not combined
    assert worker.combinations(table) == [COMBINED[2], COMBINED[3]]
    table["closes"] = [0.5] * len(screen.PARTNERS)
    args = argparse.Namespace(runs=tmp_path, train_from=tmp_path)
    changed = []
    for job in worker.screen_jobs(args, table):
        run = compose([f"experiment={job.experiment}", *job.overrides.split()])
        validate(run)
        kind = "bn" if run.norm.name == "bn" else "gn"
        base = compose(["experiment=converged", "seed=0", "data.batch_size=32", f"norm={kind}"])
        changed.append((kind, screen.change(record.identity(run, "cifar"), record.identity(base, "cifar"))))
    gn_only = [arm for arm in [*COMBINED, *screen.ARMS] if "norm.groups=" in arm]
    assert changed == [(kind, arm) for arm in [*COMBINED, *screen.ARMS] for kind in ("bn", "gn")
                       if kind == "gn" or arm not in gn_only]


def test_the_workers_figure_jobs_are_the_presets_twelve_runs_packed_where_a_cpu_step_packs(tmp_path):
    worker = load_worker()
    args = argparse.Namespace(figure_runs=tmp_path, figure_from=tmp_path)
    jobs = worker.figure_jobs(args, "data.crop_fill=reflect, data.devices=1, optim.ref_batch_size=32")
    cells, per_job = set(), []
    for job in jobs:
        run = compose([f"experiment={job.experiment}", *job.overrides.split()])
        validate(run)
        seeds = list(run.seed) if not isinstance(run.seed, int) else [run.seed]
        per_job.append((run.data.batch_size, len(seeds)))
        cells |= {(record.norm_tag(run.norm), run.data.batch_size, seed) for seed in seeds}
    assert per_job == [(32, 1)] * 6 + [(2, 3)] * 2  # 2 images per step packs on CPU, 32 does not
    preset = compose(["experiment=parity_figure"])
    assert cells == {(norm, batch, seed) for norm in ("bn", "gn8") for batch in (2, 32) for seed in preset.seed}
    eight_devices = worker.figure_jobs(args, "data.crop_fill=reflect")  # 16 images per step: no packing
    assert [job.overrides.split()[0] for job in eight_devices] == [f"seed={s}" for s in (1, 1, 2, 2, 3, 3)] * 2
