"""The claim verdict: error rates on simulated sweeps, undecided cases, honest wording, criteria
loading and the pooling guard. No training and no torch."""

import json
import subprocess
import sys
from functools import cache
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from normexp.verdict import DEFAULTS, Criteria, PoolingError, check_poolable, load_criteria, verdict
from normexp.verdict_text import describe_verdict

BATCHES = (2, 4, 8, 16, 32, 64)
SIMULATIONS = 400
CRITERIA, _ = load_criteria()


def sweep(bn: Callable[[int], float], gn: Callable[[int], float], rng: np.random.Generator | None = None,
          batches=BATCHES, seeds: int = 3, sd: float = 1.0) -> pd.DataFrame:
    """Finished runs with true mean accuracy bn(batch) / gn(batch) plus per-seed noise."""
    rng = rng or np.random.default_rng(0)
    rows = [(tag, b, s, mean(b) + rng.normal(0, sd)) for tag, mean in (("bn", bn), ("gn8", gn))
            for b in batches for s in range(seeds)]
    return pd.DataFrame(rows, columns=["norm", "batch_size", "seed", "final_test_acc"])


def bn_drops(b: int) -> float:
    return 70.0 - {2: 8.0, 4: 2.0}.get(b, 0.0)


SCENARIOS = {
    "claim true": (bn_drops, lambda b: 69.5),  # BN loses 8 at batch 2 and 2 at 4; GN flat, so ahead at 2
    "gn loses 3": (bn_drops, lambda b: 67.0 + 0.6 * (np.log2(b) - 1)),  # 67 at batch 2 up to 70 at 64
    "bn flat": (lambda b: 70.0, lambda b: 69.5),
}


@cache
def outcomes(scenario: str) -> pd.DataFrame:
    """Per simulated sweep: each check's `holds` and the overall verdict."""
    rng = np.random.default_rng(sorted(SCENARIOS).index(scenario))
    rows = []
    for _ in range(SIMULATIONS):
        result = verdict(sweep(*SCENARIOS[scenario], rng=rng), CRITERIA)
        rows.append({"overall": result["holds"], **{k: c["holds"] for k, c in result["checks"].items()}})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("scenario, check, expected, min_rate", [
    ("claim true", "gn_holds", True, 0.95),
    ("gn loses 3", "gn_holds", False, 0.95),
    ("bn flat", "bn_degrades", False, 0.95),
    ("claim true", "overall", True, 0.90),
])
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
    fit = stats.linregress(np.log2(gn["batch_size"]), gn["final_test_acc"])
    trend = result["checks"]["gn_holds"]
    assert (trend["slope_per_doubling"], trend["slope_se"]) == pytest.approx((fit.slope, fit.stderr))
    assert trend["change"] == pytest.approx(-5 * fit.slope)
    parity = stats.ttest_ind(acc["bn", 32], acc["gn8", 32], equal_var=False).confidence_interval(0.95)
    assert (result["checks"]["parity"]["ci_low"], result["checks"]["parity"]["ci_high"]) == pytest.approx(tuple(parity))


def test_result_is_plain_json():
    result = verdict(sweep(bn_drops, lambda b: 69.5), CRITERIA)
    assert json.loads(json.dumps(result, allow_nan=False))["holds"] is True
    assert {type(v) for v in result["checks"]["bn_degrades"].values()} <= {bool, int, float}


def test_parity_is_reported_and_only_required_when_asked():
    runs = sweep(lambda b: 50.0 if b == 2 else 70.0, lambda b: 60.0)  # GN 10 below BN at 32, 10 above at 2
    result = verdict(runs, CRITERIA)
    assert result["holds"] and not result["checks"]["parity"]["holds"] and not result["checks"]["parity"]["required"]
    assert "[NO] parity at batch 32 (reported; not required)" in describe_verdict(result)
    strict, _ = load_criteria({"require_parity": True})
    result = verdict(runs, strict)
    assert not result["holds"] and result["checks"]["parity"]["required"]
    assert describe_verdict(result).startswith("claim verdict: DOES NOT HOLD")


@pytest.mark.parametrize("runs, reason", [
    (sweep(bn_drops, lambda b: 70.0, batches=(2, 4)), "no finished bn runs at reference batch 32; have batches [2, 4]"),
    (sweep(bn_drops, lambda b: 70.0).query("norm == 'bn'"), "no finished gn8 runs"),
    (sweep(bn_drops, lambda b: 70.0, batches=(32, 64)), "no batch size below reference batch 32"),
    (sweep(bn_drops, lambda b: 70.0, seeds=1), "only 1 finished bn run at batch 2; need 2 or more seeds"),
])
def test_undecided_names_what_is_missing(runs, reason):
    result = verdict(runs, CRITERIA)
    assert result["undecided"] and not result["holds"] and reason in result["reason"]
    assert describe_verdict(result) == f"claim verdict: UNDECIDED - {result['reason']}"


def test_description_never_claims_a_failed_comparison():
    result = verdict(sweep(lambda b: 70.0, lambda b: 70.0 + 0.6 * (np.log2(b) - 6)), CRITERIA)  # claim false
    text = describe_verdict(result)
    checks = result["checks"]
    assert text.startswith("claim verdict: DOES NOT HOLD")
    for name, label in (("bn_degrades", "bn degrades"), ("gn_holds", "gn8 holds"), ("interaction", "interaction"),
                        ("gn_beats_bn_at_smallest_batch", "gn8 beats bn")):
        line = next(line for line in text.splitlines() if label in line)
        assert not checks[name]["holds"] and line.lstrip().startswith("[NO]") and "needed" in line, line
    bound, threshold = checks["bn_degrades"]["lower_bound"], checks["bn_degrades"]["threshold"]
    assert f"{bound:.2f} > {threshold:.2f}" not in text and f"needed > {threshold:.2f}" in text


def test_undefined_statistics_fail_and_print_as_missing():
    runs = sweep(bn_drops, lambda b: 70.0, sd=0.0)  # no spread: no standard errors
    result = verdict(runs, CRITERIA)
    assert result["checks"]["bn_degrades"]["lower_bound"] is None and not result["checks"]["bn_degrades"]["holds"]
    assert "lower bound n/a, needed > 1.00" in describe_verdict(result)


def test_criteria_defaults_come_from_the_yaml_only():
    criteria, source = load_criteria()
    assert vars(criteria) == yaml.safe_load(DEFAULTS.read_text())
    assert set(source.values()) == {"default"}
    with pytest.raises(TypeError):
        Criteria()  # no defaults in code


def test_criteria_layers_record_their_source():
    criteria, source = load_criteria(overrides={"alpha": 0.01}, recorded={"alpha": 0.1, "max_gn_loss": 2})
    assert (criteria.alpha, criteria.max_gn_loss) == (0.01, 2.0)
    assert (source["alpha"], source["max_gn_loss"], source["bn"]) == ("override", "recorded", "default")


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


def identity(norm: dict, batch: int, seed: int, epochs: int = 5) -> dict:
    return {"data": {"batch_size": batch, "devices": 64 // batch, "train_subset": 8000},
            "model": {"depth": 8}, "norm": norm, "optim": {"lr": 0.1, "milestones": [30, 60]},
            "trainer": {"epochs": epochs}, "seed": seed}


def pool(epochs=lambda i: 5, digest=lambda i: "abc", seeds=lambda i: i % 3) -> pd.DataFrame:
    rows = []
    for i, (tag, norm, batch) in enumerate((t, n, b) for t, n in (("bn", {"name": "bn"}), ("gn8", {"name": "gn", "groups": 8}))
                                           for b in (2, 32) for _ in range(3)):
        rows.append({"run": f"run{i}", "norm": tag, "batch_size": batch, "seed": seeds(i),
                     "identity": identity(norm, batch, seeds(i), epochs(i)), "data_digest": digest(i)})
    return pd.DataFrame(rows)


VARYING = ("norm", "data.batch_size", "data.devices", "seed")


def test_swept_fields_may_differ():
    check_poolable(pool(), VARYING)


def test_other_differences_are_refused_by_name():
    with pytest.raises(PoolingError, match=r"runs differ in trainer.epochs: 5 \(8 runs\), 10 \(4 runs\)"):
        check_poolable(pool(epochs=lambda i: 10 if i >= 8 else 5), VARYING)
    with pytest.raises(PoolingError, match="data_digest: abc"):
        check_poolable(pool(digest=lambda i: "abc" if i else "xyz"), VARYING)
    with pytest.raises(PoolingError, match="data.devices"):
        check_poolable(pool(), ("norm", "data.batch_size", "seed"))


def test_repeated_runs_are_refused_by_name():
    with pytest.raises(PoolingError, match="runs repeat bn 2 0: run0, run1"):
        check_poolable(pool(seeds=lambda i: 0 if i < 2 else i % 3), VARYING)


def test_module_stays_torch_free():
    code = "import sys, normexp.verdict; sys.exit(bool({'torch', 'matplotlib'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
