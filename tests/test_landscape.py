"""normexp.landscape on simulated sweeps with known effects: per-seed SD 0.5 points, 4 seeds, the
same noise draw for seed s in every cell, so cells with equal true means are exactly equal."""

import numpy as np
import pandas as pd

from normexp.landscape import batch_change, group_shape, versus

NAMES = {"ln": "ln", "in": "in", "bn": "bn"}  # every other tag here is a GN setting


def sweep(means: dict[tuple[str, int], float], seeds: int = 4, sd: float = 0.5) -> pd.DataFrame:
    noise = np.random.default_rng(0).normal(0, sd, seeds)
    rows = [{"norm": norm, "norm_name": NAMES.get(norm, "gn"), "batch_size": batch, "seed": s,
             "final_test_acc": mean + noise[s]}
            for (norm, batch), mean in means.items() for s in range(seeds)]
    return pd.DataFrame(rows)


def test_versus_finds_a_real_difference_and_skips_cells_without_a_baseline():
    runs = sweep({("gn8", 2): 50.0, ("frn", 2): 53.0, ("ln", 2): 50.0, ("frn", 32): 40.0})
    table = versus(runs, "gn8", alpha=0.05).set_index(["norm", "batch_size"])
    assert set(table.index) == {("frn", 2), ("ln", 2)}  # no gn8 at 32: no comparison there
    frn = table.loc[("frn", 2)]
    assert 2.0 < frn["difference"] < 4.0 and frn["ci_low"] > 0 and frn["p_two_sided"] < 0.05
    ln = table.loc[("ln", 2)]
    assert ln["ci_low"] < 0 < ln["ci_high"]


def test_batch_change_is_the_smallest_minus_the_largest_batch():
    runs = sweep({("bn", 2): 46.0, ("bn", 32): 61.0, ("gn8", 2): 50.0, ("gn8", 32): 50.0})
    table = batch_change(runs, alpha=0.05).set_index("norm")
    assert table.loc["bn", "change"] == "32 -> 2"
    assert table.loc["bn", "ci_high"] < -13
    assert table.loc["gn8", "ci_low"] < 0 < table.loc["gn8", "ci_high"]


def _shape(means: dict[str, float]) -> pd.Series:
    table = group_shape(sweep({(norm, 32): mean for norm, mean in means.items()}), alpha=0.05)
    return table.set_index("check")["shape_holds"]


def test_group_shape_holds_for_worse_extremes_and_a_flat_middle():
    shape = _shape({"ln": 46.0, "gn2": 50.0, "gn4": 50.0, "gn8": 50.0, "gn16": 50.0, "in": 44.0})
    assert shape["middle minus ln"] and shape["middle minus in"]
    assert shape["middle flat (4 settings; range of means)"]


def test_group_shape_fails_for_an_extreme_as_good_as_the_middle_or_a_middle_that_is_not_flat():
    shape = _shape({"ln": 50.0, "gn2": 50.0, "gn4": 50.0, "gn8": 50.0, "gn16": 44.0, "in": 40.0})
    assert not shape["middle minus ln"]
    assert shape["middle minus in"]
    assert not shape["middle flat (4 settings; range of means)"]
