"""The claim verdict: error rates on simulated sweeps, undecided cases, honest wording, criteria
loading. No training and no torch."""

import importlib.util
import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from normexp.analysis.verdict import verdict
from normexp.analysis.verdict_text import describe_verdict
from normexp.criteria import DEFAULTS, Criteria, load_criteria

BATCHES = (2, 4, 8, 16, 32, 64)
SIMULATIONS = 1000
CRITERIA, _ = load_criteria()


def sweep(bn: Callable[[int], float], gn: Callable[[int], float], rng: np.random.Generator | None = None,
          batches=BATCHES, seeds: int = 3, sd: float = 1.0) -> pd.DataFrame:
    """Finished runs with true mean accuracy bn(batch) / gn(batch) plus per-seed noise."""
    rng = rng or np.random.default_rng(0)
    rows = [(tag, b, s, mean(b) + rng.normal(0, sd), 5) for tag, mean in (("bn", bn), ("gn8", gn))
            for b in batches for s in range(seeds)]
    return pd.DataFrame(rows, columns=["norm", "batch_size", "seed", "final_test_acc", "epochs"])


def bn_drops(b: int) -> float:
    return 70.0 - {2: 8.0, 4: 2.0}.get(b, 0.0)


RISING = {2: 50.8, 4: 50.5, 8: 50.5, 16: 49.5, 32: 47.7, 64: 46.0}  # GN as committed: more steps at small batch


SCENARIOS = {
    "claim true": (bn_drops, lambda b: 69.5),  # BN loses 8 at batch 2 and 2 at 4; GN flat, so ahead at 2
    "gn rises": (bn_drops, RISING.get),  # the committed 5-epoch shape: GN gains as the batch shrinks
    "gn loses 3 at 2": (bn_drops, lambda b: 69.5 - 3.0 * (b == 2)),  # flat, then a local loss at 2 only
    "gn dips 4 at 4": (bn_drops, lambda b: 69.5 - 4.0 * (b == 4)),  # a loss between the ends only
    "gn rises, loses 3 at 2": (bn_drops, lambda b: RISING[32] - 3.0 if b == 2 else RISING[b]),  # 3 below its reference
    "bn flat": (lambda b: 70.0, lambda b: 69.5),
    "parity gap": (bn_drops, lambda b: 66.5),  # GN 3 points below BN at the reference
}


@cache
def outcomes(scenario: str) -> pd.DataFrame:
    """Per simulated sweep: each check's and part's `holds`, and the overall verdict."""
    rng = np.random.default_rng(sorted(SCENARIOS).index(scenario))
    strict, _ = load_criteria({"require_parity": True, "max_parity_gap": 2.0})
    rows = []
    for _ in range(SIMULATIONS):
        result = verdict(sweep(*SCENARIOS[scenario], rng=rng), strict)
        rows.append({"overall": result["holds"], **{k: c["holds"] for k, c in result["checks"].items()},
                     **{f"{k} part": p["holds"] for k, p in result["parts"].items()}})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("scenario, check, expected, min_rate", [
    ("claim true", "gn_holds", True, 0.95),
    ("gn rises", "gn_holds", True, 0.95),
    ("gn dips 4 at 4", "gn_holds", False, 0.95),
    # what 3 seeds cannot promise: a 3-point loss at one batch size is caught in about 86-88% of
    # sweeps once every batch size below the reference must hold (conf/verdict/default.yaml)
    ("gn loses 3 at 2", "gn_holds", False, 0.80),
    ("gn rises, loses 3 at 2", "gn_holds", False, 0.80),
    ("bn flat", "bn_degrades", False, 0.95),
    ("claim true", "small_batch part", True, 0.90),
    ("parity gap", "parity", False, 0.95),
    ("parity gap", "overall", False, 0.95),
])
@pytest.mark.slow
def test_error_rates_on_simulated_sweeps(scenario, check, expected, min_rate):
    rate = (outcomes(scenario)[check] == expected).mean()
    assert rate >= min_rate, f"{scenario}: {check} == {expected} in {rate:.3f} of {SIMULATIONS} sweeps"


def test_statistics_match_scipy():
    runs = sweep(bn_drops, lambda b: 69.5 - 0.1 * np.log2(b))
    result = verdict(runs, CRITERIA)
    acc = {(n, b): g.to_numpy() for (n, b), g in runs.groupby(["norm", "batch_size"])["final_test_acc"]}
    welch = stats.ttest_ind(acc["bn", 32], acc["bn", 2], equal_var=False, alternative="greater")
    assert result["checks"]["bn_degrades"]["lower_bound"] == pytest.approx(welch.confidence_interval(0.95).low)
    beats = stats.ttest_ind(acc["gn8", 2], acc["bn", 2], equal_var=False, alternative="greater")
    check = result["checks"]["gn_beats_bn_at_smallest_batch"]
    assert (check["welch_t"], check["p_value_one_sided"]) == pytest.approx((beats.statistic, beats.pvalue))
    gn = runs[runs["norm"] == "gn8"]
    groups = [g.to_numpy() for _, g in gn.groupby("batch_size")["final_test_acc"]]
    within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (len(gn) - len(groups))  # ANOVA's within MS
    se = np.sqrt(within * (1 / 3 + 1 / 3))
    trend = result["checks"]["gn_holds"]
    bounds = {b: acc["gn8", b].mean() - acc["gn8", 32].mean() - stats.t.ppf(0.95, len(gn) - len(groups)) * se
              for b in (2, 4, 8, 16)}  # every batch size below the reference; the worst decides
    worst = min(bounds, key=bounds.get)
    assert trend["batch_size"] == worst and trend["lower_bound_by_batch"] == pytest.approx(bounds)
    assert trend["change"] == pytest.approx(acc["gn8", worst].mean() - acc["gn8", 32].mean())
    assert (trend["se"], trend["df"]) == pytest.approx((se, len(gn) - len(groups)))
    assert trend["lower_bound"] == pytest.approx(bounds[worst])
    parity = stats.ttest_ind(acc["bn", 32], acc["gn8", 32], equal_var=False).confidence_interval(0.95)
    assert (result["checks"]["parity"]["ci_low"], result["checks"]["parity"]["ci_high"]) == pytest.approx(tuple(parity))


def test_result_is_plain_json():
    result = verdict(sweep(bn_drops, lambda b: 69.5), CRITERIA)
    assert json.loads(json.dumps(result, allow_nan=False))["holds"] is True
    assert {type(v) for v in result["checks"]["bn_degrades"].values()} <= {bool, int, float}


def test_a_verdict_over_runs_of_two_machines_says_which_and_how_many():
    """Seeds at 2 per device trained on another CPU than the rest (the converged preset's step 4):
    the verdict counts the two norms' runs by machine and its description names both; runs of one
    machine, or without a recorded device, add no line."""
    runs = sweep(bn_drops, lambda b: 69.5, batches=(2, 32))
    same = runs.assign(device="cpu", cpu_capability="AVX512", torch_version="2.14.1+cu130")
    assert verdict(same, CRITERIA)["trained_on"] == {"cpu (AVX512), torch 2.14.1": 12}
    assert "machine" not in describe_verdict(verdict(same, CRITERIA)) and verdict(runs, CRITERIA)["trained_on"] == {}
    mixed = same.assign(cpu_capability=np.where((same["batch_size"] == 2) & (same["seed"] > 0), "AVX2", "AVX512"))
    other_norm = mixed.iloc[:1].assign(norm="ln", cpu_capability="AVX2")  # not one of the two norms judged
    result = verdict(pd.concat([mixed, other_norm]), CRITERIA)
    assert result["trained_on"] == {"cpu (AVX2), torch 2.14.1": 4, "cpu (AVX512), torch 2.14.1": 8}
    assert json.loads(json.dumps(result))["trained_on"] == result["trained_on"]
    assert describe_verdict(result).splitlines()[1] == (
        "  runs of more than one machine (as recorded), pooled and compared: "
        "cpu (AVX2), torch 2.14.1 (4 runs); cpu (AVX512), torch 2.14.1 (8 runs)")


def test_parity_is_reported_and_only_required_when_asked():
    runs = sweep(lambda b: 50.0 if b == 2 else 70.0, lambda b: 60.0)  # GN 10 below BN at 32, 10 above at 2
    result = verdict(runs, CRITERIA)
    parity = result["parts"]["parity"]
    assert result["holds"] and result["checks"]["parity"]["holds"] is None
    assert not parity["required"] and not parity["assessed"] and parity["holds"] is None
    text = describe_verdict(result)
    assert text.splitlines()[0] == ("claim verdict: HOLDS (5-epoch budget) - small-batch half: HOLDS (required); "
                                    "parity at 32: not assessed (not required at this budget)")
    assert "[--] parity at batch 32: bn - gn8 +9.20 points" in text and "HOLDS" not in text.split("parity")[-1]
    strict, _ = load_criteria({"require_parity": True})
    result = verdict(runs, strict)
    assert not result["holds"] and result["parts"]["small_batch"]["holds"] and result["parts"]["parity"]["required"]
    assert describe_verdict(result).startswith("claim verdict: DOES NOT HOLD (5-epoch budget) - "
                                               "small-batch half: HOLDS")


def test_a_failed_required_part_decides_while_the_other_is_undecided():
    """Parity fails at the reference batch before any small batch has run (the converged preset's
    first seeds): both parts are required, so the claim already does not hold; an undecided part
    cannot rescue it. At parity the same runs leave the verdict undecided."""
    both, _ = load_criteria({"require_parity": True, "max_parity_gap": 1.0})
    for gap, undecided in ((3.5, False), (0.0, True)):
        result = verdict(sweep(lambda b: 84.0, lambda b: 84.0 - gap, batches=(32,), sd=0.2), both)
        assert result["parts"]["small_batch"]["undecided"] and result["parts"]["parity"]["undecided"] is False
        assert "no batch size below reference batch 32" in result["parts"]["small_batch"]["reason"]
        assert result["undecided"] is undecided and result["holds"] is False
    assert describe_verdict(verdict(sweep(lambda b: 84.0, lambda b: 80.5, batches=(32,), sd=0.2), both)).startswith(
        "claim verdict: DOES NOT HOLD (5-epoch budget) - small-batch half: UNDECIDED (required); parity at 32: NO")


def test_a_parity_only_preset_is_judged_on_parity_alone():
    """A sweep of BN and GN at the reference batch only (the converged parity test): the small-batch
    half is undecided and not required, so the verdict is parity's."""
    only_parity, _ = load_criteria({"require_small_batch": False, "require_parity": True, "max_parity_gap": 1.0})
    for gap, holds in ((0.0, True), (2.0, False)):
        runs = sweep(lambda b: 90.0, lambda b: 90.0 - gap, batches=(32,), seeds=5, sd=0.3)
        result = verdict(runs, only_parity)
        assert result["parts"]["small_batch"]["undecided"] and not result["undecided"] and result["holds"] is holds
        assert "small-batch half: not assessed (not required by this preset)" in describe_verdict(result)
    with pytest.raises(ValueError, match="must require at least one part"):
        load_criteria({"require_small_batch": False})


def test_the_small_batch_half_names_every_missing_cell_at_once():
    """Two seeds at the reference batch and no small batch yet: both gaps are named."""
    reason = verdict(sweep(bn_drops, lambda b: 70.0, batches=(32,), seeds=2), CRITERIA)["reason"]
    assert "only 2 finished bn run(s) at batch 32" in reason and "no batch size below reference batch 32" in reason
    both, _ = load_criteria({"require_parity": True})  # both parts miss the same cells at 32
    with_parity = verdict(sweep(bn_drops, lambda b: 70.0, batches=(32,), seeds=2), both)["reason"]
    assert with_parity.count("only 2 finished bn run(s) at batch 32; the criteria need 3 or more seeds") == 1


@pytest.mark.parametrize("runs, reason", [
    (sweep(bn_drops, lambda b: 70.0, batches=(2, 4)), "no finished bn runs at reference batch 32; have batches [2, 4]"),
    (sweep(bn_drops, lambda b: 70.0).query("norm == 'bn'"), "no finished gn8 runs"),
    (sweep(bn_drops, lambda b: 70.0, batches=(32, 64)), "no batch size below reference batch 32"),
    (sweep(bn_drops, lambda b: 70.0, seeds=1), "only 1 finished bn run(s) at batch 32; the criteria need 3 or more"),
    (sweep(bn_drops, lambda b: 70.0, seeds=2), "only 2 finished bn run(s) at batch 32; the criteria need 3 or more"),
    (sweep(lambda b: 12.0, lambda b: 11.0), "runs too short to judge: at reference batch 32 bn reaches "),
    (sweep(bn_drops, lambda b: 70.0).query("not (norm == 'gn8' and batch_size == 8 and seed > 0)"),
     "only 1 finished gn8 run(s) at batch 8; the criteria need 3 or more"),  # a cell between the ends
])
def test_undecided_names_what_is_missing(runs, reason):
    result = verdict(runs, CRITERIA)
    assert result["undecided"] and not result["holds"] and reason in result["reason"]
    assert describe_verdict(result).startswith("claim verdict: UNDECIDED (5-epoch budget) - "
                                               "small-batch half: UNDECIDED (required")
    assert f"small-batch half undecided: {result['parts']['small_batch']['reason']}" in describe_verdict(result)


def test_description_never_claims_a_failed_comparison():
    result = verdict(sweep(lambda b: 70.0, lambda b: 70.0 + 1.2 * (np.log2(b) - 6)), CRITERIA)  # claim false
    text = describe_verdict(result)
    checks = result["checks"]
    assert text.startswith("claim verdict: DOES NOT HOLD")
    for name, label in (("bn_degrades", "bn degrades"), ("gn_holds", "gn8 holds"), ("interaction", "interaction"),
                        ("gn_beats_bn_at_smallest_batch", "gn8 beats bn")):
        line = next(line for line in text.splitlines() if label in line)
        assert not checks[name]["holds"] and line.lstrip().startswith("[NO]") and "needed" in line, line
    bound, threshold = checks["bn_degrades"]["lower_bound"], checks["bn_degrades"]["threshold"]
    assert f"{bound:.2f} > {threshold:.2f}" not in text and f"needed > {threshold:.2f}" in text


def test_undefined_statistics_leave_a_part_undecided_and_say_why():
    runs = sweep(bn_drops, lambda b: 70.0, sd=0.0)  # no spread: no standard errors
    result = verdict(runs, CRITERIA)
    assert result["checks"]["bn_degrades"]["lower_bound"] is None and result["undecided"] and not result["holds"]
    assert "no spread between seeds, so no bound for bn_degrades" in describe_verdict(result)


def test_criteria_defaults_come_from_the_yaml_only():
    criteria, source = load_criteria()
    assert vars(criteria) == yaml.safe_load(DEFAULTS.read_text())
    assert set(source.values()) == {"default"}
    with pytest.raises(TypeError):
        Criteria()  # no defaults in code


def test_criteria_layers_record_their_source():
    criteria, source = load_criteria(overrides={"alpha": 0.01}, recorded={"alpha": 0.1, "gn_loss_margin": 2})
    assert (criteria.alpha, criteria.gn_loss_margin) == (0.01, 2.0)
    assert (source["alpha"], source["gn_loss_margin"], source["bn"]) == ("override", "recorded", "default")


@pytest.mark.parametrize("retired", ["max_gn_loss", "gn_margin"])
def test_a_retired_recorded_criterion_is_set_aside_and_said(retired):
    """Runs launched before the anchored rule recorded max_gn_loss, and before the every-batch rule
    gn_margin: today's rule judges them, and the provenance says which recorded value it did not use."""
    criteria, source = load_criteria(recorded={retired: 2.7, "alpha": 0.05})
    assert criteria.gn_loss_margin == yaml.safe_load(DEFAULTS.read_text())["gn_loss_margin"]
    assert source[retired].startswith("retired: recorded 2.7, set aside")
    with pytest.raises(ValueError, match=f"unknown verdict criterion '{retired}'"):
        load_criteria(overrides={retired: 2.7})


@pytest.mark.parametrize("overrides, message", [
    ({"max_gn_range": 2.0}, "max_gn_range"),
    ({"alpha": "0.05"}, "alpha"),
    ({"require_parity": 1}, "require_parity"),
    ({"alpha": 1.5}, "alpha"),
])
def test_bad_criteria_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        load_criteria(overrides)
    if "range" in message:
        assert "allowed: bn, gn, reference_batch" in str(error.value)


def test_module_stays_torch_free():
    code = ("import sys, normexp.analysis.verdict, normexp.analysis.pooling; "
            "sys.exit(bool({'torch', 'matplotlib'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_papers_median_of_the_last_5_epochs_is_a_verdict_option():
    from normexp.analysis.collect import median_last

    assert median_last([{"test_acc": a} for a in (10, 50, 40, 60, 55, 45)]) == 50.0  # last 5: 50 40 60 55 45
    assert median_last([{"test_acc": 30.0}, {"test_acc": None}]) == 30.0 and median_last([]) is None
    runs = sweep(bn_drops, lambda b: 69.5).assign(median5_test_acc=lambda r: r["final_test_acc"] - 20.0)
    median, _ = load_criteria({"metric": "median5"})
    result = verdict(runs, median)
    assert result["checks"]["bn_degrades"]["bn_ref_mean"] == pytest.approx(
        verdict(runs, CRITERIA)["checks"]["bn_degrades"]["bn_ref_mean"] - 20.0)
    assert "median of the last 5 epochs' accuracy" in describe_verdict(result)
    with pytest.raises(ValueError, match="metric='best' must be one of: final, median5"):
        load_criteria({"metric": "best"})


def test_a_gn_loss_between_the_ends_fails_on_the_committed_claim():
    """The committed claim's runs, with GN at 4 per device set 4 points below GN at the reference
    (each seed's reference accuracy minus 4) and every other cell as committed: the ends alone (2
    against 32) still hold, the every-batch rule fails at 4."""
    runs = pd.read_csv(DEFAULTS.parents[2] / "results" / "claim" / "tables" / "runs.csv")
    runs = runs[runs["status"] == "finished"].copy()
    gn = runs["norm"] == "gn8"
    reference = runs[gn & (runs["batch_size"] == 32)].set_index("seed")["final_test_acc"]
    at_4 = gn & (runs["batch_size"] == 4)
    runs.loc[at_4, "final_test_acc"] = runs.loc[at_4, "seed"].map(reference - 4.0).to_numpy()
    check = verdict(runs, CRITERIA)["checks"]["gn_holds"]
    assert check["lower_bound_by_batch"][2] > -CRITERIA.gn_loss_margin  # what the old rule looked at
    assert not check["holds"] and check["batch_size"] == 4 and check["change"] == pytest.approx(-4.0)


def test_the_power_simulation_draws_each_norm_with_its_own_seed_spread():
    path = Path(__file__).resolve().parents[1] / "scripts" / "verdict_power.py"
    spec = importlib.util.spec_from_file_location("verdict_power", path)
    assert spec is not None and spec.loader is not None
    power = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(power)
    sweep = power.simulated({32: 70.0}, {32: 69.0}, 5, {"bn": {32: 0.0}, "gn8": {32: 1.0}}, np.random.default_rng(0))
    accuracy = sweep.groupby("norm")["final_test_acc"]
    assert (accuracy.std().loc["bn"], accuracy.mean().loc["bn"]) == (0.0, 70.0)
    assert accuracy.std().loc["gn8"] > 0.2


def test_the_power_simulation_refuses_a_malformed_spread_naming_the_flag():
    script = Path(__file__).resolve().parents[1] / "scripts" / "verdict_power.py"
    done = subprocess.run([sys.executable, str(script), "--gn-sd-at", "32:0.4"], capture_output=True, text=True)
    assert done.returncode == 2 and "--gn-sd-at takes BATCH=SD pairs" in done.stderr
