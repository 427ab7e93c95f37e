"""normexp.analysis.landscape on simulated sweeps with known effects: independent noise per run (SD 0.5
points, 4 seeds, a fixed generator), effects far from the thresholds either way."""

import numpy as np
import pandas as pd

from normexp.analysis.landscape import SHAPE_COLUMNS, VERSUS_COLUMNS, batch_change, group_shape, versus

NAMES = {"ln": "ln", "in": "in", "bn": "bn", "frn": "frn"}  # every other tag here is a GN setting


def sweep(means: dict[tuple[str, int], float], seeds: int = 4, sd: float = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"norm": norm, "norm_name": NAMES.get(norm, "gn"), "batch_size": batch, "seed": s,
             "final_test_acc": mean + rng.normal(0, sd)}
            for (norm, batch), mean in means.items() for s in range(seeds)]
    return pd.DataFrame(rows)


def test_versus_finds_a_real_difference_and_skips_cells_without_a_baseline():
    runs = sweep({("gn8", 2): 50.0, ("frn", 2): 55.0, ("ln", 2): 50.0, ("frn", 32): 40.0})
    table = versus(runs, "gn8", alpha=0.05).set_index(["norm", "batch_size"])
    assert set(table.index) == {("frn", 2), ("ln", 2)}  # no gn8 at 32: no comparison there
    frn = table.loc[("frn", 2)]
    assert 4.0 < frn["difference"] < 6.0 and frn["ci_low"] > 0 and frn["p_two_sided"] < 0.05
    ln = table.loc[("ln", 2)]
    assert ln["ci_low"] < ln["difference"] < ln["ci_high"] and abs(ln["difference"]) < 1.5


def test_batch_change_uses_each_norms_own_smallest_and_largest_batch():
    runs = sweep({("bn", 2): 46.0, ("bn", 32): 61.0, ("frn", 8): 40.0, ("frn", 32): 40.0, ("ln", 32): 50.0})
    table = batch_change(runs, alpha=0.05).set_index("norm")
    assert set(table.index) == {"bn", "frn"}  # ln ran at one batch size only
    assert table.loc["bn", "change"] == "32 -> 2" and table.loc["bn", "ci_high"] < -13
    assert table.loc["frn", "change"] == "32 -> 8" and table.loc["frn", "ci_low"] < 0 < table.loc["frn", "ci_high"]


def _shape(means: dict[str, float]) -> pd.Series:
    table = group_shape(sweep({(norm, 32): mean for norm, mean in means.items()}), alpha=0.05, max_gap=3.0)
    return table.set_index(table["check"].str.split(" \\(").str[0])["holds"]


def test_group_shape_holds_for_worse_extremes_and_a_flat_middle():
    shape = _shape({"ln": 44.0, "gn2": 50.0, "gn4": 50.0, "gn8": 50.0, "gn16": 50.0, "in": 40.0})
    assert shape["middle minus ln"] and shape["middle minus in"] and shape["middle flat"]


def test_group_shape_fails_for_an_extreme_as_good_as_the_middle_or_a_middle_that_is_not_flat():
    shape = _shape({"ln": 52.0, "gn2": 52.0, "gn4": 52.0, "gn8": 52.0, "gn16": 44.0, "in": 40.0})
    assert not shape["middle minus ln"]  # the middle's mean (50) is below LN
    assert shape["middle minus in"]
    assert not shape["middle flat"]  # gn16 is 8 points below the others


def test_tables_without_two_seeds_anywhere_are_empty_with_their_columns():
    runs = sweep({("gn8", 2): 50.0, ("ln", 2): 45.0, ("in", 2): 40.0}, seeds=1)
    assert list(versus(runs, "gn8", 0.05).columns) == VERSUS_COLUMNS and versus(runs, "gn8", 0.05).empty
    assert list(group_shape(runs, 0.05, 5.0).columns) == SHAPE_COLUMNS and group_shape(runs, 0.05, 5.0).empty


def test_holm_adjustment_matches_its_definition():
    from normexp.analysis.landscape import holm

    p = pd.Series([0.01, 0.04, 0.03, 0.5], index=list("abcd"))
    assert holm(p).round(6).to_dict() == {"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.5}
    assert holm(pd.Series([0.6, 0.5])).tolist() == [1.0, 1.0]


def test_a_comparison_names_where_each_side_trained():
    from normexp.analysis.landscape import versus

    rows = [("bn", 2, s, 50.0 + s, "cpu", "2.14.1+cu130") for s in range(3)]
    rows += [("ln", 2, s, 48.0 + s, "NVIDIA H200" if s else "cpu", "2.11.0+cu130" if s else "2.14.1+cu130")
             for s in range(3)]
    runs = pd.DataFrame(rows, columns=["norm", "batch_size", "seed", "final_test_acc", "device", "torch_version"])
    [row] = versus(runs, "bn", 0.05).to_dict("records")
    assert row["trained_on"] == "NVIDIA H200, torch 2.11.0; cpu, torch 2.14.1"
    assert row["baseline_trained_on"] == "cpu, torch 2.14.1"
    recorded = runs.assign(cpu_capability=["AVX2", "AVX512", None, None, None, None])  # a capability, where recorded
    [row] = versus(recorded, "bn", 0.05).to_dict("records")
    assert row["baseline_trained_on"] == "cpu (AVX2), torch 2.14.1; cpu (AVX512), torch 2.14.1; cpu, torch 2.14.1"


def test_a_run_that_recorded_no_device_is_named_so():
    from normexp.analysis.machines import machines

    runs = pd.DataFrame({"device": ["cpu", None], "cpu_capability": ["AVX2", None],
                         "torch_version": ["2.14.1+cu130", None]})
    assert machines(runs) == {"cpu (AVX2), torch 2.14.1": 1, "not recorded": 1}
    assert machines(runs.drop(columns=["device"])) == {}
